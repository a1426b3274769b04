"""nft_killswitch run by Ansible against the real kernel, in a private network namespace."""

import time

import pytest

from namespace_host import CAN_RUN, Host, host_fixture

pytestmark = pytest.mark.skipif(not CAN_RUN, reason='needs root, nft, unshare and ansible to run the module')

POLICY = {'tunnel_interfaces': ['wg*'],
          'endpoints': [{'address': '203.0.113.1', 'port': 51820, 'protocol': 'udp'}],
          'dns_servers': ['192.0.2.1']}
FOREIGN_TABLE = 'table inet other_tool {\n\tchain output {\n\t\ttype filter hook output priority filter; policy accept;\n\t\taccept\n\t}\n}\n'


class NftHost(Host):
    def module(self, *flags, **args):
        return super(NftHost, self).module('nft_killswitch', *flags, **args)

    def table(self):
        return self.sh('nft list table inet vpnguard_killswitch 2>/dev/null || true')

    def ruleset(self):
        return self.sh('nft list ruleset; ip -N -4 rule; ip -N -6 rule')


host = host_fixture(NftHost)


def test_check_mode_changes_nothing_then_apply_then_idempotent(host):
    before = host.ruleset()
    checked = host.module('--check', '--diff', **POLICY)
    assert checked['changed'] and not checked.get('failed')
    assert 'chain output' in checked['diff']['after'] and checked['diff']['before'] == ''
    assert host.ruleset() == before, 'check mode touched the host'

    applied = host.module(**POLICY)
    assert applied['changed'] and applied['summary']['firewall_changed']
    assert 'policy drop' in host.table()
    # The module names its rule protocol for ip(8).
    assert 'unreachable proto vpnguard' in host.sh('ip -4 rule') and 'unreachable proto vpnguard' in host.sh('ip -6 rule')
    assert applied['routing_rules'] == ['ipv4 32765: to 203.0.113.1/32 ipproto udp dport 51820 lookup main',
                                        'ipv4 32765: lookup main suppress_prefixlength 0',
                                        'ipv4 32765: lookup main suppress_ifgroup 0',
                                        'ipv4 32765: unreachable',
                                        'ipv6 32765: lookup main suppress_prefixlength 0',
                                        'ipv6 32765: lookup main suppress_ifgroup 0',
                                        'ipv6 32765: unreachable']

    again = host.module(**POLICY)
    assert not again['changed']
    assert not host.module('--check', **POLICY)['changed']


def test_the_guard_routes_only_the_tunnels_own_packets_to_the_endpoint(host):
    # A physical uplink with a default route, as the host has when the tunnel is gone.
    host.sh('ip link add eth0 type veth peer name isp0 && ip addr add 198.18.1.2/24 dev eth0 && '
            'ip link set eth0 up && ip link set isp0 up && ip route add default via 198.18.1.1 dev eth0')
    host.module(management=[{'cidr': '198.19.0.0/16', 'port': 22, 'protocol': 'tcp'}], **POLICY)
    host.sh('nft delete table inet vpnguard_killswitch')  # the guard alone

    def route(selector):
        return host.sh('ip route get %s 2>&1 || true' % selector)
    assert 'dev eth0' in route('203.0.113.1 ipproto udp dport 51820')
    assert 'dev eth0' in route('198.19.5.5 ipproto tcp sport 22 dport 40000')
    for other in ('203.0.113.1 ipproto icmp', '203.0.113.1 ipproto udp dport 51821', '203.0.113.1 ipproto tcp dport 51820',
                  '198.19.5.5 ipproto tcp sport 2222 dport 22', '198.51.100.10'):
        assert 'unreachable' in route(other), other


