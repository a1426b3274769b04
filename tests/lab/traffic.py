"""Traffic for the lab, bounded in time: it always stops by itself.

    traffic.py generate SECONDS         every 50 ms, to the internet host over IPv4 and IPv6:
                                        TCP (HTTP GET :8080), UDP (:9999 echo), ICMP echo, and
                                        DNS over UDP and TCP to the ISP resolver; prints counters
                                        of answers received, as JSON
    traffic.py echo PORT                UDP echo server on both families (the ISP side)
    traffic.py marker ADDR PORT TEXT    UDP datagrams carrying TEXT, unbound and bound to eth0
    traffic.py dns ADDR                 one DNS query over UDP and one over TCP; prints which got an answer
    traffic.py sink PORT                TCP server that reads and discards (the ISP side)
    traffic.py stream ADDR PORT SECONDS TEXT
                                        one TCP connection bound to eth0, TEXT every 50 ms
    traffic.py ra IFACE PREFIX LIFETIME one IPv6 router advertisement on IFACE: PREFIX/64 for
                                        SLAAC and a default route for LIFETIME seconds
    traffic.py inject IFACE MAC SRC:PORT DST:PORT TEXT
                                        one UDP datagram carrying TEXT, forged whole (any source
                                        address) and put on IFACE's wire for the station MAC
    traffic.py injectable PORT SECONDS TEXT LOCAL>PEER:PEERPORT...
                                        UDP sockets bound to LOCAL:PORT, each connected to its peer
                                        and sending one datagram there (so conntrack tracks the
                                        flow); prints which of them received TEXT within SECONDS
    traffic.py icmp-error IFACE MAC ROUTER MTU PROTO SRC:PORT>DST:PORT [ROUTER MTU PROTO ...]...
                                        ICMP errors a router on the path would send: "fragmentation
                                        needed" (IPv4) or "packet too big" (IPv6) with MTU, from
                                        ROUTER to SRC, quoting SRC's PROTO (udp|tcp) packet to DST:
                                        its IP header (IPv4 with DF) and the first 8 bytes of its
                                        transport header; forged whole and put on IFACE's wire for
                                        the station MAC, in order, from one CPU
    traffic.py hold SECONDS PROTO SRC:PORT>DST:PORT...
                                        sockets of PROTO (udp|tcp) bound to SRC:PORT and connected
                                        to DST:PORT (UDP sends one datagram); prints ready, and on
                                        SIGTERM (or after SECONDS) each socket's path MTU as JSON
    traffic.py channels IFACE PREFIX
                                        DHCP, DHCPv6, neighbour discovery and MLD messages to the
                                        internet host, from a socket bound to IFACE, each carrying
                                        PREFIX-<kind> (a raw socket's channel out of the tunnel)
    traffic.py ask SECONDS TEXT DST:PORT...
                                        a UDP request carrying TEXT-v4 or TEXT-v6 to each DST (a
                                        client behind a router); waits until each is echoed back,
                                        SECONDS pass or SIGTERM comes, then prints which were, as JSON
    traffic.py listen SECONDS TEXT PORT UDP sockets on PORT of both families; prints ready, then waits
                                        until each family received TEXT, SECONDS pass or SIGTERM
                                        comes, and prints which did ({"v4": .., "v6": ..}) as JSON
    traffic.py send TEXT DST:PORT...    one UDP datagram carrying TEXT-v4 or TEXT-v6 to each DST
"""

import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import time

TARGETS = {'4': '198.51.100.10', '6': '2001:db8:2::10'}
RESOLVER = '198.51.100.53'
INTERVAL = 0.05


def tcp_get(family, address):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(0.2)
    try:
        s.connect((address, 8080))
        s.sendall(b'GET / HTTP/1.0\r\n\r\n')
        return bool(s.recv(16))
    except OSError:
        return False
    finally:
        s.close()


def udp_echo(family, address):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(0.2)
    try:
        s.sendto(b'probe', (address, 9999))
        return s.recvfrom(64)[0] == b'probe'
    except OSError:
        return False
    finally:
        s.close()


