"""The audit's evidence against the real kernel: counters, logs and the live leak probe.

A host namespace with an uplink to a second namespace of the test's own (the
ISP: it answers ARP and neighbour discovery for the gateway, so that a packet
the host lets out really leaves, and drops what it gets). The probe must say
refused for every check on a hardened host, and LEAKED on the same host
without the kill switch, where a capture on the ISP side must see the probe's
packets go only to the canary.
"""

import subprocess
import time

import pytest

from namespace_host import CAN_RUN, UplinkHost, host_fixture

pytestmark = pytest.mark.skipif(not CAN_RUN, reason='needs root, nft, unshare and ansible to run the module')

CANARY_V4, CANARY_V6 = '203.0.113.254', '2001:db8:ffff::fe'
POLICY = {'tunnel_interfaces': ['wg*'],
          'endpoints': [{'address': '203.0.113.1', 'port': 51820, 'protocol': 'udp'}],
          'dns_servers': ['192.0.2.1'],
          'exceptions': [{'uid': 998}]}


class ProbedHost(UplinkHost):
    def module(self, *flags, **args):
        return super(ProbedHost, self).module('nft_killswitch', *flags, **args)


host = host_fixture(ProbedHost)

# Everything of the probe's, to the canary or asking the link for it.
PROBE_BPF = 'host %s or host %s or (arp and host %s)' % (CANARY_V4, CANARY_V6, CANARY_V4)


def verdicts(result):
    return dict((c['check'], c['verdict']) for c in result['probe']['checks'])


def test_the_probe_sees_a_hardened_host_refuse_and_nothing_reach_the_wire(host):
    host.module(**POLICY)
    capture = host.capture()
    audited = host.module('--check', probe=True, **POLICY)
    seen = host.captured(capture, PROBE_BPF)
    assert not audited['changed'], 'the probe is not drift'
    assert not audited['probe']['leaked']
    checks = verdicts(audited)
    for family in ('ipv4', 'ipv6'):
        for protocol in ('udp', 'tcp', 'dns'):
            assert checks['%s %s bound to eth0' % (protocol, family)] == 'refused'
        assert checks["dns %s to a resolver that is not the tunnel's" % family] == 'refused'
    assert not any(c['verdict'] == 'LEAKED' for c in audited['probe']['checks'])
    assert seen == [], 'the probe put packets on the wire: %s' % seen
    # The kill switch's table for the bypass exception is a way out too, and said so.
    assert audited['routes_outside_tunnel'] == ['default via 198.18.1.1 dev eth0 table vpnguard-bypass',
                                                'default via 198.18.1.1 dev eth0 table main metric 100',
                                                'default via 2001:db8:1:1::1 dev eth0 table vpnguard-bypass metric 1024',
                                                'default via 2001:db8:1:1::1 dev eth0 table main metric 100']
    assert audited['tunnel'] == {'up': False, 'interfaces': []}


def test_the_probe_says_leaked_on_the_same_host_without_the_kill_switch(host):
    # The control: no kill switch. A probe that cannot say LEAKED proves nothing.
    capture = host.capture()
    audited = host.module('--check', probe=True, **POLICY)
    seen = host.captured(capture, PROBE_BPF)
    assert audited['probe']['leaked']
    checks = verdicts(audited)
    for family in ('ipv4', 'ipv6'):
        for protocol in ('udp', 'tcp', 'dns'):
            assert checks['%s %s bound to eth0' % (protocol, family)] == 'LEAKED'
        assert checks["dns %s to a resolver that is not the tunnel's" % family] == 'LEAKED'
    # What leaked went to the canary and nowhere else.
    assert seen and all(CANARY_V4 in line or CANARY_V6 in line for line in seen), seen
    assert host.sh('nft list tables') == ''