def test_the_guard_lets_a_tunnels_default_route_in_main_be_used_and_no_physical_one(host):
    """OpenVPN without def1 and openconnect's vpnc-script put `default dev tun0` in main."""
    host.sh('ip link add eth0 type veth peer name isp0 && ip addr add 198.18.1.2/24 dev eth0 '
            '&& ip -6 addr add 2001:db8:1::2/64 dev eth0 nodad && ip link set eth0 up && ip link set isp0 up '
            '&& ip route add default via 198.18.1.1 dev eth0 metric 100 '
            '&& ip -6 route add default via 2001:db8:1::1 dev eth0 metric 100')
    # Stand-ins for tunnel devices (a veth has a carrier, as a running tun0 has).
    for name in ('tun0', 'tun1', 'ppp0'):
        host.sh('ip link add %s type veth peer name x%s && ip link set %s up && ip link set x%s up'
                % (name, name, name, name))
    host.sh('ip addr add 192.0.2.10/32 dev tun0 && ip -6 addr add 2001:db8:ff::10/128 dev tun0 nodad')
    policy = dict(POLICY, tunnel_interfaces=['wg0', 'tun*'], exceptions=[{'uid': 4242}])
    applied = host.module(**policy)
    assert sorted(applied['regrouped_interfaces']) == ['tun0: group 86', 'tun1: group 86']
    assert 'group 86' in host.sh('ip link show tun0') and 'group 86' not in host.sh('ip link show ppp0')
    assert 'tun' in host.sh('cat /etc/udev/rules.d/70-vpnguard-killswitch-tunnels.rules')
    host.sh('nft delete table inet vpnguard_killswitch')  # the guard alone

    def route(selector, family='-4'):
        return host.sh('ip %s route get %s 2>&1 || true' % (family, selector))
    assert 'unreachable' in route('198.51.100.10'), 'the physical default route'
    assert 'unreachable' in route('2001:db8:2::10', '-6'), 'the physical default route'
    host.sh('ip route replace default dev tun0 && ip -6 route replace default dev tun0 metric 50')
    assert 'dev tun0' in route('198.51.100.10') and 'dev tun0' in route('2001:db8:2::10', '-6')
    # A bypass socket never takes the tunnel's route from main: with only
    # the tunnel's default route there, it goes on to the rules after it.
    host.sh('ip route replace default dev tun0 && ip route add 198.51.100.0/24 via 198.18.1.1 dev eth0')
    assert 'dev eth0' in route('198.51.100.10 mark 51820')
    host.sh('ip route del 198.51.100.0/24')
    # A tunnel device the kill switch did not group fails closed.
    host.sh('ip route replace default dev ppp0 && ip -6 route replace default dev ppp0 metric 50')
    assert 'unreachable' in route('198.51.100.10') and 'unreachable' in route('2001:db8:2::10', '-6')
    # A physical default route beside the tunnel's wins on metric: refused, nothing flows.
    host.sh('ip route replace default dev tun0 metric 200 && ip route replace default via 198.18.1.1 dev eth0 metric 100')
    assert 'unreachable' in route('198.51.100.10')

    again = host.module(**policy)
    assert again['regrouped_interfaces'] == []
    removed = host.module(state='absent')
    assert sorted(removed['regrouped_interfaces']) == ['tun0: group 0', 'tun1: group 0']
    assert 'group 86' not in host.sh('ip link show')
    assert host.sh('ls /etc/udev/rules.d/ 2>/dev/null || true').strip() == ''


