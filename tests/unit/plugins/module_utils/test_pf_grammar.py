"""Everything the macOS backend renders parses by pf.conf(5)'s grammar as xnu's pfctl has it; known-bad text does not."""

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ansible_collections.vpnguard.killswitch.plugins.module_utils import pf
from ansible_collections.vpnguard.killswitch.plugins.module_utils.policy import parse_policy

from fake_pfctl import STOCK_PF_CONF
from pf_grammar import GrammarError, check
from policy_strategies import networks, policies as policy_strategies

FULL = {'tunnel_interfaces': ['utun*', 'ipsec0'], 'allow_lan': True,
        'endpoints': [{'address': '203.0.113.1', 'port': 51820, 'protocol': 'udp'},
                      {'address': '2001:db8::1', 'port': 443, 'protocol': 'tcp'}],
        'dns_servers': ['192.0.2.1', '2001:db8:ff::1'], 'doh_servers': ['198.51.100.9'],
        'management': [{'cidr': '198.18.0.0/24', 'port': 22, 'protocol': 'tcp'},
                       {'cidr': '2001:db8:2::/48', 'port': 161, 'protocol': 'udp'}],
        'exceptions': [{'uid': 501}, {'gid': 100}]}


def policy(raw=None):
    return parse_policy(raw or FULL, system='Darwin')


def test_the_anchor_parses():
    assert check(pf.render(policy()), main=False)
    assert check(pf.render(policy(dict(FULL, restrict_endpoints_to_tunnel=False))), main=False)


def test_the_private_ruleset_and_the_hooked_pf_conf_parse_as_main_rulesets():
    assert check(pf.private_ruleset(STOCK_PF_CONF))
    assert check(pf.with_hook(STOCK_PF_CONF))
    assert check(STOCK_PF_CONF)


def test_the_fallback_parses():
    assert check(pf.fallback_ruleset(policy()))
    assert check(pf.fallback_ruleset(policy({'tunnel_interfaces': ['utun4']})))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy_strategies(
    tunnel_interfaces=st.lists(st.sampled_from(['utun4', 'utun*', 'ipsec0', 'ppp0']), min_size=1, max_size=2),
    exceptions=[{'uid': 1001}, {'gid': 100}, {'uid': 0}],
    management_networks=networks(st.ip_addresses(v=4) | st.ip_addresses(v=6), st.integers(8, 32)),
    restrict_endpoints_to_tunnel=st.booleans()))
def test_every_rendered_anchor_and_fallback_parses(raw):
    p = parse_policy(raw, system='Darwin')
    assert check(pf.render(p, units=4), main=False)
    assert check(pf.fallback_ruleset(p))


# Controls: each is refused, so the checker can fail -----------------------------------------------------

ANCHOR_CONTROLS = {
    'flags on udp': 'pass out quick proto udp flags S/SA keep state',
    'flags on a udp and tcp rule': 'pass out quick proto { udp tcp } flags S/SA keep state',
    'port without tcp/udp': 'pass out quick proto icmp6 to port 53',
    'port without any proto': 'pass out quick to port 53 no state',
    'user without tcp/udp': 'pass out quick user 0 keep state',
    'icmp6-type with inet': 'pass out quick inet proto icmp6 icmp6-type 135 no state',
    'icmp6-type without proto': 'pass out quick icmp6-type 135 no state',
    'match is not in xnu': 'match out all',
    'divert-to is not in xnu': 'pass in quick proto tcp to port 80 divert-to 127.0.0.1 port 8080',
    'undefined macro': 'pass out quick on $nowhere all',
    'undefined table': 'pass out quick to <vpnguard_nosuch> no state',
    'table name too long': 'table <vpnguard_endpoint_udp_51820_extra_long> const { 192.0.2.1 }',
    'interface name too long': 'pass out quick on averyveryverylong0 all no state',
    'bad state option': 'pass out quick all flags any keep state (if-bounded)',
    'unclosed state options': 'pass out quick all flags any keep state (if-bound',
    'keep state on block': 'block drop out quick all keep state',
    'address family mismatch': 'pass out quick inet to 2001:db8::1 no state',
    'port out of range': 'pass out quick proto tcp to port 70000',
    'unclosed list': 'pass out quick proto { udp tcp to any',
    'bad tcp flags': 'pass out quick proto tcp flags XY/SA keep state',
    'set flag outside the mask': 'pass out quick proto tcp flags SA/S keep state',
    'bad address in a table': 'table <t> const { 192.0.2.300 }',
    'unknown keyword': 'pass out quick all no state with-magic',
    'options out of order': 'pass quick on lo0 no state\nset block-policy drop',
    'load anchor in an anchor': 'load anchor "x" from "/etc/pf.anchors/x"',
    'reserved anchor name': 'anchor "_x"',
    'unquoted anchor name': 'anchor x',
}

MAIN_CONTROLS = {
    'translation after filtering': 'anchor "com.apple/*"\nnat-anchor "com.apple/*"',
    'normalization after translation': 'nat-anchor "com.apple/*"\nscrub-anchor "com.apple/*"',
    'dummynet after filtering': 'anchor "a"\ndummynet-anchor "com.apple/*"',
    'a continued line at the end': 'anchor "a" \\',
}


@pytest.mark.parametrize('name', sorted(ANCHOR_CONTROLS))
def test_known_bad_anchor_text_is_refused(name):
    with pytest.raises(GrammarError):
        check(ANCHOR_CONTROLS[name], main=False)


@pytest.mark.parametrize('name', sorted(MAIN_CONTROLS))
def test_known_bad_main_ruleset_is_refused(name):
    with pytest.raises(GrammarError):
        check(MAIN_CONTROLS[name])


def test_the_controls_differ_from_accepted_text_only_in_their_fault():
    # The nearest good text of some controls passes: the refusal is for the fault, not the shape.
    for good in ('pass out quick proto tcp flags S/SA keep state', 'pass out quick proto { udp tcp } flags any keep state',
                 'pass out quick proto { udp tcp } to port 53 no state', 'pass out quick proto tcp user 0 keep state',
                 'pass out quick inet6 proto icmp6 icmp6-type 135 no state', 'pass out quick all flags any keep state (if-bound)',
                 'block drop out quick all', 'pass out quick inet to 192.0.2.1 no state'):
        assert check(good, main=False), good
