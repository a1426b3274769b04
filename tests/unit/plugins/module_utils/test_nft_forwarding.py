"""What a forwarding host's kill switch does with its guests' traffic, against the kernel.

One private network stack plays a host that routes for a guest (a
container): forwarding on, wg0 (a veth standing in for the tunnel) whose far
end is in an "internet" stack owning 198.51.100.10 and 2001:db8:2::10, which
routes the guest's networks back through the tunnel; gst0, whose far end is
the guest's stack; and an uplink eth0 with the default routes, whose far end
is an ISP stack that drops everything and where tcpdump watches the wire.

Each run takes three steps, each a UDP exchange over IPv4 and IPv6:
  ask       the guest's request to the internet host's echo server, through the tunnel;
  unasked   a datagram the internet host starts towards the guest (not a reply);
  gone      the tunnel deleted, the guest's request again: the default route is eth0's.
With a kill switch the guest is given its gateway's IPv6 neighbour entry,
so that what is tested is the forward chain alone: the kill switch drops the
host's neighbour advertisement to the guest's global address (see
test_a_guest_resolves_its_gateway_through_the_kill_switch).

Each step ends as soon as its outcome is known: the guest's program has what
it waited for, the kill switch refused a packet of each family (its
refused_forward counters grew), or both families' datagrams reached the wire.
"""

import json

from ansible_collections.vpnguard.killswitch.plugins.module_utils.nft import needs_conntrack, render
from ansible_collections.vpnguard.killswitch.plugins.module_utils.policy import parse_policy

from private_stack import run_script, skip_without_kernel

needs_kernel = skip_without_kernel('nsenter', 'tcpdump')
POLICY = {'tunnel_interfaces': ['wg0'], 'endpoints': [{'address': '203.0.113.1', 'port': 51820, 'protocol': 'udp'}]}
STEPS = ('ask', 'unasked', 'gone')
INTERNET = {'v4': '198.51.100.10:9999', 'v6': '[2001:db8:2::10]:9999'}