def test_policy_based_ipsec_is_refused_before_anything_is_touched_and_route_based_is_not(host):
    host.sh('ip link add eth0 type veth peer name isp0 && ip addr add 198.18.1.2/24 dev eth0 && ip link set eth0 up')
    # Route-based (an XFRM interface's if_id) and a bypass policy without a template: no refusal.
    host.sh('ip xfrm policy add src 0.0.0.0/0 dst 0.0.0.0/0 dir out if_id 42 '
            'tmpl src 198.18.1.2 dst 203.0.113.1 proto esp mode tunnel reqid 2')
    host.sh('ip xfrm policy add src 198.18.1.0/24 dst 198.18.1.0/24 dir out priority 10')
    assert not host.module('--check', **POLICY).get('failed')
    host.sh('ip xfrm policy add src 198.18.203.1/32 dst 0.0.0.0/0 dir out '
            'tmpl src 198.18.1.2 dst 203.0.113.1 proto esp mode tunnel reqid 1')
    before = host.ruleset()
    result = host.module(**POLICY)
    assert result['failed'] and result['setting'] == 'tunnel_interfaces'
    assert result['xfrm_policies'] == ['src 198.18.203.1/32 dst 0.0.0.0/0 dir out']
    for advice in ('if_id_in = 42', 'if_id_out = 42', 'set_mark_out', 'type xfrm', 'protocols: [udp, esp]'):
        assert advice in result['msg']
    assert host.ruleset() == before
    host.sh('ip xfrm policy deleteall dir out src 198.18.203.1/32 dst 0.0.0.0/0')
    assert not host.module(**POLICY).get('failed')


def test_drift_is_seen_and_healed(host):
    host.module(**POLICY)
    host.sh('nft delete rule inet vpnguard_killswitch output handle '
            '$(nft -a list chain inet vpnguard_killswitch output | grep "oif \\"lo\\"" | sed "s/.*handle //")')
    assert host.module('--check', **POLICY)['changed']
    assert host.module(**POLICY)['changed']
    assert 'oif "lo" accept' in host.table()

    host.sh('ip -N -4 rule del priority 32765 unreachable')
    drift = host.module('--check', **POLICY)
    assert drift['changed'] and drift['summary']['routing_guard_changed'] and not drift['summary']['firewall_changed']
    host.module(**POLICY)
    assert not host.module(**POLICY)['changed']


def test_a_policy_change_is_applied(host):
    host.module(**POLICY)
    changed = host.module('--diff', **dict(POLICY, dns_servers=['192.0.2.53']))
    assert changed['changed']
    assert '192.0.2.53' in host.table() and '192.0.2.1 ' not in host.table()


def test_a_failed_apply_keeps_the_previous_kill_switch(host):
    host.module(**POLICY)
    before = host.ruleset()
    failed = host.module(**dict(POLICY, exceptions=[{'cgroup': 'no/such/cgroup.slice'}]))
    assert failed.get('failed') and 'nothing was changed' in failed['msg']
    assert host.ruleset() == before


def test_bad_input_fails_before_touching_the_host_and_names_the_setting(host):
    before = host.ruleset()
    bad = host.module(**dict(POLICY, endpoints=[{'address': '203.0.113.1', 'port': 51820}],
                             tunnel_interfaces=['wg0', 'eth0 accept']))
    assert bad.get('failed') and 'tunnel_interfaces[1]' in bad['msg']
    assert bad.get('setting') == 'tunnel_interfaces[1]'
    assert host.ruleset() == before


def test_others_tables_and_rules_are_left_alone(host):
    host.sh("nft -f - <<'EOF'\n%sEOF" % FOREIGN_TABLE)
    host.sh('ip rule add priority 100 to 198.51.100.0/24 lookup main')
    foreign = host.sh('nft list table inet other_tool; ip rule show priority 100')
    host.module(**POLICY)
    host.module(**dict(POLICY, allow_lan=True))
    assert host.sh('nft list table inet other_tool; ip rule show priority 100') == foreign
    removed = host.module(state='absent')
    assert removed['changed']
    assert host.sh('nft list ruleset') == host.sh('nft list table inet other_tool')
    assert 'proto 86' not in host.sh('ip -N -4 rule; ip -N -6 rule')
    assert host.sh('nft list table inet other_tool; ip rule show priority 100') == foreign
    assert host.sh('ls /var/lib | grep vpnguard || true') == ''
    assert not host.module(state='absent')['changed']


