"""The PF renderer: exact text, the pf.conf hook, and the anchor run against a model of PF."""

import ipaddress
import subprocess

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from ansible_collections.vpnguard.killswitch.plugins.module_utils import pf
from ansible_collections.vpnguard.killswitch.plugins.module_utils.policy import LAN_NETWORKS, PolicyError, parse_policy

from fake_pfctl import STOCK_PF_CONF
from pf_model import Firewall, Ruleset, Unsupported, packet
from policy_strategies import networks, policies as policy_strategies, ports, v4, v6

BASE = {'tunnel_interfaces': ['utun4'], 'endpoints': [{'address': '203.0.113.1', 'port': 51820, 'protocol': 'udp'}]}


def policy_of(**changes):
    raw = dict(BASE)
    raw.update(changes)
    return parse_policy(raw, system='Darwin')


def rendered(**changes):
    return pf.render(policy_of(**changes))


def test_the_anchor_is_exactly_this_for_a_wireguard_host():
    assert rendered(dns_servers=['192.0.2.1']) == '''\
# vpnguard.killswitch: managed by Ansible, loaded whole by `pfctl -a com.vpnguard.killswitch -f`; edits are reverted.
tunnels = "utun4"
table <vpnguard_dns> const { 192.0.2.1 }
table <vpnguard_endpoint_udp_51820> const { 203.0.113.1 }

# Loopback never leaves the host.
pass quick on lo0 no state
# DNS only to the tunnel's resolvers and only through it, decided before the tunnel is passed.
pass out quick on $tunnels proto { udp tcp } to <vpnguard_dns> port { 53 853 } flags any keep state (if-bound)
block drop out quick on $tunnels proto { udp tcp } to port { 53 853 } label "refused_dns_resolver"
block drop out quick proto { udp tcp } to port { 53 853 } label "refused_dns_outside"
# The tunnel carries everything else out; in, only replies, bound to the tunnel interface.
pass out quick on $tunnels all flags any keep state (if-bound)
# The VPN servers, exactly: address, port and protocol, for root's sockets only.
pass out quick proto udp to <vpnguard_endpoint_udp_51820> port 51820 user 0 keep state
pass in quick proto udp from <vpnguard_endpoint_udp_51820> port 51820 no state
# DHCP and neighbour discovery: the link must work for the tunnel to come up.
pass out quick inet proto udp from port 68 to 255.255.255.255 port 67 no state
pass in quick inet proto udp from port 67 to port 68 no state
pass out quick inet6 proto udp from fe80::/10 port 546 to port 547 no state
pass in quick inet6 proto udp from port 547 to fe80::/10 port 546 no state
pass out quick inet6 proto icmp6 icmp6-type { 133 135 136 143 } no state
pass in quick inet6 proto icmp6 icmp6-type { 130 134 135 136 137 } no state
block drop out quick proto udp to <vpnguard_endpoint_udp_51820> port 51820 label "refused_endpoint"
# Everything else, both ways, counted per direction and family.
block drop out quick inet all label "refused_out_v4"
block drop out quick inet6 all label "refused_out_v6"
block drop in quick inet all label "refused_in_v4"
block drop in quick inet6 all label "refused_in_v6"
'''


def test_every_rule_is_quick_so_later_rules_cannot_undo_it():
    ruleset = Ruleset(rendered(allow_lan=True, doh_servers=['1.1.1.1'], exceptions=[{'uid': 501}, {'gid': 100}],
                               management=[{'cidr': '198.18.0.0/24', 'port': 22, 'protocol': 'tcp'},
                                           {'cidr': '198.18.0.0/24', 'port': 161, 'protocol': 'udp'}]))
    assert all(rule.quick for rule in ruleset.rules)
    assert [(r.action, r.direction, r.af) for r in ruleset.rules[-4:]] == [
        ('block', 'out', 4), ('block', 'out', 6), ('block', 'in', 4), ('block', 'in', 6)]


def test_a_driver_wildcard_is_expanded_because_xnu_has_no_interface_groups():
    assert pf.tunnel_names(policy_of(tunnel_interfaces=['utun*', 'utun2', 'ipsec0']), units=3) == [
        'utun0', 'utun1', 'utun2', 'ipsec0']
    assert 'tunnels = "{ utun0 utun1 utun2 utun3 }"' in pf.render(policy_of(tunnel_interfaces=['utun*']), units=4)
    assert len(pf.tunnel_names(policy_of(tunnel_interfaces=['utun*']))) == pf.WILDCARD_UNITS


