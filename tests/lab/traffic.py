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
"""

import json
import os
import select
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
