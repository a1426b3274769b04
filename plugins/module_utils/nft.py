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
import json
import re

from ansible_collections.vpnguard.killswitch.plugins.module_utils import evidence
from ansible_collections.vpnguard.killswitch.plugins.module_utils.policy import DNS_PORTS, ESP, LAN_NETWORKS

TABLE_FAMILY = 'inet'
TABLE_NAME = 'vpnguard_killswitch'
TABLE = '%s %s' % (TABLE_FAMILY, TABLE_NAME)

# Marks the connections of bypass exceptions (ct mark), so that their replies
# are let in and their source address fixed; kept apart from the tunnel's
# fwmark, which their packets carry to be routed outside the tunnel.
BYPASS_FWMARK = 0x564b

# DHCP, neighbour discovery and MLD must reach the link for the host to get
# an address at all; each is held to the addresses and hop limit its protocol
# uses (RFC 2131, RFC 8415, RFC 4861, RFC 3810), so that a process with a raw
# socket or port 68/546 cannot carry data in them to anywhere beyond the link.
DHCPV4_OUT = 'udp sport 68 udp dport 67 ip daddr 255.255.255.255 accept'
DHCPV4_IN = 'udp sport 67 udp dport 68 accept'
DHCPV6_OUT = 'udp sport 546 udp dport 547 ip6 saddr fe80::/10 ip6 daddr { ff02::1:2, ff05::1:3 } accept'
DHCPV6_IN = 'udp sport 547 udp dport 546 ip6 saddr fe80::/10 ip6 daddr fe80::/10 accept'
ICMPV6_OUT = (
    'icmpv6 type nd-router-solicit ip6 daddr ff02::2 ip6 hoplimit 255 accept',
    'icmpv6 type nd-neighbor-solicit ip6 daddr { fe80::/10, ff02::1:ff00:0/104 } ip6 hoplimit 255 accept',
    'icmpv6 type nd-neighbor-advert ip6 daddr { fe80::/10, ff02::1 } ip6 hoplimit 255 accept',
    'icmpv6 type mld2-listener-report ip6 daddr ff02::16 ip6 hoplimit 1 accept',
)
# The neighbour discovery the kernel also sends to a unicast neighbour, a global one too (see render).
ICMPV6_UNICAST_ND = 'icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert }'
# Router advertisements only from a router's link-local address (RFC 4861 6.1.2).
ICMPV6_IN = (
    'icmpv6 type nd-router-advert ip6 saddr fe80::/10 ip6 hoplimit 255 accept',
    'icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept',
)

# What the kill switch may write to the kernel log (killswitch_log): nothing,
# the bypass exceptions' use, what it refused, or both and the endpoints' use.
LOG_LEVELS = evidence.LOG_LEVELS
# At most this many log lines a second per rule, so that a process hammering
# the firewall cannot flood the journal.
LOG_RATE = 'limit rate 10/second burst 20 packets'

# Named counters, one per verdict class, always on. They sit only on rules
# that refuse, or that let an exception through, never on the tunnel's path.
REFUSED_COUNTERS = {
    'refused_out_v4': 'outbound IPv4 refused outside the tunnel',
    'refused_out_v6': 'outbound IPv6 refused outside the tunnel',
    'refused_dns_resolver': 'DNS to a resolver that is not the tunnel\'s',
    'refused_dns_outside': 'DNS outside the tunnel',
    'refused_doh': 'known DNS-over-HTTPS resolver outside the tunnel',
    'refused_endpoint': 'VPN endpoint used by a socket that is not the tunnel\'s',
    'refused_other_interface': 'inbound for an address of another interface (CVE-2019-14899)',
    'refused_in_v4': 'inbound IPv4 refused',
    'refused_in_v6': 'inbound IPv6 refused',
    'refused_forward_v4': 'forwarded IPv4 refused',
    'refused_forward_v6': 'forwarded IPv6 refused',
}


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


def exception_counter(exception):
    """The counter's name for a bypass exception: its selector and value, or a digest of a cgroup path."""
    if exception.selector in ('uid', 'gid'):
        return 'exception_%s_%d' % (exception.selector, exception.value)
    return 'exception_%s_%s' % (exception.selector, hashlib.sha256(exception.value.encode('utf-8')).hexdigest()[:12])