# $1: the kill switch's ruleset ('' for none), $2: traffic.py, $3: static to give the
# guest its gateway's IPv6 neighbour entry (no solicitation needed). Prints a line per
# step (its name, the guest's JSON, the refused_forward counters after it), the
# requests the internet host received (v4 v6), and the markers seen on the uplink's wire.
STACKS = r"""
set -e
ruleset=$1 traffic=$2
pids=
trap 'for p in $pids; do kill $p 2>/dev/null || true; done; wait' EXIT
no_dad='net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0'
ip link set lo up
sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 $no_dad
# The other stacks, each living as long as its sleep.
for name in internet guest isp; do
    unshare --net sleep 60 </dev/null >/dev/null 2>&1 &
    eval $name=$!; pids="$pids $!"
done
for p in $internet $guest $isp; do
    while [ "$(readlink /proc/$p/ns/net)" = "$(readlink /proc/self/ns/net)" ]; do sleep 0.01; done
    nsenter --net=/proc/$p/ns/net sh -c "ip link set lo up; sysctl -qw net.ipv4.ip_forward=0 $no_dad"
done
# (A function would put background commands in a subshell, which kill does not reach through.)
in_internet() { nsenter --net=/proc/$internet/ns/net "$@"; }
in_guest() { nsenter --net=/proc/$guest/ns/net "$@"; }
in_isp() { nsenter --net=/proc/$isp/ns/net "$@"; }
ip link add wg0 type veth peer name inet0 netns $internet
ip link add gst0 type veth peer name gst1 netns $guest
ip link add eth0 type veth peer name up0 netns $isp
ip addr add 192.0.2.11/32 dev wg0
ip -6 addr add 2001:db8:ff::11/128 dev wg0 nodad
ip addr add 198.18.101.1/24 dev gst0
ip -6 addr add 2001:db8:3:1::1/64 dev gst0 nodad
ip addr add 198.18.1.2/24 dev eth0
ip -6 addr add 2001:db8:1:1::2/64 dev eth0 nodad
for d in wg0 gst0 eth0; do ip link set $d up; done
ip route add 198.51.100.0/24 dev wg0
ip -6 route add 2001:db8:2::/64 dev wg0
ip route add default via 198.18.1.1 dev eth0
ip -6 route add default via 2001:db8:1:1::1 dev eth0
isp_mac=$(in_isp ip -br link show up0 | awk '{print $3}')
ip neigh add 198.18.1.1 lladdr $isp_mac dev eth0
ip -6 neigh add 2001:db8:1:1::1 lladdr $isp_mac dev eth0
in_internet sh -c '
set -e
ip addr add 198.51.100.10/24 dev inet0
ip -6 addr add 2001:db8:2::10/64 dev inet0 nodad
ip link set inet0 up
ip route add 192.0.2.11/32 dev inet0
ip route add 198.18.101.0/24 via 192.0.2.11 dev inet0
ip -6 route add 2001:db8:ff::11/128 dev inet0
ip -6 route add 2001:db8:3:1::/64 via 2001:db8:ff::11 dev inet0
nft "add table inet witness; add counter inet witness reached_v4; add counter inet witness reached_v6
add chain inet witness input { type filter hook input priority filter; }
add rule inet witness input meta nfproto ipv4 udp dport 9999 counter name reached_v4
add rule inet witness input meta nfproto ipv6 udp dport 9999 counter name reached_v6"
'
in_guest sh -c '
set -e
ip addr add 198.18.101.2/24 dev gst1
ip -6 addr add 2001:db8:3:1::2/64 dev gst1 nodad
ip link set gst1 up
ip route add default via 198.18.101.1
ip -6 route add default via 2001:db8:3:1::1
'
if [ "$3" = static ]; then
    in_guest ip -6 neigh add 2001:db8:3:1::1 lladdr $(ip -br link show gst0 | awk '{print $3}') dev gst1
fi
in_isp sh -c '
set -e
ip addr add 198.18.1.1/24 dev up0
ip -6 addr add 2001:db8:1:1::1/64 dev up0 nodad
ip link set up0 up
nft "add table inet wall; add chain inet wall input { type filter hook input priority 0; policy drop; }"
'
[ -z "$ruleset" ] || nft -f "$ruleset"
nsenter --net=/proc/$internet/ns/net timeout 30 python3 "$traffic" echo 9999 </dev/null >echo.log 2>&1 &
pids="$pids $!"
nsenter --net=/proc/$isp/ns/net timeout 30 tcpdump -i up0 -n --immediate-mode -U -w wire.pcap </dev/null >tcpdump.log 2>&1 &
dump=$!; pids="$pids $dump"
tries=0
until grep -q listening tcpdump.log && [ "$(in_internet ss -Hlun 'sport = 9999' | wc -l)" -eq 2 ]; do
    tries=$((tries + 1)); [ $tries -lt 500 ] || { echo 'tcpdump or the echo server never started' >&2; exit 1; }
    sleep 0.01
done

refused() { nft list counter inet vpnguard_killswitch refused_forward_$1 2>/dev/null | sed -n 's/.*packets \([0-9]*\).*/\1/p'; }
grew() { [ -n "$2" ] && [ "$(refused $1)" -gt "$2" ]; }
on_wire() { grep -qa "$1" wire.pcap; }
now() { echo $(($(date +%s%N) / 1000000)); }
# $1: the step, $2: the guest program's pid. Waits until its outcome is known
# (2 seconds at most, only when it is not what the test expects), then prints it.
settle() {
    deadline=$(($(now) + 2000))
    until grep -q '^{' $1.out \
            || { { grew v4 "$before_v4" || on_wire VPNGUARD-FWD-$1-v4; } \
                 && { grew v6 "$before_v6" || on_wire VPNGUARD-FWD-$1-v6; }; }; do
        [ $(now) -lt $deadline ] || break
        sleep 0.01
    done
    kill -TERM $2 2>/dev/null || true
    wait $2 || true
    echo "$1 $(grep '^{' $1.out) $(refused v4 || true) $(refused v6 || true)"
}
step() { before_v4=$(refused v4 || true) before_v6=$(refused v6 || true); }

step
nsenter --net=/proc/$guest/ns/net python3 "$traffic" ask 10 VPNGUARD-FWD-ask 198.51.100.10:9999 '[2001:db8:2::10]:9999' \
    </dev/null >ask.out 2>&1 &
settle ask $!

step
nsenter --net=/proc/$guest/ns/net python3 "$traffic" listen 10 VPNGUARD-FWD-unasked 9998 </dev/null >unasked.out 2>&1 &
listener=$!
until grep -q ready unasked.out; do sleep 0.01; done
in_internet python3 "$traffic" send VPNGUARD-FWD-unasked 198.18.101.2:9998 '[2001:db8:3:1::2]:9998'
settle unasked $listener
in_internet nft list table inet witness | sed -n 's/.*packets \([0-9]*\).*/\1/p' | tr '\n' ' '
echo

step
ip link del wg0
nsenter --net=/proc/$guest/ns/net python3 "$traffic" ask 10 VPNGUARD-FWD-gone 198.51.100.10:9999 '[2001:db8:2::10]:9999' \
    </dev/null >gone.out 2>&1 &
settle gone $!

kill -INT $dump; wait $dump || true
for marker in ask unasked gone; do
    for family in v4 v6; do ! on_wire VPNGUARD-FWD-$marker-$family || printf '%s ' $marker-$family; done
done
echo
"""


