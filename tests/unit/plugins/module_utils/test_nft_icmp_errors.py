"""Path MTU through the kill switch, against the kernel: which ICMP errors about the host's flows get in.

One private network stack plays the host: an uplink eth0, wg0 (a veth
standing in for the tunnel, with the routes to the internet), routes to the
VPN endpoints and to the management networks via the gateway on eth0. The
gateway's side of the wire, lan0, is a second stack that owns the gateway,
the endpoints and a management client. A UDP socket of root's (as the VPN
client's) talks to each endpoint, the client holds a TCP connection to the
host's port 22; then the gateway, as a router on the path, sends the host
"fragmentation needed" / "packet too big" errors: about those flows, which
must get in (or the tunnel stalls on large packets, SSH hangs: a path MTU
black hole), and about flows the kill switch does not allow, which must not.

A second table, witness, counts the errors at the input hook before the kill
switch (arrived) and after it (passed): a packet the kill switch drops never
reaches the later chain. Each error carries an MTU of its own, which tells
the counters which error it is.
"""

import json
import re

from ansible_collections.vpnguard.killswitch.plugins.module_utils.nft import render
from ansible_collections.vpnguard.killswitch.plugins.module_utils.policy import parse_policy

from private_stack import run_script, skip_without_kernel

needs_kernel = skip_without_kernel('nsenter')
POLICY = {'tunnel_interfaces': ['wg0'],
          'endpoints': [{'address': '203.0.113.1', 'port': 51820, 'protocol': 'udp'},
                        {'address': '2001:db8:ee::1', 'port': 51820, 'protocol': 'udp'}],
          'management': [{'cidr': '198.19.0.0/16', 'port': 22, 'protocol': 'tcp'},
                         {'cidr': '2001:db8:19::/48', 'port': 22, 'protocol': 'tcp'}]}

HOST_V4, HOST_V6 = '198.18.1.2', '[2001:db8:1:1::2]'
# The flows the errors quote (packets from the host), each with the MTU its error carries.
ENDPOINT = {'v4': ('%s:40200>203.0.113.1:51820' % HOST_V4, 1300),
            'v6': ('%s:40200>[2001:db8:ee::1]:51820' % HOST_V6, 1400)}
QUOTED = {
    # The tunnel's own flow to the endpoint, from root's socket.
    'endpoint': {version: ('udp',) + flow for version, flow in ENDPOINT.items()},
    # The host's replies on the management client's connection to port 22.
    'management': {'v4': ('tcp', '%s:22>198.19.1.1:40222' % HOST_V4, 1310),
                   'v6': ('tcp', '%s:22>[2001:db8:19::1]:40222' % HOST_V6, 1410)},
    # Neither an endpoint nor a management network: the internet, outside the tunnel.
    'internet': {'v4': ('udp', '%s:40300>198.51.100.10:9999' % HOST_V4, 1320),
                 'v6': ('udp', '%s:40300>[2001:db8:2::10]:9999' % HOST_V6, 1420)},
    'endpoint other port': {'v4': ('udp', '%s:40200>203.0.113.1:51821' % HOST_V4, 1330),
                            'v6': ('udp', '%s:40200>[2001:db8:ee::1]:51821' % HOST_V6, 1430)},
    'management other port': {'v4': ('tcp', '%s:2222>198.19.1.1:40222' % HOST_V4, 1340),
                              'v6': ('tcp', '%s:2222>[2001:db8:19::1]:40222' % HOST_V6, 1440)},
    # The host as the client of port 22 in the management network: not what the policy allows.
    'management other direction': {'v4': ('tcp', '%s:40222>198.19.1.1:22' % HOST_V4, 1350),
                                   'v6': ('tcp', '%s:40222>[2001:db8:19::1]:22' % HOST_V6, 1450)},
}
ROUTER = {'v4': '198.18.1.1', 'v6': '2001:db8:1:1::1'}
FENCE = {'v4': 1390, 'v6': 1490}  # a last error, sent after the others: once seen, they are done with
INTERFACE_MTU = 1500


def counter_name(stage, case, version):
    return '%s_%s_%s' % (stage, case.replace(' ', '_'), version)