def counter_names(policy):
    """Every named counter the table of policy has, with what it counts."""
    names = dict(REFUSED_COUNTERS)
    if not policy.restrict_endpoints_to_tunnel or not policy.endpoints:
        del names['refused_endpoint']
    for e in policy.exceptions:
        names[exception_counter(e)] = 'exception %s: %s used' % (e.selector, e.value)
    return names


def _counted(match, counter, verdict, log_prefix=None):
    """Rules that count (and, with a prefix, log at a bounded rate) the packets match selects, then decide."""
    rules = []
    if log_prefix:
        # A rule of its own: when the limit is spent the packet must still
        # reach the verdict below, not skip it.
        rules.append(' '.join(filter(None, [match, LOG_RATE, 'log prefix "vpnguard %s: " flags skuid' % log_prefix])))
    rules.append(' '.join(filter(None, [match, 'counter name "%s"' % counter, verdict])))
    return rules


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


def _ported_endpoints(policy, version):
    return [e for e in policy.endpoints_of(version) if e.protocol != ESP]


def _esp_servers(policy, version):
    """The addresses ESP may be exchanged with, as an nftables set expression; None when there are none.

    ESP has no ports (`th dport` would read its SPI), so it is matched by
    address and protocol alone, never through the endpoint sets.
    """
    addresses = sorted(set(str(e.address) for e in policy.endpoints_of(version) if e.protocol == ESP))
    return '{ %s }' % _elements(addresses) if addresses else None


def _esp_rules(policy, version, family):
    """Output rules for ESP to the servers: the SA's output mark or root (the kernel sends ESP on the
    socket of the application whose packet it encrypted, so no other user can be told apart)."""
    groups = {}
    for e in policy.endpoints_of(version):
        if e.protocol == ESP:
            groups.setdefault(_endpoint_owners(policy, e), []).append(str(e.address))
    return [' '.join(filter(None, ['%s daddr { %s } meta l4proto esp' % (family, _elements(sorted(set(addresses)))),
                                   owner, 'accept']))
            for owners, addresses in groups.items() for owner in owners]


# Up to this many endpoints with the same owners are matched one rule each
# (address, port): a few compares cost the tunnel's packets less than a set
# lookup (measured). More are looked up in a set.
INLINE_ENDPOINTS = 4


def _endpoint_matches(endpoints, family, target, side):
    """Matches for endpoints as the packets to them (side 'd') or from them ('s') carry them: one per
    endpoint while they are few, else one lookup in target (a named set, or None for an anonymous one)."""
    if len(endpoints) <= INLINE_ENDPOINTS:
        return ['%s %saddr %s %s %sport %d' % (family, side, e.address, e.protocol, side, e.port) for e in endpoints]
    target = target or '{ %s }' % _elements('%s . %s . %d' % (e.address, e.protocol, e.port) for e in endpoints)
    return ['%s %saddr . meta l4proto . th %sport %s' % (family, side, side, target)]


def _endpoint_rules(policy, version, family):
    """Output rules for the endpoints of one IP version, per group of endpoints with the same owners."""
    groups = {}
    for e in _ported_endpoints(policy, version):
        groups.setdefault(_endpoint_owners(policy, e), []).append(e)
    rules = []
    for owners, endpoints in groups.items():
        # The named set when all endpoints share their owners, as they do unless told otherwise.
        matches = _endpoint_matches(endpoints, family, '@endpoints_v%d' % version if len(groups) == 1 else None, 'd')
        # By owner first, so that the tunnel's own packets (its mark) meet their rule first.
        rules += [' '.join(filter(None, [match, owner, 'accept'])) for owner in owners for match in matches]
    return rules + _esp_rules(policy, version, family)


# Where the packet an ICMP error quotes lies, in bits from the start of the
# error's ICMP header (8 bytes; RFC 792, RFC 4443 2.1): the quoted IP header,
# then the first 8 bytes of its transport header (RFC 792 "Destination
# Unreachable"; RFC 4443 3.2: as much of the packet as fits). IPv4 only as the
# kill switch's own packets leave it, without options (IHL 5).
_QUOTED = {
    4: {'version': (64, 8, 0x45), 'protocol': (136, 8), 'destination': 192,
        'sport': (224, 16), 'dport': (240, 16), 'bits': 32},
    6: {'version': (64, 4, 6), 'protocol': (112, 8), 'destination': 256,
        'sport': (384, 16), 'dport': (400, 16), 'bits': 128},
}
# The ICMP errors that carry a quoted packet and matter to a flow the host
# opened: unreachable (IPv4 "fragmentation needed" is one), packet too big,
# time exceeded, parameter problem.
ICMP_ERROR_TYPES = {
    4: 'icmp type { destination-unreachable, time-exceeded, parameter-problem }',
    6: 'icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem }',
}
_PROTOCOL_NUMBERS = {'tcp': 6, 'udp': 17, ESP: 50}


