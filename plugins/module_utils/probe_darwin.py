# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vpnguard maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The audit's live leak probe on macOS: does PF refuse traffic outside the tunnel right now?

For every interface that is up, has a global address and is not a tunnel
(nor loopback), sockets bound to it (IP_BOUND_IF / IPV6_BOUND_IF, and to its
address) try a UDP send, a TCP connect and a DNS query to a canary address,
IPv4 and IPv6; a DNS query also goes, unbound, to the canary as a resolver
that is not the tunnel's. The checks run one at a time, and the anchor's
labels are read before and after each.

What decides is PF's own count, not the socket call's result: xnu drops the
error PF gives an IPv4 packet (bsd/netinet/ip_output.c keeps pf_af_hook()'s
result in `rc` and, when the packet is gone, ends without setting `error`),
so a refused IPv4 send looks like a success to the sender; IPv6 gets
EHOSTUNREACH (bsd/net/pf_ioctl.c pf_inet6_hook() on a drop, returned as
`error` by ip6_output). A check is refused when one of the anchor's refusing
labels counted a packet during it (each of our block rules has one, so a
packet PF drops is counted: bsd/net/pf.c pf_test counts the deciding rule),
or when the kernel refused it for want of a route before PF saw it. It
LEAKED when neither: the socket call went through and PF counted no refusal,
so a pass rule let it out of the interface. Nothing is captured (that needs
bpf), so "nothing left" is inferred from PF's counters; each detail says so.

The canary is a documentation address, so even a host that leaks sends only
to nowhere.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import re
import socket

PROBE_PORT = 9  # discard
DNS_PORT = 53
# A minimal query for the root's NS records: what a resolver would answer.
DNS_QUERY = b'\x76\x67\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x01'
# xnu bsd/netinet/in.h and bsd/netinet6/in6.h: bind a socket to an interface by index.
IP_BOUND_IF = 25
IPV6_BOUND_IF = 125
IPPROTO_IPV6 = 41

# Errors with which the kernel refuses a send for want of a route, before PF sees the packet.
NO_ROUTE = {errno.ENETUNREACH: 'no route (ENETUNREACH)', errno.EHOSTUNREACH: 'no route to host (EHOSTUNREACH)',
            errno.EADDRNOTAVAIL: 'address not available (EADDRNOTAVAIL)', errno.ENETDOWN: 'network down (ENETDOWN)'}
NOT_CAPTURED = 'nothing was captured (macOS has no capture without bpf); PF\'s counters are the evidence'

# The default route and the halves VPN clients install instead (netstat -rn prints 0.0.0.0/1 as 0/1).
CATCH_ALL = ('default', '0/0', '0.0.0.0/0', '0/1', '128.0/1', '0.0.0.0/1', '128.0.0.0/1', '::/0', '::/1', '8000::/1')

_HEADER = re.compile(r'^([A-Za-z0-9_.-]+): flags=[0-9a-fA-F]+<([^>]*)>')
_INET = re.compile(r'^\s+inet (\d+\.\d+\.\d+\.\d+)')
_INET6 = re.compile(r'^\s+inet6 ([0-9a-fA-F:]+)(%\S+)?')
# An IPv6 address that cannot be bound to yet, or any more (ifconfig prints these words after it).
_UNUSABLE6 = ('tentative', 'duplicated', 'detached')


def parse_ifconfig(text):
    """{name: {flags: [...], up: bool, ipv4: [...], ipv6: [...]}} from `ifconfig -a` (global addresses only).

    network_cmds ifconfig.tproj: "%s: " then printb("flags", ...) and " mtu %d"
    (ifconfig.c status()), "\\tinet %s" (af_inet.c), "\\tinet6 %s" with the
    scope as %IF for link-local, then " prefixlen %d " and words such as
    "tentative " (af_inet6.c).
    """
    found, current = {}, None
    for line in (text or '').splitlines():
        header = _HEADER.match(line)
        if header:
            flags = [f for f in header.group(2).split(',') if f]
            current = found.setdefault(header.group(1), dict(flags=flags, up='UP' in flags, ipv4=[], ipv6=[]))
            continue
        if current is None:
            continue
        inet = _INET.match(line)
        if inet and not inet.group(1).startswith(('127.', '169.254.')):
            current['ipv4'].append(inet.group(1))
            continue
        inet6 = _INET6.match(line)
        if inet6:
            address = inet6.group(1).lower()
            if inet6.group(2) or address.startswith('fe80') or address == '::1':
                continue
            if any(word in line.split() for word in _UNUSABLE6):
                continue
            current['ipv6'].append(address)
    return found