def run(tmp_path, ruleset, gateway_neighbour='solicited'):
    """STACKS with ruleset (None: no kill switch) and the guest's gateway_neighbour (solicited or static): {step: (guest's outcome, refused_forward counters)},
    the requests the internet host received, and the markers on the uplink's wire."""
    lines = run_script(tmp_path, STACKS, ruleset, gateway_neighbour).splitlines()
    steps = {}
    for line in lines[:2] + lines[3:4]:
        name, rest = line.split(' ', 1)
        outcome, end = json.JSONDecoder().raw_decode(rest)
        counts = rest[end:]
        by_family = {'v4': outcome.get(INTERNET['v4'], outcome.get('v4')),
                     'v6': outcome.get(INTERNET['v6'], outcome.get('v6'))}
        steps[name] = (by_family, [int(c) for c in counts.split()])
    reached = dict(zip(('v4', 'v6'), (int(c) for c in lines[2].split())))
    return steps, reached, lines[4].split() if len(lines) > 4 else []


def refused_per_step(steps):
    """How many of each family's packets the kill switch refused in each step."""
    refused, before = {}, [0, 0]
    for name in STEPS:
        counts = steps[name][1]
        refused[name] = dict(zip(('v4', 'v6'), (c - b for c, b in zip(counts, before))))
        before = counts
    return refused


def outcomes(steps):
    return {name: steps[name][0] for name in STEPS}


def both(value):
    return {'v4': value, 'v6': value}


@needs_kernel
def test_without_a_kill_switch_the_guest_is_answered_and_leaks_when_the_tunnel_is_gone(tmp_path):
    """The control: every check below can fail."""
    steps, reached, wire = run(tmp_path, None)
    assert outcomes(steps) == {'ask': both(True), 'unasked': both(True), 'gone': both(False)}
    assert reached == both(1)
    assert wire == ['gone-v4', 'gone-v6'], 'the guest\'s request left by eth0 once the tunnel was gone'


@needs_kernel
def test_a_forwarding_kill_switch_lets_the_guests_replies_back_through_the_tunnel_only(tmp_path):
    ruleset = render(parse_policy(POLICY), forwarding=True)
    assert needs_conntrack(parse_policy(POLICY), True) and 'ct state established,related' in ruleset
    steps, reached, wire = run(tmp_path, ruleset, 'static')
    # Answered through the tunnel; what the internet starts towards the guest
    # is refused, and so is the request once the tunnel is gone.
    assert outcomes(steps) == {'ask': both(True), 'unasked': both(False), 'gone': both(False)}
    assert refused_per_step(steps) == {'ask': both(0), 'unasked': both(1), 'gone': both(1)}
    assert reached == both(1)
    assert wire == [], 'nothing of the guest\'s left by eth0'


@needs_kernel
def test_a_kill_switch_that_does_not_forward_refuses_the_guests_replies_and_leaks_nothing(tmp_path):
    ruleset = render(parse_policy(POLICY), forwarding=False)
    assert not needs_conntrack(parse_policy(POLICY), False) and 'ct ' not in ruleset
    steps, reached, wire = run(tmp_path, ruleset, 'static')
    # The request still leaves, through the tunnel only; its reply is refused
    # and counted, as is everything else forwarded towards the guest.
    assert outcomes(steps) == {'ask': both(False), 'unasked': both(False), 'gone': both(False)}
    assert reached == both(1), 'the guest\'s request left through the tunnel'
    assert refused_per_step(steps) == {'ask': both(1), 'unasked': both(1), 'gone': both(1)}
    assert wire == [], 'nothing of the guest\'s left by eth0'


@needs_kernel
def test_a_guest_resolves_its_gateway_through_the_kill_switch(tmp_path):
    """Without a static neighbour entry the guest must solicit its gateway, the host; the control
    (no kill switch) resolves it the same way."""
    steps, reached, wire = run(tmp_path, render(parse_policy(POLICY), forwarding=True))
    assert outcomes(steps)['ask'] == both(True)
