import re
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ansible_collections.vpnguard.killswitch.plugins.module_utils.nft import (
    TABLE, exception_counter, needs_conntrack, render, replace_transaction, with_counter_values, without_counter_values)
from ansible_collections.vpnguard.killswitch.plugins.module_utils.policy import BypassException, parse_policy

from policy_strategies import networks, policies as policy_strategies
from private_stack import skip_without_kernel

needs_kernel = skip_without_kernel()

BASE = {'tunnel_interfaces': ['wg0'], 'endpoints': [{'address': '203.0.113.1', 'port': 51820, 'protocol': 'udp'}]}


def chain(text, name):
    body = text.split('\tchain %s {\n' % name, 1)[1]
    return [line.strip() for line in body.split('\n\t}', 1)[0].splitlines()]


def rendered(**changes):
    raw = dict(BASE)
    raw.update(changes)
    return render(parse_policy(raw))


def test_output_and_forward_drop_by_default_and_input_too():
    text = rendered()
    assert chain(text, 'output')[0] == 'type filter hook output priority filter; policy drop;'
    assert chain(text, 'forward')[0] == 'type filter hook forward priority filter; policy drop;'
    assert chain(text, 'input')[0] == 'type filter hook input priority filter; policy drop;'
    assert [chain(text, c)[-1] for c in ('output', 'input', 'forward')] == ['drop', 'drop', 'drop']


def test_dns_is_held_before_the_tunnel_is_accepted():
    output = chain(rendered(dns_servers=['192.0.2.1']), 'output')
    dns = output.index('meta l4proto { tcp, udp } th dport { 53, 853 } jump dns')
    assert dns < output.index('oifname "wg0" accept')
    assert chain(rendered(dns_servers=['192.0.2.1']), 'dns') == [
        'oifname "wg0" ip daddr @dns_v4 accept', 'oifname "wg0" ip6 daddr @dns_v6 accept',
        'oifname "wg0" counter name "refused_dns_resolver" drop', 'counter name "refused_dns_outside" drop']


def test_without_dns_servers_dns_still_only_goes_through_the_tunnel():
    assert chain(rendered(), 'dns') == ['oifname "wg0" accept', 'counter name "refused_dns_outside" drop']


def test_endpoints_are_only_for_the_tunnels_own_packets():
    output = chain(rendered(), 'output')
    endpoint_rules = [r for r in output if '203.0.113.1' in r or '@endpoints_v4' in r]
    assert endpoint_rules == ['ip daddr 203.0.113.1 udp dport 51820 meta mark 0x0000ca6c accept',
                              'ip daddr 203.0.113.1 udp dport 51820 meta skuid 0 accept',
                              'ip daddr . meta l4proto . th dport @endpoints_v4 counter name "refused_endpoint" drop']
    assert not any('@endpoints_v6' in r or r.startswith('ip6 daddr') for r in output), 'no rule for a family without endpoints'
    open_rules = [r for r in chain(rendered(restrict_endpoints_to_tunnel=False), 'output') if '203.0.113.1' in r]
    assert open_rules == ['ip daddr 203.0.113.1 udp dport 51820 accept']
    # Beyond a few endpoints of the same owners, one set lookup instead of a rule each.
    many = [{'address': '203.0.113.%d' % i, 'port': 51820} for i in range(1, 7)]
    assert [r for r in chain(rendered(endpoints=many), 'output') if 'accept' in r and '@endpoints_v4' in r] == [
        'ip daddr . meta l4proto . th dport @endpoints_v4 meta mark 0x0000ca6c accept',
        'ip daddr . meta l4proto . th dport @endpoints_v4 meta skuid 0 accept']
    assert 'ip saddr . meta l4proto . th sport @endpoints_v4 accept' in chain(rendered(endpoints=many), 'input')


