# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vpnguard maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # The live probe's canaries, the same for every kill switch module (module_utils/evidence.py).
    DOCUMENTATION = r'''
options:
  probe_canary_v4:
    description: The IPv4 address the probe sends to; a documentation address leads nowhere.
    type: str
    default: 203.0.113.254
  probe_canary_v6:
    description: The IPv6 address the probe sends to.
    type: str
    default: "2001:db8:ffff::fe"
'''