def _raw(offset, length, value):
    """A match of length bits of the transport header at offset, written as `nft list` prints it:
    the bytes that hold them, masked when the bits do not fill them."""
    start, end = offset // 8 * 8, -(-(offset + length) // 8) * 8
    shift = end - offset - length
    if start == offset and not shift:
        return '@th,%d,%d 0x%x' % (offset, length, value)
    return '@th,%d,%d & 0x%x == 0x%x' % (start, end - start, ((1 << length) - 1) << shift, value << shift)


def _quoted_flow(version, protocol, destination, port=None, port_field='dport'):
    """A match for an ICMP error quoting a packet of protocol to destination (a network), and port
    in port_field (the destination's port, or the source's for a reply)."""
    q = _QUOTED[version]
    network = ipaddress.ip_network(destination)
    parts = [_raw(*q['version']), _raw(q['protocol'][0], q['protocol'][1], _PROTOCOL_NUMBERS[protocol])]
    if network.prefixlen:
        parts.append(_raw(q['destination'], network.prefixlen,
                          int(network.network_address) >> (q['bits'] - network.prefixlen)))
    if port is not None:
        parts.append(_raw(q[port_field][0], q[port_field][1], port))
    return ' '.join(parts)


def icmp_error_rules(policy, version):
    """The rules accepting an ICMP error about a flow the host may have outside the tunnel.

    Path MTU discovery needs them (RFC 1191, RFC 8201): a router on the way to
    the VPN server, or to an administrator, says a packet was too big, and
    without the error the tunnel (or the SSH session) stalls on every full-size
    packet. They are told by the packet the error quotes, not by conntrack, so
    that no connection tracking is needed for them: the tunnel's own packets to
    an endpoint, and the host's replies from a management service. Errors
    about the exceptions' connections are let in by their connection's mark,
    about the LAN's by its source, about the tunnel's by its interface.
    """
    rules = []
    for e in policy.endpoints_of(version):
        port = None if e.protocol == ESP else e.port
        rules.append('%s accept comment "%s"' % (
            _quoted_flow(version, e.protocol, e.address, port),
            'about the tunnel to %s %s%s' % (e.address, e.protocol, '' if port is None else ' %d' % port)))
    for m in policy.management_of(version):
        # The quoted packet is the host's reply: from the service's port to the network.
        rules.append('%s accept comment "%s"' % (
            _quoted_flow(version, m.protocol, m.network, m.port, 'sport'),
            'about management replies to %s from %s %d' % (m.network, m.protocol, m.port)))
    return list(dict.fromkeys(rules))  # each flow once, in the policy's order


def _udp_management(policy, version):
    """Whether a management network of version is served over UDP, whose replies only conntrack tells."""
    return any(m.protocol == 'udp' for m in policy.management_of(version))


def needs_conntrack(policy, forwarding):
    """Whether the table asks conntrack anything: only the rules that cannot work without state do.

    Any ct expression turns connection tracking on for every packet of the
    host (the kernel registers its hooks per network namespace, not per
    chain), and that was half of what the kill switch cost the tunnel's
    throughput (benchmarks/run). So the tunnel, the endpoints, the management
    networks' TCP and the ICMP errors about them are all matched without it.
    What is left needs it: replies to what the host forwards, the bypass
    exceptions (their replies and their source address), and UDP replies to
    the management networks (UDP has no flags to tell a reply by).
    """
    return bool(forwarding or policy.exceptions or _udp_management(policy, 4) or _udp_management(policy, 6))