def test_each_endpoint_is_for_its_own_users_and_mark():
    output = chain(rendered(endpoints=[
        {'address': '203.0.113.1', 'port': 1194, 'uid': [65534]},
        {'address': '203.0.113.2', 'port': 443, 'protocols': ['tcp', 'udp'], 'uid': [65534, 0], 'mark': 7},
        {'address': '2001:db8::1', 'ports': [500, 4500]}]), 'output')
    assert [r for r in output if r.startswith(('ip daddr', 'ip6 daddr')) and 'dport' in r] == [
        'ip daddr 203.0.113.1 udp dport 1194 meta mark 0x0000ca6c accept',
        'ip daddr 203.0.113.1 udp dport 1194 meta skuid { 0, 65534 } accept',
        'ip daddr 203.0.113.2 tcp dport 443 meta mark 0x00000007 accept',
        'ip daddr 203.0.113.2 udp dport 443 meta mark 0x00000007 accept',
        'ip daddr 203.0.113.2 tcp dport 443 meta skuid { 0, 65534 } accept',
        'ip daddr 203.0.113.2 udp dport 443 meta skuid { 0, 65534 } accept',
        'ip6 daddr 2001:db8::1 udp dport 500 meta mark 0x0000ca6c accept',
        'ip6 daddr 2001:db8::1 udp dport 4500 meta mark 0x0000ca6c accept',
        'ip6 daddr 2001:db8::1 udp dport 500 meta skuid 0 accept',
        'ip6 daddr 2001:db8::1 udp dport 4500 meta skuid 0 accept',
        # Whoever else: refused and counted, over every endpoint of the family.
        'ip daddr . meta l4proto . th dport @endpoints_v4 counter name "refused_endpoint" drop',
        'ip6 daddr . meta l4proto . th dport @endpoints_v6 counter name "refused_endpoint" drop']
    # Groups of more: a set each (anonymous where the owners differ between groups).
    many = [{'address': '203.0.113.%d' % i, 'port': 1194, 'uid': [65534]} for i in range(1, 6)]
    output = chain(rendered(endpoints=many + [{'address': '203.0.113.9', 'port': 443}]), 'output')
    assert 'ip daddr . meta l4proto . th dport { %s } meta skuid { 0, 65534 } accept' % ', '.join(
        '203.0.113.%d . udp . 1194' % i for i in range(1, 6)) in output


def test_no_blanket_established_accept_on_the_way_out():
    text = rendered(management=[{'cidr': '198.18.0.0/24', 'port': 22, 'protocol': 'tcp'}], allow_lan=True)
    for rule in chain(text, 'output'):
        assert 'ct state' not in rule
        assert 'established' not in rule
    assert 'ip daddr . meta l4proto . th sport @management_v4 tcp flags & (syn | ack) != syn accept' in chain(text, 'output')
    # UDP has no flags: replies are told by conntrack, only where a UDP service is managed.
    assert not any('ct direction' in r for r in chain(text, 'output'))
    udp = rendered(management=[{'cidr': '198.18.0.0/24', 'port': 161, 'protocol': 'udp'}])
    assert 'ip daddr . meta l4proto . th sport @management_v4 meta l4proto udp ct direction reply accept' in chain(udp, 'output')


def test_overlapping_management_networks_are_merged_for_the_kernel():
    text = rendered(management=[{'cidr': '0.0.0.0/1', 'port': 22, 'protocol': 'tcp'},
                                {'cidr': '0.0.0.0/0', 'port': 22, 'protocol': 'tcp'},
                                {'cidr': '198.18.0.0/24', 'port': 161, 'protocol': 'udp'}])
    assert 'elements = { 0.0.0.0/0 . tcp . 22, 198.18.0.0/24 . udp . 161 }' in text


def test_lan_is_closed_unless_allowed():
    assert not any('@lan_v' in r for r in chain(rendered(), 'output'))
    assert 'ip daddr @lan_v4 accept' in chain(rendered(allow_lan=True), 'output')
    assert '192.168.0.0/16' in rendered(allow_lan=True) and '192.168.0.0/16' not in rendered()


