"""Which default route the kill switch's bypass table gets, from main's routes and the interface groups."""

from ansible_collections.vpnguard.killswitch.plugins.module_utils.policy import parse_policy
from ansible_collections.vpnguard.killswitch.plugins.module_utils.routing_guard import (
    BYPASS_TABLE, BypassRoute, bypass_routes, describe_route, desired_rules)

RAW = {'tunnel_interfaces': ['tun*'], 'endpoints': [{'address': '203.0.113.1', 'port': 1194, 'protocol': 'udp'}],
       'exceptions': [{'uid': 4242}]}
LINKS = {2: ('eth0', 0), 3: ('wlan0', 0), 9: ('tun0', 86)}


def route(dst, dst_len, oif, gateway=None, metric=0, multipath=False):
    return dict(dst=dst, dst_len=dst_len, gateway=gateway, oif=oif, metric=metric, protocol=4, multipath=multipath)


def routes_for(v4, v6=(), raw=None):
    return bypass_routes(parse_policy(raw or RAW), LINKS, {4: list(v4), 6: list(v6)})


def test_the_physical_default_with_the_lowest_metric_is_copied_and_a_tunnels_never():
    v4 = [route(None, 0, 9, metric=0), route(None, 0, 3, '198.18.9.1', metric=600),
          route(None, 0, 2, '198.18.1.1', metric=100), route('0.0.0.0', 1, 9)]
    assert routes_for(v4) == [BypassRoute(4, '198.18.1.1', 2)]


def test_without_a_physical_default_the_route_to_an_endpoint_through_a_gateway_is_used():
    v4 = [route(None, 0, 9), route('198.18.1.0', 24, 2), route('203.0.113.0', 24, 3, '198.18.9.1'),
          route('203.0.113.1', 32, 2, '198.18.1.1'), route('198.51.100.0', 24, 3, '198.18.9.1')]
    assert routes_for(v4) == [BypassRoute(4, '198.18.1.1', 2)]
    assert describe_route(routes_for(v4)[0], LINKS) == 'ipv4 default via 198.18.1.1 dev eth0 table %d' % BYPASS_TABLE


def test_no_physical_path_no_exceptions_or_multipath_give_no_route():
    assert routes_for([route(None, 0, 9), route('203.0.113.1', 32, 9, '192.0.2.1')]) == []
    assert routes_for([route(None, 0, 2, '198.18.1.1')], raw=dict(RAW, exceptions=[])) == []
    assert routes_for([route(None, 0, 0, multipath=True)]) == []
    assert routes_for([], [route(None, 0, 2, 'fe80::1')]) == [BypassRoute(6, 'fe80::1', 2)]


def test_only_bypass_marked_packets_look_the_table_up_right_after_their_main_lookup():
    rules = desired_rules(parse_policy(RAW))
    to_table = [r for r in rules if r.table == BYPASS_TABLE]
    # They carry the tunnel's mark (51820 by default), which the VPN client's own rules exempt.
    assert [(r.version, r.fwmark) for r in to_table] == [(4, 51820), (6, 51820)]
    for r in to_table:
        before = rules[rules.index(r) - 1]
        assert before.fwmark == 51820 and before.suppress_ifgroup == 86
    assert {r.fwmark for r in desired_rules(parse_policy(dict(RAW, tunnel_fwmark=42))) if r.table == BYPASS_TABLE} == {42}
    assert not any(r.table == BYPASS_TABLE for r in desired_rules(parse_policy(dict(RAW, exceptions=[]))))
