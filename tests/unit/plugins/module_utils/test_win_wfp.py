"""The WFP renderer: the exact filter set per policy, and the filters run against the model of WFP arbitration.

Tests named test_point<N>_... prove the issue-11 point N (see the changelog
fragment); each has a control (the design before, Windows Firewall rules
only) that the same check catches, so that no check passes by construction.
"""

import fnmatch
import ipaddress
import uuid

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from ansible_collections.vpnguard.killswitch.plugins.module_utils import win_wfp as wfp
from ansible_collections.vpnguard.killswitch.plugins.module_utils.policy import (
    DNS_PORTS, LAN_NETWORKS, PolicyError, parse_policy)

import win_model as wm
from policy_strategies import networks, policies as policy_strategies, ports, v4, v6

BASE = {'tunnel_interfaces': ['wg0'], 'endpoints': [{'address': '203.0.113.1', 'port': 51820, 'protocol': 'udp'}]}
ADAPTERS = ['wg0', 'OpenVPN TAP-Windows6', 'Wintun Userspace Tunnel', 'Ethernet', 'Wi-Fi']
WIREGUARD = 'C:\\Program Files\\WireGuard\\wireguard.exe'
PROGRAMS = ['C:\\Tools\\backup.exe', '%ProgramFiles%\\Sync\\sync.exe']


def policy_of(**changes):
    return parse_policy(dict(BASE, **changes), system='Windows')


def summary(filters):
    return [(f['name'], f['layer'], f['action'], f['weight'], [(c['field'], c['value']) for c in f['conditions']])
            for f in filters]


# The exact filter set ----------------------------------------------------------

