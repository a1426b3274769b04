"""The playbooks as a fleet admin drives them: the rollback cannot be turned into a harden run by
shared extra vars, a staged rollout stops at the first failed batch, and errors name the role
variable the user set."""

import json
import os

import pytest

from namespace_host import CAN_RUN, REPO, Host, host_fixture

pytestmark = pytest.mark.skipif(not CAN_RUN, reason='needs root, nft, unshare and ansible')

LOCAL = {'ansible_connection': 'local', 'ansible_become': False, 'ansible_python_interpreter': '/usr/bin/python3'}
POLICY = {'killswitch_tunnel_interfaces': ['wg*'], 'killswitch_dns_servers': ['192.0.2.1'],
          'killswitch_endpoints': [{'address': '203.0.113.1', 'port': 51820, 'protocol': 'udp'}]}
TABLE = 'nft list table inet vpnguard_killswitch'


class FleetHost(Host):
    """Every host of the inventory is this one namespace, reached locally."""

    def run(self, playbook, hosts, *flags, **env):
        inventory = os.path.join(self.tmp, 'inventory.json')
        with open(inventory, 'w') as f:
            json.dump({'all': {'vars': POLICY, 'hosts': hosts}}, f)
        return self.playbook('-i', inventory, os.path.join(REPO, 'playbooks', playbook), *flags, **env)

    def extra_vars_file(self, **variables):
        path = os.path.join(self.tmp, 'extra.json')
        with open(path, 'w') as f:
            json.dump(variables, f)
        return '@' + path

    def has_table(self):
        return self.sh(TABLE, check=False) != ''


host = host_fixture(FleetHost)


def test_rollback_refuses_loudly_when_shared_extra_vars_say_present(host):
    assert host.run('harden.yml', {'h': LOCAL}).returncode == 0
    assert host.has_table()

    # As an AWX job template shares its extra vars between harden and rollback.
    shared = host.extra_vars_file(killswitch_state='present', **POLICY)
    refused = host.run('rollback.yml', {'h': LOCAL}, '-e', shared)
    assert refused.returncode != 0, 'the rollback reported success and left the kill switch in place'
    assert 'Rollback refused, no host was changed: killswitch_state is "present"' in refused.stdout
    assert host.has_table()

    assert host.run('rollback.yml', {'h': LOCAL}, '-e', host.extra_vars_file(**POLICY)).returncode == 0
    assert not host.has_table()


def test_a_staged_rollout_stops_at_the_first_batch_that_fails(host):
    hosts = {'a_refused': dict(LOCAL, killswitch_endpoints=[{'address': '203.0.113.1', 'port': 53}]), 'b_kept': LOCAL}
    staged = host.run('harden.yml', hosts, '-e', 'killswitch_serial=1', '-e', 'killswitch_max_fail_percentage=0')
    assert staged.returncode != 0
    assert 'b_kept' not in staged.stdout.split('PLAY RECAP')[0], 'the second batch ran after the first failed'
    assert not host.has_table()

    # Without them, every host runs at once, as before.
    assert host.run('harden.yml', hosts).returncode != 0
    assert host.has_table()


def test_errors_name_the_role_variable_not_the_module_option(host):
    bad = host.run('harden.yml', {'h': dict(LOCAL, killswitch_dns_servers=['192.0.2.1; rm -rf /'])})
    assert bad.returncode != 0
    assert "killswitch_dns_servers[0]: '192.0.2.1; rm -rf /' is not an IPv4 or IPv6 address" in bad.stdout

    # Found by the module on the host, not by the controller's check: a Python that sees no systemctl.
    python = os.path.join(host.tmp, 'python-without-systemctl')
    with open(python, 'w') as f:
        f.write('#!/bin/sh\nPATH=/usr/sbin:/sbin exec /usr/bin/python3 "$@"\n')
    os.chmod(python, 0o755)
    no_systemd = host.run('harden.yml', {'h': dict(LOCAL, ansible_python_interpreter=python)})
    assert no_systemd.returncode != 0
    assert 'killswitch_persist: laying the kill switch at boot needs systemd' in no_systemd.stdout
    assert 'Set killswitch_persist to false' in no_systemd.stdout
    assert not host.has_table()


def test_the_audit_publishes_its_report_as_stats_and_can_fail_on_drift(host):
    assert host.run('harden.yml', {'h': LOCAL}).returncode == 0
    compliant = host.run('audit.yml', {'h': LOCAL}, '--check', '-e', 'killswitch_audit_fail_on_drift=true',
                         ANSIBLE_STDOUT_CALLBACK='json', ANSIBLE_SHOW_CUSTOM_STATS='1')
    assert compliant.returncode == 0, compliant.stdout[-2000:]
    stats = json.loads(compliant.stdout)['global_custom_stats']['killswitch_audit']
    assert stats['summary']['compliant'] == ['h'] and stats['summary']['not_compliant'] == []
    assert stats['hosts']['h']['compliant'] and stats['hosts']['h']['drift'] == []

    host.sh('nft delete table inet vpnguard_killswitch')
    drifted = host.run('audit.yml', {'h': LOCAL}, '--check', ANSIBLE_STDOUT_CALLBACK='json', ANSIBLE_SHOW_CUSTOM_STATS='1')
    assert drifted.returncode == 0, 'drift alone keeps failing opt-in'
    report = json.loads(drifted.stdout)['global_custom_stats']['killswitch_audit']['hosts']['h']
    assert not report['compliant'] and 'nftables table' in report['drift'][0]

    alerting = host.run('audit.yml', {'h': LOCAL}, '--check', '-e', 'killswitch_audit_fail_on_drift=true')
    assert alerting.returncode != 0 and 'drifted: h' in alerting.stdout
    assert not host.has_table(), 'the audit changes nothing'


def test_module_defaults_reach_every_module_through_the_action_group(host):
    playbook = os.path.join(host.tmp, 'defaults.yml')
    with open(playbook, 'w') as f:
        f.write('''
- hosts: all
  gather_facts: false
  module_defaults:
    group/vpnguard.killswitch.killswitch:
      servers: [not-an-address]
  tasks:
    - vpnguard.killswitch.dns_lockdown:
        state: present
''')
    run = host.playbook('-i', 'localhost,', '-c', 'local', '-e', 'ansible_python_interpreter=/usr/bin/python3',
                        '--check', playbook)
    assert run.returncode != 0
    assert "servers[0]: 'not-an-address' is not an IPv4 or IPv6 address" in run.stdout, run.stdout[-2000:]
