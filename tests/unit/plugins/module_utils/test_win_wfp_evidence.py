"""The Windows evidence (issue 15): the renderer's counter map, and the live probe's packets run against the model
of WFP arbitration (tests/unit/win_model.py).

The probe (WfpKillSwitch.cs, ProbeVerdict and Host) binds sockets to every global address of every interface that
is not a tunnel and sends to the canaries from the module's own process (powershell.exe): in the model, each of
those packets must be blocked by a filter of ours, whatever Windows Firewall says, and the filter that blocks it
must count in one of the Linux counter names, so that the drop event the BFE logs both proves the refusal and
counts it. The control: without the kill switch the same packets pass, so the check can fail.
"""

import fnmatch
import ipaddress

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from ansible_collections.vpnguard.killswitch.plugins.module_utils import nft
from ansible_collections.vpnguard.killswitch.plugins.module_utils import win_wfp as wfp
from ansible_collections.vpnguard.killswitch.plugins.module_utils.policy import parse_policy

import win_model as wm
from policy_strategies import networks, policies as policy_strategies

ADAPTERS = ['wg0', 'OpenVPN TAP-Windows6', 'Wintun Userspace Tunnel', 'Ethernet', 'Wi-Fi', 'vEthernet (WSL)']
PROGRAMS = ['C:\\Tools\\backup.exe', '%ProgramFiles%\\Sync\\sync.exe']
WIREGUARD = 'C:\\Program Files\\WireGuard\\wireguard.exe'
MODULE_PROCESS = 'C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe'
CANARIES = ('203.0.113.254', '2001:db8:ffff::fe')  # the role's defaults
PROBE_PORT, DNS_PORT = 9, 53

policies = policy_strategies(
    tunnel_interfaces=st.lists(st.sampled_from(['wg0', 'OpenVPN*', 'Wintun Userspace Tunnel']), min_size=1, max_size=2),
    exceptions=[{'program': p} for p in PROGRAMS],
    management_networks=networks(st.ip_addresses(v=4) | st.ip_addresses(v=6), st.integers(8, 32)))


def probe_packets(policy):
    """What ProbeVerdict.Plan sends: udp, tcp and dns bound to each non-tunnel adapter, dns to a non-tunnel resolver."""
    out = []
    for iface in ADAPTERS:
        # As the model binds aliases (and TunnelBinding.AliasMatches: a trailing '*' is a prefix wildcard).
        if any(fnmatch.fnmatchcase(iface, p) for p in policy.tunnel_interfaces):
            continue
        for canary in CANARIES:
            out += [wm.packet(wm.OUT, iface=iface, proto='UDP', remote=canary, local_port=50000, remote_port=PROBE_PORT,
                              program=MODULE_PROCESS),
                    wm.packet(wm.OUT, iface=iface, proto='TCP', remote=canary, local_port=50001, remote_port=PROBE_PORT,
                              program=MODULE_PROCESS),
                    wm.packet(wm.OUT, iface=iface, proto='UDP', remote=canary, local_port=50002, remote_port=DNS_PORT,
                              program=MODULE_PROCESS)]
    return out


def deciding_filter(rendered, p, bindings):
    """[ARB] inside our sublayer: the highest-weight matching filter."""
    for f in sorted(rendered['filters'], key=lambda f: -f['weight']):
        if wm.filter_matches(f, p, bindings):
            return f
    return None


PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(policies, st.sampled_from([[], [WIREGUARD]]),
       st.sampled_from([wm.WINDOWS_DEFAULTS, wm.ALLOW_EVERYTHING]), st.sampled_from([wm.RUNNING, wm.MPSSVC_STOPPED]))
def test_every_probe_packet_is_blocked_by_a_counted_filter_of_ours(raw, programs, admin, state):
    policy = parse_policy(raw, system='Windows')
    # A canary that is a VPN endpoint would be let out by the endpoint's permit: the probe would say LEAKED, rightly.
    assume(not any(str(e.address) in CANARIES for e in policy.endpoints))
    rendered = wfp.render(policy, endpoint_programs=programs)
    host = wm.Host(rendered, ADAPTERS, firewall=admin, state=state)
    for p in probe_packets(policy):
        assert not host.allows(p), p
        f = deciding_filter(rendered, p, host.bindings)
        assert f is not None and f['action'] == 'BLOCK', (p, f)
        rules = rendered['counters']['filters'][f['name']]
        assert rules and rules[-1]['counter'] in rendered['counters']['names'], (f['name'], rules)


