"""The role's Windows tasks hand every Windows-relevant variable to the module and confirm over a fresh connection.

Windows cannot run here; these read the task files as Ansible would load them.
"""

import os

import yaml

TASKS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))),
                     'roles', 'killswitch', 'tasks')


def load(name):
    with open(os.path.join(TASKS, name)) as f:
        return yaml.safe_load(f)


def module_task():
    return next(t for t in load('windows.yml') if 'vpnguard.killswitch.win_wfp_killswitch' in t)


def test_point6_browser_doh_is_not_silently_ignored_on_windows():
    args = module_task()['vpnguard.killswitch.win_wfp_killswitch']
    assert args['block_browser_doh'] == '{{ killswitch_block_browser_doh }}'


def test_point2_the_role_sets_nothing_of_windows_firewall():
    args = module_task()['vpnguard.killswitch.win_wfp_killswitch']
    assert 'merge_local_rules' not in args
    assert not [t for t in load('windows.yml') if any('firewall' in k for k in t if '.' in k)]


def test_point8_commit_confirmed_reconnects_then_confirms():
    args = module_task()['vpnguard.killswitch.win_wfp_killswitch']
    assert 'killswitch_confirm_timeout' in args['confirm_timeout']
    include = next(t for t in load('windows.yml') if t.get('ansible.builtin.include_tasks') == 'windows_confirm.yml')
    assert include['when'] == 'killswitch_wfp_result.confirm_pending | default(false)'
    confirm = load('windows_confirm.yml')
    assert confirm[0]['ansible.builtin.meta'] == 'reset_connection'
    assert confirm[1]['vpnguard.killswitch.win_wfp_killswitch'] == {'confirm': True}


def test_the_audit_sees_the_modules_drift():
    fact = next(t for t in load('windows.yml') if 'ansible.builtin.set_fact' in t)
    assert fact['ansible.builtin.set_fact']['killswitch_drift'] == '{{ killswitch_wfp_result.drift | default([]) }}'


def test_point7_the_role_can_block_vm_traffic():
    args = module_task()['vpnguard.killswitch.win_wfp_killswitch']
    assert args['block_vm_traffic'] == '{{ killswitch_windows_block_vm_traffic }}'


def test_issue15_the_role_hands_windows_the_log_level_and_the_audits_probe():
    args = module_task()['vpnguard.killswitch.win_wfp_killswitch']
    assert args['log'] == '{{ killswitch_log }}'
    assert args['probe'] == "{{ killswitch_auditing and killswitch_audit_probe and killswitch_state == 'present' }}"
    assert args['probe_canary_v4'] == '{{ killswitch_audit_probe_canary_v4 }}'
    assert args['probe_canary_v6'] == '{{ killswitch_audit_probe_canary_v6 }}'
    assert module_task()['register'] == 'killswitch_wfp_result', 'what the audit playbook reads the evidence from'