def test_the_filter_set_for_a_tunnel_an_endpoint_and_a_resolver():
    rendered = wfp.render(policy_of(dns_servers=['192.0.2.1']))
    c4, c6 = 'ALE_AUTH_CONNECT_V4', 'ALE_AUTH_CONNECT_V6'
    a4, a6 = 'ALE_AUTH_RECV_ACCEPT_V4', 'ALE_AUTH_RECV_ACCEPT_V6'
    loopback = [('FLAGS', 'IS_LOOPBACK')]
    dns = [('IP_PROTOCOL', 6), ('IP_PROTOCOL', 17), ('IP_REMOTE_PORT', 53), ('IP_REMOTE_PORT', 853)]
    wg0 = [('IP_LOCAL_INTERFACE', 'wg0')]
    assert summary(rendered['filters']) == [
        ('vpnguard-killswitch-loopback-out-v4', c4, 'PERMIT', 15, loopback),
        ('vpnguard-killswitch-loopback-out-v6', c6, 'PERMIT', 15, loopback),
        ('vpnguard-killswitch-loopback-in-v4', a4, 'PERMIT', 15, loopback),
        ('vpnguard-killswitch-loopback-in-v6', a6, 'PERMIT', 15, loopback),
        ('vpnguard-killswitch-dns-tunnel-v4', c4, 'PERMIT', 14, wg0 + dns + [('IP_REMOTE_ADDRESS', '192.0.2.1/32')]),
        ('vpnguard-killswitch-dns-block-v4', c4, 'BLOCK', 13, dns),
        ('vpnguard-killswitch-dns-block-v6', c6, 'BLOCK', 13, dns),
        ('vpnguard-killswitch-tunnel-out-v4', c4, 'PERMIT', 12, wg0),
        ('vpnguard-killswitch-tunnel-out-v6', c6, 'PERMIT', 12, wg0),
        ('vpnguard-killswitch-tunnel-in-v4', a4, 'PERMIT', 12, wg0),
        ('vpnguard-killswitch-tunnel-in-v6', a6, 'PERMIT', 12, wg0),
        ('vpnguard-killswitch-endpoint-0', c4, 'PERMIT', 10,
         [('IP_REMOTE_ADDRESS', '203.0.113.1/32'), ('IP_REMOTE_PORT', 51820), ('IP_PROTOCOL', 17)]),
        ('vpnguard-killswitch-dhcp-out', c4, 'PERMIT', 9, [('IP_PROTOCOL', 17), ('IP_LOCAL_PORT', 68),
                                                           ('IP_REMOTE_PORT', 67),
                                                           ('IP_REMOTE_ADDRESS', '255.255.255.255/32')]),
        ('vpnguard-killswitch-dhcpv6-out', c6, 'PERMIT', 9, [('IP_PROTOCOL', 17), ('IP_LOCAL_PORT', 546),
                                                             ('IP_REMOTE_PORT', 547),
                                                             ('IP_REMOTE_ADDRESS', 'ff02::1:2/128'),
                                                             ('IP_REMOTE_ADDRESS', 'ff05::1:3/128')]),
        ('vpnguard-killswitch-ndp-133-out', c6, 'PERMIT', 9, [('IP_PROTOCOL', 58), ('ICMP_TYPE', 133),
                                                              ('IP_REMOTE_ADDRESS', 'ff02::2/128')]),
        ('vpnguard-killswitch-ndp-135-out', c6, 'PERMIT', 9, [('IP_PROTOCOL', 58), ('ICMP_TYPE', 135),
                                                              ('IP_REMOTE_ADDRESS', 'ff02::1:ff00:0/104'),
                                                              ('IP_REMOTE_ADDRESS', 'fe80::/10')]),
        ('vpnguard-killswitch-ndp-136-out', c6, 'PERMIT', 9, [('IP_PROTOCOL', 58), ('ICMP_TYPE', 136),
                                                              ('IP_REMOTE_ADDRESS', 'ff02::1/128'),
                                                              ('IP_REMOTE_ADDRESS', 'fe80::/10')]),
        ('vpnguard-killswitch-ndp-143-out', c6, 'PERMIT', 9, [('IP_PROTOCOL', 58), ('ICMP_TYPE', 143),
                                                              ('IP_REMOTE_ADDRESS', 'ff02::16/128')]),
        ('vpnguard-killswitch-dhcp-in', a4, 'PERMIT', 9, [('IP_PROTOCOL', 17), ('IP_LOCAL_PORT', 68),
                                                          ('IP_REMOTE_PORT', 67)]),
        ('vpnguard-killswitch-dhcpv6-in', a6, 'PERMIT', 9, [('IP_PROTOCOL', 17), ('IP_LOCAL_PORT', 546),
                                                            ('IP_REMOTE_PORT', 547)]),
        ('vpnguard-killswitch-ndp-134-in', a6, 'PERMIT', 9, [('IP_PROTOCOL', 58), ('ICMP_TYPE', 134),
                                                             ('IP_REMOTE_ADDRESS', 'fe80::/10')]),
        ('vpnguard-killswitch-ndp-135-in', a6, 'PERMIT', 9, [('IP_PROTOCOL', 58), ('ICMP_TYPE', 135),
                                                             ('IP_REMOTE_ADDRESS', 'fe80::/10')]),
        ('vpnguard-killswitch-ndp-136-in', a6, 'PERMIT', 9, [('IP_PROTOCOL', 58), ('ICMP_TYPE', 136),
                                                             ('IP_REMOTE_ADDRESS', 'fe80::/10')]),
        ('vpnguard-killswitch-ndp-137-in', a6, 'PERMIT', 9, [('IP_PROTOCOL', 58), ('ICMP_TYPE', 137),
                                                             ('IP_REMOTE_ADDRESS', 'fe80::/10')]),
        ('vpnguard-killswitch-block-all-out-v4', c4, 'BLOCK', 0, []),
        ('vpnguard-killswitch-block-all-out-v6', c6, 'BLOCK', 0, []),
        ('vpnguard-killswitch-block-all-in-v4', a4, 'BLOCK', 0, []),
        ('vpnguard-killswitch-block-all-in-v6', a6, 'BLOCK', 0, []),
        ('vpnguard-killswitch-forward-tunnel-v4', 'IPFORWARD_V4', 'PERMIT', 12, [('IP_FORWARD_INTERFACE', 'wg0')]),
        ('vpnguard-killswitch-forward-tunnel-v6', 'IPFORWARD_V6', 'PERMIT', 12, [('IP_FORWARD_INTERFACE', 'wg0')]),
        ('vpnguard-killswitch-forward-block-v4', 'IPFORWARD_V4', 'BLOCK', 0, []),
        ('vpnguard-killswitch-forward-block-v6', 'IPFORWARD_V6', 'BLOCK', 0, []),
    ]
    assert rendered['provider'] == {'key': wfp.PROVIDER_KEY, 'name': 'vpnguard-killswitch', 'flags': ['PERSISTENT']}
    assert rendered['sublayer'] == {'key': wfp.SUBLAYER_KEY, 'name': 'vpnguard-killswitch', 'weight': 0xFFFF,
                                    'flags': ['PERSISTENT']}
    assert rendered['dns'] == {'servers': ['192.0.2.1'], 'namespace': '.', 'comment': 'vpnguard-killswitch'}
    assert rendered['vm'] == {'block': False, 'rule': {
        'Name': 'vpnguard-killswitch-vm-block', 'DisplayName': 'vpnguard-killswitch: VMs send nothing around the kill switch',
        'Direction': 'Outbound', 'Action': 'Block'}}


