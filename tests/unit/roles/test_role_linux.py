"""The killswitch role on a fresh host that lacks the nftables binding: one harden run
installs it (with a package manager for tests) and lays the kill switch; the next run
changes nothing and installs nothing."""

import json
import os

import pytest

from namespace_host import CAN_RUN, Host, host_fixture

pytestmark = pytest.mark.skipif(not CAN_RUN, reason='needs root, nft, unshare and ansible')

HERE = os.path.dirname(os.path.abspath(__file__))
POLICY = {'killswitch_tunnel_interfaces': ['wg*'],
          'killswitch_endpoints': [{'address': '203.0.113.1', 'port': 51820, 'protocol': 'udp'}],
          'killswitch_dns_servers': ['192.0.2.1'],
          'ansible_package_use': 'ansible.legacy.fake_package',
          'ansible_python_interpreter': '/usr/bin/python3'}


class RoleHost(Host):
    def play(self, *flags, **extra):
        result = self.playbook('-i', 'localhost,', '-e', json.dumps(dict(POLICY, **extra)),
                               os.path.join(HERE, 'role.yml'), *flags, ANSIBLE_STDOUT_CALLBACK='json')
        out = json.loads(result.stdout)
        # Names as the role gives them, without the "role : " prefix.
        tasks = dict((t['task']['name'].split(' : ', 1)[-1], t['hosts']['localhost']) for t in out['plays'][0]['tasks'])
        return out['stats']['localhost'], tasks

    def hide_binding(self):
        # The test package manager "installs" by undoing this mount.
        self.sh('echo %s > /etc/fake-package-hidden' % self.hide_nftables_binding())


host = host_fixture(RoleHost)

FIRST = 'Enforce the firewall table, the routing guard and the boot unit'
INSTALL = 'Install nftables and the Python bindings the module found missing'
SECOND = 'Enforce the firewall table, the routing guard and the boot unit, with the packages in place'


def test_a_fresh_host_gets_the_packages_then_the_kill_switch_in_one_run(host):
    host.hide_binding()
    stats, tasks = host.play()
    assert stats['failures'] == 0, [(n, t.get('msg')) for n, t in tasks.items() if t.get('failed')]
    assert tasks[FIRST]['missing_requirements'] == ['nftables']
    assert tasks[INSTALL]['changed']
    assert json.loads(host.sh('cat /etc/fake-package-record.json'))['name'] == ['nftables', 'python3-nftables']
    assert tasks[SECOND]['changed'] and 'policy drop' in host.sh('nft list table inet vpnguard_killswitch')

    stats, tasks = host.play()
    assert stats['changed'] == 0 and stats['failures'] == 0
    assert tasks[INSTALL].get('skipped') and tasks[SECOND].get('skipped')


def test_without_package_installs_or_in_check_mode_the_missing_binding_fails_the_host_untouched(host):
    host.hide_binding()
    before = host.sh('nft list ruleset; ip rule')
    for flags, extra in (((), {'killswitch_install_packages': False}), (('--check',), {})):
        stats, tasks = host.play(*flags, **extra)
        assert stats['failures'] == 1
        assert tasks[FIRST]['failed'] and 'python3-nftables' in tasks[FIRST]['msg']
    assert host.sh('nft list ruleset; ip rule') == before
    assert host.sh('cat /etc/fake-package-hidden').strip(), 'nothing may be installed'