def test_control_without_the_kill_switch_the_probe_packets_pass():
    policy = parse_policy({'tunnel_interfaces': ['wg0'], 'dns_servers': ['192.0.2.1']}, system='Windows')
    rendered = wfp.render(policy)
    empty = dict(rendered, filters=[])
    packets = probe_packets(policy)
    assert packets and all(wm.Host(empty, ADAPTERS).allows(p) for p in packets)
    assert not any(wm.Host(rendered, ADAPTERS).allows(p) for p in packets)


def test_the_probe_of_a_host_whose_exceptions_name_the_module_process_leaks_and_says_so():
    # An exception for powershell.exe lets the probe's own sockets out: the probe must then not pass.
    policy = parse_policy({'tunnel_interfaces': ['wg0'], 'exceptions': [{'program': MODULE_PROCESS}]}, system='Windows')
    host = wm.Host(wfp.render(policy), ADAPTERS)
    assert any(host.allows(p) for p in probe_packets(policy))


def test_every_block_and_every_exception_counts_and_nothing_else_does():
    policy = parse_policy({'tunnel_interfaces': ['wg0'], 'dns_servers': ['192.0.2.1', '2001:db8::53'],
                           'doh_servers': ['198.51.100.9'], 'allow_lan': True,
                           'endpoints': [{'address': '203.0.113.1', 'port': 51820, 'protocol': 'udp'}],
                           'exceptions': [{'program': PROGRAMS[0]}]}, system='Windows')
    rendered = wfp.render(policy, endpoint_programs=[WIREGUARD])
    counted = rendered['counters']['filters']
    for f in rendered['filters']:
        exception = f['name'].startswith(wfp.NAME + '-exception-')
        assert (f['name'] in counted) == (f['action'] == 'BLOCK' or exception), f['name']
    names = rendered['counters']['names']
    used = set(r['counter'] for rules in counted.values() for r in rules)
    assert used == set(names), 'every counter has a filter, every filter rule a counter'
    linux = set(nft.REFUSED_COUNTERS)
    assert {n for n in names if n.startswith('refused_')} <= linux, 'the same names as on Linux'
    assert counted[wfp.NAME + '-dns-block-v4'] == [
        dict(counter='refused_dns_outside', remote=['192.0.2.1/32', '2001:db8::53/128']),
        dict(counter='refused_dns_resolver')]
    assert counted[wfp.NAME + '-block-all-out-v4'][0] == dict(counter='refused_endpoint', remote=['203.0.113.1/32'],
                                                              remote_port=51820, protocol=17)
    assert names[nft.exception_counter(policy.exceptions[0])] == 'exception program: %s used' % PROGRAMS[0]


@pytest.mark.parametrize('programs, expected', [([], False), ([WIREGUARD], True)])
def test_refused_endpoint_exists_only_when_other_programs_are_kept_from_the_endpoints(programs, expected):
    policy = parse_policy({'tunnel_interfaces': ['wg0'],
                           'endpoints': [{'address': '203.0.113.1', 'port': 51820, 'protocol': 'udp'}]}, system='Windows')
    assert ('refused_endpoint' in wfp.render(policy, endpoint_programs=programs)['counters']['names']) == expected


def test_without_resolvers_every_dns_refusal_is_outside_the_tunnel():
    policy = parse_policy({'tunnel_interfaces': ['wg0']}, system='Windows')
    counted = wfp.render(policy)['counters']['filters']
    assert counted[wfp.NAME + '-dns-block-v6'] == [dict(counter='refused_dns_outside')]
    assert ipaddress.ip_address(CANARIES[0]) in ipaddress.ip_network('203.0.113.0/24'), 'a documentation address'