def icmp_echo(version, address, sequence):
    if version == '4':
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        kind, reply = 8, 0
    else:
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        kind, reply = 128, 129
    try:
        header = struct.pack('!BBHHH', kind, 0, 0, os.getpid() & 0xffff, sequence & 0xffff)
        if version == '4':
            checksum = sum(struct.unpack('!4H', header))
            checksum = (checksum >> 16) + (checksum & 0xffff)
            header = struct.pack('!BBHHH', kind, 0, ~checksum & 0xffff, os.getpid() & 0xffff, sequence & 0xffff)
        s.sendto(header, (address, 0))  # the kernel fills in the ICMPv6 checksum
        deadline = time.time() + 0.2
        while time.time() < deadline:
            if not select.select([s], [], [], max(0, deadline - time.time()))[0]:
                return False
            data = s.recv(256)
            offset = (data[0] & 0x0f) * 4 if version == '4' else 0
            if data[offset] == reply:
                return True
        return False
    except OSError:
        return False
    finally:
        s.close()


def dns_query(over_tcp, resolver=RESOLVER, timeout=0.1):
    query = struct.pack('!HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0) + b'\x03lab\x07example\x00\x00\x01\x00\x01'
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if over_tcp else socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        if over_tcp:
            s.connect((resolver, 53))
            s.sendall(struct.pack('!H', len(query)) + query)
        else:
            s.sendto(query, (resolver, 53))
        return bool(s.recv(512))
    except OSError:
        return False
    finally:
        s.close()


def generate(seconds):
    counters = dict.fromkeys(['probes', 'tcp4', 'tcp6', 'udp4', 'udp6', 'icmp4', 'icmp6', 'dns'], 0)
    deadline = time.time() + seconds
    sequence = 0
    while time.time() < deadline:
        sequence += 1
        counters['probes'] += 1
        for version, family in (('4', socket.AF_INET), ('6', socket.AF_INET6)):
            address = TARGETS[version]
            counters['tcp' + version] += tcp_get(family, address)
            counters['udp' + version] += udp_echo(family, address)
            counters['icmp' + version] += icmp_echo(version, address, sequence)
        counters['dns'] += dns_query(False) + dns_query(True)
        time.sleep(INTERVAL)
    print(json.dumps(counters, sort_keys=True))


def echo(port):
    def serve(family, address):
        s = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((address, port))
        while True:
            data, peer = s.recvfrom(2048)
            try:
                s.sendto(data, peer)
            except OSError:  # a peer the ISP has no route back to (a leaked guest's packet)
                pass
    threads = [threading.Thread(target=serve, args=a, daemon=True)
               for a in ((socket.AF_INET, '0.0.0.0'), (socket.AF_INET6, '::'))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def marker(address, port, text):
    for bind_to_device in (False, True):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if bind_to_device:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'eth0')
            for attempt in range(5):
                s.sendto(text.encode(), (address, int(port)))
                time.sleep(0.05)
        except OSError as e:
            sys.stderr.write('send failed (%s): %s\n' % ('bound to eth0' if bind_to_device else 'unbound', e))
        finally:
            s.close()


def sink(port):
    server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    server.bind(('::', port))
    server.listen(16)

    def drain(conn):
        with conn:
            while conn.recv(4096):
                pass
    while True:
        threading.Thread(target=drain, args=(server.accept()[0],), daemon=True).start()


def stream(address, port, seconds, text):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'eth0')
    s.settimeout(1)
    s.connect((address, int(port)))
    s.setblocking(False)  # once the path is cut, sends queue up instead of blocking
    deadline = time.time() + float(seconds)
    while time.time() < deadline:
        try:
            s.send(text.encode() + b'\n')
        except OSError:
            pass
        time.sleep(INTERVAL)


