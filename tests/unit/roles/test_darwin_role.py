"""The role's macOS tasks hand the evidence variables to pf_killswitch as the Linux tasks hand them to
nft_killswitch, and the audit playbook reads pf_killswitch's result. macOS cannot run here; these read the
task files as Ansible would load them (what the module then returns is proven in test_pf_killswitch.py)."""

import os

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TASKS = os.path.join(ROOT, 'roles', 'killswitch', 'tasks')
EVIDENCE = ('log', 'probe', 'probe_canary_v4', 'probe_canary_v6')


def module_args(name, module):
    with open(os.path.join(TASKS, name)) as f:
        return next(t for t in yaml.safe_load(f) if module in t)[module]


def test_macos_gets_the_log_and_the_probe_exactly_as_linux():
    darwin = module_args('darwin.yml', 'vpnguard.killswitch.pf_killswitch')
    linux = module_args('linux.yml', 'vpnguard.killswitch.nft_killswitch')
    assert dict((k, darwin.get(k)) for k in EVIDENCE) == dict((k, linux[k]) for k in EVIDENCE)
    assert darwin['probe'] == "{{ killswitch_auditing and killswitch_audit_probe and killswitch_state == 'present' }}"


def test_the_audit_report_takes_the_pf_result_the_macos_tasks_register():
    with open(os.path.join(TASKS, 'darwin.yml')) as f:
        assert next(t for t in yaml.safe_load(f) if 'vpnguard.killswitch.pf_killswitch' in t)['register'] == \
            'killswitch_pf_result'
    with open(os.path.join(ROOT, 'playbooks', 'audit.yml')) as f:
        assert 'h.killswitch_pf_result' in f.read()