def test_exceptions_are_accepted_and_rerouted():
    text = rendered(exceptions=[{'uid': 1001}, {'cgroup': 'system.slice/backup.service'}])
    assert 'meta skuid 1001 counter name "exception_uid_1001" accept' in chain(text, 'output')
    assert ('socket cgroupv2 level 2 "system.slice/backup.service" counter name "exception_cgroup_%s" accept'
            % exception_counter(BypassException('cgroup', 'system.slice/backup.service'))[-12:]) in chain(text, 'output')
    # The tunnel's own mark routes them past the VPN client's rules (wg-quick's
    # `not fwmark 51820`) and the guard; the connection's mark lets replies in.
    marks = 'meta mark set 0x0000ca6c ct mark set 0x0000564b'
    assert chain(text, 'bypass_route')[1:] == ['meta skuid @bypass_uids ' + marks,
                                               'socket cgroupv2 level 2 "system.slice/backup.service" ' + marks]
    assert 'meta mark set 0x0000002a' in chain(rendered(exceptions=[{'uid': 1001}], tunnel_fwmark=42), 'bypass_route')[1]
    assert 'chain bypass_route' not in rendered()
    # Out of a physical interface, the tunnel's source address the socket may have is replaced.
    assert chain(text, 'bypass_source')[-2:] == ['oifname "wg0" return', 'ct mark 0x0000564b masquerade']
    assert 'chain bypass_source' not in rendered()


def test_transaction_replaces_only_our_table():
    text = replace_transaction('table %s {\n}\n' % TABLE)
    assert text.splitlines()[:2] == ['add table %s' % TABLE, 'delete table %s' % TABLE]
    assert 'flush ruleset' not in text and 'inet vpnguard_killswitch' in text
    assert replace_transaction(None) == 'add table %s\ndelete table %s\n' % (TABLE, TABLE)


ifnames = st.text(alphabet='abcdefghijklmnopqrstuvwxyz0123456789_.-', min_size=2, max_size=13).filter(
    lambda s: s.strip('.'))
policies = policy_strategies(
    tunnel_interfaces=st.lists(st.builds(lambda n, w: n + ('*' if w else ''), ifnames, st.booleans()),
                               min_size=1, max_size=3),
    exceptions=[{'uid': 1001}, {'gid': 100}, {'uid': 0}],
    management_networks=networks(st.ip_addresses(v=4), st.integers(0, 32)),
    resolvers_max=3,
    restrict_endpoints_to_tunnel=st.booleans())


