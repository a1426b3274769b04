import os
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ansible_collections.vpnguard.killswitch.plugins.module_utils.nft import TABLE, render, replace_transaction
from ansible_collections.vpnguard.killswitch.plugins.module_utils.policy import parse_policy

from policy_strategies import networks, policies as policy_strategies

needs_kernel = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which('nft') or not shutil.which('unshare'),
                                  reason='needs root, nft and unshare to ask the kernel')

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
        'oifname "wg0" ip daddr @dns_v4 accept', 'oifname "wg0" ip6 daddr @dns_v6 accept', 'drop']


def test_without_dns_servers_dns_still_only_goes_through_the_tunnel():
    assert chain(rendered(), 'dns') == ['oifname "wg0" accept', 'drop']


def test_endpoints_are_only_for_the_tunnels_own_packets():
    output = chain(rendered(), 'output')
    endpoint_rules = [r for r in output if '@endpoints_v4' in r]
    assert endpoint_rules == ['ip daddr . meta l4proto . th dport @endpoints_v4 meta mark 0x0000ca6c accept',
                              'ip daddr . meta l4proto . th dport @endpoints_v4 meta skuid 0 accept']
    assert not any('@endpoints_v6' in r for r in output), 'no rule for a family without endpoints'
    open_rules = [r for r in chain(rendered(restrict_endpoints_to_tunnel=False), 'output') if '@endpoints' in r]
    assert open_rules == ['ip daddr . meta l4proto . th dport @endpoints_v4 accept']


def test_each_endpoint_is_for_its_own_users_and_mark():
    output = chain(rendered(endpoints=[
        {'address': '203.0.113.1', 'port': 1194, 'uid': [65534]},
        {'address': '203.0.113.2', 'port': 443, 'protocols': ['tcp', 'udp'], 'uid': [65534, 0], 'mark': 7},
        {'address': '2001:db8::1', 'ports': [500, 4500]}]), 'output')
    assert [r for r in output if 'th dport' in r and 'dns' not in r] == [
        'ip daddr . meta l4proto . th dport { 203.0.113.1 . udp . 1194 } meta mark 0x0000ca6c accept',
        'ip daddr . meta l4proto . th dport { 203.0.113.1 . udp . 1194 } meta skuid { 0, 65534 } accept',
        'ip daddr . meta l4proto . th dport { 203.0.113.2 . tcp . 443, 203.0.113.2 . udp . 443 } '
        'meta mark 0x00000007 accept',
        'ip daddr . meta l4proto . th dport { 203.0.113.2 . tcp . 443, 203.0.113.2 . udp . 443 } '
        'meta skuid { 0, 65534 } accept',
        'ip6 daddr . meta l4proto . th dport @endpoints_v6 meta mark 0x0000ca6c accept',
        'ip6 daddr . meta l4proto . th dport @endpoints_v6 meta skuid 0 accept']


def test_no_blanket_established_accept_on_the_way_out():
    text = rendered(management=[{'cidr': '198.18.0.0/24', 'port': 22, 'protocol': 'tcp'}], allow_lan=True)
    for rule in chain(text, 'output'):
        assert 'ct state' not in rule
        assert 'established' not in rule
    assert 'ip daddr . meta l4proto . th sport @management_v4 tcp flags & (syn | ack) != syn accept' in chain(text, 'output')
    assert 'ip daddr . meta l4proto . th sport @management_v4 meta l4proto udp ct direction reply accept' in chain(text, 'output')


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
    assert 'meta skuid @bypass_uids accept' in chain(text, 'output')
    assert 'socket cgroupv2 level 2 "system.slice/backup.service" accept' in chain(text, 'output')
    assert 'meta skuid @bypass_uids meta mark set 0x0000564b' in chain(text, 'bypass_route')
    assert 'chain bypass_route' not in rendered()


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
    assert output.index('ip daddr @doh_v4 drop') == output.index('oifname "wg0" accept') + 1
    assert output.index('ip6 daddr @doh_v6 drop') < output.index('ip daddr @lan_v4 accept')
    assert output.index('ip6 daddr @doh_v6 drop') < output.index('meta skuid @bypass_uids accept')
    assert 'ip daddr @doh_v4 drop' in chain(text, 'forward')
    assert 'doh_v4 drop' not in rendered()


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
    # The control: the same swaps with the chains' last drop taken out must
    # let packets through, or this test could not see the window at all.
    without_last_drop = [t.replace('\t\tdrop\n\t}', '\t}') for t in transactions]
    assert without_last_drop != transactions
    assert _passed_during_swaps(tmp_path, without_last_drop, 150) > 0