def render(policy, log='none', forwarding=False):
    """The whole table for policy, as nft(8) input text; log is one of LOG_LEVELS.

    forwarding: whether the host routes packets for others (a router, containers,
    VMs); only then does the forward chain let their replies back, statefully.
    """
    log_refused = log in ('refused', 'all')
    log_exceptions = log in ('exceptions', 'all')

    def refused(match, counter, reason):
        return _counted(match, counter, 'drop', reason if log_refused else None)

    families = ((4, 'ip'), (6, 'ip6'))
    sets = []
    addr_types = {4: 'ipv4_addr', 6: 'ipv6_addr'}
    for version in (4, 6):
        at = addr_types[version]
        sets += _set('endpoints_v%d' % version, '%s . inet_proto . inet_service' % at,
                     ['%s . %s . %d' % (e.address, e.protocol, e.port) for e in _ported_endpoints(policy, version)])
        sets += _set('dns_v%d' % version, at, [str(a) for a in policy.dns_of(version)])
        sets += _set('doh_v%d' % version, at, [str(a) for a in policy.doh_of(version)])
        sets += _set('lan_v%d' % version, at,
                     [str(n) for n in LAN_NETWORKS if n.version == version] if policy.allow_lan else [],
                     interval=True)
        sets += _set('management_v%d' % version, '%s . inet_proto . inet_service' % at,
                     _management_elements(policy.management_of(version)), interval=True)
    sets += _set('bypass_uids', 'uid', [str(u) for u in policy.exceptions_by('uid')])
    sets += _set('bypass_gids', 'gid', [str(g) for g in policy.exceptions_by('gid')])

    def cgroup(path):
        return 'socket cgroupv2 level %d %s' % (path.count('/') + 1, _quoted(path))

    bypass = ['meta sk%s @bypass_%ss' % (s, s) for s in ('uid', 'gid') if policy.exceptions_by(s)]
    bypass += [cgroup(path) for path in policy.exceptions_by('cgroup')]
    # One rule per exception, so that each one's use is counted by itself.
    bypass_accepts = []
    for e in policy.exceptions:
        match = cgroup(e.value) if e.selector == 'cgroup' else 'meta sk%s %d' % (e.selector, e.value)
        # A cgroup path can be longer than a log prefix may be: the counter's name stands for it.
        bypass_accepts += _counted(match, exception_counter(e), 'accept',
                                   exception_counter(e).replace('_', ' ', 2) if log_exceptions else None)

    if policy.dns_servers:
        dns_chain = ['oifname %s %s daddr @dns_v%d accept' % (_quoted(i), f, v)
                     for v, f in families for i in policy.tunnel_interfaces]
        # Through the tunnel, but to a resolver that is not the tunnel's.
        for i in policy.tunnel_interfaces:
            dns_chain += refused('oifname %s' % _quoted(i), 'refused_dns_resolver', 'refused dns-resolver')
    else:
        # No resolvers named: DNS is only held to the tunnel, like all traffic.
        dns_chain = _tunnels(policy, 'oifname', 'accept')
    dns_chain += refused(None, 'refused_dns_outside', 'refused dns-outside')

    dns_jump = 'meta l4proto { tcp, udp } th dport { %s } jump dns' % _elements(str(p) for p in DNS_PORTS)
    # Known DNS-over-HTTPS resolvers only through the tunnel, whatever else is allowed below.
    doh_drop = [rule for v, f in families if policy.doh_of(v)
                for rule in refused('%s daddr @doh_v%d' % (f, v), 'refused_doh', 'refused doh')]
    # The tunnel's packets first, with one rule: nearly every packet leaves
    # there, and each rule before it costs every one of them. DNS ports go on
    # to the DNS rules; a packet with no ports (or a fragment) that this rule
    # does not take is taken by the tunnel's rule after them.
    # Two compares, no set lookup: measured cheaper per packet.
    not_dns = ' '.join('th dport != %d' % p for p in DNS_PORTS)
    output = ['oifname %s %s accept' % (_quoted(i), not_dns) for i in policy.tunnel_interfaces]
    # The endpoints are reachable outside the tunnel only for the tunnel's own
    # packets, so that no other process can use them to get round it. Second,
    # because they carry the tunnel; no endpoint is on a DNS port (the policy
    # refuses one), so none of them is DNS.
    for v, f in families:
        output += _endpoint_rules(policy, v, f)
    # Loopback by its index, which is 1 in every namespace: cheaper than its name.
    output += ['oif "lo" accept', dns_jump]
    output += _tunnels(policy, 'oifname', 'accept') + doh_drop
    if policy.restrict_endpoints_to_tunnel:
        # Anyone else trying the endpoint's address and port: refused, and told apart.
        output += [rule for v, f in families if _ported_endpoints(policy, v)
                   for rule in refused('%s daddr . meta l4proto . th dport @endpoints_v%d' % (f, v),
                                       'refused_endpoint', 'refused endpoint')]
        output += [rule for v, f in families if _esp_servers(policy, v)
                   for rule in refused('%s daddr %s meta l4proto esp' % (f, _esp_servers(policy, v)),
                                       'refused_endpoint', 'refused endpoint')]
    output += [DHCPV4_OUT, DHCPV6_OUT] + list(ICMPV6_OUT)
    # The kernel also solicits a neighbour at its unicast address (unreachability
    # detection, RFC 4861 7.3.3) and answers a solicitation at the address it came
    # from (7.2.4), a global one too: a neighbour (a container, an administrator on
    # the link) looking the host up from its global address gets no answer
    # otherwise. What the kernel sends itself has no program behind it (no socket
    # file, so meta skuid matches nothing); what a program sends on a raw socket
    # has one, and is refused, so that none carries data in them beyond the link.
    output += refused('%s meta skuid 0-4294967295' % ICMPV6_UNICAST_ND, 'refused_out_v6', 'refused out-v6')
    output.append('%s ip6 hoplimit 255 accept' % ICMPV6_UNICAST_ND)
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
            output.append('%s tcp flags & (syn | ack) != syn accept' % match)
            if _udp_management(policy, v):
                output.append('%s meta l4proto udp ct direction reply accept' % match)
    output += bypass_accepts
    output += [rule for v, f in families
               for rule in refused('meta nfproto ipv%d' % v, 'refused_out_v%d' % v, 'refused out-v%d' % v)]

    # No blanket established accept (CVE-2019-14899): the tunnel, the
    # endpoints, the LAN and the management networks are accepted by who they
    # are, without state, so that a packet matching a tunnel connection's
    # tuple gets nothing from conntrack on another interface.
    # The tunnel first, then what carries it, as in the output chain.
    input_ = _tunnels(policy, 'iifname', 'accept')
    # Whatever the server sends from its port (it may open a handshake at any time).
    input_ += ['%s accept' % match for v, f in families
               for match in _endpoint_matches(_ported_endpoints(policy, v), f, '@endpoints_v%d' % v, 's')]
    # ESP from the server; the kernel decrypts it and hands the inner packet
    # in again on the XFRM interface, a tunnel.
    input_ += ['%s saddr %s meta l4proto esp accept' % (f, _esp_servers(policy, v))
               for v, f in families if _esp_servers(policy, v)]
    input_.append('iif "lo" accept')
    # ICMP errors about the flows the host has outside the tunnel (path MTU),
    # told by the packet they quote (icmp_error_rules). The prerouting chain
    # has dropped any addressed to another interface's address.
    icmp_error_chains = [(v, icmp_error_rules(policy, v)) for v, f in families]
    icmp_error_chains = [(v, rules) for v, rules in icmp_error_chains if rules]
    input_ += ['%s jump icmp_error_v%d' % (ICMP_ERROR_TYPES[v], v) for v, rules in icmp_error_chains]
    input_ += [DHCPV4_IN, DHCPV6_IN] + list(ICMPV6_IN)
    if policy.allow_lan:
        input_ += ['ip saddr @lan_v4 accept', 'ip6 saddr @lan_v6 accept']
    input_ += ['%s saddr . meta l4proto . th dport @management_v%d accept' % (f, v)
               for v, f in families if policy.management_of(v)]
    if bypass:
        # Replies to the exceptions' own connections, told by the mark their
        # first packet left on the connection.
        input_.append('ct mark 0x%08x ct state established,related accept' % BYPASS_FWMARK)
    input_ += [rule for v, f in families
               for rule in refused('meta nfproto ipv%d' % v, 'refused_in_v%d' % v, 'refused in-v%d' % v)]

    forward = [dns_jump] + _tunnels(policy, 'oifname', 'accept') + doh_drop
    if forwarding:
        # Replies to what the host forwards into the tunnel (or to the LAN),
        # by conntrack: only where the host forwards, since conntrack then
        # tracks every packet of the host too (needs_conntrack).
        forward += ['iifname %s ct state established,related accept' % _quoted(i) for i in policy.tunnel_interfaces]
    if policy.allow_lan:
        forward += ['ip daddr @lan_v4 accept', 'ip6 daddr @lan_v6 accept']
        if forwarding:
            forward += ['ip saddr @lan_v4 ct state established,related accept',
                        'ip6 saddr @lan_v6 ct state established,related accept']
    forward += [rule for v, f in families
                for rule in refused('meta nfproto ipv%d' % v, 'refused_forward_v%d' % v, 'refused forward-v%d' % v)]

    # CVE-2019-14899: a packet for an address of one interface that arrives on
    # another (the tunnel's address, sent from the LAN) is dropped before
    # conntrack or a socket sees it (strong host model). Loopback and the
    # tunnels may reach any local address, the management networks too, so
    # that a service address on lo or a dummy stays reachable.
    prerouting = _tunnels(policy, 'iifname', 'accept') + ['iif "lo" accept']
    prerouting.append('fib daddr . iif type local accept')
    prerouting += ['%s saddr . meta l4proto . th dport @management_v%d accept' % (f, v)
                   for v, f in families if policy.management_of(v)]
    prerouting += refused('fib daddr type local', 'refused_other_interface', 'refused other-interface')

    lines = ['table %s {' % TABLE, '\tcomment "vpnguard.killswitch: managed by Ansible, changes are reverted"']
    lines += sets
    for name in sorted(counter_names(policy)):
        lines += ['\tcounter %s {' % name, '\t}', '']
    chains = [_chain('dns', None, None, None, dns_chain)]
    chains += [_chain('icmp_error_v%d' % v, None, None, None, rules) for v, rules in icmp_error_chains]
    for chain in chains + [
            _chain('prerouting', ('filter', 'prerouting'), 'raw', 'accept', prerouting),
            _chain('output', ('filter', 'output'), 'filter', 'drop', output),
            _chain('input', ('filter', 'input'), 'filter', 'drop', input_),
            _chain('forward', ('filter', 'forward'), 'filter', 'drop', forward)]:
        lines += chain + ['']
    if bypass:
        # The tunnel's own mark makes the kernel look the route up again, and
        # both the VPN client's rules (wg-quick's `not fwmark 51820`, which
        # come before the routing guard) and the guard let it past the
        # tunnel. The connection keeps the bypass mark, so that its replies
        # are let in and only its packets are masqueraded.
        lines += _chain('bypass_route', ('route', 'output'), 'mangle', 'accept',
                        ['%s meta mark set 0x%08x ct mark set 0x%08x' % (b, policy.tunnel_fwmark, BYPASS_FWMARK)
                         for b in bypass])
        # The socket's source address was chosen by the first lookup, before
        # the mark: the tunnel's, where the tunnel's routes are in main.
        # Leaving outside the tunnel, it takes the outgoing interface's, so
        # that replies come back to the host (and the connection's mark lets them in).
        lines += _chain('bypass_source', ('nat', 'postrouting'), 'srcnat', 'accept',
                        ['oifname "lo" return'] + _tunnels(policy, 'oifname', 'return')
                        + ['ct mark 0x%08x masquerade' % BYPASS_FWMARK])
    if lines[-1] == '':
        lines.pop()
    lines.append('}')
    return '\n'.join(lines) + '\n'


