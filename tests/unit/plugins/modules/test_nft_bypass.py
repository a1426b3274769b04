"""Bypass exceptions where the VPN client put its routes in main, against the real kernel.

OpenVPN's plain redirect-gateway deletes the physical default route, adds
`default dev tun0` and keeps a host route to the server through the physical
gateway; its def1 adds 0/1 and 128/1 through tun0 beside the physical default.
The tunnel is a veth whose peer nobody reads (it has a carrier, as a running tun0 has); the
kill switch puts it in group 86. An exception's packet must be seen leaving
the uplink by tcpdump on the ISP side; another user's must not. The control
is the same host without the rule to our table: the exception's packet then
goes to the tunnel, and the capture sees nothing.
"""

import shlex

import pytest

from namespace_host import CAN_RUN, UplinkHost, host_fixture

pytestmark = pytest.mark.skipif(not CAN_RUN, reason='needs root, nft, unshare and ansible to run the module')

SERVER, EXCEPTION_UID, OTHER_UID = '203.0.113.1', 4242, 4343
POLICY = {'tunnel_interfaces': ['tun*'],
          'endpoints': [{'address': SERVER, 'port': 1194, 'protocol': 'udp'}],
          'dns_servers': ['192.0.2.1'], 'exceptions': [{'uid': EXCEPTION_UID}]}
CANARY = {4: '198.51.100.10', 6: '2001:db8:2::10'}

# One UDP datagram to argv[1] port argv[2]; prints 0 or the error number.
SEND = r'''
import socket, sys
s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(b'VPNGbypass', (sys.argv[1], int(sys.argv[2])))
    print(0)
except OSError as e:
    print(e.errno)
'''


class BypassHost(UplinkHost):
    def __init__(self, tmp_path):
        super(BypassHost, self).__init__(tmp_path)
        self.sh('ip link add tun0 type veth peer name xtun0 && ip link set xtun0 up && ip link set tun0 up && ip addr add 192.0.2.10/32 dev tun0 '
                '&& ip -6 addr add 2001:db8:ff::10/128 dev tun0 nodad')

    def module(self, *flags, **args):
        return super(BypassHost, self).module('nft_killswitch', *flags, **args)

    def table(self):
        """Our table's routes, both versions (ip errs on a table that has never had any)."""
        return self.sh('ip route show table 22091 2>/dev/null; ip -6 route show table 22091 2>/dev/null; true')

    def send(self, uid, version, port):
        return int(self.sh('setpriv --reuid %d --clear-groups /usr/bin/python3 -c %s %s %d'
                           % (uid, shlex.quote(SEND), CANARY[version], port)))

    def leaving(self, version=4):
        """Which of the exception's (port 40001) and another user's (40002) datagrams left the uplink."""
        capture = self.capture()
        self.send(EXCEPTION_UID, version, 40001)
        self.send(OTHER_UID, version, 40002)
        lines = self.captured(capture, 'udp and dst host %s' % CANARY[version])
        # The exception's datagram leaves from the uplink's address, never the tunnel's: replies come back.
        assert not any('192.0.2.10.' in line or '2001:db8:ff::10.' in line for line in lines), lines
        return sorted(port for port in (40001, 40002) if any('.%d:' % port in line for line in lines))


host = host_fixture(BypassHost)


def redirect_gateway(host):
    """OpenVPN's plain redirect-gateway: the physical default replaced by the tunnel's."""
    host.sh('ip route add %s via 198.18.1.1 dev eth0 && ip route del default && ip route add default dev tun0' % SERVER)


def test_plain_redirect_gateway_exception_leaves_the_uplink_and_nothing_else(host):
    redirect_gateway(host)
    checked = host.module('--check', '--diff', **POLICY)
    # IPv4's derived from the route to the server, IPv6's copied from main's physical default.
    routes = ['ipv4 default via 198.18.1.1 dev eth0 table 22091', 'ipv6 default via 2001:db8:1:1::1 dev eth0 table 22091']
    assert checked['changed'] and checked['bypass_routes'] == routes
    assert host.table() == '', 'check mode touched the host'
    applied = host.module(**POLICY)
    assert not applied.get('failed'), applied.get('msg')
    assert 'ipv4 32765: fwmark 0xca6c lookup 22091' in applied['routing_rules']
    assert applied['bypass_routes'] == routes
    assert 'proto vpnguard' in host.sh('ip route show table vpnguard-bypass; ip -6 route show table vpnguard-bypass')
    assert not host.module(**POLICY)['changed'], 'a second apply changes nothing'
    assert host.leaving() == [40001]

    # The control: without the rule to our table, the exception's packet goes into the tunnel.
    host.sh('ip rule del priority 32765 fwmark 0xca6c lookup 22091')
    assert host.leaving() == []
    # The next apply puts it back.
    assert host.module(**POLICY)['summary']['routing_guard_changed']
    assert host.leaving() == [40001]
    # Neither a physical default nor a route to an endpoint: no route, and the exception fails closed.
    host.sh('ip -6 route del default')
    assert host.module(**POLICY)['bypass_routes'] == routes[:1]
    assert host.leaving(6) == []

    # Tunnel down: another user still cannot get out, not even without the firewall.
    host.sh('ip link del tun0 && nft delete table inet vpnguard_killswitch')
    assert host.send(OTHER_UID, 4, 40002) == 101  # ENETUNREACH: the guard's unreachable
    host.module(state='absent')
    assert host.table() == '' and '22091' not in host.sh('ip rule; ip -6 rule')


