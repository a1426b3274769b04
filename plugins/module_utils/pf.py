# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vpnguard maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""macOS backend: render a Policy as one PF anchor and hook it into /etc/pf.conf.

Every rule in the anchor is `quick`, so the first rule that matches decides
and nothing evaluated after the anchor (later pf.conf rules, other anchors)
can pass what it blocks. The anchor ends with `block drop ... quick all` in
both directions: it decides every packet it sees.

Interface wildcards: PF on macOS has no interface groups; xnu's
pfi_kif_match() compares interface names exactly. A trailing `*` on a driver
name (utun*) is therefore expanded to its first units (utun0 ... utunN-1).
PF binds a rule to a name before any interface has it, so a tunnel that comes
up later under one of those names is covered without reloading; one beyond
them is blocked (fails closed), not leaked.

Statelessness: the tunnel, LAN, DHCP and management rules keep no state. PF
states float across interfaces by default, so a state made on the tunnel
could carry the same connection out of the physical interface once the
tunnel's routes vanish; a stateless rule decides each packet by its
interface. Only the endpoints (whose replies and ICMP errors must come back),
UDP management and the bypass exceptions keep state.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import re

from ansible_collections.vpnguard.killswitch.plugins.module_utils.policy import DNS_PORTS, LAN_NETWORKS, PolicyError

ANCHOR = 'com.vpnguard.killswitch'
ANCHOR_FILE = '/etc/pf.anchors/' + ANCHOR
PF_CONF = '/etc/pf.conf'
PFCTL = '/sbin/pfctl'
WILDCARD_UNITS = 32
LOOPBACK = 'lo0'

# Neighbour discovery and MLD (router/neighbour solicitation, neighbour
# advertisement, MLDv2 report out; router advertisement, solicitation and
# advertisement in): IPv6 does not work on a link without them, and they never
# leave it. Numbers, because Apple's pfctl and OpenBSD's name them differently.
ICMP6_OUT = (133, 135, 136, 143)
ICMP6_IN = (134, 135, 136)

HEADER = ('# vpnguard.killswitch: managed by Ansible, loaded whole by `pfctl -a %s -f`; edits are reverted.\n'
          % ANCHOR)
HOOK_BEGIN = '# vpnguard.killswitch: begin (managed by Ansible; the kill switch anchor)'
HOOK_END = '# vpnguard.killswitch: end'

_DRIVER_RE = re.compile(r'^[A-Za-z]+$')


def tunnel_names(policy, units=WILDCARD_UNITS):
    """The policy's tunnel interfaces with each driver wildcard expanded to its first units."""
    names = []
    for i, name in enumerate(policy.tunnel_interfaces):
        if not name.endswith('*'):
            names.append(name)
            continue
        driver = name[:-1]
        if not _DRIVER_RE.match(driver):
            raise PolicyError('tunnel_interfaces[%d]' % i,
                              'on macOS a wildcard must follow a driver name, as in utun*; PF matches '
                              'interface names exactly, so %r cannot be expanded' % name)
        names += ['%s%d' % (driver, unit) for unit in range(units)]
    return [n for i, n in enumerate(names) if n not in names[:i]]


def _list(items):
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else '{ %s }' % ' '.join(items)


def _table(name, addresses):
    return 'table <%s> const { %s }' % (name, ' '.join(str(a) for a in addresses))


def _by_service(entries, address):
    """(protocol, port) -> addresses, so that one table per service keeps each rule exact."""
    groups = {}
    for e in entries:
        groups.setdefault((e.protocol, e.port), []).append(getattr(e, address))
    return sorted(groups.items())