@needs_kernel
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies)
def test_the_kernel_accepts_every_valid_policy(raw):
    transaction = replace_transaction(render(parse_policy(raw)))
    # nft -c sends the batch and has the kernel abort it; a private network
    # namespace keeps even that away from the machine's own ruleset.
    result = subprocess.run(['unshare', '--net', 'nft', '-c', '-f', '-'], input=transaction,
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr + transaction


def test_doh_resolvers_are_dropped_outside_the_tunnel_before_anything_else_allows_them():
    text = rendered(doh_servers=['198.51.100.53', '2001:db8:53::1'], allow_lan=True, exceptions=[{'uid': 1001}])
    output = chain(text, 'output')
    drop_v4, drop_v6 = ('ip daddr @doh_v4 counter name "refused_doh" drop',
                        'ip6 daddr @doh_v6 counter name "refused_doh" drop')
    assert output.index(drop_v4) == output.index('oifname "wg0" accept') + 1
    assert output.index(drop_v6) < output.index('ip daddr @lan_v4 accept')
    assert output.index(drop_v6) < output.index('meta skuid 1001 counter name "exception_uid_1001" accept')
    assert drop_v4 in chain(text, 'forward')
    assert '@doh_v4' not in rendered()


# Inside a private network stack: a sender loops UDP to an address no rule
# allows while the table is swapped between two policies, and a table of the
# test's own, hooked after ours, counts what our output chain let through.
SWAP_WINDOW = r"""
set -e
ip link set lo up
ip link add probe0 type veth peer name probe1
ip addr add 198.51.100.2/24 dev probe0
ip link set probe0 up; ip link set probe1 up
nft -f "$1"
nft 'table ip swap_probe { chain out { type filter hook output priority 100; ip daddr 198.51.100.1 counter; }; }'
python3 -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
while True:
    try:
        s.sendto(b"x", ("198.51.100.1", 9))
    except OSError:
        pass
' </dev/null >/dev/null 2>&1 &
sender=$!
trap 'kill $sender' EXIT  # however the script ends: the sender would outlive the test
sleep 0.2
for i in $(seq "$3"); do nft -f "$2"; nft -f "$1"; done
nft list table ip swap_probe | grep -o 'packets [0-9]*'
"""


def _passed_during_swaps(tmp_path, transactions, swaps):
    paths = []
    for i, text in enumerate(transactions):
        paths.append(str(tmp_path / ('swap%d.nft' % i)))
        with open(paths[-1], 'w') as f:
            f.write(text)
    result = subprocess.run(['unshare', '--net', 'sh', '-c', SWAP_WINDOW, 'swap'] + paths + [str(swaps)],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split()[-1])


@needs_kernel
def test_nothing_passes_while_the_table_is_swapped(tmp_path):
    transactions = [replace_transaction(rendered(allow_lan=lan)) for lan in (False, True)]
    assert _passed_during_swaps(tmp_path, transactions, 150) == 0
    # The control: the same swaps with the chains' closing drops taken out
    # (the last one and the counted one per family before it) must let
    # packets through, or this test could not see the window at all.
    without_last_drop = [re.sub(r'\t\tmeta nfproto ipv[46] counter name "refused_\w+" drop\n', '',
                                t.replace('\t\tdrop\n\t}', '\t}')) for t in transactions]
    assert without_last_drop != transactions
    assert _passed_during_swaps(tmp_path, without_last_drop, 150) > 0


def test_every_refusal_is_counted_by_its_class_and_each_exception_by_itself():
    text = rendered(dns_servers=['192.0.2.1'], doh_servers=['198.51.100.53'], exceptions=[{'uid': 998}, {'gid': 100}])
    for name in ('refused_out_v4', 'refused_out_v6', 'refused_dns_resolver', 'refused_dns_outside', 'refused_doh',
                 'refused_endpoint', 'refused_in_v4', 'refused_in_v6', 'refused_forward_v4', 'refused_forward_v6',
                 'exception_uid_998', 'exception_gid_100'):
        assert '\tcounter %s {\n\t}' % name in text
        assert 'counter name "%s"' % name in text
    output = chain(text, 'output')
    # Counted just before the chain's closing drop: nothing is counted on the tunnel's way out.
    assert output[-3:] == ['meta nfproto ipv4 counter name "refused_out_v4" drop',
                           'meta nfproto ipv6 counter name "refused_out_v6" drop', 'drop']
    tunnel_path = output[:output.index('oifname "wg0" accept') + 1]
    assert not any('counter' in rule or 'log' in rule for rule in tunnel_path)
    assert 'refused_endpoint' not in rendered(restrict_endpoints_to_tunnel=False)


def test_logging_is_off_by_default_and_rate_limited_with_the_reason_when_asked():
    assert ' log ' not in rendered(exceptions=[{'uid': 998}])
    refused = render(parse_policy(dict(BASE, exceptions=[{'uid': 998}])), 'refused')
    assert ('meta nfproto ipv4 limit rate 10/second burst 20 packets log prefix "vpnguard refused out-v4: " flags skuid'
            in chain(refused, 'output'))
    assert 'exception uid 998' not in refused
    exceptions = render(parse_policy(dict(BASE, exceptions=[{'uid': 998}])), 'exceptions')
    assert 'meta skuid 998 limit rate 10/second burst 20 packets log prefix "vpnguard exception uid 998: " flags skuid' in exceptions
    assert 'refused out-v4' not in exceptions
    every = render(parse_policy(dict(BASE, exceptions=[{'uid': 998}])), 'all')
    assert 'refused out-v4' in every and 'exception uid 998' in every
    # A log rule never decides: the counted rule after it does, limit spent or not.
    for rule in chain(every, 'output'):
        if ' log ' in rule:
            assert not rule.endswith(('accept', 'drop'))


def test_counter_values_are_no_drift_and_carry_over_a_replace():
    text = rendered()
    listing = text.replace('\tcounter refused_out_v4 {\n\t}', '\tcounter refused_out_v4 {\n\t\tpackets 7 bytes 420\n\t}')
    assert without_counter_values(listing) == without_counter_values(
        listing.replace('packets 7 bytes 420', 'packets 9 bytes 540'))
    carried = with_counter_values(text, {'refused_out_v4': (7, 420), 'gone_counter': (1, 1)})
    assert '\tcounter refused_out_v4 {\n\t\tpackets 7 bytes 420\n\t}' in carried
    assert carried.count('packets') == 1


def test_packets_for_another_interfaces_address_are_dropped_before_conntrack():
    text = rendered(management=[{'cidr': '198.18.0.0/24', 'port': 22, 'protocol': 'tcp'}])
    assert chain(text, 'prerouting') == [
        'type filter hook prerouting priority raw; policy accept;',
        'iifname "wg0" accept', 'iif "lo" accept',
        'fib daddr . iif type local accept',
        'ip saddr . meta l4proto . th dport @management_v4 accept',
        'fib daddr type local counter name "refused_other_interface" drop']


def test_only_the_exceptions_connections_are_accepted_by_state_on_the_way_in():
    assert not any('established' in r for r in chain(rendered(allow_lan=True), 'input'))
    text = rendered(exceptions=[{'uid': 1001}])
    assert [r for r in chain(text, 'input') if 'established' in r] == [
        'ct mark 0x0000564b ct state established,related accept']
    assert chain(text, 'bypass_route')[-1].endswith('ct mark set 0x0000564b')
    # ICMP errors about other flows are told by the packet they quote, not by conntrack.
    assert not any('ct ' in r for r in chain(rendered(allow_lan=True), 'input'))


def test_conntrack_is_asked_only_by_the_rules_that_need_state():
    def asks_conntrack(text):
        return bool(re.search(r'\bct (state|mark|direction)\b', text))
    quiet = dict(management=[{'cidr': '198.18.0.0/24', 'port': 22, 'protocol': 'tcp'}], allow_lan=True,
                 endpoints=ESP_ENDPOINTS)
    assert not asks_conntrack(rendered(**quiet))
    assert not needs_conntrack(parse_policy(dict(BASE, **quiet)), False)
    for changes, forwarding in (({'exceptions': [{'uid': 1001}]}, False),
                                ({'management': [{'cidr': '198.18.0.0/24', 'port': 161, 'protocol': 'udp'}]}, False),
                                ({}, True)):
        policy = parse_policy(dict(BASE, **changes))
        assert asks_conntrack(render(policy, forwarding=forwarding))
        assert needs_conntrack(policy, forwarding)


def test_a_forwarding_host_lets_replies_back_by_state_and_no_other_does():
    policy = parse_policy(dict(BASE, allow_lan=True))
    assert chain(render(policy), 'forward') == [
        'type filter hook forward priority filter; policy drop;',
        'meta l4proto { tcp, udp } th dport { 53, 853 } jump dns',
        'oifname "wg0" accept',
        'ip daddr @lan_v4 accept', 'ip6 daddr @lan_v6 accept',
        'meta nfproto ipv4 counter name "refused_forward_v4" drop',
        'meta nfproto ipv6 counter name "refused_forward_v6" drop', 'drop']
    assert [r for r in chain(render(policy, forwarding=True), 'forward') if 'ct state' in r] == [
        'iifname "wg0" ct state established,related accept',
        'ip saddr @lan_v4 ct state established,related accept',
        'ip6 saddr @lan_v6 ct state established,related accept']


def test_the_tunnels_packets_are_taken_by_the_first_rule_and_what_carries_them_next():
    text = rendered(tunnel_interfaces=['wg0', 'tun*'], dns_servers=['192.0.2.1'])
    assert chain(text, 'output')[1:6] == [
        'oifname "wg0" th dport != 53 th dport != 853 accept',
        'oifname "tun*" th dport != 53 th dport != 853 accept',
        'ip daddr 203.0.113.1 udp dport 51820 meta mark 0x0000ca6c accept',
        'ip daddr 203.0.113.1 udp dport 51820 meta skuid 0 accept',
        'oif "lo" accept']
    # DNS through the tunnel still goes to the DNS rules, and what has no ports to the tunnel's own rule.
    assert chain(text, 'output')[6:9] == ['meta l4proto { tcp, udp } th dport { 53, 853 } jump dns',
                                          'oifname "wg0" accept', 'oifname "tun*" accept']
    assert chain(text, 'input')[1:4] == ['iifname "wg0" accept', 'iifname "tun*" accept',
                                         'ip saddr 203.0.113.1 udp sport 51820 accept']


def test_icmp_errors_are_accepted_only_about_the_endpoints_and_the_management_replies():
    text = rendered(endpoints=[{'address': '203.0.113.1', 'port': 51820},
                               {'address': '2001:db8::1', 'ports': [500, 4500], 'protocols': ['udp', 'esp']}],
                    management=[{'cidr': '198.19.0.0/20', 'port': 22},
                                {'cidr': '2001:db8:19::/48', 'port': 161, 'protocol': 'udp'}])
    assert [r for r in chain(text, 'input') if 'jump icmp_error' in r] == [
        'icmp type { destination-unreachable, time-exceeded, parameter-problem } jump icmp_error_v4',
        'icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem } jump icmp_error_v6']
    # The quoted IPv4 header (IHL 5) at bit 64: protocol at 136, destination at 192, ports at 224/240.
    assert chain(text, 'icmp_error_v4') == [
        '@th,64,8 0x45 @th,136,8 0x11 @th,192,32 0xcb007101 @th,240,16 0xca6c accept '
        'comment "about the tunnel to 203.0.113.1 udp 51820"',
        '@th,64,8 0x45 @th,136,8 0x6 @th,192,24 & 0xfffff0 == 0xc61300 @th,224,16 0x16 accept '
        'comment "about management replies to 198.19.0.0/20 from tcp 22"']
    # The quoted IPv6 header: next header at 112, destination at 256, ports at 384/400; ESP has no ports.
    assert chain(text, 'icmp_error_v6') == [
        '@th,64,8 & 0xf0 == 0x60 @th,112,8 0x11 @th,256,128 0x20010db8000000000000000000000001 @th,400,16 0x1f4 '
        'accept comment "about the tunnel to 2001:db8::1 udp 500"',
        '@th,64,8 & 0xf0 == 0x60 @th,112,8 0x11 @th,256,128 0x20010db8000000000000000000000001 @th,400,16 0x1194 '
        'accept comment "about the tunnel to 2001:db8::1 udp 4500"',
        '@th,64,8 & 0xf0 == 0x60 @th,112,8 0x32 @th,256,128 0x20010db8000000000000000000000001 '
        'accept comment "about the tunnel to 2001:db8::1 esp"',
        '@th,64,8 & 0xf0 == 0x60 @th,112,8 0x11 @th,256,48 0x20010db80019 @th,384,16 0xa1 '
        'accept comment "about management replies to 2001:db8:19::/48 from udp 161"']
    # No endpoint of a family, no management network of it: no chain, no jump.
    assert '\tchain icmp_error_v6' not in rendered()


def test_dhcp_and_neighbour_discovery_are_held_to_their_protocols_addresses():
    output, input_ = chain(rendered(), 'output'), chain(rendered(), 'input')
    assert 'udp sport 68 udp dport 67 ip daddr 255.255.255.255 accept' in output
    assert [r for r in output if 'dport 67' in r or 'dport 547' in r or 'icmpv6' in r] == [
        'udp sport 68 udp dport 67 ip daddr 255.255.255.255 accept',
        'udp sport 546 udp dport 547 ip6 saddr fe80::/10 ip6 daddr { ff02::1:2, ff05::1:3 } accept',
        'icmpv6 type nd-router-solicit ip6 daddr ff02::2 ip6 hoplimit 255 accept',
        'icmpv6 type nd-neighbor-solicit ip6 daddr { fe80::/10, ff02::1:ff00:0/104 } ip6 hoplimit 255 accept',
        'icmpv6 type nd-neighbor-advert ip6 daddr { fe80::/10, ff02::1 } ip6 hoplimit 255 accept',
        'icmpv6 type mld2-listener-report ip6 daddr ff02::16 ip6 hoplimit 1 accept',
        # The kernel's own solicitations and advertisements to a unicast neighbour, a global one too;
        # a program's (it has a socket file, so an owner) are refused.
        'icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } meta skuid 0-4294967295 '
        'counter name "refused_out_v6" drop',
        'icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept']
    assert 'icmpv6 type nd-router-advert ip6 saddr fe80::/10 ip6 hoplimit 255 accept' in input_
    assert all('hoplimit 255' in r for r in input_ if r.startswith('icmpv6'))


ESP_ENDPOINTS = [{'address': '203.0.113.1', 'ports': [500, 4500], 'protocols': ['udp', 'esp'], 'mark': 42},
                 {'address': '2001:db8::1', 'protocol': 'esp'}]


def test_esp_goes_to_its_server_only_with_the_sas_output_mark_or_from_root_and_comes_in_from_it():
    text = rendered(tunnel_interfaces=['ipsec0'], endpoints=ESP_ENDPOINTS)
    output, input_ = chain(text, 'output'), chain(text, 'input')
    assert 'ip daddr { 203.0.113.1 } meta l4proto esp meta mark 0x0000002a accept' in output
    assert 'ip daddr { 203.0.113.1 } meta l4proto esp meta skuid 0 accept' in output
    assert 'ip6 daddr { 2001:db8::1 } meta l4proto esp meta mark 0x0000ca6c accept' in output
    assert 'ip daddr { 203.0.113.1 } meta l4proto esp counter name "refused_endpoint" drop' in output
    assert 'ip saddr { 203.0.113.1 } meta l4proto esp accept' in input_
    assert 'ip6 saddr { 2001:db8::1 } meta l4proto esp accept' in input_
    # ESP never reaches the endpoint sets, whose th dport would read its SPI.
    assert 'esp . ' not in text and '203.0.113.1 . udp . 4500' in text
    assert not [line for line in output if 'esp' in line and 'skuid' in line and 'skuid 0 ' not in line]


@needs_kernel
@pytest.mark.parametrize('restrict', [True, False])
def test_the_kernel_accepts_esp_endpoints(restrict):
    endpoints = ESP_ENDPOINTS if restrict else [dict(e, mark=None) for e in ESP_ENDPOINTS]
    transaction = replace_transaction(rendered(tunnel_interfaces=['ipsec0'], endpoints=endpoints,
                                               restrict_endpoints_to_tunnel=restrict))
    result = subprocess.run(['unshare', '--net', 'nft', '-c', '-f', '-'], input=transaction,
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr + transaction