def router_advertisement(interface, prefix, lifetime):
    """Type 134 with a prefix information option (on-link, autonomous); the kernel adds the checksum."""
    lifetime = int(lifetime)
    ra = struct.pack('!BBHBBHII', 134, 0, 0, 64, 0, min(lifetime, 9000), 0, 0)
    ra += struct.pack('!BBBBIII', 3, 4, 64, 0xc0, lifetime, lifetime, 0) + socket.inet_pton(socket.AF_INET6, prefix)
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)  # hosts drop RAs below 255
    s.sendto(ra, ('ff02::1', 0, 0, socket.if_nametoindex(interface)))
    s.close()


def _checksum(data):
    if len(data) % 2:
        data += b'\0'
    total = sum(struct.unpack('!%dH' % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xffff) + (total >> 16)
    return ~total & 0xffff


def _family(address):
    return socket.AF_INET6 if ':' in address else socket.AF_INET


def _endpoint(text):
    address, port = text.rsplit(':', 1)
    return address.strip('[]'), int(port)


def _ip_packet(family, src, dst, proto, payload, length=None, dont_fragment=False):
    """payload behind an IP header from src to dst; length: the packet's claimed length (a quoted packet's is its whole)."""
    s_bytes, d_bytes = socket.inet_pton(family, src), socket.inet_pton(family, dst)
    if family == socket.AF_INET6:
        payload_length = len(payload) if length is None else length - 40
        return struct.pack('!IHBB', 6 << 28, payload_length, proto, 64) + s_bytes + d_bytes + payload
    header = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(payload) if length is None else length, 0,
                         0x4000 if dont_fragment else 0, 64, proto, 0, s_bytes, d_bytes)
    return header[:10] + struct.pack('!H', _checksum(header)) + header[12:] + payload


def _pseudo_header(family, src, dst, proto, length):
    """What the UDP, TCP and ICMPv6 checksums cover besides the message itself."""
    s_bytes, d_bytes = socket.inet_pton(family, src), socket.inet_pton(family, dst)
    if family == socket.AF_INET6:
        return s_bytes + d_bytes + struct.pack('!I3xB', length, proto)
    return s_bytes + d_bytes + struct.pack('!xBH', proto, length)


def _put_on_wire(interface, mac, family, packet):
    """An attacker (or a router) on the link: packet straight onto interface's wire for the station mac (AF_PACKET)."""
    ethertype = 0x86dd if family == socket.AF_INET6 else 0x0800
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        s.bind((interface, 0))
        own = s.getsockname()[4]
        s.send(bytes.fromhex(mac.replace(':', '')) + own + struct.pack('!H', ethertype) + packet)
    finally:
        s.close()


def inject(interface, mac, source, destination, text):
    """An attacker on the link: a datagram with a forged source."""
    (src, sport), (dst, dport) = _endpoint(source), _endpoint(destination)
    family = _family(src)
    length = 8 + len(text)
    udp = struct.pack('!HHHH', sport, dport, length, 0) + text.encode()
    udp = udp[:6] + struct.pack('!H', _checksum(_pseudo_header(family, src, dst, 17, length) + udp) or 0xffff) + udp[8:]
    _put_on_wire(interface, mac, family, _ip_packet(family, src, dst, 17, udp))


def icmp_errors(interface, mac, specs):
    """Each spec (ROUTER, MTU, PROTO, SRC:PORT>DST:PORT): the error about a packet too big for the next hop.

    The quoted packet claims 1500 bytes, so that MTU lowers its path. All
    frames go out from one CPU: each then goes through the receiving stack in
    the order sent, so that a last one seen means the others are done with.
    """
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    for router, mtu, proto, quoted in zip(*[iter(specs)] * 4):
        source, destination = quoted.split('>')
        (src, sport), (dst, dport) = _endpoint(source), _endpoint(destination)
        family = _family(src)
        number = {'udp': 17, 'tcp': 6}[proto]
        # UDP: ports, length, checksum; TCP: ports and the sequence number.
        transport = struct.pack('!HHHH', sport, dport, 1480, 0) if proto == 'udp' else struct.pack('!HHI', sport, dport, 0)
        quote = _ip_packet(family, src, dst, number, transport, length=1500, dont_fragment=True)
        if family == socket.AF_INET6:
            message = struct.pack('!BBHI', 2, 0, 0, int(mtu)) + quote
            checksum = _checksum(_pseudo_header(family, router, src, 58, len(message)) + message)
        else:
            message = struct.pack('!BBHHH', 3, 4, 0, 0, int(mtu)) + quote
            checksum = _checksum(message)
        message = message[:2] + struct.pack('!H', checksum) + message[4:]
        _put_on_wire(interface, mac, family, _ip_packet(family, router, src, 58 if family == socket.AF_INET6 else 1, message))