def test_def1_exception_leaves_the_uplink_on_both_versions(host):
    host.sh('ip route add 0.0.0.0/1 dev tun0 && ip route add 128.0.0.0/1 dev tun0 '
            '&& ip -6 route add ::/1 dev tun0 && ip -6 route add 8000::/1 dev tun0')
    applied = host.module(**POLICY)
    assert applied['bypass_routes'] == ['ipv4 default via 198.18.1.1 dev eth0 table 22091',
                                        'ipv6 default via 2001:db8:1:1::1 dev eth0 table 22091']
    assert host.leaving(4) == [40001] and host.leaving(6) == [40001]
    host.sh('ip rule del priority 32765 fwmark 0xca6c lookup 22091 && '
            'ip -6 rule del priority 32765 fwmark 0xca6c lookup 22091')
    assert host.leaving(4) == [] and host.leaving(6) == []


def test_the_table_follows_the_policy_and_is_not_drift_in_check_mode(host):
    host.module(**POLICY)
    assert len(host.table().splitlines()) == 2
    # Roaming: a new gateway. An audit (check mode) does not call it drift; the next apply refreshes it.
    host.sh('ip route replace default via 198.18.1.3 dev eth0 metric 100')
    checked = host.module('--check', **POLICY)
    assert not checked['changed'] and checked['summary']['bypass_routes_changed']
    refreshed = host.module(**POLICY)
    assert refreshed['changed'] and 'via 198.18.1.3' in host.table()
    # Without exceptions there is nothing to route, and no rule looks the table up.
    without = dict(POLICY, exceptions=[])
    assert host.module(**without)['bypass_routes'] == []
    assert host.table() == ''
    rules = host.sh('ip rule; ip -6 rule')
    assert '22091' not in rules and 'vpnguard-bypass' not in rules


def wg_quick(host):
    """wg-quick's rules, which come before the guard, and its table: everything unmarked goes to the tunnel."""
    for v in (4, 6):
        host.sh('ip -%d route add default dev tun0 table 51820 && ip -%d rule add table main suppress_prefixlength 0 '
                'priority 999 && ip -%d rule add not fwmark 51820 table 51820 priority 1000' % (v, v, v))


def test_wg_quick_exception_carries_the_tunnels_mark_past_its_rules(host):
    wg_quick(host)
    applied = host.module(**POLICY)
    assert not applied.get('failed'), applied.get('msg')
    assert 'ipv4 32765: fwmark 0xca6c lookup main suppress_ifgroup 86' in applied['routing_rules']
    assert host.leaving(4) == [40001] and host.leaving(6) == [40001]

    # The control: the old marking (the bypass mark, which wg-quick's `not
    # fwmark 51820` sends to its table), with guard rules for it before ours.
    host.sh('nft flush chain inet vpnguard_killswitch bypass_route && nft add rule inet vpnguard_killswitch '
            'bypass_route meta skuid %d meta mark set 0x564b ct mark set 0x564b' % EXCEPTION_UID)
    for v in (4, 6):
        host.sh('ip -%d rule add priority 32764 fwmark 0x564b lookup main suppress_ifgroup 86 && '
                'ip -%d rule add priority 32764 fwmark 0x564b lookup 22091' % (v, v))
    assert 'dev tun0 table 51820' in host.sh('ip route get 198.51.100.10 mark 0x564b')
    assert host.leaving(4) == [] and host.leaving(6) == []
    # The next apply restores the firewall's marking.
    assert host.module(**POLICY)['changed']
    assert host.leaving(4) == [40001]