def render(policy, units=WILDCARD_UNITS):
    """The anchor's rules as pfctl(8) input text."""
    tunnels = tunnel_names(policy, units)
    for i, exception in enumerate(policy.exceptions):
        if exception.selector not in ('uid', 'gid'):
            raise PolicyError('exceptions[%d].%s' % (i, exception.selector),
                              '%s exceptions are not available on macOS; PF selects sockets by uid or gid'
                              % exception.selector)
    endpoints = _by_service(policy.endpoints, 'address')
    management = _by_service(policy.management, 'network')

    lines = [HEADER.rstrip('\n'), 'tunnels = "%s"' % _list(tunnels)]
    if policy.dns_servers:
        lines.append(_table('vpnguard_dns', policy.dns_servers))
    if policy.doh_servers:
        lines.append(_table('vpnguard_doh', policy.doh_servers))
    if policy.allow_lan:
        lines.append(_table('vpnguard_lan', LAN_NETWORKS))
    lines += [_table('vpnguard_endpoint_%s_%d' % service, addresses) for service, addresses in endpoints]
    lines += [_table('vpnguard_mgmt_%s_%d' % service, networks) for service, networks in management]

    dns = 'proto { udp tcp } to %s port %s' % ('<vpnguard_dns>' if policy.dns_servers else 'any', _list(DNS_PORTS))
    rules = [
        '# Loopback never leaves the host.',
        'pass quick on %s no state' % LOOPBACK,
        '# DNS only to the tunnel\'s resolvers and only through it, decided before the tunnel is passed.',
        'pass out quick on $tunnels %s no state' % dns,
        'block drop out quick proto { udp tcp } to port %s' % _list(DNS_PORTS),
        '# The tunnel carries everything else, both ways.',
        'pass quick on $tunnels no state',
    ]
    if policy.doh_servers:
        rules += ['# DNS-over-HTTPS resolvers only through the tunnel, whatever is passed below.',
                  'block drop out quick to <vpnguard_doh>']
    if endpoints:
        # uid 0: the VPN daemon; no other process may use the endpoint to get round the tunnel.
        owner = ' user 0' if policy.restrict_endpoints_to_tunnel else ''
        rules.append('# The VPN servers, exactly: address, port and protocol%s.'
                     % (', for root\'s sockets only' if owner else ''))
        for protocol, port in (service for service, addresses in endpoints):
            table = '<vpnguard_endpoint_%s_%d>' % (protocol, port)
            rules += ['pass out quick proto %s to %s port %d%s keep state' % (protocol, table, port, owner),
                      'pass in quick proto %s from %s port %d no state' % (protocol, table, port)]
    rules += [
        '# DHCP and neighbour discovery: the link must work for the tunnel to come up.',
        'pass out quick inet proto udp from port 68 to port 67 no state',
        'pass in quick inet proto udp from port 67 to port 68 no state',
        'pass out quick inet6 proto udp from fe80::/10 port 546 to port 547 no state',
        'pass in quick inet6 proto udp from port 547 to fe80::/10 port 546 no state',
        'pass out quick inet6 proto icmp6 icmp6-type %s no state' % _list(ICMP6_OUT),
        'pass in quick inet6 proto icmp6 icmp6-type %s no state' % _list(ICMP6_IN),
    ]
    if policy.allow_lan:
        rules += ['# The LAN, asked for (DNS to it stays blocked above).',
                  'pass out quick to <vpnguard_lan> no state',
                  'pass in quick from <vpnguard_lan> no state']
    if management:
        rules.append('# Management: connections in, and only replies out; a bare SYN never leaves.')
    for protocol, port in (service for service, networks in management):
        table = '<vpnguard_mgmt_%s_%d>' % (protocol, port)
        if protocol == 'tcp':
            # Stateless, so that a session open before the first load goes on.
            rules += ['pass in quick proto tcp from %s to port %d no state' % (table, port),
                      'pass out quick proto tcp from port %d to %s flags A/A no state' % (port, table)]
        else:
            rules.append('pass in quick proto udp from %s to port %d keep state' % (table, port))
    bypass = ['%s %d' % ('user' if e.selector == 'uid' else 'group', e.value) for e in policy.exceptions]
    if bypass:
        rules.append('# Bypass exceptions: PF knows the owner of TCP and UDP sockets only.')
        rules += ['pass out quick proto { udp tcp } %s keep state' % b for b in bypass]
    rules += ['# Everything else, both ways.', 'block drop out quick all', 'block drop in quick all']
    return '\n'.join(lines + [''] + rules) + '\n'


def digest(text):
    return hashlib.sha256(text.encode('utf-8')).hexdigest()


