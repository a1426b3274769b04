"""The macOS probe's parsing and verdicts, against command output in the format of its source."""

import errno
import socket

import pytest

from ansible_collections.vpnguard.killswitch.plugins.module_utils import pf, probe_darwin

from macos_outputs import IFCONFIG_A, NETSTAT_RN, NETSTAT_RN_TUNNEL_ONLY, PFCTL_LABELS, PFCTL_STDERR

TUNNELS = ['utun4']


def test_ifconfig_gives_each_interface_its_state_and_global_addresses_only():
    found = probe_darwin.parse_ifconfig(IFCONFIG_A)
    assert found['en0'] == dict(flags=['UP', 'BROADCAST', 'SMART', 'RUNNING', 'SIMPLEX', 'MULTICAST'], up=True,
                                ipv4=['198.18.0.2'], ipv6=['2001:db8:1::2'])  # the tentative one cannot be bound yet
    assert found['lo0']['ipv4'] == [] and found['lo0']['ipv6'] == []
    assert found['awdl0'] == dict(flags=found['awdl0']['flags'], up=True, ipv4=[], ipv6=[])  # link-local only
    assert not found['en1']['up'] and not found['stf0']['up']
    assert found['utun4']['ipv4'] == ['10.8.0.2'] and found['utun4']['up']


def test_netstat_rows_are_read_per_family():
    routes = probe_darwin.parse_netstat_routes(NETSTAT_RN)
    assert routes[0] == dict(family='ipv4', destination='0/1', gateway='10.8.0.1', flags='UGSc', interface='utun4')
    assert dict(family='ipv6', destination='default', gateway='fe80::1%en0', flags='UGcg', interface='en0') in routes
    assert not [r for r in routes if r['destination'] in ('Destination', 'Routing', 'Internet:')]


def test_default_routes_outside_the_tunnel_are_reported_and_the_tunnels_halves_are_not():
    routes = probe_darwin.parse_netstat_routes(NETSTAT_RN)
    assert probe_darwin.routes_outside_tunnel(routes, TUNNELS) == [
        'default via 198.18.0.1 dev en0 ipv4',
        'default via 198.18.0.1 dev en0 ipv4 (scoped to the interface)',
        'default via fe80::1%en0 dev en0 ipv6']
    assert probe_darwin.routes_outside_tunnel(probe_darwin.parse_netstat_routes(NETSTAT_RN_TUNNEL_ONLY), TUNNELS) == []


def test_the_tunnel_is_up_when_its_interface_is_up_with_an_address():
    interfaces = probe_darwin.parse_ifconfig(IFCONFIG_A)
    assert probe_darwin.tunnel_state(interfaces, TUNNELS) == dict(
        up=True, interfaces=[dict(interface='utun4', state='up', addresses=['10.8.0.2'])])
    assert probe_darwin.tunnel_state(interfaces, ['utun7']) == dict(up=False, interfaces=[])


def test_labels_are_summed_over_the_rules_that_share_one_and_other_lines_are_skipped():
    counted = pf.parse_labels(PFCTL_LABELS + PFCTL_STDERR + 'LABEL COUNTERS:\n')
    assert counted['refused_dns_outside'] == (4, 240)
    assert counted['refused_dns_resolver'] == (0, 0)
    assert counted['refused_out_v4'] == (12, 720)
    assert counted['refused_in_v4'] == (25, 1500)
    assert counted['exception_uid_501'] == (7, 4200)
    assert pf.parse_labels('') == {}


def test_what_the_module_counted_before_a_reload_is_carried_on():
    assert pf.carried_counters({'refused_out_v4': [10, 600]}, {'refused_out_v4': (2, 120), 'refused_doh': (1, 60)}) == {
        'refused_out_v4': (12, 720), 'refused_doh': (1, 60)}


def test_a_refusal_pf_counted_is_refused_whatever_the_sender_was_told():
    # xnu's ip_output drops pf_af_hook()'s error for IPv4: the sender sees success.
    assert probe_darwin.verdict(None, {'refused_out_v4': 1})[0] == 'refused'
    # pf_inet6_hook() gives EHOSTUNREACH to an IPv6 sender.
    verdict, detail = probe_darwin.verdict(errno.EHOSTUNREACH, {'refused_out_v6': 1})
    assert verdict == 'refused' and 'refused_out_v6 +1' in detail and 'EHOSTUNREACH' in detail
    assert 'no capture' in detail


def test_no_route_is_refused_by_routing_and_a_send_pf_did_not_count_leaked():
    verdict, detail = probe_darwin.verdict(errno.ENETUNREACH, {})
    assert verdict == 'refused' and detail.startswith('refused by routing')
    assert probe_darwin.verdict(None, {})[0] == 'LEAKED'
    assert probe_darwin.verdict(errno.ECONNREFUSED, {})[0] == 'LEAKED'


