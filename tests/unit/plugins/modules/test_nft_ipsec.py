"""Route-based kernel IPsec against the real kernel: what can be proven without ESP in the kernel.

This kernel has XFRM but neither ESP nor XFRM interfaces, so no SA encrypts
anything here. What the kernel does with a route-based SA's ESP packet is
taken from its source (net/xfrm/xfrm_output.c: xfrm_output_one sets
skb->mark = xfrm_smark_get(skb->mark, x), the SA's output mark; then
xfrm_output_resume sends the ESP packet through local_out, the OUTPUT hook,
again, on the socket of the application whose packet was encrypted). So the
ESP packets are stood in for by a raw socket (IP protocol 50) of an ordinary
user, uid 4242 (an application), with and without the SA's output mark
(SO_MARK). The capture is on the ISP side of the uplink; the same packets
without the kill switch are the control that shows the capture sees them.
"""

import os
import shlex
import subprocess
import time

import pytest

from namespace_host import CAN_RUN, UplinkHost, host_fixture

pytestmark = pytest.mark.skipif(not CAN_RUN, reason='needs root, nft, unshare and ansible to run the module')

SERVER, SA_MARK, OTHER_MARK, APP_UID = '203.0.113.1', 0x2a, 0x2b, 4242
POLICY = {'tunnel_interfaces': ['ipsec0'],
          'endpoints': [{'address': SERVER, 'ports': [500, 4500], 'protocols': ['udp', 'esp'], 'mark': SA_MARK}],
          'dns_servers': ['192.0.2.1']}

# Sends one packet as APP_UID with the capabilities a raw socket and SO_MARK need, so that the
# packet's socket is an ordinary user's, as an ESP packet's is; prints the error number or 0.
SEND = r'''
import socket, sys
kind, mark, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
if kind == 'esp':
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 50)
    address = (sys.argv[4], 0)
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    address = (sys.argv[4], int(sys.argv[5]) if len(sys.argv) > 5 else 4500)
if mark:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
try:
    s.sendto(payload, address)
    print(0)
except OSError as e:
    print(e.errno)
'''


class IpsecHost(UplinkHost):
    def module(self, *flags, **args):
        return super(IpsecHost, self).module('nft_killswitch', *flags, **args)

    def send(self, kind, mark, payload, to=SERVER, port=4500):
        # The script goes in -c: the test's temporary directory is root's alone.
        return int(self.sh("setpriv --reuid %d --inh-caps +net_raw,+net_admin --ambient-caps +net_raw,+net_admin "
                           "/usr/bin/python3 -c %s %s %d %s %s %d" % (APP_UID, shlex.quote(SEND), kind, mark, payload, to, port)))


host = host_fixture(IpsecHost)


def payloads(host, capture):
    """The marker payloads of the ESP and UDP 4500 packets the ISP side saw."""
    host.captured(capture, 'ip proto 50 or udp port 4500')
    listing = subprocess.run(['tcpdump', '-n', '-A', '-r', capture.pcap, 'ip proto 50 or udp port 4500'],
                             capture_output=True, text=True, check=False).stdout
    return sorted(set(word[word.index('VPNG'):] for word in listing.split() if 'VPNG' in word))


def test_esp_and_nat_t_leave_only_with_the_sas_output_mark(host):
    applied = host.module(**POLICY)
    assert not applied.get('failed'), applied.get('msg')
    assert not host.module(**POLICY)['changed'], 'the ESP endpoint rules must read back as rendered'
    capture = host.capture()
    sent = dict(
        VPNGesp_marked=host.send('esp', SA_MARK, 'VPNGesp_marked'),
        VPNGesp_unmarked=host.send('esp', 0, 'VPNGesp_unmarked'),
        VPNGesp_other_mark=host.send('esp', OTHER_MARK, 'VPNGesp_other_mark'),
        VPNGesp_elsewhere=host.send('esp', SA_MARK, 'VPNGesp_elsewhere', to='198.51.100.7'),
        VPNGnatt_marked=host.send('udp', SA_MARK, 'VPNGnatt_marked'),
        VPNGnatt_unmarked=host.send('udp', 0, 'VPNGnatt_unmarked'))
    seen = payloads(host, capture)
    assert seen == ['VPNGesp_marked', 'VPNGnatt_marked']
    # Refused at the output hook (EPERM), or by the routing guard for another address (ENETUNREACH).
    assert sent == dict(VPNGesp_marked=0, VPNGesp_unmarked=1, VPNGesp_other_mark=1, VPNGesp_elsewhere=101,
                        VPNGnatt_marked=0, VPNGnatt_unmarked=1)
    # The three refused at the endpoint are counted as such.
    assert 'packets 3 ' in host.sh('nft list counter inet vpnguard_killswitch refused_endpoint')