def test_boot_files_restore_the_same_kill_switch_and_can_be_run_twice(host, tmp_path):
    persist_dir = host.persist_dir
    applied = host.module(persist=True, **POLICY)
    unit = '/etc/systemd/system/vpnguard-killswitch.service'
    link = '/etc/systemd/system/sysinit.target.wants/vpnguard-killswitch.service'
    assert sorted(applied['persisted_files']) == [
        '/etc/iproute2/rt_protos.d/vpnguard-killswitch.conf', '/etc/iproute2/rt_tables.d/vpnguard-killswitch.conf',
        link, unit,
        '/etc/udev/rules.d/70-vpnguard-killswitch-tunnels.rules',
        persist_dir + '/routing-guard.sh', persist_dir + '/ruleset.nft']
    assert host.sh('readlink %s' % link).strip() == unit
    exec_start = [line.split('=', 1)[1] for line in host.sh('cat %s' % unit).splitlines() if line.startswith('ExecStart=')]
    assert exec_start == ['/usr/sbin/nft -f %s/ruleset.nft' % persist_dir, '/bin/sh %s/routing-guard.sh' % persist_dir]
    assert not host.module(persist=True, **POLICY)['changed']
    live = host.ruleset()

    # A boot: nothing of ours is there. What the unit runs lays it all again.
    host.module(state='absent', persist_dir=str(tmp_path / 'elsewhere'))
    assert 'vpnguard' not in host.ruleset() and 'proto 86' not in host.ruleset()
    boot = 'nft -f %s/ruleset.nft && sh %s/routing-guard.sh' % (persist_dir, persist_dir)
    host.sh(boot)
    assert host.ruleset() == live
    host.sh(boot)  # a reload of the unit
    assert host.ruleset() == live

    host.module(persist=False, **POLICY)
    assert host.sh('ls /etc | grep vpnguard || true') == ''
    assert host.sh('ls %s %s 2>&1 || true' % (unit, link)).count('No such file') == 2


def wait_for(predicate, seconds):
    for attempt in range(int(seconds * 10)):
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_an_unconfirmed_change_is_undone_by_the_host(host):
    host.module(persist=True, **POLICY)
    before = host.ruleset()
    boot_before = host.sh('cat %s/*' % host.persist_dir)
    # Long enough to read the table before the timer fires, even on a loaded machine.
    cut_off = host.module(persist=True, confirm_timeout=8, **dict(POLICY, dns_servers=['192.0.2.99']))
    assert cut_off['changed'] and cut_off['confirm_pending']
    assert '192.0.2.99' in host.table()
    assert wait_for(lambda: host.ruleset() == before and host.sh('cat %s/*' % host.persist_dir) == boot_before, 25), \
        'the timer did not restore the previous kill switch and its boot files'
    assert not host.module('--check', confirm=True)['confirmed']


def test_a_confirmed_change_stays(host):
    host.module(**POLICY)
    # Long enough for Ansible to start the confirming run on a slow machine.
    armed = host.module(confirm_timeout=20, **dict(POLICY, dns_servers=["192.0.2.99"]))
    armed_at = time.time()
    assert armed['confirm_pending']
    confirmed = host.module(confirm=True)
    assert confirmed['changed'] and confirmed['confirmed'], 'confirmed %.1fs after arming' % (time.time() - armed_at)
    time.sleep(max(0, armed_at + 21 - time.time()))
    assert '192.0.2.99' in host.table()
    assert not host.module(confirm=True)['changed']


def test_a_first_unconfirmed_apply_is_removed_again(host):
    before = host.ruleset()
    host.module(confirm_timeout=1, **POLICY)
    assert wait_for(lambda: host.ruleset() == before, 15)


def test_a_host_without_the_binding_is_told_what_it_lacks_and_left_untouched(host):
    before = host.ruleset()
    host.hide_nftables_binding()
    result = host.module(persist=True, **POLICY)
    assert result['failed'] and result.get('missing_requirements') == ['nftables'], result['msg']
    assert 'python3-nftables' in result['msg']
    assert host.ruleset() == before and host.sh('ls /etc | grep vpnguard || true') == ''


