"""The action plugin renders on the controller, reads back, applies only on drift; the PowerShell parses cleanly."""

import glob
import os

import pytest
import tree_sitter
import tree_sitter_powershell

from ansible_collections.vpnguard.killswitch.plugins.action import win_wfp_killswitch as action
from ansible_collections.vpnguard.killswitch.plugins.module_utils import win_wfp
from ansible_collections.vpnguard.killswitch.plugins.module_utils.policy import PolicyError, parse_policy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
ARGS = {'tunnel_interfaces': ['wg0'], 'endpoints': [{'address': '203.0.113.1', 'port': '51820'}],
        'dns_servers': ['192.0.2.1'], 'block_browser_doh': 'no',
        'endpoint_programs': ['C:\\Program Files\\WireGuard\\wireguard.exe']}


def test_the_module_gets_the_policy_rendered_as_the_renderer_renders_it():
    args = action.render_args(ARGS)
    policy = parse_policy({'tunnel_interfaces': ['wg0'], 'dns_servers': ['192.0.2.1'],
                           'endpoints': [{'address': '203.0.113.1', 'port': 51820, 'protocol': 'udp'}]},
                          system='Windows')
    assert args['_rendered'] == win_wfp.render(
        policy, endpoint_programs=['C:\\Program Files\\WireGuard\\wireguard.exe'])
    assert {k: v for k, v in args.items() if k != '_rendered'} == ARGS, 'the task\'s own arguments go through as given'


def test_absent_and_confirm_need_no_policy():
    keys = [f['key'] for f in win_wfp.render(parse_policy({'tunnel_interfaces': ['wg0']}, system='Windows'))['boottime']]
    assert action.render_args({'state': 'absent'}) == {'state': 'absent', '_boottime_keys': keys}, \
        'the boot-time filters are found without saved state'
    assert action.render_args({'confirm': True}) == {'confirm': True}