def parse_netstat_routes(text):
    """[{family, destination, gateway, flags, interface}] from `netstat -rn`.

    network_cmds netstat.tproj/route.c: pr_family() prints "\\nInternet:" or
    "\\nInternet6:" before each table, pr_rthdr() the header "Destination
    Gateway Flags Netif Expire", then one row per route, its columns
    separated by spaces (the destination "default" for 0/0).
    """
    routes, family = [], None
    for line in (text or '').splitlines():
        stripped = line.strip()
        if stripped in ('Internet:', 'Internet6:'):
            family = 'ipv4' if stripped == 'Internet:' else 'ipv6'
            continue
        fields = stripped.split()
        if family is None or len(fields) < 4 or fields[0] == 'Destination':
            continue
        routes.append(dict(family=family, destination=fields[0], gateway=fields[1], flags=fields[2],
                           interface=fields[3]))
    return routes


def routes_outside_tunnel(routes, tunnels):
    """Default routes (and halves) that leave through an interface that is not a tunnel.

    A route scoped to its interface (flag I, RTF_IFSCOPE) serves only sockets
    bound to that interface; it is reported, marked scoped.
    """
    found = []
    for r in routes:
        destination = r['destination'].split('%')[0]
        if destination in CATCH_ALL and r['interface'] not in tunnels and r['interface'] != 'lo0':
            found.append(' '.join(x for x in (
                r['destination'], 'via %s' % r['gateway'], 'dev', r['interface'], r['family'],
                '(scoped to the interface)' if 'I' in r['flags'] else '') if x))
    return found


def tunnel_state(interfaces, tunnels):
    """The tunnel interfaces the host has, with their state and addresses."""
    found = [dict(interface=name, state='up' if data['up'] else 'down', addresses=data['ipv4'] + data['ipv6'])
             for name, data in sorted(interfaces.items()) if name in tunnels]
    return dict(up=any(t['state'] == 'up' and t['addresses'] for t in found), interfaces=found)


def refused_delta(before, after):
    """{label: packets} the refusing labels counted between two readings (a reload in between counts from 0)."""
    delta = {}
    for name, value in after.items():
        if not name.startswith('refused_'):
            continue
        earlier = before.get(name, (0, 0))[0]
        grown = value[0] - earlier if value[0] >= earlier else value[0]
        if grown:
            delta[name] = grown
    return delta


def verdict(error, delta):
    """(verdict, detail) of one check from the socket call's errno (None: it went through) and what PF counted."""
    if delta:
        counted = ', '.join('%s +%d' % item for item in sorted(delta.items()))
        return 'refused', 'refused by PF (%s)%s; %s' % (
            counted, ' and the sender got %s' % errno.errorcode.get(error, error) if error else '', NOT_CAPTURED)
    if error in NO_ROUTE:
        return 'refused', 'refused by routing before PF: %s; %s' % (NO_ROUTE[error], NOT_CAPTURED)
    return 'LEAKED', ('PF counted no refusal and the socket call %s, so a pass rule let the packet out' % (
        'went through' if error is None else 'ended with %s' % errno.errorcode.get(error, error)))


class SetupError(Exception):
    pass


