"""What examples/ gives a new user to copy is a policy each OS's firewall accepts, and
Windows is reached as the collection needs (WinRM and runas)."""

import os

import pytest
import yaml

from ansible_collections.vpnguard.killswitch.plugins.filter.validate_policy import validate_policy

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, 'examples')
POLICY_KEYS = ('tunnel_interfaces', 'endpoints', 'dns_servers', 'doh_servers', 'allow_lan', 'management',
               'exceptions', 'tunnel_fwmark', 'restrict_endpoints_to_tunnel')


def group_vars(group):
    with open(os.path.join(EXAMPLES, 'inventory', 'group_vars', group + '.yml')) as f:
        return yaml.safe_load(f) or {}


@pytest.mark.parametrize('group, system', [('linux', 'Linux'), ('macos', 'Darwin'), ('windows', 'Win32NT')])
def test_each_group_gets_a_policy_its_firewall_accepts(group, system):
    merged = dict(group_vars('all'), **group_vars(group))
    policy = dict((k, merged['killswitch_' + k]) for k in POLICY_KEYS if 'killswitch_' + k in merged)
    assert validate_policy(policy, system) == policy


def test_windows_is_reached_over_winrm_and_becomes_with_runas():
    windows = group_vars('windows')
    assert windows['ansible_connection'] == 'winrm'
    assert windows['ansible_become_method'] in ('runas', 'ansible.builtin.runas')
    assert 'ansible_password' not in windows, 'a password belongs in a vault or an AWX credential'