def test_a_wildcard_that_is_not_a_driver_name_is_refused_with_its_setting():
    with pytest.raises(PolicyError) as error:
        rendered(tunnel_interfaces=['wg0', 'utun1*'])
    assert error.value.setting == 'tunnel_interfaces[1]'


@pytest.mark.parametrize('exception, setting', [({'cgroup': 'system.slice/x.service'}, 'exceptions[0].cgroup'),
                                                ({'program': 'C:\\x\\y.exe'}, 'exceptions[0].program')])
def test_exceptions_pf_cannot_select_are_refused_with_their_setting(exception, setting):
    with pytest.raises(PolicyError) as error:
        policy_of(exceptions=[exception])
    assert error.value.setting == setting
    # The renderer refuses them too, for a policy parsed without the platform.
    raw = dict(BASE, exceptions=[exception])
    with pytest.raises(PolicyError) as error:
        pf.render(parse_policy(raw))
    assert error.value.setting == setting


def test_uid_and_gid_exceptions_become_user_and_group():
    text = rendered(exceptions=[{'uid': 501}, {'gid': 100}])
    assert 'pass out quick proto { udp tcp } user 501 flags any keep state label "exception_uid_501"\n' in text
    assert 'pass out quick proto { udp tcp } group 100 flags any keep state label "exception_gid_100"\n' in text


def test_endpoints_sharing_a_service_share_a_table_and_stay_exact():
    text = rendered(endpoints=[{'address': '203.0.113.1', 'port': 51820, 'protocol': 'udp'},
                               {'address': '2001:db8::1', 'port': 51820, 'protocol': 'udp'},
                               {'address': '203.0.113.9', 'port': 443, 'protocol': 'tcp'}],
                    restrict_endpoints_to_tunnel=False)
    assert 'table <vpnguard_endpoint_udp_51820> const { 203.0.113.1 2001:db8::1 }' in text
    assert 'pass out quick proto tcp to <vpnguard_endpoint_tcp_443> port 443 flags any keep state' in text
    assert 'user 0' not in text


def test_without_resolvers_dns_goes_anywhere_but_only_through_the_tunnel():
    text = rendered()
    assert 'pass out quick on $tunnels proto { udp tcp } to any port { 53 853 } flags any keep state (if-bound)' in text
    assert '<vpnguard_dns>' not in text


# The pf.conf hook ------------------------------------------------------------


def test_the_hook_is_appended_once_and_removed_byte_for_byte():
    hooked = pf.with_hook(STOCK_PF_CONF)
    assert hooked == STOCK_PF_CONF + '''\
# vpnguard.killswitch: begin (managed by Ansible; the kill switch anchor)
anchor "com.vpnguard.killswitch"
load anchor "com.vpnguard.killswitch" from "/etc/pf.anchors/com.vpnguard.killswitch"
# vpnguard.killswitch: end
'''
    assert pf.has_hook(hooked) and not pf.has_hook(STOCK_PF_CONF)
    assert pf.with_hook(hooked) == hooked
    assert pf.without_hook(hooked) == STOCK_PF_CONF
    later = hooked + 'anchor "other.tool"\n'
    assert pf.with_hook(later) == later, 'a rule another tool appended after ours does not move our block'
    assert pf.without_hook(later) == STOCK_PF_CONF + 'anchor "other.tool"\n'


def test_a_damaged_hook_is_replaced_and_a_file_without_final_newline_is_kept():
    damaged = STOCK_PF_CONF + pf.HOOK_BEGIN + '\nanchor "com.vpnguard.killswitch"\n' + pf.HOOK_END + '\n'
    assert pf.with_hook(damaged) == pf.with_hook(STOCK_PF_CONF)
    assert pf.with_hook('anchor "x"').startswith('anchor "x"\n# vpnguard')
    assert pf.with_hook('') == '\n'.join(pf.hook_lines()) + '\n'


def test_the_loaded_main_ruleset_is_checked_for_the_anchor():
    assert pf.references_anchor('scrub-anchor "com.apple/*" all fragment reassemble\n'
                                'anchor "com.apple/*" all\nanchor "com.vpnguard.killswitch" all\n')
    assert not pf.references_anchor('anchor "com.apple/*" all\n')


