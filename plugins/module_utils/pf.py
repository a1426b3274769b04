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

States: PF states float across interfaces unless the rule says
`(if-bound)` (xnu bsd/net/pf.c: a state whose kif is pfi_all matches on every
interface). The tunnel passes outbound only, with states bound to the tunnel
interface: replies come back, unsolicited connections from the VPN side do
not, and a tunnel connection cannot continue out of the physical interface
once the tunnel's routes vanish. LAN, DHCP, neighbour discovery and TCP
management keep no state. Every stateful rule that can match TCP says
`flags any`: pf.conf(5) makes a stateful rule without flags `flags S/SA`,
which only a SYN matches, so after a state is lost (a flush, a reload, a
reboot of PF) an established connection such as OpenVPN over TCP would hit
the final block; with `flags any` its next packet makes a new state.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import re

from ansible_collections.vpnguard.killswitch.plugins.module_utils.evidence import LOG_LEVELS
from ansible_collections.vpnguard.killswitch.plugins.module_utils.nft import REFUSED_COUNTERS, exception_counter
from ansible_collections.vpnguard.killswitch.plugins.module_utils.policy import DNS_PORTS, LAN_NETWORKS, PolicyError

ANCHOR = 'com.vpnguard.killswitch'
ANCHOR_FILE = '/etc/pf.anchors/' + ANCHOR
PF_CONF = '/etc/pf.conf'
PFCTL = '/sbin/pfctl'
WILDCARD_UNITS = 32
LOOPBACK = 'lo0'
PFLOG = 'pflog0'
IFCONFIG = '/sbin/ifconfig'

# Neighbour discovery and MLD (router/neighbour solicitation, neighbour
# advertisement, MLDv2 report out; router advertisement, solicitation and
# advertisement in): IPv6 does not work on a link without them, and they never
# leave it. Numbers, because Apple's pfctl and OpenBSD's name them differently.
ICMP6_OUT = (133, 135, 136, 143)
# In: MLD queries (130), or multicast (and so neighbour discovery) stops once
# the router's snooping times the host out; router advertisements (134),
# neighbour solicitation and advertisement (135, 136) and redirects (137),
# which routers send on the link only (RFC 4861 8.1: hop limit 255).
ICMP6_IN = (130, 134, 135, 136, 137)
# DHCPv4 discovery and rebinding are broadcast (RFC 2131 4.4); a renewal
# unicast to the server is refused and the client rebinds by broadcast at T2.
# Port 67 to any host would let any socket bound to port 68 out (Mullvad's
# talpid-core passes only the broadcast address too).
DHCP4_BROADCAST = '255.255.255.255'
# Group IDs that PF's `group` would match for (nearly) every process: xnu
# bsd/netinet/in_pcb.c hands pf the socket credential's kauth_cred_getgid(),
# the effective gid only, and every macOS user account has staff (20) as its
# primary group; everyone (12) is every user.
GID_EVERYONE = {20: 'staff', 12: 'everyone'}
STATE_IF_BOUND = 'keep state (if-bound)'
FLAGS_ANY = 'flags any'
# Seconds between two runs of the watchdog (launchd StartInterval).
WATCHDOG_INTERVAL = 60

# Named counters: PF `label`s on every rule that refuses, or that lets an
# exception through, named as the Linux counters are where the verdict class
# is the same. PF keeps packets and bytes per rule and `pfctl -s labels` sums
# them by label (see parse_labels). PF has no forward hook of its own: a
# forwarded packet is filtered in on one interface and out on another, so it is
# counted as refused in or out; nor a strong host model rule
# (refused_other_interface).
PF_REFUSED = ('refused_out_v4', 'refused_out_v6', 'refused_in_v4', 'refused_in_v6', 'refused_dns_resolver',
              'refused_dns_outside', 'refused_doh', 'refused_endpoint')

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


def counter_names(policy):
    """Every label the anchor of policy counts, with what it counts (the Linux counters' words)."""
    names = dict((name, REFUSED_COUNTERS[name]) for name in PF_REFUSED)
    if not policy.dns_servers:
        del names['refused_dns_resolver']
    if not policy.doh_servers:
        del names['refused_doh']
    if not policy.restrict_endpoints_to_tunnel or not policy.endpoints:
        del names['refused_endpoint']
    for e in policy.exceptions:
        names[exception_counter(e)] = 'exception %s: %s used' % (e.selector, e.value)
    return names