def hold(seconds, proto, pairs):
    """Flows that stay open until SIGTERM, then each one's path MTU as the kernel keeps it for its socket."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    sockets = {}
    for pair in pairs:
        local, peer = (_endpoint(end) for end in pair.split('>'))
        family = _family(local[0])
        s = socket.socket(family, socket.SOCK_DGRAM if proto == 'udp' else socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(local)
        s.settimeout(2)
        s.connect(peer)
        if proto == 'udp':
            s.send(b'opening')
        sockets[pair] = s
    print('ready', flush=True)
    signal.sigtimedwait({signal.SIGTERM}, float(seconds))
    mtu = {}
    for pair, s in sockets.items():
        if s.family == socket.AF_INET6:
            mtu[pair] = s.getsockopt(socket.IPPROTO_IPV6, 24)  # IPV6_MTU
        else:
            mtu[pair] = s.getsockopt(socket.IPPROTO_IP, 14)  # IP_MTU
    print(json.dumps(mtu, sort_keys=True), flush=True)


def injectable(port, seconds, text, pairs):
    sockets = {}
    for pair in pairs:
        local, peer = pair.split('>')
        s = socket.socket(_family(local), socket.SOCK_DGRAM)
        s.bind((local, int(port)))
        s.connect(_endpoint(peer))
        try:
            s.send(b'opening')
        except OSError:  # the path is closed; the flow is tracked all the same
            pass
        sockets[s] = local
    received = dict.fromkeys(sockets.values(), False)
    print('ready', flush=True)
    deadline = time.time() + float(seconds)
    while time.time() < deadline:
        for s in select.select(list(sockets), [], [], max(0, deadline - time.time()))[0]:
            try:
                if text.encode() in s.recv(2048):
                    received[sockets[s]] = True
            except OSError:
                pass
    print(json.dumps(received, sort_keys=True))


CHANNEL_ICMPV6 = {'router-solicit': 133, 'neighbor-solicit': 135, 'neighbor-advert': 136, 'mld-report': 143}


def channels(interface, prefix):
    """Every kind of link control message, sent where only a channel would send it: to the internet host."""
    failures = []

    def bound(family, kind, proto=0):
        s = socket.socket(family, kind, proto)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        return s

    def attempt(name, send):
        try:
            send()
        except OSError as e:
            failures.append('%s: %s' % (name, e))

    def dhcp4():
        s = bound(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(('0.0.0.0', 68))
        s.sendto((prefix + '-dhcp').encode(), (TARGETS['4'], 67))
        s.close()

    def dhcp6():
        link_local = [line.split()[0] for line in open('/proc/net/if_inet6')
                      if line.split()[-1] == interface and line.startswith('fe80')][0]
        link_local = ':'.join(link_local[i:i + 4] for i in range(0, 32, 4))
        s = bound(socket.AF_INET6, socket.SOCK_DGRAM)
        s.bind((link_local, 546, 0, socket.if_nametoindex(interface)))
        s.sendto((prefix + '-dhcp6').encode(), (TARGETS['6'], 547))
        s.close()

    def icmpv6(name, kind):
        def send():
            s = bound(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
            s.sendto(struct.pack('!BBHI', kind, 0, 0, 0) + (prefix + '-' + name).encode(), (TARGETS['6'], 0))
            s.close()
        return send

    attempt('dhcp', dhcp4)
    attempt('dhcp6', dhcp6)
    for name, kind in sorted(CHANNEL_ICMPV6.items()):
        attempt(name, icmpv6(name, kind))
    for failure in failures:
        sys.stderr.write('send failed (%s)\n' % failure)


class _Stopped(Exception):
    pass


def _until_stopped(seconds, sockets, take):
    """Give take(socket, data) what sockets receive until it returns True, SECONDS pass or SIGTERM comes."""
    def stop(signum, frame):
        raise _Stopped()
    signal.signal(signal.SIGTERM, stop)
    deadline = time.time() + float(seconds)
    try:
        while sockets and time.time() < deadline:
            for s in select.select(sockets, [], [], max(0, deadline - time.time()))[0]:
                try:
                    data = s.recv(2048)
                except OSError:  # an ICMP error about the datagram sent
                    continue
                if take(s, data):
                    sockets.remove(s)
    except _Stopped:
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _tagged(text, family):
    return ('%s-v%d' % (text, 6 if family == socket.AF_INET6 else 4)).encode()


def ask(seconds, text, destinations):
    """A client's UDP request to each destination: which got their own datagram back."""
    sockets = {}
    for destination in destinations:
        address, port = _endpoint(destination)
        family = _family(address)
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.connect((address, port))
        try:
            s.send(_tagged(text, family))
        except OSError:  # no route: nothing left, nothing comes back
            pass
        sockets[s] = destination
    answered = dict.fromkeys(destinations, False)

    def take(s, data):
        answered[sockets[s]] = data == _tagged(text, s.family)
        return answered[sockets[s]]
    _until_stopped(seconds, list(sockets), take)
    print(json.dumps(answered, sort_keys=True), flush=True)