def test_the_watchdog_job_runs_our_script_at_boot_on_pf_conf_changes_and_every_interval():
    assert pf.launchd_plist(30) == """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<!-- vpnguard.killswitch: managed by Ansible; keeps PF enabled with the kill switch -->
<plist version="1.0">
<dict>
\t<key>Label</key>
\t<string>com.vpnguard.killswitch</string>
\t<key>ProgramArguments</key>
\t<array>
\t\t<string>/bin/sh</string>
\t\t<string>/etc/vpnguard-killswitch/watchdog.sh</string>
\t</array>
\t<key>RunAtLoad</key>
\t<true/>
\t<key>WatchPaths</key>
\t<array>
\t\t<string>/etc/pf.conf</string>
\t</array>
\t<key>StartInterval</key>
\t<integer>30</integer>
</dict>
</plist>
"""
    assert pf.LAUNCHD_PLIST == '/Library/LaunchDaemons/com.vpnguard.killswitch.plist'


def test_the_watchdog_script_loads_before_it_enables_and_falls_back_closed():
    script = pf.watchdog_script('/var/db/vpnguard-killswitch', 'block drop out quick all\n')
    assert script.startswith('#!/bin/sh\n')
    assert ('"$pfctl" -f /etc/vpnguard-killswitch/pf.conf || "$pfctl" -f - <<\'VPNGUARD_FALLBACK\'\n'
            'block drop out quick all\nVPNGUARD_FALLBACK\n') in script
    assert script.index('-f /etc/vpnguard-killswitch/pf.conf') < script.index('"$pfctl" -E')
    assert 'token_file=/var/db/vpnguard-killswitch/watchdog.token\n' in script
    assert subprocess.run(['sh', '-n'], input=script.encode(), check=False).returncode == 0


def test_the_watchdog_creates_pflog0_only_when_the_kill_switch_logs():
    # pflog0 is a cloned interface (xnu bsd/net/if_pflog.c), gone after a reboot.
    assert 'pflog0' not in pf.watchdog_script('/var/db/vpnguard-killswitch', 'block drop out quick all\n')
    script = pf.watchdog_script('/var/db/vpnguard-killswitch', 'block drop out quick all\n', pflog=True)
    assert '/sbin/ifconfig pflog0 >/dev/null 2>&1 || /sbin/ifconfig pflog0 create\n' in script
    assert script.index('pflog0 create') < script.index('token=$(cat')  # before the token step can exit
    assert subprocess.run(['/bin/sh', '-n'], input=script, text=True, check=False).returncode == 0


def test_the_fallback_keeps_loopback_and_management_and_blocks_the_rest():
    policy = policy_of(management=[{'cidr': '198.18.0.0/24', 'port': 22, 'protocol': 'tcp'}])
    fw = Firewall(pf.fallback_ruleset(policy))
    assert not fw.send(packet('out', iface='utun4', dst='198.51.100.7'))
    assert not fw.send(packet('out', proto='udp', dst='203.0.113.1', dport=51820, uid=0))
    assert fw.send(packet('in', src='198.18.0.1', dst='198.18.0.2', sport=50000, dport=22))
    assert fw.send(packet('out', iface='lo0', dst='127.0.0.1'))


def test_pfctl_output_is_read():
    assert pf.parse_token('pf enabled\nToken : 11234588239403482\n') == '11234588239403482'
    assert pf.parse_token('pfctl: pf already enabled') is None
    assert pf.is_enabled('No ALTQ support in kernel\nStatus: Enabled for 0 days 00:01:02           Debug: Urgent\n')
    assert not pf.is_enabled('Status: Disabled                              Debug: Urgent\n')


def test_commands_are_argv_lists_for_one_anchor():
    assert pf.load_anchor_argv('/tmp/x', check=True) == ['/sbin/pfctl', '-n', '-a', 'com.vpnguard.killswitch',
                                                         '-f', '/tmp/x']
    assert pf.load_anchor_argv('/tmp/x') == ['/sbin/pfctl', '-a', 'com.vpnguard.killswitch', '-f', '/tmp/x']
    assert pf.load_conf_argv('/etc/pf.conf', check=True) == ['/sbin/pfctl', '-n', '-f', '/etc/pf.conf']
    assert pf.flush_anchor_argv() == ['/sbin/pfctl', '-a', 'com.vpnguard.killswitch', '-F', 'all']


