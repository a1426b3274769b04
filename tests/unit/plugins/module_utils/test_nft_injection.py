"""CVE-2019-14899 against the kernel: a forged packet from the LAN for a tunnel connection.

One private network stack plays the host: an uplink eth0 (a veth whose other
end, lan0, is the attacker's wire), and wg0, a veth standing in for the tunnel with its
addresses and the routes to the internet. Sockets on the tunnel's addresses
open UDP flows to the internet host, so that conntrack tracks them; the
attacker then puts datagrams on lan0 for eth0's MAC that claim to come from
the internet host and go to the tunnel's address and port. Whether the
socket receives them is the whole question.
"""

import json
import shutil

import pytest

from ansible_collections.vpnguard.killswitch.plugins.module_utils.nft import render
from ansible_collections.vpnguard.killswitch.plugins.module_utils.policy import parse_policy

from private_stack import run_script, skip_without_kernel

needs_kernel = skip_without_kernel()
POLICY = {'tunnel_interfaces': ['wg0'], 'endpoints': [{'address': '203.0.113.1', 'port': 51820, 'protocol': 'udp'}],
          'exceptions': [{'uid': 1001}], 'management': [{'cidr': '198.19.0.0/16', 'port': 40125, 'protocol': 'udp'}]}

# $1: the ruleset to load ('' for none), $2: traffic.py.
HOST = r"""
set -e
ip link set lo up
# Loose reverse-path filtering, as systemd sets it; strict mode would hide the
# IPv4 case without any firewall (IPv6 has none).
sysctl -qw net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.default.rp_filter=2
ip link add eth0 type veth peer name lan0
ip link add wg0 type veth peer name tun-peer
ip addr add 198.18.1.2/24 dev eth0
ip -6 addr add 2001:db8:1:1::2/64 dev eth0 nodad
ip addr add 192.0.2.11/32 dev wg0
ip -6 addr add 2001:db8:ff::11/128 dev wg0 nodad
for d in eth0 lan0 wg0 tun-peer; do ip link set $d up; done
ip route add 198.51.100.0/24 dev wg0
ip -6 route add 2001:db8:2::/64 dev wg0
ip route add 203.0.113.0/24 via 198.18.1.1 dev eth0
ip neigh add 198.18.1.1 lladdr $(ip -br link show lan0 | awk '{print $3}') dev eth0
# The exceptions' packets are marked and routed by the main table, as the routing guard does.
ip route add default via 198.18.1.1 dev eth0 table 100
ip rule add fwmark 51820 lookup 100
# A service address on another interface than the one its clients come in by.
ip addr add 203.0.113.77/32 dev tun-peer
ip route add 198.19.0.0/16 via 198.18.1.1 dev eth0
[ -z "$1" ] || nft -f "$1"
mark=VPNGUARD-INJECTED
python3 "$2" injectable 40123 3 $mark '192.0.2.11>198.51.100.10:9999' '2001:db8:ff::11>[2001:db8:2::10]:9999' \
    '198.18.1.2>203.0.113.1:51820' > root.out &
setpriv --reuid=1001 --regid=1001 --clear-groups python3 "$2" injectable 40124 3 $mark \
    '198.18.1.2>198.51.100.10:9999' > bypass.out &
python3 "$2" injectable 40125 3 $mark '203.0.113.77>198.19.1.1:5555' > service.out &
python3 "$2" injectable 40126 3 $mark '203.0.113.77>198.19.1.1:5555' > elsewhere.out &
while [ $(grep -l ready root.out bypass.out service.out elsewhere.out 2>/dev/null | wc -l) -lt 4 ]; do
    sleep 0.05
done
mac=$(ip -br link show eth0 | awk '{print $3}')
python3 "$2" inject lan0 $mac 198.51.100.10:9999 192.0.2.11:40123 $mark
python3 "$2" inject lan0 $mac [2001:db8:2::10]:9999 [2001:db8:ff::11]:40123 $mark
python3 "$2" inject lan0 $mac 203.0.113.1:51820 198.18.1.2:40123 $mark
python3 "$2" inject lan0 $mac 198.51.100.10:9999 198.18.1.2:40124 $mark
python3 "$2" inject lan0 $mac 198.19.1.1:5555 203.0.113.77:40125 $mark
python3 "$2" inject lan0 $mac 198.19.1.1:5555 203.0.113.77:40126 $mark
wait
tail -n1 root.out; tail -n1 bypass.out; tail -n1 service.out; tail -n1 elsewhere.out
"""