@pytest.mark.parametrize('change, setting', [
    ({'tunnel_interfaces': []}, 'tunnel_interfaces'),
    ({'exceptions': [{'program': 'backup.exe'}]}, 'exceptions[0].program'),
    ({'endpoint_programs': ['wireguard.exe']}, 'endpoint_programs[0]'),
    ({'dns_servers': ['dns.example']}, 'dns_servers[0]'),
    ({'confirm_timeout': -5}, 'confirm_timeout'),
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
    from ansible_collections.vpnguard.killswitch.plugins.doc_fragments import evidence
    documented = yaml.safe_load(doc.DOCUMENTATION)
    assert documented['extends_documentation_fragment'] == ['vpnguard.killswitch.evidence']
    # Options with a leading _ are the action's own, set by it for the module, never by a task.
    options = dict((k, v) for k, v in documented['options'].items() if not k.startswith('_'))
    options.update(yaml.safe_load(evidence.ModuleDocFragment.DOCUMENTATION)['options'])
    assert sorted(options) == sorted(action.ARGUMENT_SPEC)
    assert sorted(k for k in yaml.safe_load(doc.DOCUMENTATION)['options'] if k.startswith('_')) == sorted(action.INTERNAL)
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


def test_the_scheduled_tasks_script_parses():
    assert broken_nodes(win_wfp.TASK_SCRIPT.encode()) == []
    assert win_wfp.PROVIDER_KEY in win_wfp.TASK_SCRIPT and win_wfp.SUBLAYER_KEY in win_wfp.TASK_SCRIPT
    assert broken_nodes(b'$t::Bind(') and not broken_nodes(b'$t::Bind(1)')


def commands(source, outside=()):
    """The names of the commands a script calls, leaving out the bodies of the functions named in outside."""
    tree = PARSER.parse(source)
    found, stack = set(), [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type == 'function_statement' and any(
                c.type == 'function_name' and c.text.decode() in outside for c in node.children):
            continue
        if node.type == 'command_name':
            found.add(node.text.decode())
        stack.extend(node.children)
    return found


def test_point2_the_module_never_touches_windows_firewall_policy():
    with open(os.path.join(REPO, 'plugins', 'modules', 'win_wfp_killswitch.ps1'), 'rb') as f:
        source = f.read()
    called = commands(source, outside=('Get-LegacyPolicy', 'Remove-LegacyPolicy'))
    assert 'Set-DnsClientServerAddress' in called and 'Register-ScheduledTask' in called, 'the parse sees commands'
    touched = [c for c in called if 'NetFirewall' in c]
    assert set(touched) <= {
        'Get-NetFirewallHyperVRule', 'Get-NetFirewallHyperVVMCreator', 'New-NetFirewallHyperVRule',
        'Remove-NetFirewallHyperVRule'}, 'no profile, rule or store of the admin, only our Hyper-V block rule'
    legacy = commands(source) - called
    assert legacy == {'Get-NetFirewallRule', 'Remove-NetFirewallRule', 'Set-NetFirewallProfile'}, \
        'only to take out what 0.x put in'


def test_the_module_keys_match_the_action_spec():
    with open(os.path.join(REPO, 'plugins', 'modules', 'win_wfp_killswitch.ps1')) as f:
        source = f.read()
    for name in action.ARGUMENT_SPEC:
        assert '\n        %s = @{' % name in source, name


@pytest.mark.parametrize('script', SCRIPTS, ids=lambda p: os.path.relpath(p, REPO))
def test_every_powershell_script_parses_without_error_or_missing_nodes(script):
    with open(script, 'rb') as f:
        assert broken_nodes(f.read()) == []


def test_the_parse_check_does_catch_broken_powershell():
    assert broken_nodes(b'if ($x -eq 1) { Write-Output "a" ')
    assert broken_nodes(b'$a = @{ b = ')


# The run: read back, compare on the controller, apply only on drift ---------------

class FakeHost:
    """Answers the module's phases as a host with found filters would."""

    def __init__(self, found, dns_drift=(), environment=None):
        self.found, self.dns_drift, self.environment = found, list(dns_drift), environment or {}
        self.calls = []

    def __call__(self, module_name, module_args, task_vars):
        self.calls.append(dict(module_args))
        if module_args.get('_phase') == 'read':
            return dict(found=self.found, dns_drift=self.dns_drift, environment=self.environment,
                        bindings={'wg0': [7]}, invocation=dict(module_args=dict(module_args)))
        return dict(changed=True, invocation=dict(module_args=dict(module_args)))


def run_action(args, host, check_mode=False):
    from unittest import mock
    task = mock.MagicMock(args=args, async_val=0, check_mode=check_mode, diff=False)
    task.get_action_args_with_defaults = None
    play_context = mock.MagicMock(check_mode=check_mode)
    plugin = action.ActionModule(task, mock.MagicMock(), play_context, None, None, None)
    plugin._execute_module = host
    with mock.patch.object(action.ActionBase, 'run', return_value={}):
        return plugin.run(task_vars={})


def compliant(rendered):
    return dict(provider=True, sublayer=dict(weight=win_wfp.SUBLAYER_WEIGHT), filters=rendered['filters'],
                boottime=rendered['boottime'], foreign=[])


def test_a_compliant_host_is_read_and_left_alone():
    rendered = action.render_args(ARGS)['_rendered']
    host = FakeHost(compliant(rendered))
    result = run_action(ARGS, host)
    assert result['changed'] is False and result['drift'] == []
    assert [c['_phase'] for c in host.calls] == ['read']


def test_point8_drift_is_applied_with_the_rollback_task_and_the_confirmation_is_pending():
    rendered = action.render_args(ARGS)['_rendered']
    host = FakeHost(dict(compliant(rendered), provider=False))
    result = run_action(dict(ARGS, confirm_timeout=120), host)
    assert result['changed'] is True and result['confirm_pending'] is True
    assert result['drift'] == ['the provider %s is missing' % win_wfp.PROVIDER_KEY]
    apply = host.calls[1]
    assert apply['_phase'] == 'apply' and apply['confirm_timeout'] == 120
    assert apply['_task_script'] == win_wfp.TASK_SCRIPT
    assert 'namespace ansible_collections.vpnguard.killswitch.plugins.module_utils.WfpKillSwitch' in apply['_csharp_source']
    assert '_task_script' not in str(result.get('invocation')), 'internal arguments stay out of the output'


def test_check_mode_reports_drift_and_changes_nothing():
    rendered = action.render_args(ARGS)['_rendered']
    host = FakeHost(dict(compliant(rendered), filters=rendered['filters'][1:]), dns_drift=['the NRPT rule differs'])
    result = run_action(ARGS, host, check_mode=True)
    assert result['changed'] is True
    assert result['drift'] == ['filter vpnguard-killswitch-loopback-out-v4 is missing', 'the NRPT rule differs']
    assert len(host.calls) == 1


def test_what_applying_cannot_fix_is_drift_but_no_reason_to_apply():
    rendered = action.render_args(ARGS)['_rendered']
    foreign = [dict(name='vendor-allow', provider='x', sublayer_weight=0xFFFF, action='PERMIT',
                    flags=['CLEAR_ACTION_RIGHT'], layer='ALE_AUTH_CONNECT_V4')]
    host = FakeHost(dict(compliant(rendered), foreign=foreign),
                    environment={'external_switch_adapters': ['Ethernet'], 'mpssvc': 'Stopped'})
    result = run_action(ARGS, host)
    assert result['changed'] is False and len(host.calls) == 1
    assert result['drift'] == [
        'vendor-allow (provider x, sublayer weight 65535) is a hard permit that can override the kill switch',
        "VMs on the external Hyper-V switch of Ethernet reach the network without passing this host's filters"]
    assert result['environment']['mpssvc'] == 'Stopped', 'reported for the audit'


def test_the_task_cannot_set_the_internal_arguments():
    from ansible.errors import AnsibleActionFail
    with pytest.raises(AnsibleActionFail):
        run_action(dict(ARGS, _task_script='Remove-Item C:\\'), FakeHost({}))


# The evidence (issue 15): counters always, the probe on request, both carried into the task's result -----------

@pytest.mark.parametrize('change, setting', [
    ({'probe_canary_v4': '2001:db8::1'}, 'probe_canary_v4'),
    ({'probe_canary_v6': '203.0.113.254'}, 'probe_canary_v6'),
    ({'probe_canary_v4': 'canary.example'}, 'probe_canary_v4'),
])
def test_a_canary_that_is_not_an_address_of_its_family_is_refused_naming_it(change, setting):
    with pytest.raises(PolicyError) as error:
        action.render_args(dict(ARGS, **change))
    assert error.value.setting == setting


def test_a_log_level_the_module_does_not_know_is_refused():
    with pytest.raises(action.ArgumentError):
        action.render_args(dict(ARGS, log='everything'))


class EvidenceHost(FakeHost):
    """A host whose read also returns the evidence, and whose evidence phase probes the new filters."""

    def __init__(self, found, evidence_drift=()):
        super(EvidenceHost, self).__init__(found)
        self.evidence_drift = list(evidence_drift)

    def __call__(self, module_name, module_args, task_vars):
        out = super(EvidenceHost, self).__call__(module_name, module_args, task_vars)
        phase = module_args.get('_phase')
        if phase in ('read', 'evidence'):
            out.update(counters={'refused_out_v4': {'packets': 3, 'bytes': None, 'counts': 'x'}},
                       probe={'leaked': phase == 'read', 'checks': [{'check': phase}]},
                       tunnel={'up': False, 'interfaces': []}, routes_outside_tunnel=['0.0.0.0/0 dev Ethernet'])
            if phase == 'read':
                out['evidence_drift'] = self.evidence_drift
        return out


def test_the_evidence_the_host_read_reaches_the_result_without_another_call():
    rendered = action.render_args(ARGS)['_rendered']
    host = EvidenceHost(compliant(rendered))
    result = run_action(dict(ARGS, probe=True), host, check_mode=True)
    assert [c['_phase'] for c in host.calls] == ['read'], 'the audit costs no extra round trip'
    assert result['counters']['refused_out_v4']['packets'] == 3
    assert result['probe']['checks'] == [{'check': 'read'}]
    assert result['routes_outside_tunnel'] == ['0.0.0.0/0 dev Ethernet'] and result['tunnel']['up'] is False


def test_counters_that_cannot_count_are_drift_that_the_apply_puts_right_and_the_new_filters_are_probed():
    rendered = action.render_args(ARGS)['_rendered']
    host = EvidenceHost(compliant(rendered), evidence_drift=['WFP does not collect net events, so the kill '
                                                             "switch's counters cannot count"])
    result = run_action(dict(ARGS, probe=True, log='refused'), host)
    assert [c['_phase'] for c in host.calls] == ['read', 'apply', 'evidence']
    assert result['drift'] == ["WFP does not collect net events, so the kill switch's counters cannot count"]
    assert host.calls[1]['log'] == 'refused'
    assert result['probe']['checks'] == [{'check': 'evidence'}], 'the probe of the filters now in place'


def test_without_the_probe_an_apply_is_not_followed_by_an_evidence_call():
    rendered = action.render_args(ARGS)['_rendered']
    host = EvidenceHost(dict(compliant(rendered), provider=False))
    run_action(ARGS, host)
    assert [c['_phase'] for c in host.calls] == ['read', 'apply']


def test_the_module_audits_only_the_two_filtering_platform_subcategories_through_the_audit_api():
    with open(os.path.join(REPO, 'plugins', 'modules', 'win_wfp_killswitch.ps1'), 'rb') as f:
        source = f.read()
    # auditpol's report is in the host's display language; the audit API reads and sets flags.
    assert not [c for c in commands(source) if 'auditpol' in c.lower()]
    text = source.decode()
    assert 'auditpol.exe' not in text.lower()
    assert '    $SystemAudit::Query()\n' in text, 'Get-AuditSetting: AuditQuerySystemPolicy for our two subcategories'
    assert text.count('$SystemAudit::Set(') == 2, 'the plan of log, and what state=absent puts back'
    assert '$SystemAudit::Set($Audit::Restore($saved.audit))' in text


def test_sesecurityprivilege_is_enabled_before_anything_changes_and_disabled_after():
    with open(os.path.join(REPO, 'plugins', 'modules', 'win_wfp_killswitch.ps1')) as f:
        text = f.read()
    assert '#AnsibleRequires -CSharpUtil Ansible.Privilege\n' in text
    # Strict: a token without the privilege fails here (Ansible.Privilege.PrivilegeEnabler), not half-way.
    assert "New-Object -TypeName Ansible.Privilege.PrivilegeEnabler -ArgumentList $true, 'SeSecurityPrivilege'" in text
    main = text[text.index('$state = Read-State\n'):]
    read = main[main.index("if ($module.Params._phase -eq 'read') {"):]
    assert read.index('Enable-AuditPrivilege') < read.index('Get-EvidenceSetting')
    apply = main[main.index('elseif (-not $module.CheckMode) {'):]
    first_change = min(apply.index(step) for step in ('Set-Content', 'Remove-LegacyPolicy', 'Save-State', '$engine.Apply'))
    assert apply.index('$auditPrivilege = Enable-AuditPrivilege') < first_change
    absent = main[main.index('if ($module.Result.changed -and -not $module.CheckMode) {'):]
    assert absent.index('if ($state.evidence_settings) { $auditPrivilege = Enable-AuditPrivilege }') < min(
        absent.index(step) for step in ('Unregister-ScheduledTask', 'Remove-LegacyPolicy', '$engine.RemoveAll'))
    assert 'finally {\n    if ($null -ne $auditPrivilege) { $auditPrivilege.Dispose() }' in main