def witness():
    """The witness table: a named counter per error before the kill switch's input chain, and after it."""
    counters, rules = [], {'arrived': [], 'passed': []}
    errors = {'v4': 'icmp type destination-unreachable icmp code frag-needed icmp mtu %d',
              'v6': 'icmpv6 type packet-too-big icmpv6 mtu %d'}
    for stage in rules:
        for case, versions in sorted(QUOTED.items()):
            for version, (_proto, _flow, mtu) in sorted(versions.items()):
                name = counter_name(stage, case, version)
                counters.append('\tcounter %s {\n\t}\n' % name)
                rules[stage].append('\t\t%s counter name "%s"\n' % (errors[version] % mtu, name))
    for version, mtu in sorted(FENCE.items()):
        counters.append('\tcounter fence_%s {\n\t}\n' % version)
        rules['arrived'].append('\t\t%s counter name "fence_%s"\n' % (errors[version] % mtu, version))
    return ('table inet witness {\n' + ''.join(counters)
            + '\tchain arrived {\n\t\ttype filter hook input priority filter - 10; policy accept;\n'
            + ''.join(rules['arrived']) + '\t}\n'
            + '\tchain passed {\n\t\ttype filter hook input priority filter + 10; policy accept;\n'
            + ''.join(rules['passed']) + '\t}\n}\n')


def error_arguments():
    """traffic.py icmp-error's arguments after IFACE and MAC: every error, the fences last."""
    arguments = []
    for case, versions in sorted(QUOTED.items()):
        for version, (proto, flow, mtu) in sorted(versions.items()):
            arguments += [ROUTER[version], str(mtu), proto, flow]
    fence_flow = {'v4': '%s:40999>198.51.100.99:9' % HOST_V4, 'v6': '%s:40999>[2001:db8:2::99]:9' % HOST_V6}
    for version, mtu in sorted(FENCE.items()):
        arguments += [ROUTER[version], str(mtu), 'udp', fence_flow[version]]
    return arguments


# $1: the kill switch's ruleset ('' for none), $2: traffic.py, $3: the witness table, $4...: the errors.
# Prints the endpoint sockets' path MTUs, then the witness's counters, as JSON.
STACK = r"""
set -e
ruleset=$1 traffic=$2 witness=$3
shift 3
pids=
trap 'for p in $pids; do kill $p 2>/dev/null || true; done; wait' EXIT
ip link set lo up
ip link add eth0 type veth peer name lan0
ip link add wg0 type veth peer name tun-peer
# The gateway's side of the wire: a stack of its own, which lives as long as its sleep.
unshare --net sleep 30 </dev/null >/dev/null 2>&1 &
lan=$!; pids="$pids $lan"
while [ "$(readlink /proc/$lan/ns/net)" = "$(readlink /proc/self/ns/net)" ]; do sleep 0.01; done
ip link set lan0 netns $lan
# (A function would put background commands in a subshell, which kill does not reach through.)
in_lan() { nsenter --net=/proc/$lan/ns/net "$@"; }
host_mac=$(ip -br link show eth0 | awk '{print $3}')
lan_mac=$(in_lan ip -br link show lan0 | awk '{print $3}')
ip addr add 198.18.1.2/24 dev eth0
ip -6 addr add 2001:db8:1:1::2/64 dev eth0 nodad
ip addr add 192.0.2.11/32 dev wg0
ip -6 addr add 2001:db8:ff::11/128 dev wg0 nodad
for d in eth0 wg0 tun-peer; do ip link set $d up; done
ip route add 198.51.100.0/24 dev wg0
ip -6 route add 2001:db8:2::/64 dev wg0
ip route add 203.0.113.1/32 via 198.18.1.1 dev eth0
ip -6 route add 2001:db8:ee::1/128 via 2001:db8:1:1::1 dev eth0
ip route add 198.19.0.0/16 via 198.18.1.1 dev eth0
ip -6 route add 2001:db8:19::/48 via 2001:db8:1:1::1 dev eth0
ip neigh add 198.18.1.1 lladdr $lan_mac dev eth0
ip -6 neigh add 2001:db8:1:1::1 lladdr $lan_mac dev eth0
in_lan sh -c "
set -e
ip link set lo up
ip addr add 198.18.1.1/24 dev lan0
ip -6 addr add 2001:db8:1:1::1/64 dev lan0 nodad
ip link set lan0 up
for a in 203.0.113.1/32 198.19.1.1/32; do ip addr add \$a dev lo; done
for a in 2001:db8:ee::1/128 2001:db8:19::1/128; do ip -6 addr add \$a dev lo; done
ip neigh add 198.18.1.2 lladdr $host_mac dev lan0
ip -6 neigh add 2001:db8:1:1::2 lladdr $host_mac dev lan0
# The endpoints take the datagrams in silence (no port unreachable back).
nft 'add table inet endpoint; add chain inet endpoint input { type filter hook input priority 0; }'
nft add rule inet endpoint input udp dport 51820 drop
"
[ -z "$ruleset" ] || nft -f "$ruleset"
nft -f "$witness"
timeout 30 python3 "$traffic" sink 22 </dev/null >sink.out 2>&1 &
pids="$pids $!"
python3 "$traffic" hold 30 udp '198.18.1.2:40200>203.0.113.1:51820' '[2001:db8:1:1::2]:40200>[2001:db8:ee::1]:51820' \
    </dev/null >endpoint.out 2>endpoint.err &
endpoint=$!; pids="$pids $endpoint"
while ! ss -Htln 'sport = 22' | grep -q .; do sleep 0.01; done
nsenter --net=/proc/$lan/ns/net python3 "$traffic" hold 30 tcp '198.19.1.1:40222>198.18.1.2:22' '[2001:db8:19::1]:40222>[2001:db8:1:1::2]:22' \
    </dev/null >management.out 2>management.err &
pids="$pids $!"
until [ "$(cat endpoint.out management.out | grep -c ready)" -eq 2 ]; do sleep 0.01; done
in_lan python3 "$traffic" icmp-error lan0 $host_mac "$@"
fenced() { nft list counter inet witness fence_$1 | grep -q 'packets [1-9]'; }
tries=0
until fenced v4 && fenced v6; do
    tries=$((tries + 1)); [ $tries -lt 200 ] || { echo 'the errors never arrived' >&2; exit 1; }
    sleep 0.01
done
kill -TERM $endpoint; wait $endpoint
tail -n1 endpoint.out
nft -j list counters table inet witness
"""


