# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vpnguard maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
name: name_variable
short_description: Name the variable a user set in a module's error message
version_added: "0.1.0"
description:
  - Modules name their own options in errors, for example C(dns_servers[0]); through a role the user set a
    variable, C(killswitch_dns_servers). This filter rewrites the message so that it names the variable.
  - Only the offending setting is rewritten, where the message names it as a path (followed by C([),
    C(.) or C(:)), as C(Set OPTION to), or quoted as the argument checker quotes it; the rest of the message
    is kept word for word.
author:
  - vpnguard maintainers (@vpnguard)
options:
  _input:
    description: The error message.
    type: str
    required: true
  setting:
    description:
      - The offending setting as the module reports it in the C(setting) key of its result, for example
        C(endpoints[0].port). Empty or omitted when the module did not say; then every option in O(variables)
        is looked for, quoted, as the argument checker writes it (C(argument 'persist')).
    type: str
  variables:
    description: Module option names mapped to the variable each comes from.
    type: dict
    required: true
'''

EXAMPLES = r'''
- name: Fail with the role's variable named instead of the module's option
  ansible.builtin.fail:
    msg: "{{ ansible_failed_result.msg | vpnguard.killswitch.name_variable(ansible_failed_result.setting | default(''),
             {'dns_servers': 'killswitch_dns_servers', 'servers': 'killswitch_dns_servers'}) }}"
'''

RETURN = r'''
_value:
  description: The message, naming the variable where it named the option.
  type: str
'''

import re

from ansible.errors import AnsibleFilterError


def _root(setting):
    """endpoints[0].port -> endpoints"""
    return re.split(r'[\[.]', setting, 1)[0]


def name_variable(message, setting=None, variables=None):
    if not isinstance(variables, dict):
        raise AnsibleFilterError('name_variable: variables must be a mapping of option names to variable names')
    message = '' if message is None else str(message)
    if setting and isinstance(setting, str):
        option = _root(setting)
        variable = variables.get(option)
        if not variable:
            return message
        # As a path (endpoints[0].port, persist:), or as advice ("Set persist to false").
        return re.sub(r'(?<![\w.\'])%s(?=[\[.:]|\s+to\s)' % re.escape(option), variable, message)
    for option, variable in variables.items():
        message = message.replace("'%s'" % option, "'%s'" % variable)
    return message


class FilterModule(object):
    def filters(self):
        return {'name_variable': name_variable}
