"""The audit playbook's report: a compliant host, a drifted one, one whose policy is refused
and one that cannot be reached are each reported as such, --limit included, and the audit
changes nothing."""

import json
import os

import pytest

from namespace_host import CAN_RUN, REPO, Host, host_fixture

pytestmark = pytest.mark.skipif(not CAN_RUN, reason='needs root, nft, unshare and ansible')

LOCAL = {'ansible_connection': 'local', 'ansible_become': False, 'ansible_python_interpreter': '/usr/bin/python3'}
# Inside the test's own network namespace nothing listens on 127.0.0.1:9, so
# the connection is refused at once and the host is unreachable.
GONE = {'ansible_connection': 'ssh', 'ansible_host': '127.0.0.1', 'ansible_port': 9,
        'ansible_ssh_common_args': '-o ConnectTimeout=5 -o StrictHostKeyChecking=no'}
INVENTORY = {'all': {
    'vars': {'killswitch_tunnel_interfaces': ['wg*'], 'killswitch_dns_servers': ['192.0.2.1'],
             'killswitch_endpoints': [{'address': '203.0.113.1', 'port': 51820, 'protocol': 'udp'}]},
    'hosts': {
        'kept': LOCAL,
        'refused': dict(LOCAL, killswitch_endpoints=[{'address': '203.0.113.1', 'port': 53, 'protocol': 'udp'}]),
        'gone': GONE}}}


class FleetHost(Host):
    """One namespace holds every reachable host of the inventory (they share its table)."""

    def playbook(self, name, *flags):
        inventory = os.path.join(self.tmp, 'inventory.json')
        with open(inventory, 'w') as f:
            json.dump(INVENTORY, f)
        return super(FleetHost, self).playbook('-i', inventory, os.path.join(REPO, 'playbooks', name), *flags,
                                               ANSIBLE_HOST_KEY_CHECKING='0')

    def audit(self, *flags):
        report = os.path.join(self.tmp, 'audit.json')
        run = self.playbook('audit.yml', '--check', '-e', 'killswitch_audit_report=' + report, *flags)
        with open(report) as f:
            hosts = json.load(f)['hosts']
        # The evidence is tested in test_audit_evidence.py; here, what a host is.
        return run, dict((name, dict((k, v) for k, v in h.items() if k in ('compliant', 'drift', 'unreachable', 'error')))
                         for name, h in hosts.items())


host = host_fixture(FleetHost)


def test_the_report_tells_compliant_drifted_refused_and_unreachable_hosts_apart(host):
    # A new namespace inherits IPv4 settings from the machine's: this host does not forward.
    host.sh('sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0')
    harden = host.playbook('harden.yml', '--limit', 'kept')
    assert harden.returncode == 0, harden.stdout[-3000:]

    run, report = host.audit()
    assert sorted(report) == ['gone', 'kept', 'refused']
    assert report['kept'] == {'compliant': True, 'drift': []}
    assert report['gone']['unreachable'] and not report['gone']['compliant']
    assert not report['refused']['compliant'] and 'endpoints[0].port' in report['refused']['error']
    assert 'not audited: gone, refused' in run.stdout and run.returncode != 0, run.stdout[-3000:]

    # A limited audit reports on just the hosts it targets, and passes when they comply.
    run, report = host.audit('--limit', 'kept')
    assert report == {'kept': {'compliant': True, 'drift': []}} and run.returncode == 0, run.stdout[-3000:]

    # A container engine installed after harden turns forwarding on: the audit names that, not only a table.
    host.sh('sysctl -qw net.ipv4.ip_forward=1')
    _run, report = host.audit('--limit', 'kept')
    drift = report['kept']['drift']
    assert not report['kept']['compliant'] and [d for d in drift if d.startswith('the host started forwarding')], drift
    assert not [d for d in drift if 'nftables table' in d], drift
    host.sh('sysctl -qw net.ipv4.ip_forward=0')

    table = host.sh('nft list table inet vpnguard_killswitch')
    host.sh('nft delete table inet vpnguard_killswitch')
    _run, report = host.audit()
    assert not report['kept']['compliant']
    assert [d for d in report['kept']['drift'] if 'nftables table' in d]
    assert host.sh('nft list table inet vpnguard_killswitch 2>/dev/null || true') == '', 'the audit put the table back'
    assert table
