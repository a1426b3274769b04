# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vpnguard maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Validate and render the Windows kill switch on the controller, then hand the result to the PowerShell module.

The policy model and the renderer are Python (module_utils/policy.py and
win_firewall.py), shared with the other platforms; the host only applies
rule specs, so that nothing a user wrote reaches PowerShell unchecked.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase

from ansible_collections.vpnguard.killswitch.plugins.module_utils import win_firewall
from ansible_collections.vpnguard.killswitch.plugins.module_utils.policy import (
    POLICY_KEYS, PolicyError, parse_policy, parse_program, policy_argument_spec)

MODULE = 'vpnguard.killswitch.win_wfp_killswitch'

# The module's own spec (win_wfp_killswitch.ps1), checked here too so that the
# policy model sees typed values and defaults, as the other modules' do.
ARGUMENT_SPEC = dict(
    policy_argument_spec(dict(program=dict(type='str', required=True))),
    endpoint_programs=dict(type='list', elements='str', default=[]),
    merge_local_rules=dict(type='bool', default=False),
    configure_resolver=dict(type='bool', default=True),
    state_dir=dict(type='str', default='%ProgramData%\\vpnguard-killswitch'),
)


class ArgumentError(ValueError):
    pass


def render_args(args):
    """The module's arguments with the rendered policy under _rendered.

    Raises ArgumentError for arguments the spec refuses and PolicyError for a bad policy.
    """
    checked = ArgumentSpecValidator(ARGUMENT_SPEC).validate(args)
    if checked.error_messages:
        raise ArgumentError('; '.join(checked.error_messages))
    params = checked.validated_parameters
    if params['state'] == 'absent':
        return dict(args)
    policy = parse_policy(dict((k, params[k]) for k in POLICY_KEYS if k in params), system='Windows')
    programs = [parse_program('endpoint_programs[%d]' % i, p) for i, p in enumerate(params['endpoint_programs'])]
    rendered = win_firewall.render(policy, merge_local_rules=params['merge_local_rules'], endpoint_programs=programs)
    return dict(args, _rendered=rendered)


class ActionModule(ActionBase):

    def run(self, tmp=None, task_vars=None):
        self._supports_check_mode = True
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        if '_rendered' in self._task.args:
            raise AnsibleActionFail('_rendered is set by the action plugin, not by the task')
        try:
            module_args = render_args(self._task.args)
        except ArgumentError as e:
            result.update(failed=True, msg='Invalid arguments, nothing was changed: %s' % e)
            return result
        except PolicyError as e:
            result.update(failed=True, setting=e.setting,
                          msg='Invalid kill switch policy, nothing was changed: %s' % e)
            return result
        module_result = self._execute_module(module_name=MODULE, module_args=module_args, task_vars=task_vars)
        if '_rendered' in module_args:
            module_result['rendered'] = module_args['_rendered']
            invocation = module_result.get('invocation', {}).get('module_args')
            if isinstance(invocation, dict):
                invocation.pop('_rendered', None)
        result.update(module_result)
        return result