def test_the_control_without_the_kill_switch_sees_every_esp_packet_leave(host):
    capture = host.capture()
    for name in ('VPNGesp_unmarked', 'VPNGesp_other_mark'):
        assert host.send('esp', OTHER_MARK if 'other' in name else 0, name) == 0
    assert host.send('udp', 0, 'VPNGnatt_unmarked') == 0
    seen = payloads(host, capture)
    assert seen == ['VPNGesp_other_mark', 'VPNGesp_unmarked', 'VPNGnatt_unmarked']


RECEIVE = r'''
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 50)
s.settimeout(3)
seen = []
try:
    while True:
        data, peer = s.recvfrom(2048)
        seen.append(data[20:].decode(errors='replace'))
except socket.timeout:
    pass
print(' '.join(sorted(seen)))
'''


def test_inbound_esp_is_taken_only_from_the_server(host):
    """The kernel would decrypt it (no ESP here): a raw socket shows what the input hook let in."""
    host.module(**POLICY)
    host.isp.sh('ip addr add %s/32 dev lo && ip addr add 198.51.100.7/32 dev lo' % SERVER)
    receiver = os.path.join(host.tmp, 'receive.py')
    with open(receiver, 'w') as f:
        f.write(RECEIVE)
    sender = ("/usr/bin/python3 -c \"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 50); "
              "s.bind(('%s', 0)); s.sendto(b'%s', ('198.18.1.2', 0))\"")
    listening = subprocess.Popen(['nsenter', '-t', str(host.pid), '-n', '-m', '--', '/usr/bin/python3', receiver],
                                 stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    host.isp.sh(sender % (SERVER, 'VPNGfrom_server'))
    host.isp.sh(sender % ('198.51.100.7', 'VPNGfrom_elsewhere'))
    out = listening.communicate(timeout=10)[0]
    assert out.split() == ['VPNGfrom_server']


def test_the_guard_routes_esp_to_the_server_by_protocol_or_the_sas_mark_and_nothing_else(host):
    applied = host.module(**POLICY)
    assert 'ipv4 32765: to 203.0.113.1/32 ipproto esp lookup main' in applied['routing_rules']
    assert 'ipv4 32765: to 203.0.113.1/32 fwmark 0x2a lookup main' in applied['routing_rules']
    host.sh('nft delete table inet vpnguard_killswitch')  # the guard alone
    # ip route get takes no ESP, so real packets ask: 0 is routed, 101 (ENETUNREACH) is the guard's refusal.
    # A raw socket's lookup carries protocol 50, as an SA's does from Linux 6.12; every kernel's carries the mark.
    assert host.send('esp', 0, 'VPNGesp_unmarked') == 0
    assert host.send('udp', SA_MARK, 'VPNGmarked_other_port', port=9999) == 0
    assert host.send('udp', 0, 'VPNGunmarked_other_port', port=9999) == 101
    assert host.send('udp', OTHER_MARK, 'VPNGother_mark', port=9999) == 101
    assert host.send('esp', 0, 'VPNGesp_elsewhere', to='198.51.100.7') == 101
    assert host.send('esp', SA_MARK, 'VPNGesp_marked_elsewhere', to='198.51.100.7') == 101