def test_the_routing_guard_alone_does_not_hold_bound_sockets_and_the_probe_sees_it(host):
    # Linux sends a bound socket's packet on its link when no route exists,
    # so with the firewall gone only the guard is left, and it cannot hold them.
    host.module(**POLICY)
    host.sh('nft delete table inet vpnguard_killswitch')
    audited = host.module('--check', probe=True, **POLICY)
    checks = verdicts(audited)
    assert checks['udp ipv4 bound to eth0'] == 'LEAKED'
    assert checks["dns ipv4 to a resolver that is not the tunnel's"] == 'refused'  # the guard: no route
    assert audited['changed'], 'the missing table is drift'


def counter(result, name):
    return result['counters'][name]['packets']


def test_counters_count_each_refusal_and_exception_and_survive_runs_and_changes(host):
    host.sh('ip addr add 198.18.1.3/24 dev eth0')
    host.module(**POLICY)
    # A refused send on the link (routes exist for it), DNS to another resolver, the endpoint for uid 65534.
    host.sh("python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "for d in (\"198.18.1.1\", 9), (\"198.18.1.1\", 53):\n"
            "    try: s.sendto(b\"x\", d)\n"
            "    except OSError: pass'")
    host.sh("setpriv --reuid 65534 --regid 65534 --clear-groups python3 -c 'import socket; "
            "s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ntry: s.sendto(b\"x\", (\"203.0.113.1\", 51820))\n"
            "except OSError: pass'")
    host.sh("setpriv --reuid 998 --regid 998 --clear-groups python3 -c 'import socket; "
            "s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b\"x\", (\"198.18.1.1\", 9))'")
    before = host.module('--check', **POLICY)
    assert not before['changed'], 'counted packets are not drift'
    assert counter(before, 'refused_out_v4') >= 1
    assert counter(before, 'refused_dns_outside') >= 1
    assert counter(before, 'refused_endpoint') >= 1
    assert counter(before, 'exception_uid_998') >= 1
    assert before['counters']['exception_uid_998']['counts'] == 'exception uid: 998 used'
    assert not host.module(**POLICY)['changed']
    # A policy change replaces the table, and the counters carry on from where they were.
    changed = host.module(**dict(POLICY, allow_lan=True))
    assert changed['changed']
    for name in ('refused_out_v4', 'refused_dns_outside', 'refused_endpoint', 'exception_uid_998'):
        assert counter(changed, name) == counter(before, name), name


def test_logging_names_the_reason_and_the_uid(host):
    # Outside the first network namespace the kernel logs netfilter only when told to.
    with open('/proc/sys/net/netfilter/nf_log_all_netns') as f:
        saved = f.read().strip()
    subprocess.run(['sysctl', '-qw', 'net.netfilter.nf_log_all_netns=1'], check=True)
    try:
        host.module(log='all', **POLICY)
        marker = 'vpnguard refused out-v4: '
        host.sh("setpriv --reuid 4242 --regid 4242 --clear-groups python3 -c 'import socket\n"
                "s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ntry: s.sendto(b\"x\", (\"198.18.1.1\", 9))\n"
                "except OSError: pass'")
        host.sh("setpriv --reuid 998 --regid 998 --clear-groups python3 -c 'import socket; "
                "s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b\"x\", (\"198.18.1.1\", 9))'")
        deadline = time.time() + 5
        log = ''
        while time.time() < deadline and ('UID=4242' not in log or 'UID=998' not in log):
            log = subprocess.run(['dmesg'], capture_output=True, text=True, check=False).stdout
            time.sleep(0.2)
        refused = [line for line in log.splitlines() if marker in line and 'UID=4242' in line]
        excepted = [line for line in log.splitlines() if 'vpnguard exception uid 998: ' in line and 'UID=998' in line]
        assert refused and excepted, log[-2000:]
        assert 'DST=198.18.1.1' in refused[-1]
    finally:
        subprocess.run(['sysctl', '-qw', 'net.netfilter.nf_log_all_netns=' + saved], check=True)
