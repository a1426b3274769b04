"""The Windows Firewall renderer: exact specs, address arithmetic, and the specs run against a model of the firewall."""

import ipaddress

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from ansible_collections.vpnguard.killswitch.plugins.module_utils import win_firewall as wf
from ansible_collections.vpnguard.killswitch.plugins.module_utils.policy import LAN_NETWORKS, PolicyError, parse_policy

from policy_strategies import networks, policies as policy_strategies, ports, v4, v6
from win_model import WINDOWS_DEFAULTS, Firewall, packet

BASE = {'tunnel_interfaces': ['wg0'], 'endpoints': [{'address': '203.0.113.1', 'port': 51820, 'protocol': 'udp'}]}
INTERFACES = ['wg0', 'Ethernet', 'Wi-Fi', 'OpenVPN TAP-Windows6']


def policy_of(**changes):
    raw = dict(BASE)
    raw.update(changes)
    return parse_policy(raw, system='Windows')


def rules_by_name(rendered):
    return dict((r['Name'], r) for r in rendered['rules'])


def test_the_tunnel_and_the_endpoint_are_allow_rules_in_our_group():
    rules = rules_by_name(wf.render(policy_of()))
    assert rules['vpnguard-killswitch-tunnel-out'] == {
        'Name': 'vpnguard-killswitch-tunnel-out', 'DisplayName': 'vpnguard-killswitch: the tunnel carries everything',
        'Group': 'vpnguard-killswitch', 'Direction': 'Outbound', 'Action': 'Allow', 'Profile': 'Any',
        'Enabled': 'True', 'InterfaceAlias': ['wg0']}
    assert rules['vpnguard-killswitch-endpoint-0'] == {
        'Name': 'vpnguard-killswitch-endpoint-0', 'DisplayName': 'vpnguard-killswitch: VPN server 203.0.113.1 udp/51820',
        'Group': 'vpnguard-killswitch', 'Direction': 'Outbound', 'Action': 'Allow', 'Profile': 'Any',
        'Enabled': 'True', 'Protocol': 'UDP', 'RemoteAddress': ['203.0.113.1'], 'RemotePort': ['51820']}
    assert all(r['Name'].startswith('vpnguard-killswitch-') and r['Group'] == 'vpnguard-killswitch'
               and r['DisplayName'].startswith('vpnguard-killswitch: ') for r in rules.values())
    assert len(rules) == len(wf.render(policy_of())['rules']), 'rule names are unique'


def test_the_only_block_rules_keep_dns_from_other_resolvers_on_every_interface():
    rendered = wf.render(policy_of(dns_servers=['192.0.2.1', '2001:db8:ff::1'], allow_lan=True))
    blocks = [r for r in rendered['rules'] if r['Action'] == 'Block']
    assert [r['Name'] for r in blocks] == ['vpnguard-killswitch-dns-other-tcp', 'vpnguard-killswitch-dns-other-udp']
    udp = blocks[1]
    assert udp['RemotePort'] == ['53', '853'] and 'InterfaceAlias' not in udp
    assert udp['RemoteAddress'] == ['0.0.0.0-192.0.2.0', '192.0.2.2-255.255.255.255',
                                    '::-2001:db8:ff::', '2001:db8:ff::2-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff']
    assert not any(r['Action'] == 'Block' for r in wf.render(policy_of())['rules']), \
        'without resolvers, DNS is held by the default Block alone'


def test_profiles_block_outbound_by_default_and_stop_merging_local_rules():
    rendered = wf.render(policy_of())
    assert rendered['policy_store'] == 'localhost'
    assert rendered['profiles'] == {'Name': ['Domain', 'Private', 'Public'], 'Enabled': 'True',
                                    'DefaultOutboundAction': 'Block', 'AllowLocalFirewallRules': 'False'}
    assert wf.render(policy_of(), merge_local_rules=True)['profiles']['AllowLocalFirewallRules'] == 'NotConfigured'


def test_the_resolver_is_an_nrpt_rule_for_every_name():
    assert wf.render(policy_of(dns_servers=['192.0.2.1']))['dns'] == {
        'servers': ['192.0.2.1'], 'namespace': '.', 'comment': 'vpnguard-killswitch'}


def test_lan_and_exception_rules_name_every_port_but_dns():
    rules = rules_by_name(wf.render(policy_of(allow_lan=True, exceptions=[{'program': 'C:\\Tools\\backup.exe'}])))
    assert rules['vpnguard-killswitch-lan-udp']['RemotePort'] == ['1-52', '54-852', '854-65535']
    assert rules['vpnguard-killswitch-exception-0-tcp']['Program'] == 'C:\\Tools\\backup.exe'
    assert rules['vpnguard-killswitch-exception-0-tcp']['RemotePort'] == ['1-52', '54-852', '854-65535']