def listen(seconds, text, port):
    """A server that nobody asked anything of: does a datagram carrying text reach it, per family?"""
    sockets = {}
    for family, address in ((socket.AF_INET, '0.0.0.0'), (socket.AF_INET6, '::')):
        s = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((address, int(port)))
        sockets[s] = 'v6' if family == socket.AF_INET6 else 'v4'
    received = dict.fromkeys(sockets.values(), False)
    print('ready', flush=True)

    def take(s, data):
        received[sockets[s]] = text.encode() in data
        return received[sockets[s]]
    _until_stopped(seconds, list(sockets), take)
    print(json.dumps(received, sort_keys=True), flush=True)


def send(text, destinations):
    for destination in destinations:
        address, port = _endpoint(destination)
        family = _family(address)
        s = socket.socket(family, socket.SOCK_DGRAM)
        try:
            s.sendto(_tagged(text, family), (address, port))
        finally:
            s.close()


if __name__ == '__main__':
    mode = sys.argv[1]
    if mode == 'generate':
        generate(float(sys.argv[2]))
    elif mode == 'echo':
        echo(int(sys.argv[2]))
    elif mode == 'marker':
        marker(*sys.argv[2:5])
    elif mode == 'dns':
        print(json.dumps({'udp': dns_query(False, sys.argv[2], 1.0), 'tcp': dns_query(True, sys.argv[2], 1.0)}))
    elif mode == 'sink':
        sink(int(sys.argv[2]))
    elif mode == 'stream':
        stream(*sys.argv[2:6])
    elif mode == 'ra':
        router_advertisement(*sys.argv[2:5])
    elif mode == 'inject':
        inject(*sys.argv[2:7])
    elif mode == 'injectable':
        injectable(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
    elif mode == 'icmp-error':
        icmp_errors(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif mode == 'hold':
        hold(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif mode == 'channels':
        channels(sys.argv[2], sys.argv[3])
    elif mode == 'ask':
        ask(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif mode == 'listen':
        listen(sys.argv[2], sys.argv[3], sys.argv[4])
    elif mode == 'send':
        send(sys.argv[2], sys.argv[3:])