def test_the_lan_exceptions_endpoint_programs_doh_and_management_filters():
    rendered = wfp.render(policy_of(allow_lan=True, doh_servers=['198.51.100.9', '2001:db8::9'],
                                    exceptions=[{'program': PROGRAMS[0]}],
                                    management=[{'cidr': '198.18.0.0/24', 'port': 5986, 'protocol': 'tcp'}]),
                          endpoint_programs=[WIREGUARD])
    by_name = dict((f['name'], f) for f in rendered['filters'])
    assert summary([by_name[n] for n in (
        'vpnguard-killswitch-doh-block-v4', 'vpnguard-killswitch-doh-block-v6', 'vpnguard-killswitch-endpoint-0',
        'vpnguard-killswitch-lan-names-block-out-v4', 'vpnguard-killswitch-lan-out-v6',
        'vpnguard-killswitch-lan-in-v4', 'vpnguard-killswitch-management-0', 'vpnguard-killswitch-exception-0-v6')]) == [
        ('vpnguard-killswitch-doh-block-v4', 'ALE_AUTH_CONNECT_V4', 'BLOCK', 11, [('IP_REMOTE_ADDRESS', '198.51.100.9/32')]),
        ('vpnguard-killswitch-doh-block-v6', 'ALE_AUTH_CONNECT_V6', 'BLOCK', 11, [('IP_REMOTE_ADDRESS', '2001:db8::9/128')]),
        ('vpnguard-killswitch-endpoint-0', 'ALE_AUTH_CONNECT_V4', 'PERMIT', 10,
         [('IP_REMOTE_ADDRESS', '203.0.113.1/32'), ('IP_REMOTE_PORT', 51820), ('IP_PROTOCOL', 17),
          ('ALE_APP_ID', WIREGUARD)]),
        ('vpnguard-killswitch-lan-names-block-out-v4', 'ALE_AUTH_CONNECT_V4', 'BLOCK', 8,
         [('IP_PROTOCOL', 6), ('IP_PROTOCOL', 17)] + [('IP_REMOTE_PORT', p) for p in (5355, 5353, 137, 138, 139)]),
        ('vpnguard-killswitch-lan-out-v6', 'ALE_AUTH_CONNECT_V6', 'PERMIT', 7,
         [('IP_REMOTE_ADDRESS', n) for n in ('fc00::/7', 'fe80::/10', 'ff00::/8')]),
        ('vpnguard-killswitch-lan-in-v4', 'ALE_AUTH_RECV_ACCEPT_V4', 'PERMIT', 7,
         [('IP_REMOTE_ADDRESS', n) for n in ('10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '169.254.0.0/16',
                                             '224.0.0.0/4')]),
        ('vpnguard-killswitch-management-0', 'ALE_AUTH_RECV_ACCEPT_V4', 'PERMIT', 6,
         [('IP_REMOTE_ADDRESS', '198.18.0.0/24'), ('IP_LOCAL_PORT', 5986), ('IP_PROTOCOL', 6)]),
        ('vpnguard-killswitch-exception-0-v6', 'ALE_AUTH_CONNECT_V6', 'PERMIT', 5, [('ALE_APP_ID', PROGRAMS[0])]),
    ]


def test_dns_without_resolvers_goes_through_the_tunnel_only_to_any_resolver():
    filters = dict((f['name'], f) for f in wfp.render(policy_of())['filters'])
    assert summary([filters['vpnguard-killswitch-dns-tunnel-v6']])[0][4] == [
        ('IP_LOCAL_INTERFACE', 'wg0'), ('IP_PROTOCOL', 6), ('IP_PROTOCOL', 17), ('IP_REMOTE_PORT', 53),
        ('IP_REMOTE_PORT', 853)]
    v4_only = dict((f['name'], f) for f in wfp.render(policy_of(dns_servers=['192.0.2.1']))['filters'])
    assert 'vpnguard-killswitch-dns-tunnel-v6' not in v4_only, 'no IPv6 resolver: IPv6 DNS is only blocked'


def test_weights_flags_and_identities_are_what_arbitration_needs():
    rendered = wfp.render(policy_of(allow_lan=True, dns_servers=['192.0.2.1'], exceptions=[{'program': PROGRAMS[1]}]))
    for f in rendered['filters']:
        # [ARB]: our blocks clear the action right (hard); our permits keep it (soft), so they override nothing.
        assert f['flags'] == (['CLEAR_ACTION_RIGHT', 'PERSISTENT'] if f['action'] == 'BLOCK' else ['PERSISTENT'])
        assert 0 <= f['weight'] <= 15 and f['layer'] in wfp.LAYERS
        assert uuid.UUID(f['key'])
    keys = [f['key'] for f in rendered['filters'] + rendered['boottime']]
    assert len(keys) == len(set(keys)), 'every filter has its own key'
    assert rendered == wfp.render(policy_of(allow_lan=True, dns_servers=['192.0.2.1'],
                                            exceptions=[{'program': PROGRAMS[1]}])), 'keys are stable across runs'
    w = wfp.WEIGHTS
    assert w['dns_tunnel'] > w['dns_block'] > w['tunnel'] > w['doh_block'] > w['endpoint'] > w['block_all']
    assert w['lan_names_block'] > w['lan'] and w['exception'] < w['dns_block']


