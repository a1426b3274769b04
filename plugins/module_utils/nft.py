# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vpnguard maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Linux backend: render a Policy as one nftables table and swap it in atomically.

The table is written in the style `nft list table` prints, so that a diff
between the live table and the rendered one reads like a diff of rules.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import ipaddress

from ansible_collections.vpnguard.killswitch.plugins.module_utils.policy import DNS_PORTS, LAN_NETWORKS

TABLE_FAMILY = 'inet'
TABLE_NAME = 'vpnguard_killswitch'
TABLE = '%s %s' % (TABLE_FAMILY, TABLE_NAME)

# Marks sockets of bypass exceptions so that the routing guard lets them use
# the main table; kept apart from the tunnel's fwmark.
BYPASS_FWMARK = 0x564b

# Neighbour discovery and MLD must reach the link for IPv6 to work at all;
# none of them carry user data or leave the link (hop limit 255 / 1).
ICMPV6_OUT = ('nd-router-solicit', 'nd-neighbor-solicit', 'nd-neighbor-advert', 'mld2-listener-report')
ICMPV6_IN = ('nd-router-advert', 'nd-neighbor-solicit', 'nd-neighbor-advert')


def _quoted(name):
    return '"%s"' % name


def _elements(items):
    return ', '.join(items)


def _set(name, type_, elements, interval=False):
    lines = ['\tset %s {' % name, '\t\ttype %s' % type_]
    if interval:
        lines.append('\t\tflags interval')
    if elements:
        lines.append('\t\telements = { %s }' % _elements(elements))
    lines += ['\t}', '']
    return lines


def _chain(name, hook, priority, policy, rules):
    lines = ['\tchain %s {' % name]
    if hook:
        lines.append('\t\ttype %s hook %s priority %s; policy %s;' % (hook[0], hook[1], priority, policy))
    lines.extend('\t\t' + r for r in rules)
    if policy == 'drop':
        # The policy alone is not enough while a transaction replaces the
        # table: inside the kernel's commit the new chain's rules are live a
        # moment before its policy is, and with the old chain already
        # unhooked a packet no rule accepts would pass. A last rule that drops
        # closes that moment (measured: hundreds of packets per thousand swaps
        # without it, none with it).
        lines.append('\t\tdrop')
    lines.append('\t}')
    return lines


def _tunnels(policy, direction, verdict):
    return ['%s %s %s' % (direction, _quoted(i), verdict) for i in policy.tunnel_interfaces]


def _management_elements(entries):
    # The kernel refuses overlapping intervals in a set, so networks sharing
    # a protocol and port are merged first.
    by_service = {}
    for m in entries:
        by_service.setdefault((m.protocol, m.port), []).append(m.network)
    return ['%s . %s . %d' % (network, protocol, port)
            for (protocol, port), networks in sorted(by_service.items())
            for network in ipaddress.collapse_addresses(networks)]


def _endpoint_owners(policy, endpoint):
    """The matches that select the packets which may use endpoint: its mark, root and its users."""
    if not policy.restrict_endpoints_to_tunnel:
        return (None,)
    mark = policy.tunnel_fwmark if endpoint.mark is None else endpoint.mark
    uids = sorted(set((0,) + tuple(endpoint.uids)))
    return ('meta mark 0x%08x' % mark,
            'meta skuid %s' % (str(uids[0]) if len(uids) == 1 else '{ %s }' % _elements(str(u) for u in uids)))


def _endpoint_rules(policy, version, family):
    """Output rules for the endpoints of one IP version: one set per group of endpoints with the same owners."""
    groups = {}
    for e in policy.endpoints_of(version):
        groups.setdefault(_endpoint_owners(policy, e), []).append(e)
    rules = []
    for owners, endpoints in groups.items():
        # The named set when all endpoints share their owners, as they do unless told otherwise.
        target = ('@endpoints_v%d' % version if len(groups) == 1 else
                  '{ %s }' % _elements('%s . %s . %d' % (e.address, e.protocol, e.port) for e in endpoints))
        rules += [' '.join(filter(None, ['%s daddr . meta l4proto . th dport %s' % (family, target), owner, 'accept']))
                  for owner in owners]
    return rules


