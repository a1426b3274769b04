# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vpnguard maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The audit's live leak probe on Linux: does this host refuse traffic outside the tunnel right now?

For every interface that is not a tunnel (nor loopback), sockets bound to it
try a UDP send and a TCP connect to a canary address, IPv4 and IPv6, and a DNS
query goes to the canary as a resolver that is not the tunnel's. A packet
socket watches what the host transmits while they try: a probe packet seen
leaving any interface is a leak, whatever the socket call said. Errors only
tell which layer refused (EPERM: the firewall; ENETUNREACH: routing).

The canary is a documentation address, so even a host that leaks sends only
to nowhere. Bound sockets matter because of how Linux routes them: when the
routing tables have no route for a socket bound to an interface, the kernel
assumes the destination is on that link and sends anyway, so only the
firewall holds them.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import fnmatch
import os
import select
import socket
import struct
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
ETH_P_IP, ETH_P_IPV6, ETH_P_ARP = 0x0800, 0x86DD, 0x0806
SO_BINDTODEVICE = getattr(socket, 'SO_BINDTODEVICE', 25)

PROBE_PORT = 9  # discard
DNS_PORT = 53
# A minimal query for the root's NS records: what a resolver would answer.
DNS_QUERY = b'\x76\x67\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x01'

REFUSED_BY = {errno.EPERM: 'refused by the firewall (EPERM)',
              errno.EACCES: 'refused by the firewall (EACCES)',
              errno.ENETUNREACH: 'refused by routing (no route)',
              errno.EHOSTUNREACH: 'refused by routing (no route to host)'}


def is_tunnel(name, patterns):
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def interfaces(sys_class_net='/sys/class/net'):
    """{name: operstate} of the host's interfaces."""
    found = {}
    for name in sorted(os.listdir(sys_class_net)):
        try:
            with open(os.path.join(sys_class_net, name, 'operstate')) as f:
                found[name] = f.read().strip()
        except (IOError, OSError):
            found[name] = 'unknown'
    return found


def global_addresses(family):
    """{interface: [address]} of the host's global (non link-local, non loopback) addresses of a family."""
    found = {}
    if family == socket.AF_INET6:
        try:
            with open('/proc/net/if_inet6') as f:
                for line in f:
                    fields = line.split()
                    scope, name = int(fields[3], 16), fields[5]
                    if scope == 0:  # global
                        found.setdefault(name, []).append(str(_ipv6(fields[0])))
        except (IOError, OSError):
            pass
        return found
    import fcntl  # the interface's primary IPv4 address, as ifconfig asks for it
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for name in interfaces():
            try:
                packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack('256s', name.encode()[:15]))  # SIOCGIFADDR
            except (IOError, OSError):
                continue
            address = socket.inet_ntoa(packed[20:24])
            if not address.startswith('127.'):
                found.setdefault(name, []).append(address)
    finally:
        s.close()
    return found


def _ipv6(hex32):
    return socket.inet_ntop(socket.AF_INET6, bytes(bytearray.fromhex(hex32)))


class Tap:
    """Every frame the host transmits, on every interface, seen after the firewall had its say."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        self.sock.setblocking(False)

    def outgoing(self, seconds):
        """[(interface, ethertype, payload)] transmitted in the next seconds."""
        frames = []
        deadline = time.time() + seconds
        while True:
            left = deadline - time.time()
            if left <= 0:
                break
            ready = select.select([self.sock], [], [], left)[0]
            if not ready:
                continue
            while True:
                try:
                    data, address = self.sock.recvfrom(65535)
                except (IOError, OSError):
                    break
                if address[2] == PACKET_OUTGOING:
                    frames.append((address[0], address[1], data))
        return frames

    def close(self):
        self.sock.close()


def _is_probe_packet(frame, family, canary, sport):
    """Whether a transmitted frame is the probe's own packet: to canary, from sport."""
    ethertype, data = frame[1], frame[2]
    packed = socket.inet_pton(family, canary)
    if family == socket.AF_INET and ethertype == ETH_P_IP and len(data) >= 24:
        header = (data[0] & 0x0f) * 4
        return data[16:20] == packed and struct.unpack('!H', data[header:header + 2])[0] == sport
    if family == socket.AF_INET6 and ethertype == ETH_P_IPV6 and len(data) >= 44:
        return data[24:40] == packed and struct.unpack('!H', data[40:42])[0] == sport
    return False


def _asks_link_for(frame, family, canary):
    """Whether a transmitted frame asks the link for canary (ARP who-has, neighbour solicitation):
    the host was about to send to it straight on that link."""
    ethertype, data = frame[1], frame[2]
    packed = socket.inet_pton(family, canary)
    if family == socket.AF_INET and ethertype == ETH_P_ARP:
        return data[24:28] == packed
    if family == socket.AF_INET6 and ethertype == ETH_P_IPV6 and len(data) >= 64:
        return data[6] == 58 and data[40] == 135 and data[48:64] == packed
    return False


