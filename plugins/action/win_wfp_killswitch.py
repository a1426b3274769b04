# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vpnguard maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Validate and render the Windows kill switch on the controller, read the host back, apply only on drift.

The policy model and the renderer are Python (module_utils/policy.py and
win_wfp.py), shared with the other platforms; the host only binds, reads and
applies WFP objects, so that nothing a user wrote reaches the host unchecked,
and the comparison of what the host has with what the policy says (drift) is
the controller's, in one place.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import os

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase

from ansible_collections.vpnguard.killswitch.plugins.module_utils import win_wfp
from ansible_collections.vpnguard.killswitch.plugins.module_utils.policy import (
    POLICY_KEYS, PolicyError, parse_policy, parse_program, policy_argument_spec)

MODULE = 'vpnguard.killswitch.win_wfp_killswitch'
CSHARP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'module_utils', 'WfpKillSwitch.cs')
INTERNAL = ('_rendered', '_phase', '_task_script', '_csharp_source', '_boottime_keys')

# The module's own spec (win_wfp_killswitch.ps1), checked here too so that the
# policy model sees typed values and defaults, as the other modules' do.
ARGUMENT_SPEC = dict(
    policy_argument_spec(dict(program=dict(type='str', required=True))),
    endpoint_programs=dict(type='list', elements='str', default=[]),
    configure_resolver=dict(type='bool', default=True),
    block_browser_doh=dict(type='bool', default=False),
    block_vm_traffic=dict(type='bool', default=False),
    confirm_timeout=dict(type='int', default=0),
    confirm=dict(type='bool', default=False),
    state_dir=dict(type='str', default='%ProgramData%\\vpnguard-killswitch'),
    log=dict(type='str', default='none', choices=['none', 'exceptions', 'refused', 'all']),
    probe=dict(type='bool', default=False),
    probe_canary_v4=dict(type='str', default='203.0.113.254'),
    probe_canary_v6=dict(type='str', default='2001:db8:ffff::fe'),
)
# What the host's evidence phase returns, carried into the task's result as the other kill switch modules return it.
EVIDENCE = ('counters', 'probe', 'tunnel', 'routes_outside_tunnel')


class ArgumentError(ValueError):
    pass


def render_args(args):
    """The module's arguments with the rendered filter set under _rendered.

    Raises ArgumentError for arguments the spec refuses and PolicyError for a bad policy.
    """
    checked = ArgumentSpecValidator(ARGUMENT_SPEC).validate(args)
    if checked.error_messages:
        raise ArgumentError('; '.join(checked.error_messages))
    params = checked.validated_parameters
    if params['confirm_timeout'] < 0:
        raise PolicyError('confirm_timeout', 'must be 0 (off) or a number of seconds, got %d' % params['confirm_timeout'])
    for key, version in (('probe_canary_v4', 4), ('probe_canary_v6', 6)):
        try:
            canary = ipaddress.ip_address(u'%s' % params[key])
        except ValueError:
            canary = None
        if canary is None or canary.version != version:
            raise PolicyError(key, 'must be an IPv%d address, got %r' % (version, params[key]))
    if params['confirm']:
        return dict(args)
    if params['state'] == 'absent':
        # Boot-time filters have no provider to be found by; their keys are fixed, so absent needs no saved state.
        return dict(args, _boottime_keys=[f['key'] for f in win_wfp.boottime_filters()])
    policy = parse_policy(dict((k, params[k]) for k in POLICY_KEYS if k in params), system='Windows')
    programs = [parse_program('endpoint_programs[%d]' % i, p) for i, p in enumerate(params['endpoint_programs'])]
    return dict(args, _rendered=win_wfp.render(policy, endpoint_programs=programs,
                                               block_vm_traffic=params['block_vm_traffic']))


def host_task_args():
    """What the host's scheduled tasks run without Ansible: the task script and the C# it loads."""
    with open(CSHARP) as f:
        return dict(_task_script=win_wfp.TASK_SCRIPT, _csharp_source=f.read())


class ActionModule(ActionBase):

    def run(self, tmp=None, task_vars=None):
        self._supports_check_mode = True
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        if any(k in self._task.args for k in INTERNAL):
            raise AnsibleActionFail('%s are set by the action plugin, not by the task' % ', '.join(INTERNAL))
        try:
            module_args = render_args(self._task.args)
        except ArgumentError as e:
            result.update(failed=True, msg='Invalid arguments, nothing was changed: %s' % e)
            return result
        except PolicyError as e:
            result.update(failed=True, setting=e.setting,
                          msg='Invalid kill switch policy, nothing was changed: %s' % e)
            return result
        if '_rendered' not in module_args:
            result.update(self._run_module(module_args, task_vars))
            return result

        read = self._run_module(dict(module_args, _phase='read'), task_vars)
        if read.get('failed'):
            result.update(read)
            return result
        rendered = module_args['_rendered']
        # What the module can put right, and what it can only report (it still makes a host non-compliant).
        drift = (win_wfp.drift(rendered, read['found']) + list(read.get('dns_drift') or [])
                 + list(read.get('evidence_drift') or []))
        unfixable = (win_wfp.foreign_overrides(read['found'].get('foreign') or [])
                     + win_wfp.environment_drift(read.get('environment'), rendered['vm']['block']))
        result.update(changed=bool(drift), drift=drift + unfixable, environment=read.get('environment'),
                      bindings=read.get('bindings'), rendered=rendered)
        result.update((k, read[k]) for k in EVIDENCE if k in read)
        for problem in unfixable:
            self._display.warning(problem)
        if self._task.diff:
            result['diff'] = dict(before=''.join(p + '\n' for p in drift),
                                  after='the kill switch as rendered\n' if drift else '')
        if drift and not self._play_context.check_mode:
            applied = self._run_module(dict(module_args, _phase='apply', **host_task_args()), task_vars)
            if applied.get('failed'):
                applied['drift'] = drift
                result.update(applied)
                return result
            result['confirm_pending'] = int(module_args.get('confirm_timeout') or 0) > 0
            if module_args.get('probe'):
                # The probe read before the apply tested the filters that were there then: probe the new ones.
                evidence = self._run_module(dict(module_args, _phase='evidence'), task_vars)
                if evidence.get('failed'):
                    result.update(failed=True, msg='the kill switch was applied, but its live probe failed: %s'
                                  % evidence.get('msg'))
                    return result
                result.update((k, evidence[k]) for k in EVIDENCE if k in evidence)
        return result

    def _run_module(self, module_args, task_vars):
        out = self._execute_module(module_name=MODULE, module_args=module_args, task_vars=task_vars)
        invocation = out.get('invocation', {}).get('module_args')
        if isinstance(invocation, dict):
            for key in INTERNAL:
                invocation.pop(key, None)
        return out