def render(policy):
    """The whole table for policy, as nft(8) input text."""
    families = ((4, 'ip'), (6, 'ip6'))
    sets = []
    addr_types = {4: 'ipv4_addr', 6: 'ipv6_addr'}
    for version in (4, 6):
        at = addr_types[version]
        sets += _set('endpoints_v%d' % version, '%s . inet_proto . inet_service' % at,
                     ['%s . %s . %d' % (e.address, e.protocol, e.port) for e in policy.endpoints_of(version)])
        sets += _set('dns_v%d' % version, at, [str(a) for a in policy.dns_of(version)])
        sets += _set('doh_v%d' % version, at, [str(a) for a in policy.doh_of(version)])
        sets += _set('lan_v%d' % version, at,
                     [str(n) for n in LAN_NETWORKS if n.version == version] if policy.allow_lan else [],
                     interval=True)
        sets += _set('management_v%d' % version, '%s . inet_proto . inet_service' % at,
                     _management_elements(policy.management_of(version)), interval=True)
    sets += _set('bypass_uids', 'uid', [str(u) for u in policy.exceptions_by('uid')])
    sets += _set('bypass_gids', 'gid', [str(g) for g in policy.exceptions_by('gid')])

    bypass = ['meta sk%s @bypass_%ss' % (s, s) for s in ('uid', 'gid') if policy.exceptions_by(s)]
    bypass += ['socket cgroupv2 level %d %s' % (path.count('/') + 1, _quoted(path))
               for path in policy.exceptions_by('cgroup')]

    if policy.dns_servers:
        dns_chain = ['oifname %s %s daddr @dns_v%d accept' % (_quoted(i), f, v)
                     for v, f in families for i in policy.tunnel_interfaces]
    else:
        # No resolvers named: DNS is only held to the tunnel, like all traffic.
        dns_chain = _tunnels(policy, 'oifname', 'accept')
    dns_chain.append('drop')

    dns_jump = 'meta l4proto { tcp, udp } th dport { %s } jump dns' % _elements(str(p) for p in DNS_PORTS)
    # Known DNS-over-HTTPS resolvers only through the tunnel, whatever else is allowed below.
    doh_drop = ['%s daddr @doh_v%d drop' % (f, v) for v, f in families if policy.doh_of(v)]
    output = ['oifname "lo" accept', dns_jump]
    output += _tunnels(policy, 'oifname', 'accept') + doh_drop
    # The endpoints are reachable outside the tunnel only for the tunnel's own
    # packets, so that no other process can use them to get round it.
    for v, f in families:
        output += _endpoint_rules(policy, v, f)
    output += [
        'udp sport 68 udp dport 67 accept',
        'ip6 saddr fe80::/10 udp sport 546 udp dport 547 accept',
        'icmpv6 type { %s } accept' % _elements(ICMPV6_OUT),
    ]
    if policy.allow_lan:
        output += ['ip daddr @lan_v4 accept', 'ip6 daddr @lan_v6 accept']
    # Management: only replies to connections the management network opened.
    # TCP is told by its flags, not by conntrack: a session that was open
    # before the first apply is picked up mid-stream, and conntrack then takes
    # the host's next reply for the original direction. Only a SYN opens a
    # connection, and none may leave towards the management networks.
    for v, f in families:
        if policy.management_of(v):
            match = '%s daddr . meta l4proto . th sport @management_v%d' % (f, v)
            output += ['%s tcp flags & (syn | ack) != syn accept' % match,
                       '%s meta l4proto udp ct direction reply accept' % match]
    output += ['%s accept' % b for b in bypass]

    input_ = ['iifname "lo" accept', 'ct state established,related accept']
    input_ += _tunnels(policy, 'iifname', 'accept')
    # The server may open a handshake after the tunnel's conntrack entry expired.
    input_ += ['%s saddr . meta l4proto . th sport @endpoints_v%d accept' % (f, v)
               for v, f in families if policy.endpoints_of(v)]
    input_ += [
        'udp sport 67 udp dport 68 accept',
        'ip6 saddr fe80::/10 udp sport 547 udp dport 546 accept',
        'icmpv6 type { %s } accept' % _elements(ICMPV6_IN),
    ]
    if policy.allow_lan:
        input_ += ['ip saddr @lan_v4 accept', 'ip6 saddr @lan_v6 accept']
    input_ += ['%s saddr . meta l4proto . th dport @management_v%d accept' % (f, v)
               for v, f in families if policy.management_of(v)]

    forward = [dns_jump] + _tunnels(policy, 'oifname', 'accept') + doh_drop
    forward += ['iifname %s ct state established,related accept' % _quoted(i) for i in policy.tunnel_interfaces]
    if policy.allow_lan:
        forward += ['ip daddr @lan_v4 accept', 'ip6 daddr @lan_v6 accept',
                    'ip saddr @lan_v4 ct state established,related accept',
                    'ip6 saddr @lan_v6 ct state established,related accept']

    lines = ['table %s {' % TABLE, '\tcomment "vpnguard.killswitch: managed by Ansible, changes are reverted"']
    lines += sets
    for chain in (
            _chain('dns', None, None, None, dns_chain),
            _chain('output', ('filter', 'output'), 'filter', 'drop', output),
            _chain('input', ('filter', 'input'), 'filter', 'drop', input_),
            _chain('forward', ('filter', 'forward'), 'filter', 'drop', forward)):
        lines += chain + ['']
    if bypass:
        # The mark makes the kernel look the route up again, and the routing
        # guard sends marked packets to the main table.
        lines += _chain('bypass_route', ('route', 'output'), 'mangle', 'accept',
                        ['%s meta mark set 0x%08x' % (b, BYPASS_FWMARK) for b in bypass])
    if lines[-1] == '':
        lines.pop()
    lines.append('}')
    return '\n'.join(lines) + '\n'