def test_boot_time_filters_block_everything_but_loopback_and_reference_nothing_persistent():
    boot = wfp.render(policy_of())['boottime']
    for f in boot:
        # [FLT]: BOOTTIME cannot be combined with PERSISTENT.
        assert f['flags'] == (['BOOTTIME', 'CLEAR_ACTION_RIGHT'] if f['action'] == 'BLOCK' else ['BOOTTIME'])
        assert f['sublayer'] == 'UNIVERSAL'
    assert sorted((f['layer'], f['action']) for f in boot) == sorted(
        [(layer, action) for layer in ('ALE_AUTH_CONNECT_V4', 'ALE_AUTH_CONNECT_V6', 'ALE_AUTH_RECV_ACCEPT_V4',
                                       'ALE_AUTH_RECV_ACCEPT_V6') for action in ('PERMIT', 'BLOCK')]
        + [('IPFORWARD_V4', 'BLOCK'), ('IPFORWARD_V6', 'BLOCK')])


@pytest.mark.parametrize('exception, setting', [({'uid': 1000}, 'exceptions[0].uid'),
                                                ({'cgroup': 'system.slice/x'}, 'exceptions[0].cgroup')])
def test_exceptions_windows_cannot_select_are_refused_with_their_setting(exception, setting):
    with pytest.raises(PolicyError) as error:
        policy_of(exceptions=[exception])
    assert error.value.setting == setting
    with pytest.raises(PolicyError) as error:
        wfp.render(parse_policy(dict(BASE, exceptions=[exception])))
    assert error.value.setting == setting


# The model itself, against the rules it cites ------------------------------------

def _f(action, weight=0, hard=False, conditions=(), layer='ALE_AUTH_CONNECT_V4', **extra):
    return dict(dict(action=action, weight=weight, layer=layer, conditions=list(conditions),
                     flags=['CLEAR_ACTION_RIGHT'] if hard else []), **extra)


def _decide(*sublayers, **kw):
    p = wm.packet()
    return wm.arbitrate([wm.sublayer_decision(s, p, {}) for s in sublayers], **kw)


def test_model_arbitration_follows_the_documentation():
    assert _decide() == 'PERMIT', 'nothing decides: permit'
    assert _decide([_f('PERMIT', 15), _f('BLOCK', 0)]) == 'PERMIT', 'inside a sublayer the highest weight decides'
    assert _decide([_f('PERMIT')], [_f('BLOCK')]) == 'BLOCK', 'a block in a lower sublayer overrides a soft permit'
    assert _decide([_f('PERMIT', hard=True)], [_f('BLOCK')]) == 'PERMIT', 'a hard permit is final'
    assert _decide([_f('PERMIT', hard=True)], [_f('BLOCK', veto=True)]) == 'BLOCK', 'but a veto blocks it'
    assert _decide([_f('BLOCK', hard=True)], [_f('PERMIT', hard=True)], soft_block_overridable=True) == 'BLOCK'
    assert _decide([_f('BLOCK')], [_f('PERMIT')]) == 'BLOCK'
    assert _decide([_f('BLOCK')], [_f('PERMIT')], soft_block_overridable=True) == 'PERMIT', 'the other reading'
    with pytest.raises(ValueError):
        wm.filter_matches(_f('BLOCK', conditions=[dict(field='IP_LOCAL_ADDRESS', match='EQUAL', value='x')]),
                          wm.packet(), {})


# Property tests: random policies and packets, in every direction ------------------

policies = policy_strategies(
    tunnel_interfaces=st.lists(st.sampled_from(['wg0', 'OpenVPN*', 'Wintun Userspace Tunnel']), min_size=1, max_size=2),
    exceptions=[{'program': p} for p in PROGRAMS],
    management_networks=networks(st.ip_addresses(v=4) | st.ip_addresses(v=6), st.integers(8, 32)))
ADMIN_POLICIES = [wm.WINDOWS_DEFAULTS, wm.ALLOW_EVERYTHING, wm.ADMIN_BLOCKS_SMB, wm.WindowsFirewall(
    wm.WINDOWS_DEFAULT_RULES + [dict(Name='rdp-bypass', Direction='Inbound', Action='Allow', Protocol='TCP',
                                     LocalPort=['3389'], OverrideBlockRules='True')], 'Allow', 'Block', 0x1000)]


