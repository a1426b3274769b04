# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vpnguard maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A package manager for tests (ansible_package_use=fake_package): it "installs" by undoing
the bind mount that hid the nftables binding on the test host, and records what it was asked."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import subprocess

from ansible.module_utils.basic import AnsibleModule

HIDDEN = '/etc/fake-package-hidden'
RECORD = '/etc/fake-package-record.json'


def main():
    module = AnsibleModule(argument_spec=dict(name=dict(type='list', elements='str'), state=dict(type='str')),
                           supports_check_mode=True)
    with open(HIDDEN) as f:
        hidden = f.read().strip()
    changed = bool(hidden)
    if changed and not module.check_mode:
        subprocess.check_call(['umount', hidden])
        with open(HIDDEN, 'w') as f:
            f.write('')
        with open(RECORD, 'w') as f:
            json.dump(module.params, f)
    module.exit_json(changed=changed)


if __name__ == '__main__':
    main()