def test_the_model_refuses_syntax_it_does_not_know():
    with pytest.raises(Unsupported):
        Ruleset('pass out quick route-to (en0 192.0.2.1) all')


# The anchor against the model ----------------------------------------------

TUNNEL = 'utun4'
PUBLIC = ['198.51.100.7', '2001:db8:5::7', '8.8.8.8', '2606:4700::1111']


def firewall(raw):
    return Firewall(pf.render(parse_policy(raw, system='Darwin'), units=8))


def test_management_sessions_survive_but_the_host_cannot_open_one():
    fw = firewall(dict(BASE, management=[{'cidr': '198.18.0.0/24', 'port': 22, 'protocol': 'tcp'},
                                         {'cidr': '198.18.0.0/24', 'port': 161, 'protocol': 'udp'}]))
    # A session open before the first load, picked up mid-stream.
    assert fw.send(packet('in', src='198.18.0.1', dst='198.18.0.2', sport=50000, dport=22, flags='A'))
    assert fw.send(packet('out', src='198.18.0.2', dst='198.18.0.1', sport=22, dport=50000, flags='A'))
    assert not fw.send(packet('out', dst='198.18.0.1', sport=22, dport=50000, flags='S')), 'a bare SYN left'
    assert not fw.send(packet('out', dst='198.18.0.1', sport=40000, dport=22, flags='S'))
    # UDP: only the reply to what came in.
    assert not fw.send(packet('out', proto='udp', dst='198.18.0.1', sport=161, dport=40000))
    assert fw.send(packet('in', proto='udp', src='198.18.0.1', dst='198.18.0.2', sport=40000, dport=161))
    assert fw.send(packet('out', proto='udp', src='198.18.0.2', dst='198.18.0.1', sport=161, dport=40000))


def test_a_tunnel_connection_cannot_continue_out_of_the_physical_interface():
    fw = firewall(BASE)
    syn = packet('out', iface=TUNNEL, src='10.64.0.2', dst='198.51.100.7', dport=443, flags='S')
    assert fw.send(syn)
    # Tunnel gone, routes fall back to en0: the same connection, same addresses.
    assert not fw.send(syn._replace(iface='en0', flags='A'))
    assert not fw.send(syn._replace(iface='en0'))


def test_the_endpoint_is_for_root_only_and_its_replies_come_back():
    fw = firewall(BASE)
    out = packet('out', proto='udp', dst='203.0.113.1', sport=51000, dport=51820, uid=0)
    assert not fw.send(out._replace(uid=501)), 'an unprivileged process used the endpoint'
    assert fw.send(out)
    assert fw.send(packet('in', proto='udp', src='203.0.113.1', dst='198.18.0.2', sport=51820, dport=51000))


def test_ipv6_is_held_like_ipv4():
    fw = firewall(BASE)
    assert not fw.send(packet('out', dst='2001:db8:5::7'))
    assert fw.send(packet('out', iface=TUNNEL, dst='2001:db8:5::7'))
    assert fw.send(packet('out', proto='icmp6', src='fe80::1', dst='ff02::2', icmp_type=133))
    assert not fw.send(packet('out', proto='icmp6', dst='2001:db8:5::7', icmp_type=128)), 'echo request leaked'


policies = policy_strategies(
    tunnel_interfaces=st.lists(st.sampled_from(['utun4', 'utun*', 'ipsec0', 'ppp0']), min_size=1, max_size=2),
    exceptions=[{'uid': 1001}, {'gid': 100}, {'uid': 0}],
    management_networks=networks(st.ip_addresses(v=4) | st.ip_addresses(v=6), st.integers(8, 32)),
    restrict_endpoints_to_tunnel=st.booleans())