@st.composite
def packets(draw, policy):
    addresses = ([str(e.address) for e in policy.endpoints] + [str(a) for a in policy.dns_servers]
                 + [str(a) for a in policy.doh_servers] + [str(m.network.network_address) for m in policy.management]
                 + ['192.168.1.1', 'fe80::1', 'ff02::2', 'ff02::1:2', '255.255.255.255', '224.0.0.251', '10.64.0.1',
                    '198.51.100.7', '2001:db8::7'])
    remote = draw(st.sampled_from(addresses) | v4 | v6)
    version = ipaddress.ip_address(remote).version
    proto = draw(st.sampled_from(['TCP', 'UDP', 'ICMPv4' if version == 4 else 'ICMPv6']))
    wanted = ([e.port for e in policy.endpoints] + [m.port for m in policy.management]
              + list(DNS_PORTS) + [67, 68, 546, 547, 445, 3389] + list(wfp.LAN_NAME_PORTS))
    port = st.sampled_from(wanted) | ports
    # The pairs DHCP uses, often enough for a few hundred examples to meet them in both directions.
    local_port, remote_port = draw(st.sampled_from([(68, 67), (546, 547), (40000, 53)]) | st.tuples(port, port))
    return wm.packet(direction=draw(st.sampled_from([wm.OUT, wm.IN, wm.FORWARD, wm.VM])), iface=draw(st.sampled_from(ADAPTERS)),
                     proto=proto, remote=remote, local_port=local_port, remote_port=remote_port,
                     icmp=draw(st.sampled_from([128, 133, 134, 135, 136, 137, 143])) if proto.startswith('ICMP') else None,
                     program=draw(st.sampled_from(PROGRAMS + [WIREGUARD, 'C:\\Windows\\System32\\svchost.exe'])),
                     loopback=draw(st.booleans()) if draw(st.integers(0, 9)) == 0 else False)


@st.composite
def scenarios(draw):
    policy = parse_policy(draw(policies), system='Windows')
    programs = draw(st.sampled_from([[], [WIREGUARD]]))
    return policy, dict(endpoint_programs=programs, block_vm_traffic=draw(st.booleans())), draw(packets(policy))


def in_tunnel(policy, iface):
    return any(fnmatch.fnmatchcase(iface, t) for t in policy.tunnel_interfaces)


def _in(address, networks_):
    return any(address.version == ipaddress.ip_network(n).version and address in ipaddress.ip_network(n)
               for n in networks_)


def intended(policy, options, p):
    """What the policy means, in plain terms (the README's list), for one packet; the admin's policy aside."""
    programs = options['endpoint_programs']
    if p.direction == wm.VM:
        return not options['block_vm_traffic']
    tunnel = in_tunnel(policy, p.iface)
    tcp_udp = p.proto in ('TCP', 'UDP')
    if p.direction == wm.FORWARD:
        return tunnel
    if p.loopback:
        return True
    if p.direction == wm.OUT:
        if tcp_udp and p.remote_port in DNS_PORTS:
            return tunnel and (not policy.dns_servers or p.remote in policy.dns_servers)
        if tunnel:
            return True
        if p.remote in policy.doh_servers:
            return False
        if any((p.remote, p.remote_port, p.proto) == (e.address, e.port, e.protocol.upper()) for e in policy.endpoints) \
                and (not programs or p.program in programs):
            return True
        if p.proto == 'UDP' and (p.local_port, p.remote_port) in ((68, 67), (546, 547)):
            if str(p.remote) in ('255.255.255.255', 'ff02::1:2', 'ff05::1:3'):
                return True
        if p.proto == 'ICMPv6' and p.icmp in (133, 135, 136, 143):
            scope = dict((t, s) for t, s in wfp.NDP_OUT)[p.icmp]
            if _in(p.remote, scope):
                return True
        if policy.allow_lan and tcp_udp and p.remote_port in wfp.LAN_NAME_PORTS:
            return False
        if policy.allow_lan and _in(p.remote, [str(n) for n in LAN_NETWORKS]):
            return True
        return any(e.value.lower() == p.program.lower() for e in policy.exceptions)
    # Inbound: the kill switch only decides what may come in outside the tunnel.
    if tunnel:
        return True
    if p.proto == 'UDP' and ((p.remote.version, p.local_port, p.remote_port) in ((4, 68, 67), (6, 546, 547))):
        return True
    if p.proto == 'ICMPv6' and p.icmp in (134, 135, 136, 137) and _in(p.remote, ['fe80::/10']):
        return True
    if policy.allow_lan and tcp_udp and p.local_port in wfp.LAN_NAME_PORTS:
        return False
    if policy.allow_lan and _in(p.remote, [str(n) for n in LAN_NETWORKS]):
        return True
    return any(_in(p.remote, [str(m.network)]) and p.local_port == m.port and p.proto == m.protocol.upper()
               for m in policy.management)


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(scenarios(), st.sampled_from(ADMIN_POLICIES), st.sampled_from([wm.RUNNING, wm.MPSSVC_STOPPED]), st.booleans())
def test_every_packet_is_decided_as_the_policy_and_the_admins_firewall_say(scenario, admin, state, reading):
    """Running: ours AND the admin's policy (ours takes nothing away, opens nothing). MpsSvc stopped: ours alone."""
    policy, options, p = scenario
    host = wm.Host(wfp.render(policy, **options), ADAPTERS, firewall=admin, state=state,
                   soft_block_overridable=reading)
    admin_says = (state != wm.RUNNING or p.direction in (wm.FORWARD, wm.VM)
                  or admin.decision(p, ADAPTERS).action == 'PERMIT')
    assert host.allows(p) == (intended(policy, options, p) and admin_says), p