def digest(text):
    return hashlib.sha256(text.encode('utf-8')).hexdigest()


_COUNTER_VALUES = re.compile(r'packets \d+ bytes \d+')


def without_counter_values(listing):
    """A table listing with every counter at zero: what the counters saw is no drift."""
    return None if listing is None else _COUNTER_VALUES.sub('packets 0 bytes 0', listing)


def with_counter_values(ruleset, values):
    """ruleset with its named counters starting from values ({name: (packets, bytes)}), so that a
    replace carries on counting instead of resetting what the audit reports."""
    def fill(match):
        name = match.group(1)
        if name not in values:
            return match.group(0)
        return '\tcounter %s {\n\t\tpackets %d bytes %d\n\t}' % (name, values[name][0], values[name][1])
    return re.sub(r'\tcounter (\w+) \{\n\t\}', fill, ruleset)


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

    def counters(self):
        """Our table's named counters, {name: (packets, bytes)}; empty when the table does not exist."""
        self._nft.set_json_output(True)
        try:
            rc, out, err = self._cmd('list counters table %s' % TABLE)
        finally:
            self._nft.set_json_output(False)
        values = {}
        for item in json.loads(out).get('nftables', []) if rc == 0 else []:
            counter = item.get('counter')
            if counter:
                values[counter['name']] = (counter['packets'], counter['bytes'])
        return values

    def check(self, transaction):
        rc, out, err = self._cmd(transaction, dry_run=True)
        if rc != 0:
            raise NftError('nft rejected the ruleset, nothing was changed: %s' % err.strip())

    def apply(self, transaction):
        rc, out, err = self._cmd(transaction)
        if rc != 0:
            raise NftError('nft failed to apply the ruleset, the previous one is still in place: %s'
                           % err.strip())
