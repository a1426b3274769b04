# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vpnguard maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
name: validate_policy
short_description: Validate a kill switch policy on the controller
version_added: "0.1.0"
description:
  - Checks a whole kill switch policy with the same model the modules use, on the controller,
    so that a bad value fails before any task touches a host.
  - Returns the policy unchanged when it is valid; otherwise fails with an error naming the setting.
author:
  - vpnguard maintainers (@vpnguard)
options:
  _input:
    description:
      - The policy, with the keys C(tunnel_interfaces), C(endpoints), C(dns_servers), C(allow_lan),
        C(management), C(exceptions), and optionally C(tunnel_fwmark) and C(restrict_endpoints_to_tunnel).
    type: dict
    required: true
  system:
    description:
      - The target host's OS as C(ansible_facts['system']) names it (C(Linux), C(Darwin) or C(Win32NT)).
        When given, what that OS's firewall cannot express is refused too (for example a C(cgroup)
        exception on macOS), and tunnel interfaces are read as Windows adapter aliases on Windows.
    type: str
  variables:
    description:
      - Policy keys mapped to the variables they were set from (for example C(dns_servers) to
        C(killswitch_dns_servers)), so that the error names what the user set; see
        P(vpnguard.killswitch.name_variable#filter).
    type: dict
'''

EXAMPLES = r'''
- name: Fail early on a bad policy
  ansible.builtin.set_fact:
    killswitch_policy: "{{ {'tunnel_interfaces': ['wg0'], 'endpoints': []} | vpnguard.killswitch.validate_policy }}"

- name: Fail early on what this host's firewall cannot express
  ansible.builtin.assert:
    that: policy | vpnguard.killswitch.validate_policy(ansible_facts['system']) is mapping

- name: Fail early, naming the variable the policy key came from
  ansible.builtin.assert:
    that: "policy | vpnguard.killswitch.validate_policy(variables={'dns_servers': 'killswitch_dns_servers'}) is mapping"
'''

RETURN = r'''
_value:
  description: The policy, unchanged.
  type: dict
'''

from ansible.errors import AnsibleFilterError

from ansible_collections.vpnguard.killswitch.plugins.filter.name_variable import name_variable
from ansible_collections.vpnguard.killswitch.plugins.module_utils.policy import PolicyError, parse_policy


# ansible_facts['system'] -> platform.system() on the host
SYSTEMS = {'Linux': 'Linux', 'Darwin': 'Darwin', 'Win32NT': 'Windows'}


def validate_policy(policy, system=None, variables=None):
    if system is not None and system not in SYSTEMS:
        raise AnsibleFilterError('validate_policy: unknown system %r; expected one of %s'
                                 % (system, ', '.join(sorted(SYSTEMS))))
    try:
        parse_policy(policy, system=SYSTEMS.get(system))
    except PolicyError as e:
        message = name_variable(str(e), e.setting, variables) if variables else str(e)
        raise AnsibleFilterError('Invalid kill switch policy, no host was changed: %s' % message)
    return policy


class FilterModule(object):
    def filters(self):
        return {'validate_policy': validate_policy}