@st.composite
def scenarios(draw):
    """A policy and an outbound packet aimed at what the policy names, or near it."""
    raw = draw(policies)
    policy = parse_policy(raw, system='Darwin')
    addresses = (['255.255.255.255'] + [str(e.address) for e in policy.endpoints] + [str(a) for a in policy.dns_servers]
                 + [str(a) for a in policy.doh_servers]
                 + [str(m.network.network_address + 1) for m in policy.management if m.network.num_addresses > 1]
                 + ['192.168.1.1', 'fe80::1', '10.64.0.1'] + PUBLIC)
    dst = draw(st.sampled_from(addresses) | v4 | v6)
    wanted_ports = [e.port for e in policy.endpoints] + [m.port for m in policy.management] + [53, 853, 67, 547, 443]
    proto = draw(st.sampled_from(['tcp', 'udp', 'icmp6', 'icmp']))
    if proto == 'icmp6' and ipaddress.ip_address(dst).version == 4:
        proto = 'icmp'
    if proto == 'icmp' and ipaddress.ip_address(dst).version == 6:
        proto = 'icmp6'
    uids = [e.value for e in policy.exceptions if e.selector == 'uid'] + [0, 501, 65534]
    gids = [e.value for e in policy.exceptions if e.selector == 'gid'] + [0, 20, 100]
    p = packet('out', iface=draw(st.sampled_from(['en0', 'en5', 'lo0', 'utun4', 'utun7', 'utun40', 'ipsec0', 'ppp0'])),
               proto=proto, dst=dst, sport=draw(st.sampled_from(wanted_ports + [68, 546, 40000]) | ports),
               dport=draw(st.sampled_from(wanted_ports) | ports), uid=draw(st.sampled_from(uids)),
               gid=draw(st.sampled_from(gids)), icmp_type=draw(st.sampled_from([128, 133, 135, 136, 143, 1])),
               flags=draw(st.sampled_from(['S', 'SA', 'A', 'FA', 'R'])))
    if draw(st.booleans()) and p.af == 6:
        p = p._replace(src=ipaddress.ip_address('fe80::2'))
    return raw, policy, p


def _inside(address, networks):
    return any(address.version == n.version and address in n for n in networks)


def intended(policy, tunnels, p):
    """What the policy means for an outbound packet with no state behind it."""
    if p.iface == 'lo0':
        return True
    via_tunnel = p.iface in tunnels
    if p.proto in ('tcp', 'udp') and p.dport in (53, 853):
        return via_tunnel and (not policy.dns_servers or p.dst in policy.dns_servers)
    if via_tunnel:
        return True
    if p.dst in policy.doh_servers:
        return False
    if any((p.dst, p.dport, p.proto) == (e.address, e.port, e.protocol) for e in policy.endpoints) \
            and (p.uid == 0 or not policy.restrict_endpoints_to_tunnel):
        return True  # flags any: a connection picked up mid-stream goes on
    if p.proto == 'udp' and p.af == 4 and (p.sport, p.dport) == (68, 67) \
            and p.dst == ipaddress.ip_address('255.255.255.255'):
        return True
    if p.proto == 'udp' and (p.sport, p.dport) == (546, 547) and p.src in ipaddress.ip_network('fe80::/10'):
        return True
    if p.proto == 'icmp6' and p.icmp_type in (133, 135, 136, 143):
        return True
    if policy.allow_lan and _inside(p.dst, LAN_NETWORKS):
        return True
    if p.proto == 'tcp' and 'A' in p.flags and any(
            m.protocol == 'tcp' and p.sport == m.port and _inside(p.dst, [m.network]) for m in policy.management):
        return True
    if p.proto in ('tcp', 'udp') and any(
            (e.selector, e.value) in (('uid', p.uid), ('gid', p.gid)) for e in policy.exceptions):
        return True
    return False


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(scenarios())
def test_the_anchor_decides_every_outbound_packet_as_the_policy_means(scenario):
    raw, policy, p = scenario
    fw = Firewall(pf.render(policy, units=8))
    assert fw.send(p) == intended(policy, pf.tunnel_names(policy, units=8), p), (p, fw.ruleset.decide(p).text)


@PROPERTY
@given(scenarios(), st.sampled_from(['exceptions', 'refused', 'all']))
def test_logs_and_labels_decide_nothing(scenario, log):
    raw, policy, p = scenario
    assert Firewall(pf.render(policy, units=8, log=log)).send(p) == Firewall(pf.render(policy, units=8)).send(p)


@PROPERTY
@given(scenarios())
def test_every_packet_the_anchor_refuses_is_counted_under_a_label_of_its_class(scenario):
    raw, policy, p = scenario
    rule = Firewall(pf.render(policy, units=8)).ruleset.decide(p)
    if rule.action == 'block':
        assert rule.label in pf.counter_names(policy)
        if p.proto in ('tcp', 'udp') and p.dport in (53, 853) and p.iface != 'lo0':
            assert rule.label in ('refused_dns_resolver', 'refused_dns_outside')
        elif rule.label.startswith('refused_out_'):
            assert rule.label == 'refused_out_v%d' % p.af