def test_endpoint_programs_restrict_the_endpoint_to_the_vpn_client():
    rules = wf.render(policy_of(), endpoint_programs=['C:\\Program Files\\WireGuard\\wireguard.exe'])['rules']
    endpoint = [r for r in rules if r['Name'].startswith('vpnguard-killswitch-endpoint-0-program')]
    assert [r['Program'] for r in endpoint] == ['C:\\Program Files\\WireGuard\\wireguard.exe']


def test_address_arithmetic():
    assert wf.addresses(['10.0.0.0/8'], ['10.0.0.5']) == ['10.0.0.0-10.0.0.4', '10.0.0.6-10.255.255.255']
    assert wf.everything_but([]) == ['0.0.0.0-255.255.255.255', '::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff']
    assert wf.everything_but(['0.0.0.0']) == ['0.0.0.1-255.255.255.255', '::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff']
    assert wf.ports_but([53, 853]) == ['1-52', '54-852', '854-65535']
    assert wf.ports_but([1, 65535]) == ['2-65534']


@pytest.mark.parametrize('exception, setting', [({'uid': 1000}, 'exceptions[0].uid'),
                                                ({'cgroup': 'system.slice/x'}, 'exceptions[0].cgroup')])
def test_exceptions_windows_cannot_select_are_refused_with_their_setting(exception, setting):
    with pytest.raises(PolicyError) as error:
        policy_of(exceptions=[exception])
    assert error.value.setting == setting
    with pytest.raises(PolicyError) as error:
        wf.render(parse_policy(dict(BASE, exceptions=[exception])))
    assert error.value.setting == setting


def test_windows_aliases_may_hold_spaces_but_not_quotes():
    assert policy_of(tunnel_interfaces=['OpenVPN TAP-Windows6', 'WireGuard*']).tunnel_interfaces == (
        'OpenVPN TAP-Windows6', 'WireGuard*')
    for bad in ['wg0"; Remove-Item C:\\', ' wg0', '*', 'a$b']:
        with pytest.raises(PolicyError) as error:
            policy_of(tunnel_interfaces=[bad])
        assert error.value.setting == 'tunnel_interfaces[0]'


# The specs against the model -------------------------------------------------

def test_windows_own_allow_rules_cannot_carry_traffic_around_the_tunnel():
    rendered = wf.render(policy_of(dns_servers=['192.0.2.1']))
    fw = Firewall(rendered, INTERFACES, WINDOWS_DEFAULTS)
    assert not fw.allows(packet(program='C:\\Program Files (x86)\\Microsoft\\Edge\\Application\\msedge.exe'))
    assert not fw.allows(packet(proto='UDP', dst='198.51.100.53', dport=53))
    assert fw.allows(packet(iface='wg0'))
    merged = Firewall(wf.render(policy_of(dns_servers=['192.0.2.1']), merge_local_rules=True), INTERFACES,
                      WINDOWS_DEFAULTS)
    assert merged.allows(packet()), 'merging brings an installer\'s allow-everything back, as documented'
    assert not merged.allows(packet(proto='UDP', dst='198.51.100.53', dport=53)), 'the DNS block beats it'


def test_management_is_reachable_inbound_and_the_host_cannot_open_to_it():
    fw = Firewall(wf.render(policy_of(management=[{'cidr': '198.18.0.0/24', 'port': 5986, 'protocol': 'tcp'}])),
                  INTERFACES)
    assert fw.allows(packet('Inbound', dst='198.18.0.1', sport=50000, dport=5986))
    assert not fw.allows(packet('Inbound', dst='198.18.0.1', sport=50000, dport=3389))
    assert not fw.allows(packet(dst='198.18.0.1', dport=5986))


PROGRAMS = ['C:\\Tools\\backup.exe', '%ProgramFiles%\\Sync\\sync.exe']
policies = policy_strategies(
    tunnel_interfaces=st.lists(st.sampled_from(['wg0', 'OpenVPN*', 'Wintun Userspace Tunnel']), min_size=1, max_size=2),
    exceptions=[{'program': p} for p in PROGRAMS],
    management_networks=networks(st.ip_addresses(v=4) | st.ip_addresses(v=6), st.integers(8, 32)))
