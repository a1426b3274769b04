"""killswitch_linux_packages is a role default: an inventory can name other packages
(a mirror's, another family's), which role vars would have silently beaten."""

import json
import os

import pytest

from namespace_host import CAN_RUN, Host, host_fixture

pytestmark = pytest.mark.skipif(not CAN_RUN, reason='needs root, nft, unshare and ansible')

HERE = os.path.dirname(os.path.abspath(__file__))
LOCALHOST = {'ansible_connection': 'local', 'ansible_python_interpreter': '/usr/bin/python3',
             'ansible_package_use': 'ansible.legacy.fake_package',
             'killswitch_tunnel_interfaces': ['wg*'], 'killswitch_dns_servers': ['192.0.2.1'],
             'killswitch_endpoints': [{'address': '203.0.113.1', 'port': 51820, 'protocol': 'udp'}],
             'killswitch_linux_packages': {'Debian': ['nftables', 'mirror-python3-nftables']}}

host = host_fixture(Host)


def test_the_inventory_names_the_packages_the_role_installs(host):
    host.sh('echo %s > /etc/fake-package-hidden' % host.hide_nftables_binding())
    inventory = os.path.join(host.tmp, 'inventory.json')
    with open(inventory, 'w') as f:
        json.dump({'all': {'hosts': {'localhost': LOCALHOST}}}, f)
    run = host.playbook('-i', inventory, os.path.join(HERE, 'role.yml'))
    assert run.returncode == 0, run.stdout[-3000:]
    assert json.loads(host.sh('cat /etc/fake-package-record.json'))['name'] == ['nftables', 'mirror-python3-nftables']
