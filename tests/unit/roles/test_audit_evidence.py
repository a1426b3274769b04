"""The audit report carries the evidence: what tried to leave outside the tunnel since the previous audit,
which exceptions were used, whether the host refuses traffic right now (the live probe), the tunnel and the
default routes outside it. A host whose probe gets traffic out is not compliant and fails the run."""

import json
import os

import pytest

from namespace_host import CAN_RUN, REPO, UplinkHost, host_fixture

pytestmark = pytest.mark.skipif(not CAN_RUN, reason='needs root, nft, unshare and ansible')

LOCAL = {'ansible_connection': 'local', 'ansible_become': False, 'ansible_python_interpreter': '/usr/bin/python3'}
INVENTORY = {'all': {
    'vars': {'killswitch_tunnel_interfaces': ['wg*'], 'killswitch_dns_servers': ['192.0.2.1'],
             'killswitch_endpoints': [{'address': '203.0.113.1', 'port': 51820, 'protocol': 'udp'}],
             'killswitch_exceptions': [{'uid': 998}], 'killswitch_persist': False},
    'hosts': {'laptop': LOCAL}}}


class AuditedHost(UplinkHost):
    def playbook(self, name, *flags):
        inventory = os.path.join(self.tmp, 'inventory.json')
        with open(inventory, 'w') as f:
            json.dump(INVENTORY, f)
        return super(AuditedHost, self).playbook('-i', inventory, os.path.join(REPO, 'playbooks', name), *flags)

    def audit(self):
        report = os.path.join(self.tmp, 'audit.json')
        run = self.playbook('audit.yml', '--check', '-e', 'killswitch_audit_report=' + report)
        with open(report) as f, open(report[:-len('.json')] + '.md') as md:
            return run, json.load(f), md.read()

    def as_user(self, uid, script):
        self.sh("setpriv --reuid %d --regid %d --clear-groups python3 -c '%s'" % (uid, uid, script))


host = host_fixture(AuditedHost)

SEND = ('import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n{bind}'
        'try: s.sendto(b"x", ("{address}", {port}))\nexcept OSError: pass')


def test_the_report_says_what_tried_to_leave_and_that_the_host_refuses_it_now(host):
    harden = host.playbook('harden.yml')
    assert harden.returncode == 0, harden.stdout[-3000:]
    run, report, markdown = host.audit()
    assert run.returncode == 0, run.stdout[-3000:]
    laptop = report['hosts']['laptop']
    assert laptop['compliant'] and not laptop['probe']['leaked']
    assert [c for c in laptop['probe']['checks'] if c['check'] == 'udp ipv4 bound to eth0'][0]['verdict'] == 'refused'
    # The kill switch's table for the bypass exception is a way out too, and said so.
    assert laptop['routes_outside_tunnel'] == ['default via 198.18.1.1 dev eth0 table vpnguard-bypass',
                                               'default via 198.18.1.1 dev eth0 table main metric 100',
                                               'default via 2001:db8:1:1::1 dev eth0 table vpnguard-bypass metric 1024',
                                               'default via 2001:db8:1:1::1 dev eth0 table main metric 100']
    assert laptop['tunnel']['up'] is False
    assert laptop['counters_since'] == 'the kill switch was loaded'

    # Since that audit: a socket bound to the uplink, DNS to the ISP's resolver, the endpoint as
    # another user (three refusals), and the exception's uid going out (one use).
    host.as_user(4242, SEND.format(bind='s.setsockopt(socket.SOL_SOCKET, 25, b"eth0")\n', address='198.51.100.10', port=80))
    host.as_user(4242, SEND.format(bind='', address='198.18.1.1', port=53))
    host.as_user(65534, SEND.format(bind='', address='203.0.113.1', port=51820))
    host.as_user(998, SEND.format(bind='', address='198.18.1.1', port=9))
    run, report, markdown = host.audit()
    laptop = report['hosts']['laptop']
    assert laptop['counters_since'] == 'the previous audit'
    counters = dict((name, c['packets']) for name, c in laptop['counters'].items())
    assert counters['refused_out_v4'] >= 1, counters
    assert counters['refused_dns_outside'] >= 1, counters
    assert counters['refused_endpoint'] >= 1, counters
    assert counters['exception_uid_998'] >= 1, counters
    assert report['summary']['refused_attempts'] >= 3
    assert report['summary']['exceptions_used'] == {'exception uid: 998 used': ['laptop']}
    assert '1 host(s) refused' in markdown and 'The exception uid: 998 used on 1 host(s): laptop.' in markdown

    # Nothing happened since: the next audit says so, though the kernel's counters go on.
    run, report, markdown = host.audit()
    counters = report['hosts']['laptop']['counters']
    assert all(c['packets'] == 0 for c in counters.values()), counters
    assert counters['refused_endpoint']['total'] >= 1


def test_a_host_that_leaks_is_not_compliant_and_fails_the_run(host):
    # The control: the kill switch rolled back, the host leaks, and the audit must say so.
    harden = host.playbook('harden.yml')
    assert harden.returncode == 0, harden.stdout[-3000:]
    assert host.playbook('rollback.yml').returncode == 0
    capture = host.capture()
    run, report, markdown = host.audit()
    seen = host.captured(capture, 'not host 203.0.113.254 and not host 2001:db8:ffff::fe and not arp and not icmp6')
    laptop = report['hosts']['laptop']
    assert laptop['probe']['leaked'] and not laptop['compliant']
    assert 'LEAKED: udp ipv4 bound to eth0' in laptop['drift']
    assert report['summary']['leaked'] == ['laptop']
    assert run.returncode != 0 and 'LEAKED: laptop' in run.stdout
    assert '**The live probe got traffic out of 1 host(s): laptop.**' in markdown
    assert seen == [], 'the probe sent to something other than the canary: %s' % seen