def in_private_stacks(tmp_path, ruleset):
    """Run STACK with ruleset (None: no kill switch); the endpoint sockets' MTUs and the witness's counters."""
    with open(str(tmp_path / 'witness.nft'), 'w') as f:
        f.write(witness())
    output = run_script(tmp_path, STACK, ruleset, str(tmp_path / 'witness.nft'), *error_arguments())
    mtus, counters = output.splitlines()[-2:]
    packets = {}
    for item in json.loads(counters)['nftables']:
        if 'counter' in item:
            packets[item['counter']['name']] = item['counter']['packets']
    return json.loads(mtus), packets


def outcome(tmp_path, ruleset):
    """{case: {version: passed the kill switch}} and the endpoint sockets' path MTUs {version: mtu}."""
    mtus, packets = in_private_stacks(tmp_path, ruleset)
    passed = {}
    for case, versions in QUOTED.items():
        for version in versions:
            # Every error reached the host's input hook, whatever came of it there.
            assert packets[counter_name('arrived', case, version)] == 1, (case, version, packets)
            passed.setdefault(case, {})[version] = packets[counter_name('passed', case, version)] == 1
    return passed, {version: mtus[flow] for version, (flow, _mtu) in ENDPOINT.items()}


def without_icmp_error_acceptance(text):
    """The ruleset without what lets ICMP errors into the input chain (neighbour discovery stays)."""
    start = text.index('\tchain input {')
    end = text.index('\n\t}\n', start)
    chain = text[start:end].split('\n')
    kept = [line for line in chain if not re.search(r'\bicmp|ipv6-icmp|\bicmp_error\b', line) or 'nd-' in line]
    stripped = text[:start] + '\n'.join(kept) + text[end:]
    # The chains the jumps went to (icmp_error_v4, icmp_error_v6), so that nothing of them is left.
    for found in reversed(list(re.finditer(r'\tchain icmp_error\w* \{', stripped))):
        stripped = stripped[:found.start()] + stripped[stripped.index('\n\t}\n', found.start()) + 4:]
    assert stripped != text and len(kept) < len(chain), 'found no rule that accepts ICMP errors'
    return stripped


def all_cases(value):
    return {case: {'v4': value, 'v6': value} for case in QUOTED}


@needs_kernel
def test_icmp_errors_about_the_allowed_flows_outside_the_tunnel_get_in_and_no_others(tmp_path):
    ruleset = render(parse_policy(POLICY))
    lowered = {version: mtu for version, (_flow, mtu) in ENDPOINT.items()}
    # The control: without a kill switch every forged error gets in, and the
    # one about the endpoint flow lowers that socket's path MTU.
    assert outcome(tmp_path, None) == (all_cases(True), lowered)
    # With it, the errors about the tunnel's flow to its endpoint and the
    # management connection get in, and lower the path MTU; no other does.
    allowed = all_cases(False)
    allowed['endpoint'] = allowed['management'] = {'v4': True, 'v6': True}
    assert outcome(tmp_path, ruleset) == (allowed, lowered)
    # The kill switch without its ICMP error acceptance: nothing gets in, the
    # path MTU stays the interface's (a black hole), so the check can fail.
    assert outcome(tmp_path, without_icmp_error_acceptance(ruleset)) == (
        all_cases(False), {'v4': INTERFACE_MTU, 'v6': INTERFACE_MTU})