def hook_lines(anchor_file=ANCHOR_FILE):
    return [HOOK_BEGIN,
            'anchor "%s"' % ANCHOR,
            'load anchor "%s" from "%s"' % (ANCHOR, anchor_file),
            HOOK_END]


def without_hook(pf_conf):
    """pf.conf text with our block taken out, the rest byte for byte."""
    lines = pf_conf.splitlines(True)
    out, inside = [], False
    for line in lines:
        stripped = line.rstrip('\n')
        if stripped == HOOK_BEGIN:
            inside = True
        elif stripped == HOOK_END and inside:
            inside = False
        elif not inside:
            out.append(line)
    return ''.join(out)


def with_hook(pf_conf, anchor_file=ANCHOR_FILE):
    """pf.conf text that references the anchor; unchanged when it already does.

    The block goes at the end, the only place always valid, as pf.conf wants
    filter rules after translation rules; the anchor's rules are all quick, so
    its place among other filter rules only matters to earlier quick rules.
    """
    text = pf_conf or ''
    if has_hook(text, anchor_file):
        return text
    text = without_hook(text)
    if text and not text.endswith('\n'):
        text += '\n'
    return text + '\n'.join(hook_lines(anchor_file)) + '\n'


def has_hook(pf_conf, anchor_file=ANCHOR_FILE):
    """Whether pf.conf holds our block, whole, wherever it is."""
    return '\n'.join(hook_lines(anchor_file)) + '\n' in (pf_conf or '')


def references_anchor(main_rules):
    """Whether the loaded main ruleset (`pfctl -s rules`) evaluates the anchor."""
    return any(line.strip().startswith('anchor "%s"' % ANCHOR) for line in (main_rules or '').splitlines())


LAUNCHD_LABEL = ANCHOR
LAUNCHD_PLIST = '/Library/LaunchDaemons/%s.plist' % LAUNCHD_LABEL


def launchd_plist(pf_conf=PF_CONF):
    """A LaunchDaemon that enables PF and loads pf.conf (and so the anchor) at boot.

    pf.conf is loaded, not the anchor alone, so that the main ruleset
    references the anchor whatever ran before; macOS's own com.apple.pfctl job
    loads pf.conf too but never enables PF.
    """
    arguments = [PFCTL, '-E', '-f', pf_conf]
    return ''.join([
        '<?xml version="1.0" encoding="UTF-8"?>\n',
        '<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n',
        '<!-- vpnguard.killswitch: managed by Ansible; enables PF with the kill switch at boot -->\n',
        '<plist version="1.0">\n<dict>\n',
        '\t<key>Label</key>\n\t<string>%s</string>\n' % LAUNCHD_LABEL,
        '\t<key>ProgramArguments</key>\n\t<array>\n',
        ''.join('\t\t<string>%s</string>\n' % a for a in arguments),
        '\t</array>\n',
        '\t<key>RunAtLoad</key>\n\t<true/>\n',
        '</dict>\n</plist>\n',
    ])


def parse_token(output):
    """The enable reference `pfctl -E` prints (Token : 1234...), or None."""
    match = re.search(r'Token\s*:\s*(\d+)', output or '')
    return match.group(1) if match else None


def is_enabled(info):
    """Whether `pfctl -s info` says PF is enabled."""
    return bool(re.search(r'^Status:\s*Enabled', info or '', re.MULTILINE))


def pfctl(*args):
    """An argv for pfctl; never a shell."""
    return [PFCTL] + list(args)


def load_anchor_argv(path, check=False):
    return pfctl(*(['-n'] if check else []) + ['-a', ANCHOR, '-f', path])


def load_conf_argv(path, check=False):
    return pfctl(*(['-n'] if check else []) + ['-f', path])


def listing_argvs():
    """What `live listing` is made of: the anchor's rules and its tables."""
    return pfctl('-a', ANCHOR, '-s', 'rules'), pfctl('-a', ANCHOR, '-s', 'Tables')


def table_argv(name):
    return pfctl('-a', ANCHOR, '-t', name, '-T', 'show')


def flush_anchor_argv():
    return pfctl('-a', ANCHOR, '-F', 'all')