def test_persist_without_systemd_fails_before_touching_the_host(host):
    before = host.ruleset()
    host.sh('mount --bind /dev/null /usr/bin/systemctl')  # this host's mounts only
    result = host.module(persist=True, **POLICY)
    assert result['failed'] and result['setting'] == 'persist' and 'systemd' in result['msg']
    assert host.ruleset() == before
    assert host.module(persist=False, **POLICY)['changed']


def test_forwarding_auto_follows_the_kernel_and_turning_it_on_is_drift(host):
    # A new namespace inherits IPv4 settings from the machine's: set them here.
    host.sh('sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0')
    applied = host.module(**POLICY)
    assert applied['changed'] and not applied['summary']['forwarding'] and not applied['summary']['conntrack']
    assert 'ct ' not in host.table() and 'policy drop' in host.table()

    # A container engine turns forwarding on: the next audit sees it as drift.
    host.sh('sysctl -qw net.ipv4.ip_forward=1')
    before = host.ruleset()
    audit = host.module('--check', **POLICY)
    assert audit['changed'] and audit['summary']['firewall_changed'] and audit['summary']['forwarding']
    assert audit['summary']['forwarding_changed'], 'told apart from a policy change'
    assert audit['summary']['conntrack'] and host.ruleset() == before
    applied = host.module(**POLICY)
    assert applied['changed'] and applied['summary']['forwarding'] and applied['summary']['forwarding_changed']
    assert not host.module('--check', **POLICY)['summary']['forwarding_changed']
    # A state file of an earlier release does not record the setting: the table itself still tells.
    state = '/var/lib/vpnguard-killswitch/nft_killswitch.json'
    host.sh("python3 -c \"import json; p='%s'; d=json.load(open(p)); del d['forwarding']; json.dump(d, open(p, 'w'))\""
            % state)
    host.sh('sysctl -qw net.ipv4.ip_forward=0')
    assert host.module('--check', **POLICY)['summary']['forwarding_changed']
    host.sh('sysctl -qw net.ipv4.ip_forward=1')
    assert 'iifname "wg*" ct state established,related accept' in host.table()
    assert not host.module(**POLICY)['changed'] and not host.module('--check', **POLICY)['changed']
    # IPv6 forwarding alone is forwarding too.
    host.sh('sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=1')
    assert not host.module('--check', **POLICY)['changed']
    # So is IPv4 forwarding on one interface only (the kernel forwards by the interface a packet comes in on).
    host.sh('sysctl -qw net.ipv6.conf.all.forwarding=0 && sysctl -qw net.ipv4.conf.lo.forwarding=1')
    assert host.sh('cat /proc/sys/net/ipv4/ip_forward').strip() == '0'
    assert not host.module('--check', **POLICY)['changed']
    host.sh('sysctl -qw net.ipv4.conf.lo.forwarding=0 net.ipv6.conf.all.forwarding=1')

    # disabled overrides the kernel (a policy change, not the host's).
    disabled = host.module(forwarding='disabled', **POLICY)
    assert disabled['changed'] and not disabled['summary']['forwarding'] and not disabled['summary']['conntrack']
    assert not disabled['summary']['forwarding_changed']
    # Another policy change while the host forwards is not the host's either.
    host.module(**POLICY)
    other = host.module('--check', allow_lan=True, **POLICY)
    assert other['summary']['firewall_changed'] and not other['summary']['forwarding_changed']
    host.module(forwarding='disabled', **POLICY)
    assert 'ct ' not in host.table()

    before = host.ruleset()
    invalid = host.module(forwarding='maybe', **POLICY)
    assert invalid.get('failed') and 'forwarding' in invalid['msg']
    assert host.ruleset() == before

    # The exceptions need conntrack on a host that does not forward too.
    host.sh('sysctl -qw net.ipv6.conf.all.forwarding=0')
    excepted = host.module(exceptions=[{'uid': 1001}], **POLICY)
    assert not excepted['summary']['forwarding'] and excepted['summary']['conntrack']
    assert 'ct mark' in host.table()