def digest(text):
    return hashlib.sha256(text.encode('utf-8')).hexdigest()


def replace_transaction(ruleset):
    """One nft transaction that swaps our table for ruleset, or removes it when ruleset is None.

    Declaring the table first makes the delete valid whether or not it exists;
    the kernel applies the batch as a whole or not at all.
    """
    text = 'add table %s\ndelete table %s\n' % (TABLE, TABLE)
    return text + (ruleset or '')


class NftError(Exception):
    pass


class Nft:
    """The few libnftables calls the module needs, with errors raised, not returned."""

    def __init__(self, nftables_module):
        self._nft = nftables_module.Nftables()
        self._nft.set_handle_output(False)

    def _cmd(self, text, dry_run=False):
        self._nft.set_dry_run(dry_run)
        try:
            rc, out, err = self._nft.cmd(text)
        finally:
            self._nft.set_dry_run(False)
        return rc, out, err

    def list_table(self):
        """Our live table as `nft list table` prints it, or None when it does not exist."""
        rc, out, err = self._cmd('list table %s' % TABLE)
        if rc != 0:
            if 'No such file or directory' in err:
                return None
            raise NftError('nft list table %s failed: %s' % (TABLE, err.strip()))
        return out

    def check(self, transaction):
        rc, out, err = self._cmd(transaction, dry_run=True)
        if rc != 0:
            raise NftError('nft rejected the ruleset, nothing was changed: %s' % err.strip())

    def apply(self, transaction):
        rc, out, err = self._cmd(transaction)
        if rc != 0:
            raise NftError('nft failed to apply the ruleset, the previous one is still in place: %s'
                           % err.strip())
