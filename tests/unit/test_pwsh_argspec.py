"""The stand-in for pwsh reads a PowerShell module's literal $spec as ansible-test would get it,
and refuses, naming it, anything it cannot read without running PowerShell."""

import importlib.util
import json
import os
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SHIM = os.path.join(HERE, os.pardir, 'sanity', 'pwsh-argspec', 'pwsh')
MODULE = os.path.join(HERE, os.pardir, os.pardir, 'plugins', 'modules', 'win_wfp_killswitch.ps1')

pytestmark = pytest.mark.skipif(importlib.util.find_spec('tree_sitter_powershell') is None,
                                reason='needs tree-sitter-powershell')


def read_spec(tmp_path, script):
    path = tmp_path / 'module.ps1'
    path.write_text(script)
    return subprocess.run([SHIM, '/ansible_test/validate_modules/ps_argspec.ps1', json.dumps({'module_path': str(path)})],
                          capture_output=True, text=True, check=False)


def test_literals_variables_and_hashtable_addition_are_read(tmp_path):
    run = read_spec(tmp_path, r"""#!powershell
#AnsibleRequires -CSharpUtil Ansible.Basic
$entry = @{ type = 'list'; elements = 'dict'; default = @() }
$spec = @{
    options = @{
        state = @{ type = 'str'; choices = 'present', 'absent'; default = 'present' }
        endpoints = $entry + @{ options = @{ port = @{ type = 'int'; required = $true } } }
        state_dir = @{ type = 'path'; default = '%ProgramData%\vpnguard' }
        quoted = @{ type = 'str'; default = "it's" }
    }
    supports_check_mode = $true
}
$module = [Ansible.Basic.AnsibleModule]::Create($args, $spec)
""")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {
        'options': {
            'state': {'type': 'str', 'choices': ['present', 'absent'], 'default': 'present'},
            'endpoints': {'type': 'list', 'elements': 'dict', 'default': [],
                          'options': {'port': {'type': 'int', 'required': True}}},
            'state_dir': {'type': 'path', 'default': '%ProgramData%\\vpnguard'},
            'quoted': {'type': 'str', 'default': "it's"},
        },
        'supports_check_mode': True}


@pytest.mark.parametrize('value, why', [('"$env:TEMP"', 'expandable string'), ('(Get-Date)', 'not a literal'),
                                        ('$unknown', 'variable not assigned')])
def test_what_needs_powershell_to_evaluate_is_refused_by_name(tmp_path, value, why):
    run = read_spec(tmp_path, "$spec = @{ options = @{ a = @{ type = 'str'; default = %s } } }\n" % value)
    assert run.returncode == 1 and why in run.stderr, run.stderr


def test_the_collection_module_spec_is_readable():
    run = subprocess.run([SHIM, 'x/ps_argspec.ps1', json.dumps({'module_path': MODULE})],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)['supports_check_mode'] is True


def test_anything_but_the_argspec_script_is_refused_as_a_missing_pwsh_would_be():
    assert subprocess.run([SHIM, 'pslint.ps1'], capture_output=True, check=False).returncode == 127