class Check:
    def __init__(self, name, family, kind, interface, destination):
        self.name, self.family, self.kind, self.interface = name, family, kind, interface
        self.destination = destination
        self.sock = None
        self.sport = None
        self.error = None
        self.verdict = None
        self.detail = None

    def start(self):
        socktype = socket.SOCK_STREAM if self.kind == 'tcp' else socket.SOCK_DGRAM
        self.sock = socket.socket(self.family, socktype)
        self.sock.setblocking(False)
        if self.interface:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, self.interface.encode())
        self.sock.bind(('0.0.0.0', 0) if self.family == socket.AF_INET else ('::', 0))
        self.sport = self.sock.getsockname()[1]
        try:
            if self.kind == 'tcp':
                self.sock.connect(self.destination)
            else:
                self.sock.sendto(DNS_QUERY if self.kind == 'dns' else b'vpnguard-probe', self.destination)
        except (IOError, OSError) as e:
            if e.errno != errno.EINPROGRESS:
                self.error = e.errno

    def finish(self, frames):
        canary = self.destination[0]
        seen = [f[0] for f in frames if _is_probe_packet(f, self.family, canary, self.sport)
                or (f[0] == self.interface and _asks_link_for(f, self.family, canary))]
        if seen:
            self.verdict = 'LEAKED'
            self.detail = 'sent out of %s' % ', '.join(sorted(set(seen)))
        else:
            self.verdict = 'refused'
            self.detail = REFUSED_BY.get(self.error, 'nothing left the host' + (
                ' (%s)' % errno.errorcode.get(self.error, self.error) if self.error else ''))
        self.sock.close()

    def result(self):
        return dict(check=self.name, interface=self.interface or '', family='ipv4' if self.family == socket.AF_INET else 'ipv6',
                    protocol='udp' if self.kind == 'dns' else self.kind, verdict=self.verdict, detail=self.detail)


def not_run(name, interface, family, protocol, why):
    return dict(check=name, interface=interface, family=family, protocol=protocol, verdict='not run', detail=why)


def run(tunnel_patterns, dns_servers, canary_v4, canary_v6, wait=0.1):
    """Every check's result, and whether any packet of the probe left the host."""
    families = ((socket.AF_INET, 'ipv4', canary_v4), (socket.AF_INET6, 'ipv6', canary_v6))
    addresses = dict((f[0], global_addresses(f[0])) for f in families)
    checks, skipped = [], []
    for name, state in sorted(interfaces().items()):
        if name == 'lo' or is_tunnel(name, tunnel_patterns):
            continue
        for family, label, canary in families:
            if state == 'down':
                skipped += [not_run('%s %s bound to %s' % (p, label, name), name, label, p, 'interface down')
                            for p in ('udp', 'tcp', 'dns')]
            elif not addresses[family].get(name):
                skipped += [not_run('%s %s bound to %s' % (p, label, name), name, label, p,
                                    'no global %s address' % label) for p in ('udp', 'tcp', 'dns')]
            else:
                checks += [Check('udp %s bound to %s' % (label, name), family, 'udp', name, (canary, PROBE_PORT)),
                           Check('tcp %s bound to %s' % (label, name), family, 'tcp', name, (canary, PROBE_PORT)),
                           Check('dns %s bound to %s' % (label, name), family, 'dns', name, (canary, DNS_PORT))]
    for family, label, canary in families:
        name = 'dns %s to a resolver that is not the tunnel\'s' % label
        if dns_servers:
            checks.append(Check(name, family, 'dns', None, (canary, DNS_PORT)))
        else:
            skipped.append(not_run(name, '', label, 'udp', 'the policy lets DNS reach any resolver through the tunnel'))
    tap = Tap()
    try:
        for check in checks:
            check.start()
        frames = tap.outgoing(wait)
    finally:
        tap.close()
    for check in checks:
        check.finish(frames)
    results = [c.result() for c in checks] + skipped
    return results, any(r['verdict'] == 'LEAKED' for r in results)


def tunnel_state(tunnel_patterns):
    """The interfaces that match the tunnel patterns, with their state and addresses."""
    state = interfaces()
    v4, v6 = global_addresses(socket.AF_INET), global_addresses(socket.AF_INET6)
    found = [dict(interface=name, state=operstate, addresses=v4.get(name, []) + v6.get(name, []))
             for name, operstate in sorted(state.items()) if is_tunnel(name, tunnel_patterns)]
    return dict(up=any(t['state'] in ('up', 'unknown') and t['addresses'] for t in found), interfaces=found)


def routes_outside_tunnel(routes, tunnel_patterns):
    """Default routes (or the two halves some clients use) in any table that leave through no tunnel.

    routes is `ip -j route show table all` (and `ip -6 ...`) output, parsed.
    """
    catch_all = ('default', '0.0.0.0/0', '::/0', '0.0.0.0/1', '128.0.0.0/1', '::/1', '8000::/1')
    found = []
    for r in routes:
        if r.get('dst') in catch_all and r.get('type', 'unicast') == 'unicast' and r.get('dev') \
                and not is_tunnel(r['dev'], tunnel_patterns):
            found.append(' '.join(str(x) for x in (
                r['dst'], 'via %s' % r['gateway'] if r.get('gateway') else '', 'dev', r['dev'],
                'table', r.get('table', 'main'), 'metric %s' % r['metric'] if 'metric' in r else '') if x))
    return found


def no_route_counters(snmp='/proc/net/snmp', snmp6='/proc/net/snmp6'):
    """Sends the kernel refused for want of a route since boot (the routing guard's refusals among them)."""
    counts = {}
    try:
        with open(snmp) as f:
            lines = [line.split() for line in f if line.startswith('Ip:')]
        if len(lines) >= 2:
            counts['no_route_v4'] = int(dict(zip(lines[0][1:], lines[1][1:])).get('OutNoRoutes', 0))
    except (IOError, OSError, ValueError):
        pass
    try:
        with open(snmp6) as f:
            for line in f:
                fields = line.split()
                if fields and fields[0] == 'Ip6OutNoRoutes':
                    counts['no_route_v6'] = int(fields[1])
    except (IOError, OSError, ValueError):
        pass
    return counts