def test_the_endpoint_refusal_only_tells_apart_what_the_final_block_would_refuse():
    # An exception's socket and the LAN still reach the endpoint's service as before labels (issue 12).
    policy = policy_of(allow_lan=True, exceptions=[{'uid': 501}],
                       endpoints=[{'address': '192.168.1.9', 'port': 1194, 'protocol': 'udp'},
                                  {'address': '203.0.113.1', 'port': 51820, 'protocol': 'udp'}])
    fw = Firewall(pf.render(policy))
    assert fw.send(packet(iface='en0', proto='udp', dst='192.168.1.9', dport=1194, uid=4242))
    assert fw.send(packet(iface='en0', proto='udp', dst='203.0.113.1', dport=51820, uid=501))
    refused = packet(iface='en0', proto='udp', dst='203.0.113.1', sport=40404, dport=51820, uid=4242)
    assert not fw.send(refused) and fw.ruleset.decide(refused).label == 'refused_endpoint'


@PROPERTY
@given(scenarios())
def test_nothing_leaves_outside_the_tunnel_unless_the_policy_names_it(scenario):
    raw, policy, p = scenario
    tunnels = pf.tunnel_names(policy, units=8)
    assume(p.iface not in tunnels and p.iface != 'lo0')
    named = ([e.address for e in policy.endpoints] + (list(LAN_NETWORKS) if policy.allow_lan else [])
             + [m.network for m in policy.management])
    assume(not _inside(p.dst, [ipaddress.ip_network(a) if not hasattr(a, 'prefixlen') else a for a in named]))
    assume(not any((e.selector, e.value) in (('uid', p.uid), ('gid', p.gid)) for e in policy.exceptions))
    link_control = (p.proto == 'icmp6' and p.icmp_type in (133, 135, 136, 143)) or (
        p.proto == 'udp' and (p.sport, p.dport) in ((68, 67), (546, 547)))
    assume(not link_control)
    assert not Firewall(pf.render(policy, units=8)).send(p)


@PROPERTY
@given(scenarios())
def test_dns_to_another_resolver_is_blocked_even_through_the_tunnel(scenario):
    raw, policy, p = scenario
    if not policy.dns_servers:
        policy = parse_policy(dict(raw, dns_servers=['192.0.2.53']), system='Darwin')
    assume(p.iface != 'lo0' and p.dst not in policy.dns_servers)
    p = p._replace(proto='udp' if p.proto not in ('tcp', 'udp') else p.proto, dport=53)
    fw = Firewall(pf.render(policy, units=8))
    assert not fw.send(p)
    assert not fw.send(p._replace(dport=853))


@PROPERTY
@given(scenarios())
def test_outside_the_tunnel_an_endpoint_address_is_reached_only_on_its_exact_service(scenario):
    raw, policy, p = scenario
    # Only the endpoints may open a way out here; the other exceptions have their own tests.
    raw = dict(raw, allow_lan=False, exceptions=[], management=[],
               endpoints=raw['endpoints'] or [{'address': '203.0.113.1', 'port': 51820, 'protocol': 'udp'}])
    policy = parse_policy(raw, system='Darwin')
    endpoint = policy.endpoints[0]
    iface = p.iface if p.iface not in pf.tunnel_names(policy, units=8) + ['lo0'] else 'en0'
    p = p._replace(iface=iface, dst=endpoint.address, af=endpoint.address.version,
                   src=ipaddress.ip_address('198.18.0.2' if endpoint.address.version == 4 else '2001:db8:1::2'))
    assume(not (p.proto == 'udp' and (p.sport, p.dport) in ((68, 67), (546, 547))))
    assume(not (p.proto in ('icmp6', 'icmp')))
    if Firewall(pf.render(policy, units=8)).send(p):
        assert any((p.dst, p.dport, p.proto) == (e.address, e.port, e.protocol) for e in policy.endpoints)
        assert p.uid == 0 or not policy.restrict_endpoints_to_tunnel


# Issue 12: what PF does with states, direction and owners -----------------------------------------------


def test_issue12_point3_an_established_tcp_endpoint_connection_survives_a_state_flush():
    fw = firewall(dict(BASE, endpoints=[{'address': '203.0.113.1', 'port': 443, 'protocol': 'tcp'}]))
    syn = packet('out', dst='203.0.113.1', sport=50123, dport=443, uid=0, flags='S')
    assert fw.send(syn)
    fw.flush_states()
    assert fw.send(syn._replace(flags='A')), 'flags S/SA: a mid-stream packet hits the final block'
    assert fw.send(packet('out', dst='198.51.100.7', uid=0, flags='S')) is False