class Check:
    def __init__(self, name, family, kind, interface, index, source, destination):
        self.name, self.family, self.kind, self.interface = name, family, kind, interface
        self.index, self.source, self.destination = index, source, destination

    def attempt(self, make_socket=None):
        """The errno of the socket call, or None when it went through (a TCP connect in progress included).

        SetupError when the socket could not be bound: nothing was sent.
        """
        sock = (make_socket or socket.socket)(self.family, socket.SOCK_STREAM if self.kind == 'tcp' else socket.SOCK_DGRAM)
        try:
            try:
                sock.setblocking(False)
                if self.index is not None:
                    if self.family == socket.AF_INET:
                        sock.setsockopt(socket.IPPROTO_IP, IP_BOUND_IF, self.index)
                    else:
                        sock.setsockopt(IPPROTO_IPV6, IPV6_BOUND_IF, self.index)
                if self.source:
                    sock.bind((self.source, 0) if self.family == socket.AF_INET else (self.source, 0, 0, 0))
            except (IOError, OSError) as e:
                raise SetupError('could not bind a socket to %s %s: %s' % (self.interface, self.source, e))
            try:
                if self.kind == 'tcp':
                    sock.connect(self.destination)
                else:
                    sock.sendto(DNS_QUERY if self.kind == 'dns' else b'vpnguard-probe', self.destination)
            except (IOError, OSError) as e:
                if e.errno not in (errno.EINPROGRESS, errno.EWOULDBLOCK):
                    return e.errno
            return None
        finally:
            sock.close()

    def result(self, verdict_, detail):
        return dict(check=self.name, interface=self.interface or '',
                    family='ipv4' if self.family == socket.AF_INET else 'ipv6',
                    protocol='udp' if self.kind == 'dns' else self.kind, verdict=verdict_, detail=detail)


def not_run(name, interface, family, protocol, why):
    return dict(check=name, interface=interface, family=family, protocol=protocol, verdict='not run', detail=why)


def interface_index(name):
    return socket.if_nametoindex(name)


def plan(interfaces, tunnels, dns_servers, canary_v4, canary_v6, index_of=None):
    """The checks to run and the ones that cannot run (with why)."""
    index_of = index_of or interface_index
    families = ((socket.AF_INET, 'ipv4', canary_v4), (socket.AF_INET6, 'ipv6', canary_v6))
    checks, skipped = [], []
    for name, data in sorted(interfaces.items()):
        if name == 'lo0' or name in tunnels:
            continue
        for family, label, canary in families:
            names = ['%s %s bound to %s' % (p, label, name) for p in ('udp', 'tcp', 'dns')]
            if not data['up']:
                skipped += [not_run(n, name, label, n.split()[0], 'interface down') for n in names]
            elif not data[label]:
                skipped += [not_run(n, name, label, n.split()[0], 'no global %s address' % label) for n in names]
            else:
                try:
                    index, source = index_of(name), data[label][0]
                except (IOError, OSError) as e:  # gone since ifconfig listed it
                    skipped += [not_run(n, name, label, n.split()[0], 'no interface index: %s' % e) for n in names]
                    continue
                checks += [Check(names[0], family, 'udp', name, index, source, (canary, PROBE_PORT)),
                           Check(names[1], family, 'tcp', name, index, source, (canary, PROBE_PORT)),
                           Check(names[2], family, 'dns', name, index, source, (canary, DNS_PORT))]
    for family, label, canary in families:
        name = 'dns %s to a resolver that is not the tunnel\'s' % label
        if dns_servers:
            checks.append(Check(name, family, 'dns', None, None, None, (canary, DNS_PORT)))
        else:
            skipped.append(not_run(name, '', label, 'udp', 'the policy lets DNS reach any resolver through the tunnel'))
    return checks, skipped


def run(checks, skipped, read_labels, make_socket=None):
    """Every check's result, one at a time between two readings of the labels, and whether any leaked."""
    results = []
    for check in checks:
        before = read_labels()
        try:
            error = check.attempt(make_socket)
        except SetupError as e:
            results.append(check.result('not run', str(e)))
            continue
        results.append(check.result(*verdict(error, refused_delta(before, read_labels()))))
    results += skipped
    return results, any(r['verdict'] == 'LEAKED' for r in results)