@st.composite
def foreign_filters(draw, can_override):
    """Other providers' filters; can_override draws hard permits in sublayers at or above ours."""
    count = draw(st.integers(1 if can_override else 0, 4))
    out = []
    for n in range(count):
        hard_permit = can_override and n == 0
        action = 'PERMIT' if hard_permit else draw(st.sampled_from(['PERMIT', 'BLOCK']))
        hard = hard_permit or draw(st.booleans())
        weight = draw(st.integers(wm.MAX_SUBLAYER_WEIGHT, wm.MAX_SUBLAYER_WEIGHT) if hard_permit else
                      (st.integers(0, wm.MAX_SUBLAYER_WEIGHT - 1) if action == 'PERMIT' and hard
                       else st.integers(0, wm.MAX_SUBLAYER_WEIGHT)))
        out.append(dict(name='other-%d' % n, provider='other', layer=draw(st.sampled_from(wfp.LAYERS)),
                        action=action, weight=draw(st.integers(0, 15)), sublayer_weight=weight,
                        flags=['CLEAR_ACTION_RIGHT'] if hard else [], veto=action == 'BLOCK' and draw(st.booleans()),
                        conditions=draw(st.sampled_from([[], [wfp.condition('IP_REMOTE_ADDRESS', '198.51.100.0/24')]]))))
    return out


@PROPERTY
@given(scenarios(), foreign_filters(False), st.booleans())
def test_no_other_provider_short_of_a_hard_permit_above_us_lets_anything_out_we_block(scenario, foreign, reading):
    policy, options, p = scenario
    host = wm.Host(wfp.render(policy, **options), ADAPTERS, firewall=wm.ALLOW_EVERYTHING,
                   foreign=foreign, soft_block_overridable=reading)
    if host.allows(p):
        assert intended(policy, options, p), p
    assert wfp.foreign_overrides(foreign) == []


@PROPERTY
@given(scenarios(), foreign_filters(True))
def test_a_hard_permit_at_or_above_our_sublayer_is_reported_as_drift(scenario, foreign):
    policy, options, p = scenario
    host = wm.Host(wfp.render(policy, **options), ADAPTERS, foreign=foreign)
    assert wfp.foreign_overrides(foreign), 'always reported, whether or not this packet shows it'
    if host.allows(p) and not intended(policy, options, p):
        assert any(f['sublayer_weight'] >= wfp.SUBLAYER_WEIGHT for f in foreign)


@PROPERTY
@given(scenarios(), st.sampled_from(ADMIN_POLICIES))
def test_at_boot_only_loopback_goes_out_until_the_bfe_loads_the_kill_switch(scenario, admin):
    policy, options, p = scenario
    assume(p.direction != wm.VM)  # no VM runs before the BFE does
    host = wm.Host(wfp.render(policy, **options), ADAPTERS, firewall=admin, state=wm.BOOT)
    assert host.allows(p) == (p.direction == wm.OUT and p.loopback), p


# The points, each with the design before it as a control -----------------

def legacy_rules(allow_lan=False):
    """What the Windows Firewall rules design rendered for BASE (see git history of win_firewall.py)."""
    rules = [dict(Name='tunnel-out', Direction='Outbound', Action='Allow', InterfaceAlias=['wg0']),
             dict(Name='tunnel-in', Direction='Inbound', Action='Allow', InterfaceAlias=['wg0']),
             dict(Name='endpoint-0', Direction='Outbound', Action='Allow', Protocol='UDP',
                  RemoteAddress=['203.0.113.1'], RemotePort=['51820']),
             dict(Name='dhcp-out', Direction='Outbound', Action='Allow', Protocol='UDP', LocalPort=['68'],
                  RemotePort=['67']),
             dict(Name='nd-out', Direction='Outbound', Action='Allow', Protocol='ICMPv6',
                  IcmpType=['133', '135', '136', '143'])]
    if allow_lan:
        rules.append(dict(Name='lan-in', Direction='Inbound', Action='Allow',
                          RemoteAddress=[str(n) for n in LAN_NETWORKS]))
    return wm.WindowsFirewall(rules, 'Block', 'Block', 0x1000)


