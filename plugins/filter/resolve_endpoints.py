# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vpnguard maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
name: resolve_endpoints
short_description: Resolve VPN servers given by name into endpoint addresses, on the controller
version_added: "0.1.0"
description:
  - Once the kill switch is on, DNS goes only through the tunnel, so a VPN client configured with a
    host name cannot resolve its server while the tunnel is down, and never reconnects. This filter
    resolves the names on the controller, where DNS works, into the addresses the kill switch and the
    client's configuration are given.
  - Each entry with C(host) becomes one entry per address the name has (IPv4 and IPv6, or only
    O(family)), with C(address) set and every other key kept. Entries with C(address) pass unchanged.
  - A name that does not resolve fails the run, naming the entry, rather than leaving a host without
    its endpoint.
author:
  - vpnguard maintainers (@vpnguard)
options:
  _input:
    description: Endpoints as C(killswitch_endpoints) takes them, each with C(address) or C(host).
    type: list
    elements: dict
    required: true
  family:
    description: Only addresses of this IP version.
    type: int
    choices: [4, 6]
'''

EXAMPLES = r'''
- name: Endpoints from the server's name, resolved on the controller
  ansible.builtin.set_fact:
    killswitch_endpoints: "{{ [{'host': 'vpn.example.com', 'port': 1194, 'protocol': 'udp'}]
                              | vpnguard.killswitch.resolve_endpoints }}"
'''

RETURN = r'''
_value:
  description: The endpoints, each with an C(address) and without C(host).
  type: list
  elements: dict
'''

import socket

from ansible.errors import AnsibleFilterError

FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}


def resolve_endpoints(endpoints, family=None):
    if not isinstance(endpoints, (list, tuple)):
        raise AnsibleFilterError('resolve_endpoints: expected a list of endpoints, got %s' % type(endpoints).__name__)
    if family is not None and family not in FAMILIES:
        raise AnsibleFilterError('resolve_endpoints: family must be 4 or 6, got %r' % (family,))
    resolved = []
    for i, entry in enumerate(endpoints):
        if not isinstance(entry, dict) or ('host' in entry) == ('address' in entry):
            raise AnsibleFilterError('resolve_endpoints: endpoints[%d] needs exactly one of host and address' % i)
        if 'address' in entry:
            resolved.append(entry)
            continue
        try:
            infos = socket.getaddrinfo(entry['host'], None, FAMILIES.get(family, socket.AF_UNSPEC),
                                       socket.SOCK_DGRAM)
        except (socket.gaierror, UnicodeError) as e:
            raise AnsibleFilterError('resolve_endpoints: endpoints[%d].host %r does not resolve on the controller: %s'
                                     % (i, entry['host'], e))
        addresses = []
        for info in infos:
            address = info[4][0].split('%')[0]
            if address not in addresses:
                addresses.append(address)
        rest = dict((k, v) for k, v in entry.items() if k != 'host')
        resolved += [dict(rest, address=address) for address in addresses]
    return resolved


class FilterModule(object):
    def filters(self):
        return {'resolve_endpoints': resolve_endpoints}