def received(tmp_path, ruleset):
    lines = run_script(tmp_path, HOST, ruleset).splitlines()
    root, bypass, service, elsewhere = (json.loads(line) for line in lines[-4:])
    return {'tunnel v4': root['192.0.2.11'], 'tunnel v6': root['2001:db8:ff::11'],
            'endpoint reply': root['198.18.1.2'], 'exception reply': bypass['198.18.1.2'],
            'management to a service address': service['203.0.113.77'],
            'other port of the service address': elsewhere['203.0.113.77']}


def without_chain(text, name):
    start = text.index('\tchain %s {' % name)
    return text[:start] + text[text.index('\t}\n', start) + 3:]


@needs_kernel
def test_a_forged_packet_for_a_tunnel_connection_never_reaches_its_socket(tmp_path):
    ruleset = render(parse_policy(POLICY))
    # The control: without the kill switch the forged packets reach the
    # tunnel's sockets, or this test could not see the hole at all.
    assert received(tmp_path, None) == {'tunnel v4': True, 'tunnel v6': True, 'endpoint reply': True,
                                        'exception reply': True, 'management to a service address': True,
                                        'other port of the service address': True}
    # The endpoint's replies, the exceptions' connections and the management
    # networks (even to an address on another interface) still get in.
    held = {'tunnel v4': False, 'tunnel v6': False, 'endpoint reply': True, 'exception reply': True,
            'management to a service address': True, 'other port of the service address': False}
    assert received(tmp_path, ruleset) == held
    # Each layer holds alone: the input chain without the prerouting chain,
    # and the prerouting chain in front of the blanket established accept
    # the input chain used to have.
    assert received(tmp_path, without_chain(ruleset, 'prerouting')) == held
    hook = '\t\ttype filter hook input priority filter; policy drop;\n'
    blanket = ruleset.replace(hook, hook + '\t\tct state established,related accept\n', 1)
    assert blanket != ruleset
    assert received(tmp_path, blanket) == held
    # And the old ruleset's hole: the blanket accept without the prerouting chain.
    assert received(tmp_path, without_chain(blanket, 'prerouting'))['tunnel v4'] is True
    # The management networks reach a service address on another interface
    # only because the prerouting chain excepts them.
    unexcepted = ruleset.replace('\t\tip saddr . meta l4proto . th dport @management_v4 accept\n'
                                 '\t\tfib daddr type local counter name "refused_other_interface" drop',
                                 '\t\tfib daddr type local counter name "refused_other_interface" drop')
    assert unexcepted != ruleset
    assert received(tmp_path, unexcepted)['management to a service address'] is False


# $1: the ruleset to load ('' for none), $2: traffic.py. Prints what crossed lan0.
CHANNELS = r"""
set -e
ip link set lo up
ip link add eth0 type veth peer name lan0
sysctl -qw net.ipv6.conf.eth0.accept_dad=0
ip addr add 198.18.1.2/24 dev eth0
ip -6 addr add 2001:db8:1:1::2/64 dev eth0 nodad
ip link set eth0 up; ip link set lan0 up
lan=$(ip -br link show lan0 | awk '{print $3}')
ip route add default via 198.18.1.1 dev eth0
ip -6 route add default via 2001:db8:1:1::1 dev eth0
ip neigh add 198.18.1.1 lladdr $lan dev eth0
ip -6 neigh add 2001:db8:1:1::1 lladdr $lan dev eth0
[ -z "$1" ] || nft -f "$1"
tcpdump -i lan0 --immediate-mode -U -w wire.pcap 2>tcpdump.log &
dump=$!
trap 'kill $dump 2>/dev/null || true' EXIT
while ! grep -q listening tcpdump.log; do sleep 0.05; done
python3 "$2" channels eth0 VPNGUARD-CHANNEL 2>/dev/null
sleep 0.3
kill -INT $dump; wait $dump || true
python3 -c 'import sys; d = open("wire.pcap", "rb").read(); print(" ".join(k for k in sys.argv[1:] if ("VPNGUARD-CHANNEL-" + k).encode() in d))' \
    dhcp dhcp6 router-solicit neighbor-solicit neighbor-advert mld-report
"""


def carried(tmp_path, ruleset):
    return run_script(tmp_path, CHANNELS, ruleset).split()


@needs_kernel
@pytest.mark.skipif(not shutil.which('tcpdump'), reason='needs tcpdump to watch the wire')
def test_dhcp_and_neighbour_discovery_carry_nothing_beyond_the_link(tmp_path):
    # The control: without the kill switch every one of them reaches the wire.
    assert carried(tmp_path, None) == ['dhcp', 'dhcp6', 'router-solicit', 'neighbor-solicit', 'neighbor-advert',
                                       'mld-report']
    assert carried(tmp_path, render(parse_policy(POLICY))) == []