def test_only_refusing_labels_count_and_a_reload_between_readings_counts_from_zero():
    before = {'refused_out_v4': (5, 300), 'exception_uid_501': (1, 60)}
    assert probe_darwin.refused_delta(before, {'refused_out_v4': (6, 360), 'exception_uid_501': (9, 600)}) == {
        'refused_out_v4': 1}
    assert probe_darwin.refused_delta(before, {'refused_out_v4': (1, 60)}) == {'refused_out_v4': 1}
    assert probe_darwin.refused_delta(before, before) == {}


class RecordingSocket:
    """A socket that records what the probe asks of it and fails as told."""

    made = []

    def __init__(self, family, kind, fail=None):
        self.family, self.kind, self.fail, self.options, self.bound, self.closed = family, kind, fail, [], None, False
        RecordingSocket.made.append(self)

    def setblocking(self, flag):
        pass

    def setsockopt(self, level, option, value):
        self.options.append((level, option, value))

    def bind(self, address):
        self.bound = address

    def connect(self, destination):
        raise OSError(self.fail or errno.EINPROGRESS, 'fake')

    def sendto(self, data, destination):
        if self.fail:
            raise OSError(self.fail, 'fake')
        return len(data)

    def close(self):
        self.closed = True


def test_checks_bind_to_the_interface_and_its_address_and_skip_what_cannot_run():
    interfaces = probe_darwin.parse_ifconfig(IFCONFIG_A)
    checks, skipped = probe_darwin.plan(interfaces, TUNNELS, ['192.0.2.1'], '203.0.113.254', '2001:db8:ffff::fe',
                                        index_of={'en0': 11}.get)
    assert [c.name for c in checks] == [
        'udp ipv4 bound to en0', 'tcp ipv4 bound to en0', 'dns ipv4 bound to en0',
        'udp ipv6 bound to en0', 'tcp ipv6 bound to en0', 'dns ipv6 bound to en0',
        "dns ipv4 to a resolver that is not the tunnel's", "dns ipv6 to a resolver that is not the tunnel's"]
    reasons = dict((s['check'], s['detail']) for s in skipped)
    assert reasons['udp ipv4 bound to en1'] == 'interface down'
    assert reasons['udp ipv6 bound to awdl0'] == 'no global ipv6 address'
    assert not [s for s in skipped if 'utun4' in s['check'] or 'lo0' in s['check']]

    del RecordingSocket.made[:]
    assert checks[0].attempt(RecordingSocket) is None
    assert checks[4].attempt(RecordingSocket) is None  # a TCP connect in progress went through
    v4, v6 = RecordingSocket.made
    assert v4.options == [(socket.IPPROTO_IP, probe_darwin.IP_BOUND_IF, 11)] and v4.bound == ('198.18.0.2', 0)
    assert v6.options == [(probe_darwin.IPPROTO_IPV6, probe_darwin.IPV6_BOUND_IF, 11)]
    assert v6.bound == ('2001:db8:1::2', 0, 0, 0)
    assert v4.closed and v6.closed


@pytest.mark.parametrize('fail', [errno.EHOSTUNREACH, errno.ENETUNREACH])
def test_the_errno_of_the_call_is_handed_to_the_verdict(fail):
    check = probe_darwin.Check('udp ipv6 bound to en0', socket.AF_INET6, 'udp', 'en0', 11, '2001:db8:1::2',
                               ('2001:db8:ffff::fe', 9))
    assert check.attempt(lambda family, kind: RecordingSocket(family, kind, fail)) == fail


def test_each_check_is_judged_by_what_pf_counted_during_it_alone():
    readings = iter([{}, {'refused_out_v4': (1, 60)}, {'refused_out_v4': (1, 60)}, {'refused_out_v4': (1, 60)}])
    check = probe_darwin.Check('udp ipv4 bound to en0', socket.AF_INET, 'udp', 'en0', 11, '198.18.0.2',
                               ('203.0.113.254', 9))
    results, leaked = probe_darwin.run([check, check], [], lambda: next(readings), RecordingSocket)
    assert [r['verdict'] for r in results] == ['refused', 'LEAKED'] and leaked


def test_a_socket_that_cannot_be_bound_sent_nothing_and_is_not_run():
    class Unbindable(RecordingSocket):
        def bind(self, address):
            raise OSError(errno.EADDRNOTAVAIL, 'Cannot assign requested address')

    check = probe_darwin.Check('udp ipv4 bound to en0', socket.AF_INET, 'udp', 'en0', 11, '198.18.0.2',
                               ('203.0.113.254', 9))
    results, leaked = probe_darwin.run([check], [], dict, Unbindable)
    assert results[0]['verdict'] == 'not run' and 'could not bind' in results[0]['detail'] and not leaked


def test_an_interface_gone_since_ifconfig_listed_it_is_not_run():
    def gone(name):
        raise OSError(errno.ENXIO, 'Device not configured')

    checks, skipped = probe_darwin.plan(probe_darwin.parse_ifconfig(IFCONFIG_A), TUNNELS, [], '203.0.113.254',
                                        '2001:db8:ffff::fe', index_of=gone)
    assert checks == []
    assert [s['detail'] for s in skipped if s['check'] == 'udp ipv4 bound to en0'] == [
        'no interface index: [Errno 6] Device not configured']