def legacy_host(state=wm.RUNNING, firewall=None, allow_lan=False):
    nothing = dict(sublayer=dict(weight=0), filters=[], boottime=[], tunnel_interfaces=['wg0'])
    return wm.Host(nothing, ADAPTERS, firewall=firewall or legacy_rules(allow_lan), state=state)


WEB = wm.packet(iface='Ethernet', remote='198.51.100.7', remote_port=443)


@pytest.mark.parametrize('state', [wm.BOOT, wm.MPSSVC_STOPPED])
def test_point1_nothing_leaves_at_boot_or_with_the_firewall_service_stopped(state):
    assert not wm.Host(wfp.render(policy_of()), ADAPTERS, state=state).allows(WEB)
    assert legacy_host(state).allows(WEB), 'control: Windows Firewall rules are gone in this state'


def test_point2_the_admins_policy_is_untouched_and_a_gpo_that_allows_everything_changes_nothing():
    rendered = wfp.render(policy_of(dns_servers=['192.0.2.1']))
    # counters only says how the host counts our filters' net events; it puts nothing on the host.
    assert set(rendered) == {'provider', 'sublayer', 'filters', 'boottime', 'tunnel_interfaces', 'dns', 'vm', 'counters'}, \
        'no profiles, no firewall rules, no store'
    assert rendered['vm']['rule']['Action'] == 'Block', 'the one object outside WFP only blocks'
    assert not wm.Host(rendered, ADAPTERS, firewall=wm.ALLOW_EVERYTHING).allows(WEB)
    assert not wm.Host(rendered, ADAPTERS, firewall=wm.ALLOW_EVERYTHING).allows(
        WEB._replace(proto='UDP', remote_port=53))
    # A domain GPO or Intune policy that allows everything replaces the local store's policy.
    assert legacy_host(firewall=wm.ALLOW_EVERYTHING).allows(WEB), 'control: the GPO wins over the local store'
    rdp = wm.packet(wm.IN, iface='wg0', remote='10.64.0.9', local_port=3389, remote_port=50000)
    assert wm.Host(rendered, ADAPTERS).allows(rdp), "the admin's inbound allows through the tunnel still work"


def test_point3_inbound_through_the_tunnel_and_from_the_lan_opens_no_port():
    rendered = wfp.render(policy_of(allow_lan=True))
    smb_tunnel = wm.packet(wm.IN, iface='wg0', remote='10.64.0.9', local_port=445, remote_port=50000)
    smb_lan = smb_tunnel._replace(iface='Wi-Fi', remote=ipaddress.ip_address('192.168.1.20'))
    for p in (smb_tunnel, smb_lan):
        assert not wm.Host(rendered, ADAPTERS, firewall=wm.WINDOWS_DEFAULTS).allows(p), p
        assert legacy_host(allow_lan=True).allows(p), 'control: tunnel-in and lan-in allowed every port'
    assert not wm.Host(rendered, ADAPTERS, firewall=wm.ALLOW_EVERYTHING).allows(
        smb_lan._replace(iface='Ethernet', remote=ipaddress.ip_address('198.51.100.20'))), \
        'from outside the LAN and the tunnel nothing comes in, whatever the admin allows'


def test_point4_a_tunnel_down_during_the_run_works_when_it_comes_back():
    rendered = wfp.render(policy_of())
    assert 'adapters' not in wfp.render.__code__.co_varnames, 'the filter set does not depend on what is up'
    # The host bound wg0 on an earlier run; it is down now, its LUID is kept (WfpKillSwitch.TunnelBinding.Bind,
    # run under mono in test_win_wfp_csharp.py), and the re-created adapter gets the same LUID.
    back = wm.Host(rendered, ['Ethernet', 'wg0'], bindings={'wg0': ['wg0']})
    assert back.allows(WEB._replace(iface='wg0'))
    never = wm.Host(rendered, ['Ethernet', 'wg0'], bindings={'wg0': []})
    assert not never.allows(WEB._replace(iface='wg0')), 'control: a tunnel without its permit is blocked'


def _found(rendered):
    return dict(provider=True, sublayer=dict(weight=wfp.SUBLAYER_WEIGHT), filters=[dict(f) for f in rendered['filters']],
                boottime=[dict(f) for f in rendered['boottime']])


