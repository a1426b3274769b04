"""The action plugin renders on the controller; the PowerShell modules parse cleanly."""

import glob
import os

import pytest
import tree_sitter
import tree_sitter_powershell

from ansible_collections.vpnguard.killswitch.plugins.action import win_wfp_killswitch as action
from ansible_collections.vpnguard.killswitch.plugins.module_utils import win_firewall
from ansible_collections.vpnguard.killswitch.plugins.module_utils.policy import PolicyError, parse_policy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
ARGS = {'tunnel_interfaces': ['wg0'], 'endpoints': [{'address': '203.0.113.1', 'port': '51820'}],
        'dns_servers': ['192.0.2.1'], 'merge_local_rules': 'no',
        'endpoint_programs': ['C:\\Program Files\\WireGuard\\wireguard.exe']}


def test_the_module_gets_the_policy_rendered_as_the_renderer_renders_it():
    args = action.render_args(ARGS)
    policy = parse_policy({'tunnel_interfaces': ['wg0'], 'dns_servers': ['192.0.2.1'],
                           'endpoints': [{'address': '203.0.113.1', 'port': 51820, 'protocol': 'udp'}]},
                          system='Windows')
    assert args['_rendered'] == win_firewall.render(
        policy, endpoint_programs=['C:\\Program Files\\WireGuard\\wireguard.exe'])
    assert {k: v for k, v in args.items() if k != '_rendered'} == ARGS, 'the task\'s own arguments go through as given'


def test_absent_needs_no_policy():
    assert action.render_args({'state': 'absent'}) == {'state': 'absent'}


@pytest.mark.parametrize('change, setting', [
    ({'tunnel_interfaces': []}, 'tunnel_interfaces'),
    ({'exceptions': [{'program': 'backup.exe'}]}, 'exceptions[0].program'),
    ({'endpoint_programs': ['wireguard.exe']}, 'endpoint_programs[0]'),
    ({'dns_servers': ['dns.example']}, 'dns_servers[0]'),
])
def test_a_bad_policy_fails_on_the_controller_naming_the_setting(change, setting):
    with pytest.raises(PolicyError) as error:
        action.render_args(dict(ARGS, **change))
    assert error.value.setting == setting


def test_arguments_the_module_would_refuse_are_refused_here():
    with pytest.raises(action.ArgumentError):
        action.render_args(dict(ARGS, exceptions=[{'uid': 1000}]))
    with pytest.raises(action.ArgumentError):
        action.render_args(dict(ARGS, endpoints=[{'address': '203.0.113.1', 'port': 'x'}]))


def test_the_action_spec_matches_the_documentation():
    import yaml
    from ansible_collections.vpnguard.killswitch.plugins.modules import win_wfp_killswitch as doc
    options = yaml.safe_load(doc.DOCUMENTATION)['options']
    assert sorted(options) == sorted(action.ARGUMENT_SPEC)
    for name, spec in action.ARGUMENT_SPEC.items():
        # state_dir is a Windows path: the controller must not expand it as one of its own.
        assert options[name]['type'] == ('path' if name == 'state_dir' else spec['type']), name
        assert options[name].get('default') == spec.get('default') or name == 'state_dir', name
        assert sorted(options[name].get('suboptions', {})) == sorted(spec.get('options', {})), name


PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))
SCRIPTS = sorted(glob.glob(os.path.join(REPO, '**', '*.ps1'), recursive=True))


def broken_nodes(source):
    tree = PARSER.parse(source)
    found, stack = [], [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type == 'ERROR' or node.is_missing:
            found.append('%s at %d:%d' % ('MISSING ' + node.type if node.is_missing else 'ERROR',
                                          node.start_point[0] + 1, node.start_point[1] + 1))
        stack.extend(node.children)
    return found


def test_there_are_powershell_scripts_to_parse():
    assert any(s.endswith('plugins/modules/win_wfp_killswitch.ps1') for s in SCRIPTS)


@pytest.mark.parametrize('script', SCRIPTS, ids=lambda p: os.path.relpath(p, REPO))
def test_every_powershell_script_parses_without_error_or_missing_nodes(script):
    with open(script, 'rb') as f:
        assert broken_nodes(f.read()) == []


def test_the_parse_check_does_catch_broken_powershell():
    assert broken_nodes(b'if ($x -eq 1) { Write-Output "a" ')
    assert broken_nodes(b'$a = @{ b = ')