WIN_INTERFACES = ['wg0', 'OpenVPN TAP-Windows6', 'OpenVPN Wintun', 'Wintun Userspace Tunnel', 'Ethernet', 'Wi-Fi']


@st.composite
def scenarios(draw):
    raw = draw(policies)
    policy = parse_policy(raw, system='Windows')
    addresses = ([str(e.address) for e in policy.endpoints] + [str(a) for a in policy.dns_servers]
                 + [str(a) for a in policy.doh_servers] + ['192.168.1.1', 'fe80::1', '10.64.0.1', '198.51.100.7'])
    dst = draw(st.sampled_from(addresses) | v4 | v6)
    wanted_ports = [e.port for e in policy.endpoints] + [53, 853, 67, 547, 443]
    version = ipaddress.ip_address(dst).version
    proto = draw(st.sampled_from(['TCP', 'UDP', 'ICMPv4' if version == 4 else 'ICMPv6']))
    icmp = (draw(st.sampled_from([8, 128, 133, 135, 136, 143])), 0) if proto.startswith('ICMP') else None
    p = packet(iface=draw(st.sampled_from(WIN_INTERFACES)), proto=proto, dst=dst,
               sport=draw(st.sampled_from([68, 546, 40000]) | ports), dport=draw(st.sampled_from(wanted_ports) | ports),
               icmp=icmp, program=draw(st.sampled_from(PROGRAMS + ['C:\\Windows\\System32\\svchost.exe'])))
    return raw, policy, p


def _tunnel(policy, iface):
    import fnmatch
    return any(fnmatch.fnmatchcase(iface, t) for t in policy.tunnel_interfaces)


def intended(policy, p):
    """What the policy means for an outbound packet."""
    via_tunnel = _tunnel(policy, p.iface)
    if p.proto in ('TCP', 'UDP') and p.dport in (53, 853):
        return via_tunnel and (not policy.dns_servers or p.dst in policy.dns_servers)
    if via_tunnel:
        return True
    if p.dst in policy.doh_servers:
        return False
    if any((p.dst, p.dport, p.proto) == (e.address, e.port, e.protocol.upper()) for e in policy.endpoints):
        return True
    if p.proto == 'UDP' and (p.sport, p.dport) in ((68, 67), (546, 547)):
        return True
    if p.proto == 'ICMPv6' and p.icmp[0] in (133, 135, 136, 143):
        return True
    if policy.allow_lan and any(p.dst.version == n.version and p.dst in n for n in LAN_NETWORKS):
        return True
    if any(e.value.lower() == p.program.lower() for e in policy.exceptions):
        return True
    return False


PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(scenarios(), st.booleans())
def test_the_rules_decide_every_outbound_packet_as_the_policy_means(scenario, windows_defaults):
    raw, policy, p = scenario
    fw = Firewall(wf.render(policy), WIN_INTERFACES, WINDOWS_DEFAULTS if windows_defaults else ())
    assert fw.allows(p) == intended(policy, p), p


@PROPERTY
@given(scenarios())
def test_nothing_leaves_outside_the_tunnel_unless_the_policy_names_it(scenario):
    raw, policy, p = scenario
    assume(not _tunnel(policy, p.iface))
    assume(not any(p.dst == e.address for e in policy.endpoints))
    assume(not (policy.allow_lan and any(p.dst.version == n.version and p.dst in n for n in LAN_NETWORKS)))
    assume(not any(e.value.lower() == p.program.lower() for e in policy.exceptions))
    assume(not (p.proto == 'UDP' and (p.sport, p.dport) in ((68, 67), (546, 547))))
    assume(not (p.proto == 'ICMPv6' and p.icmp[0] in (133, 135, 136, 143)))
    assert not Firewall(wf.render(policy), WIN_INTERFACES, WINDOWS_DEFAULTS).allows(p)


@PROPERTY
@given(scenarios())
def test_dns_to_another_resolver_is_blocked_even_through_the_tunnel_and_by_exceptions(scenario):
    raw, policy, p = scenario
    if not policy.dns_servers:
        policy = parse_policy(dict(raw, dns_servers=['192.0.2.53']), system='Windows')
    assume(p.dst not in policy.dns_servers)
    p = p._replace(proto='UDP' if not p.proto.startswith('T') else 'TCP', dport=53, icmp=None)
    fw = Firewall(wf.render(policy, merge_local_rules=True), WIN_INTERFACES, WINDOWS_DEFAULTS)
    assert not fw.allows(p)
    assert not fw.allows(p._replace(dport=853))