def test_point5_filters_edited_added_or_removed_on_the_host_are_drift():
    rendered = wfp.render(policy_of(dns_servers=['192.0.2.1']))
    found = _found(rendered)
    for f in found['filters']:
        f['conditions'] = list(reversed(f['conditions']))
    assert wfp.drift(rendered, found) == [], 'the order of conditions means nothing'
    edited = _found(rendered)
    endpoint = next(f for f in edited['filters'] if f['name'] == 'vpnguard-killswitch-endpoint-0')
    endpoint['conditions'] = [c for c in endpoint['conditions'] if c['field'] != 'IP_REMOTE_ADDRESS']
    softened = next(f for f in edited['filters'] if f['name'] == 'vpnguard-killswitch-block-all-out-v4')
    softened['flags'] = ['PERSISTENT']
    edited['filters'].append(dict(endpoint, key=str(uuid.uuid4()), name='someone-else-in-our-sublayer'))
    edited['boottime'] = edited['boottime'][1:]
    edited['sublayer'] = dict(weight=0x1000)
    problems = wfp.drift(rendered, edited)
    assert problems[0] == 'the sublayer weight is 4096, not 65535'
    assert 'boot-time filter vpnguard-killswitch-boot-loopback-out-v4 is missing' in problems
    assert 'someone-else-in-our-sublayer is ours but not in the policy' in problems
    assert 'vpnguard-killswitch-endpoint-0 was changed on the host' in problems
    assert 'vpnguard-killswitch-block-all-out-v4 was changed on the host' in problems
    assert wfp.drift(rendered, dict(filters=[], boottime=[]))[:2] == [
        'the provider %s is missing' % wfp.PROVIDER_KEY, 'the sublayer %s is missing' % wfp.SUBLAYER_KEY]


def test_point6_lan_names_dhcp_and_neighbour_discovery_stay_on_the_link():
    rendered = wfp.render(policy_of(allow_lan=True))
    host = wm.Host(rendered, ADAPTERS, firewall=wm.ALLOW_EVERYTHING)
    lan = wm.packet(iface='Wi-Fi', proto='UDP', remote='224.0.0.251', local_port=5353, remote_port=5353)
    for name_port, remote in ((5353, '224.0.0.251'), (5355, '224.0.0.252'), (137, '192.168.1.255')):
        assert not host.allows(lan._replace(remote_port=name_port, remote=ipaddress.ip_address(remote)))
    assert host.allows(lan._replace(remote_port=8009)), 'the rest of the LAN is allowed'
    dhcp = wm.packet(iface='Ethernet', proto='UDP', remote='255.255.255.255', local_port=68, remote_port=67)
    assert host.allows(dhcp)
    unicast_dhcp = dhcp._replace(remote=ipaddress.ip_address('198.51.100.1'))
    assert not wm.Host(wfp.render(policy_of()), ADAPTERS).allows(unicast_dhcp)
    assert legacy_host().allows(unicast_dhcp), 'control: DHCP went to any address'
    rs_global = wm.packet(iface='Ethernet', proto='ICMPv6', remote='2001:db8::1', icmp=133)
    assert not wm.Host(wfp.render(policy_of()), ADAPTERS).allows(rs_global)
    assert legacy_host().allows(rs_global), 'control: neighbour discovery went anywhere'


def test_point7_vm_traffic_is_blocked_when_asked_and_reported_otherwise():
    vm = wm.packet(wm.VM, iface='vEthernet (WSL)', remote='198.51.100.7', remote_port=443)
    assert not wm.Host(wfp.render(policy_of(), block_vm_traffic=True), ADAPTERS).allows(vm)
    assert wm.Host(wfp.render(policy_of()), ADAPTERS).allows(vm), '[VM]: no WFP filter sees it'
    assert legacy_host().allows(vm), 'control: nor did the Windows Firewall rules'
    wsl = {'vm_creators': ['WSL'], 'external_switch_adapters': ['Ethernet'], 'sandbox': True}
    assert wfp.environment_drift(wsl) == [
        "VMs on the external Hyper-V switch of Ethernet reach the network without passing this host's filters",
        'VMs of WSL send around the kill switch (WFP does not filter them); set block_vm_traffic',
        'Windows Sandbox sends around the kill switch; neither WFP nor the Hyper-V firewall filters it']
    assert wfp.environment_drift(wsl, vm_blocked=True)[1:] == [
        'Windows Sandbox sends around the kill switch; neither WFP nor the Hyper-V firewall filters it']
    assert wfp.environment_drift({'vm_creators': [], 'external_switch_adapters': []}) == []


def test_traffic_the_host_routes_for_others_leaves_only_through_the_tunnel():
    host = wm.Host(wfp.render(policy_of()), ADAPTERS, firewall=wm.ALLOW_EVERYTHING)
    routed = wm.packet(wm.FORWARD, iface='Ethernet', remote='198.51.100.7', remote_port=443)
    assert not host.allows(routed)
    assert host.allows(routed._replace(iface='wg0'))
    assert legacy_host().allows(routed), 'control: Windows Firewall rules never see routed traffic'