def test_issue12_point3_bypass_connections_survive_a_state_flush():
    fw = firewall(dict(BASE, exceptions=[{'uid': 501}]))
    syn = packet('out', dst='198.51.100.7', uid=501, flags='S')
    assert fw.send(syn)
    fw.flush_states()
    assert fw.send(syn._replace(flags='A'))


def test_issue12_point4_the_tunnel_refuses_unsolicited_inbound_connections():
    fw = firewall(BASE)
    assert not fw.send(packet('in', iface=TUNNEL, src='10.64.0.1', dst='10.64.0.2', sport=40000, dport=22,
                              flags='S')), 'anything reachable through the VPN reached a listening port'
    assert not fw.send(packet('in', iface=TUNNEL, proto='udp', src='10.64.0.1', dst='10.64.0.2', dport=5353))


def test_issue12_point4_replies_come_back_on_the_tunnel_only():
    fw = firewall(BASE)
    out = packet('out', iface=TUNNEL, src='10.64.0.2', dst='198.51.100.7', sport=40000, dport=443, flags='S')
    reply = out._replace(direction='in', src=out.dst, dst=out.src, sport=443, dport=40000, flags='SA')
    assert fw.send(out) and fw.send(reply)
    # The state is bound to the tunnel: the same connection on en0 (routes gone) matches nothing.
    assert not fw.send(reply._replace(iface='en0', flags='A'))
    assert not fw.send(out._replace(iface='en0', flags='A'))
    assert fw.states[0].kif == TUNNEL


def test_issue12_point4_dns_replies_come_back_through_the_tunnel():
    fw = firewall(dict(BASE, dns_servers=['192.0.2.1']))
    query = packet('out', iface=TUNNEL, proto='udp', src='10.64.0.2', dst='192.0.2.1', sport=5353, dport=53)
    assert fw.send(query)
    assert fw.send(query._replace(direction='in', src=query.dst, dst=query.src, sport=53, dport=5353))


def test_issue12_point8_dhcp_goes_only_to_the_broadcast_address():
    fw = firewall(BASE)
    dhcp = packet('out', proto='udp', src='0.0.0.0', dst='255.255.255.255', sport=68, dport=67, uid=501)
    assert fw.send(dhcp)
    assert not fw.send(dhcp._replace(dst=ipaddress.ip_address('198.51.100.7'))), \
        'any socket on port 68 reached port 67 of any host'


@pytest.mark.parametrize('icmp_type', [130, 137])
def test_issue12_point8_mld_queries_and_redirects_come_in(icmp_type):
    fw = firewall(BASE)
    assert fw.send(packet('in', proto='icmp6', src='fe80::1', dst='ff02::1', icmp_type=icmp_type))


@pytest.mark.parametrize('gid', [20, 12])
def test_issue12_point8_a_group_every_user_has_is_refused(gid):
    with pytest.raises(PolicyError) as error:
        rendered(exceptions=[{'uid': 501}, {'gid': gid}])
    assert error.value.setting == 'exceptions[1].gid'


def test_issue12_kill_plan_keeps_what_the_new_policy_still_allows():
    before = pf.state_summary(policy_of(tunnel_interfaces=['utun4', 'utun5'], dns_servers=['192.0.2.1'],
                                        exceptions=[{'uid': 501}]))
    after = pf.state_summary(policy_of(dns_servers=['192.0.2.2'], exceptions=[{'uid': 501}],
                                       endpoints=[{'address': '2001:db8::9', 'port': 51820, 'protocol': 'udp'}]))
    assert pf.kill_states_argvs(before, after) == [
        [pf.PFCTL, '-i', 'utun5', '-F', 'states'],
        [pf.PFCTL, '-k', '0.0.0.0/0', '-k', '192.0.2.1'],
        [pf.PFCTL, '-k', '0.0.0.0/0', '-k', '203.0.113.1']]
    assert pf.kill_states_argvs(after, after) == []
    assert pf.kill_states_argvs(None, after) is None, 'nothing known of the previous policy: flush all'
    assert pf.kill_states_argvs(dict(after, owners=['uid 502']), after) is None, 'PF cannot kill by owner'