def _counted(action, direction, match, label, log):
    """One rule that decides, counts under label and, when log, copies the packet to pflog0.

    PF writes `log` between the direction and `quick` (pf.conf(5) GRAMMAR:
    action [direction] [log] [quick] ...). Plain `log`: xnu's PF would fill
    the socket owner into the pflog header for `log (user)` too (bsd/net/if_pflog.c:
    PF_LOG_SOCKET_LOOKUP), but whether Apple's pfctl parses that option cannot
    be checked, its source not being published; a rule that matched on `user`
    has looked the owner up already, and pflog carries it then.
    """
    return ' '.join(filter(None, [action, direction, 'log' if log else None, 'quick', match, 'label "%s"' % label]))


def render(policy, units=WILDCARD_UNITS, endpoint_users=(0,), log='none'):
    """The anchor's rules as pfctl(8) input text.

    endpoint_users: the uids whose sockets may reach the endpoints when the
    policy restricts them (the VPN client's; see endpoint_user_preflight()).
    log: one of LOG_LEVELS, what is copied to pflog0.
    """
    if log not in LOG_LEVELS:
        raise PolicyError('log', 'must be one of %s' % ', '.join(LOG_LEVELS))
    log_refused, log_exceptions = log in ('refused', 'all'), log in ('exceptions', 'all')

    def refused(direction, match, label):
        return _counted('block drop', direction, match, label, log_refused)

    tunnels = tunnel_names(policy, units)
    for i, exception in enumerate(policy.exceptions):
        if exception.selector not in ('uid', 'gid'):
            raise PolicyError('exceptions[%d].%s' % (i, exception.selector),
                              '%s exceptions are not available on macOS; PF selects sockets by uid or gid'
                              % exception.selector)
        if exception.selector == 'gid' and exception.value in GID_EVERYONE:
            raise PolicyError('exceptions[%d].gid' % i,
                              'gid %d (%s) would exempt every user: PF matches the socket owner\'s effective '
                              'group only, and that is %s for every account; name the uid instead'
                              % (exception.value, GID_EVERYONE[exception.value], GID_EVERYONE[exception.value]))
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
        'pass out quick on $tunnels %s %s %s' % (dns, FLAGS_ANY, STATE_IF_BOUND),
    ]
    dns_ports = 'proto { udp tcp } to port %s' % _list(DNS_PORTS)
    if policy.dns_servers:
        # Through the tunnel, but to a resolver that is not the tunnel's: told apart from DNS outside it.
        rules.append(refused('out', 'on $tunnels ' + dns_ports, 'refused_dns_resolver'))
    rules += [
        refused('out', dns_ports, 'refused_dns_outside'),
        '# The tunnel carries everything else out; in, only replies, bound to the tunnel interface.',
        'pass out quick on $tunnels all %s %s' % (FLAGS_ANY, STATE_IF_BOUND),
    ]
    if policy.doh_servers:
        rules += ['# DNS-over-HTTPS resolvers only through the tunnel, whatever is passed below.',
                  refused('out', 'to <vpnguard_doh>', 'refused_doh')]
    endpoint_refusals = []
    if endpoints:
        # The VPN client's sockets only; no other process may use the endpoint to get round the tunnel.
        users = sorted(set(endpoint_users))
        owner = ' user %s' % _list(users) if policy.restrict_endpoints_to_tunnel else ''
        rules.append('# The VPN servers, exactly: address, port and protocol%s.'
                     % ((', for root\'s sockets only' if users == [0] else ', for the VPN client\'s sockets only')
                        if owner else ''))
        for protocol, port in (service for service, addresses in endpoints):
            table = '<vpnguard_endpoint_%s_%d>' % (protocol, port)
            flags = ' ' + FLAGS_ANY if protocol == 'tcp' else ''
            rules += ['pass out quick proto %s to %s port %d%s%s keep state' % (protocol, table, port, owner, flags),
                      'pass in quick proto %s from %s port %d no state' % (protocol, table, port)]
            if owner:
                # Anyone else trying the endpoint's address and port, that nothing below lets out either:
                # refused, and told apart from the rest.
                endpoint_refusals.append(refused('out', 'proto %s to %s port %d' % (protocol, table, port),
                                                 'refused_endpoint'))
    rules += [
        '# DHCP and neighbour discovery: the link must work for the tunnel to come up.',
        'pass out quick inet proto udp from port 68 to %s port 67 no state' % DHCP4_BROADCAST,
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
    rules += management_rules(management)
    if policy.exceptions:
        rules.append('# Bypass exceptions, each counted by itself: PF knows the owner of TCP and UDP sockets only.')
        rules += [_counted('pass', 'out', 'proto { udp tcp } %s %d %s keep state' % (
            'user' if e.selector == 'uid' else 'group', e.value, FLAGS_ANY), exception_counter(e), log_exceptions)
            for e in policy.exceptions]
    rules += endpoint_refusals
    rules += ['# Everything else, both ways, counted per direction and family.']
    rules += [refused(direction, 'inet%s all' % ('' if version == 4 else '6'), 'refused_%s_v%d' % (direction, version))
              for direction in ('out', 'in') for version in (4, 6)]
    return '\n'.join(lines + [''] + rules) + '\n'


def management_rules(management):
    """Connections in from the management networks, and only replies out; a bare SYN never leaves."""
    rules = ['# Management: connections in, and only replies out; a bare SYN never leaves.'] if management else []
    for protocol, port in (service for service, networks in management):
        table = '<vpnguard_mgmt_%s_%d>' % (protocol, port)
        if protocol == 'tcp':
            # Stateless, so that a session open before the first load goes on.
            rules += ['pass in quick proto tcp from %s to port %d no state' % (table, port),
                      'pass out quick proto tcp from port %d to %s flags A/A no state' % (port, table)]
        else:
            rules.append('pass in quick proto udp from %s to port %d keep state' % (table, port))
    return rules


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
LAUNCHCTL = '/bin/launchctl'
# The collection's own files for boot and the watchdog: a macOS update restores
# /etc/pf.conf, never these.
OWN_DIR = '/etc/vpnguard-killswitch'
RULESET_FILE = OWN_DIR + '/pf.conf'
WATCHDOG_SCRIPT = OWN_DIR + '/watchdog.sh'
WATCHDOG_TOKEN = 'watchdog.token'


def private_ruleset(pf_conf):
    """The main ruleset the boot job and the watchdog load: pf.conf as it is (Apple's anchors) plus our hook."""
    return with_hook(without_hook(pf_conf or ''), ANCHOR_FILE)


def fallback_ruleset(policy):
    """What the watchdog loads when the private ruleset does not load: loopback and management, nothing else.

    The kill switch must fail closed; management stays so that the host can still be repaired.
    """
    management = _by_service(policy.management, 'network')
    lines = ['# vpnguard.killswitch: fallback, loaded only when the ruleset fails to load; everything is blocked.']
    lines += [_table('vpnguard_mgmt_%s_%d' % service, networks) for service, networks in management]
    lines += ['pass quick on %s no state' % LOOPBACK] + management_rules(management)
    lines += ['block drop out quick all', 'block drop in quick all']
    return '\n'.join(lines) + '\n'


def watchdog_script(state_dir, fallback, pflog=False):
    """/bin/sh, run by launchd at boot, when /etc/pf.conf changes and every WATCHDOG_INTERVAL seconds.

    It re-asserts three things and changes nothing that already holds:
    - the main ruleset references our anchor and the anchor has rules, else it
      loads the private ruleset, or the fallback (carried in the script itself,
      from stdin: `pfctl -f -`, so that no damaged or missing file can leave
      PF without rules) when that fails; a ruleset is
      loaded before PF is enabled, because `pfctl -E -f` enables PF even when
      the file fails to load (fail open);
    - PF holds our own enable reference: any `pfctl -d` stops PF and drops
      every token (xnu bsd/net/pf_ioctl.c DIOCSTOP: invalidate_all_tokens), and
      PF stops when the last reference goes (DIOCSTOPREF), so a reference of
      our own keeps it on whatever another holder releases.
    The token is written where the module finds it, so that state=absent
    releases it. With pflog, it also creates pflog0 (a cloned interface,
    gone after a reboot) for the rules' `log`.
    """
    token = '%s/%s' % (state_dir.rstrip('/'), WATCHDOG_TOKEN)
    return '''#!/bin/sh
# vpnguard.killswitch watchdog: managed by Ansible; edits are reverted.
pfctl=%(pfctl)s
anchor=%(anchor)s
token_file=%(token)s
if ! "$pfctl" -s rules 2>/dev/null | grep -q "^anchor \\"$anchor\\"" ||
   [ -z "$("$pfctl" -a "$anchor" -s rules 2>/dev/null)" ]; then
    "$pfctl" -f %(ruleset)s || "$pfctl" -f - <<'VPNGUARD_FALLBACK'
%(fallback)sVPNGUARD_FALLBACK
fi
%(pflog)stoken=$(cat "$token_file" 2>/dev/null)
if [ -z "$token" ] || ! "$pfctl" -s References 2>/dev/null | grep -qw "$token"; then
    token=$("$pfctl" -E 2>&1 | sed -n 's/^Token : *\\([0-9][0-9]*\\).*/\\1/p')
    [ -n "$token" ] || exit 1
    mkdir -p "${token_file%%/*}" && printf '%%s\\n' "$token" > "$token_file.new" && mv "$token_file.new" "$token_file"
fi
''' % dict(pfctl=PFCTL, anchor=ANCHOR, token=token, ruleset=RULESET_FILE,
           fallback=fallback.replace('%', '%%'),
           pflog='%s %s >/dev/null 2>&1 || %s %s create\n' % (IFCONFIG, PFLOG, IFCONFIG, PFLOG) if pflog else '')


def launchd_plist(interval=WATCHDOG_INTERVAL):
    """The LaunchDaemon of the watchdog: at boot, when /etc/pf.conf changes, and every interval seconds."""
    return ''.join([
        '<?xml version="1.0" encoding="UTF-8"?>\n',
        '<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n',
        '<!-- vpnguard.killswitch: managed by Ansible; keeps PF enabled with the kill switch -->\n',
        '<plist version="1.0">\n<dict>\n',
        '\t<key>Label</key>\n\t<string>%s</string>\n' % LAUNCHD_LABEL,
        '\t<key>ProgramArguments</key>\n\t<array>\n',
        '\t\t<string>/bin/sh</string>\n\t\t<string>%s</string>\n' % WATCHDOG_SCRIPT,
        '\t</array>\n',
        '\t<key>RunAtLoad</key>\n\t<true/>\n',
        '\t<key>WatchPaths</key>\n\t<array>\n\t\t<string>%s</string>\n\t</array>\n' % PF_CONF,
        '\t<key>StartInterval</key>\n\t<integer>%d</integer>\n' % interval,
        '</dict>\n</plist>\n',
    ])


def launchd_argvs(load):
    """Stop the job (whether or not it runs), then start it again from its plist when load."""
    argvs = [[LAUNCHCTL, 'bootout', 'system/%s' % LAUNCHD_LABEL]]
    if load:
        argvs.append([LAUNCHCTL, 'bootstrap', 'system', LAUNCHD_PLIST])
    return argvs


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


def labels_argv():
    """`pfctl -a ANCHOR -s labels`: a line per labelled rule of the anchor (the -a path, not the main ruleset)."""
    return pfctl('-a', ANCHOR, '-s', 'labels')


_LABEL_LINE = re.compile(r'^(\S+) (\d+) (\d+) (\d+) \d+ \d+ \d+ \d+\s*$')


def parse_labels(output):
    """{label: (packets, bytes)} from `pfctl -s labels`, summed over the rules that share a label.

    pfctl_show_rules(), format PFCTL_SHOW_LABELS, prints for each rule with a
    label "%s " then "%llu %llu %llu %llu %llu %llu %llu\n": evaluations,
    packets (in + out), bytes (in + out), packets in, bytes in, packets out,
    bytes out (OpenBSD pfctl.c of the 4.x era that xnu's PF comes from; macOS's
    /sbin/pfctl prints the same seven numbers). One policy rule with a list
    ({ udp tcp }, $tunnels) is several PF rules, hence the sum. The kernel
    zeroes a rule's counters when it is added (xnu bsd/net/pf_ioctl.c), so
    every load of the anchor starts them again from 0. A line of any other
    shape (a header, a warning) is skipped.
    """
    counted = {}
    for line in (output or '').splitlines():
        match = _LABEL_LINE.match(line)
        if match:
            packets, octets = counted.get(match.group(1), (0, 0))
            counted[match.group(1)] = (packets + int(match.group(3)), octets + int(match.group(4)))
    return counted


def carried_counters(base, live):
    """base + live, label by label: what the anchor counted before the module reloaded it, and since."""
    total = dict((name, tuple(value)) for name, value in (base or {}).items())
    for name, (packets, octets) in live.items():
        before = total.get(name, (0, 0))
        total[name] = (before[0] + packets, before[1] + octets)
    return total


def table_argv(name):
    return pfctl('-a', ANCHOR, '-t', name, '-T', 'show')


def flush_anchor_argv():
    return pfctl('-a', ANCHOR, '-F', 'all')


def parse_references(output):
    """The tokens `pfctl -s References` lists: every number of 10 digits or more."""
    return set(re.findall(r'\b(\d{10,})\b', output or ''))


def parse_anchors(output):
    """Anchor paths `pfctl -s Anchors -v` lists, one a line."""
    return [line.strip() for line in (output or '').splitlines() if line.strip()]


def foreign_anchors(anchors):
    """Anchors neither Apple's nor ours: another tool's rules, which a reload of the main ruleset unhooks."""
    return sorted(a for a in anchors if not (a == ANCHOR or a.startswith(ANCHOR + '/') or a.startswith('com.apple')))


def nat_pass(nat_rules):
    """Translation rules with `pass`: their packets skip the filter rules, the kill switch included."""
    return [line.strip() for line in (nat_rules or '').splitlines()
            if re.match(r'^(no )?(nat|rdr|binat)\s+pass\b', line.strip())]


def kill_states_argvs(before, after):
    """pfctl calls that end the states the previous policy allowed and the new one does not.

    before and after are state_summary() dicts. None when it cannot be told
    (no previous summary, or a bypass owner removed: PF cannot kill states by
    owner): then every state goes (-F states). States the new policy still
    allows stay, so a TCP tunnel keeps its connection across a change.
    """
    if not before or set(before.get('owners', [])) - set(after['owners']) or (after['dns'] and not before['dns']):
        return None
    argvs = [pfctl('-i', name, '-F', 'states') for name in sorted(set(before['tunnels']) - set(after['tunnels']))]
    gone = set(before['endpoints']) - set(after['endpoints'])
    if before.get('root_only') is False and after['root_only']:
        gone |= set(after['endpoints'])  # other users' states to them
    hosts = sorted(set(e.split(' ')[0] for e in gone) | (set(before['dns']) - set(after['dns']))
                   | set(after['doh']) - set(before['doh']))
    for host in hosts:
        argvs.append(pfctl('-k', '::/0' if ':' in host else '0.0.0.0/0', '-k', host))
    for network in sorted(set(before['udp_management']) - set(after['udp_management'])):
        argvs.append(pfctl('-k', network))
    return argvs


def state_summary(policy, units=WILDCARD_UNITS):
    """What in a policy can leave states behind, as JSON-able lists, for kill_states_argvs()."""
    return dict(
        tunnels=tunnel_names(policy, units),
        endpoints=sorted('%s %s %d' % (e.address, e.protocol, e.port) for e in policy.endpoints),
        root_only=bool(policy.restrict_endpoints_to_tunnel),
        dns=sorted(str(a) for a in policy.dns_servers) if policy.dns_servers else [],
        doh=sorted(str(a) for a in policy.doh_servers),
        udp_management=sorted(str(m.network) for m in policy.management if m.protocol == 'udp'),
        owners=sorted('%s %d' % (e.selector, e.value) for e in policy.exceptions),
    )


# Commit-confirmed: a launchd job of its own restores the previous anchor unless confirmed in time.
CONFIRM_LABEL = ANCHOR + '.confirm'
CONFIRM_PLIST = '/Library/LaunchDaemons/%s.plist' % CONFIRM_LABEL
CONFIRM_SCRIPT = OWN_DIR + '/confirm-rollback.sh'
CONFIRM_PREVIOUS = OWN_DIR + '/confirm-previous.anchor'


def confirm_plist(timeout):
    """A LaunchDaemon that runs the rollback script once, which waits timeout seconds first.

    It is in /Library/LaunchDaemons, so a reboot before the confirmation runs it
    again at boot: an unconfirmed change is never kept.
    """
    return ''.join([
        '<?xml version="1.0" encoding="UTF-8"?>\n',
        '<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n',
        '<!-- vpnguard.killswitch: managed by Ansible; restores the previous kill switch unless confirmed -->\n',
        '<plist version="1.0">\n<dict>\n',
        '\t<key>Label</key>\n\t<string>%s</string>\n' % CONFIRM_LABEL,
        '\t<key>ProgramArguments</key>\n\t<array>\n',
        '\t\t<string>/bin/sh</string>\n\t\t<string>%s</string>\n\t\t<string>%d</string>\n' % (CONFIRM_SCRIPT, timeout),
        '\t</array>\n',
        '\t<key>RunAtLoad</key>\n\t<true/>\n',
        '</dict>\n</plist>\n',
    ])


def confirm_script():
    """/bin/sh: after $1 seconds, the previous anchor back in its file and in PF, then the job removes itself.

    The anchor file is restored too, so that the watchdog and the boot load the
    previous policy, not the unconfirmed one. With no previous anchor (the
    first apply), the anchor is emptied: the host had no kill switch.
    """
    return '''#!/bin/sh
# vpnguard.killswitch commit-confirmed rollback: managed by Ansible.
sleep "${1:-0}"
if [ -f %(previous)s ]; then
    cp %(previous)s %(anchor_file)s.new && mv %(anchor_file)s.new %(anchor_file)s
else
    : > %(anchor_file)s
fi
%(pfctl)s -a %(anchor)s -f %(anchor_file)s
rm -f %(previous)s %(plist)s %(script)s
%(launchctl)s bootout system/%(label)s
''' % dict(previous=CONFIRM_PREVIOUS, anchor_file=ANCHOR_FILE, pfctl=PFCTL, anchor=ANCHOR, plist=CONFIRM_PLIST,
           script=CONFIRM_SCRIPT, launchctl=LAUNCHCTL, label=CONFIRM_LABEL)


# Where Mac VPN clients keep what tells which user their endpoint socket belongs to.
WIREGUARD_APP = '/Applications/WireGuard.app'
CONSOLE = '/dev/console'
OPENVPN_CONFIGS = ('/Library/Application Support/Tunnelblick/Shared/*.tblk/Contents/Resources/config.ovpn',
                   '/etc/openvpn/*.conf', '/usr/local/etc/openvpn/*.conf', '/opt/homebrew/etc/openvpn/*.conf')
_OPENVPN_USER_RE = re.compile(r'^\s*user\s+(\S+)', re.MULTILINE)


def endpoint_users_needed(read_text, exists, glob, console_uid, uid_of):
    """(client, uid) pairs the Mac's VPN clients open their endpoint sockets as, besides root.

    - The App Store WireGuard app: its Network Extension runs as the logged-in
      user, the owner of /dev/console.
    - OpenVPN (Tunnelblick, Homebrew) with `user NAME`: it drops root after
      connecting and opens its socket again as NAME on every reconnect.
    - The built-in IKEv2 client and Tunnelblick/OpenVPN without `user` run as root.
    The host functions are passed in, so that the preflight runs the same in tests.
    """
    needed = []
    if exists(WIREGUARD_APP):
        needed.append(('the WireGuard app (its Network Extension runs as the logged-in user)', console_uid()))
    for pattern in OPENVPN_CONFIGS:
        for path in sorted(glob(pattern)):
            for name in _OPENVPN_USER_RE.findall(read_text(path) or ''):
                uid = uid_of(name)
                if uid is not None:
                    needed.append(('OpenVPN (%s: user %s)' % (path, name), uid))
    return needed


def endpoint_user_preflight(policy, users, needed):
    """Refuse, naming endpoint_users, an endpoint restriction the host's VPN client could not get through."""
    if not policy.endpoints or not policy.restrict_endpoints_to_tunnel:
        return
    for client, uid in needed:
        if uid not in users:
            raise PolicyError('endpoint_users', '%s opens its endpoint socket as uid %d, which %s does not include, '
                              'so the tunnel could not come up; add %d (role: killswitch_pf_endpoint_users), or set '
                              'restrict_endpoints_to_tunnel to false (any process may then reach the endpoint)'
                              % (client, uid, sorted(users), uid))
