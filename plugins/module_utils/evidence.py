# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vpnguard maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""What every kill switch module gives the audit, in the shapes the audit report reads on any OS."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

# What the kill switch may log (killswitch_log): nothing, the bypass exceptions' use, what it refused, or both.
LOG_LEVELS = ('none', 'exceptions', 'refused', 'all')


def argument_spec():
    """The options of the log and the live probe (doc fragment vpnguard.killswitch.evidence)."""
    return dict(
        log=dict(type='str', default='none', choices=list(LOG_LEVELS)),
        probe=dict(type='bool', default=False),
        probe_canary_v4=dict(type='str', default='203.0.113.254'),
        probe_canary_v6=dict(type='str', default='2001:db8:ffff::fe'),
    )


def counters(counted, names):
    """{name: {packets, bytes, counts}} for every counter of names ({name: what it counts}); counted holds
    (packets, bytes) per name, and a counter not counted yet is 0."""
    return dict((name, dict(packets=counted.get(name, (0, 0))[0], bytes=counted.get(name, (0, 0))[1], counts=meaning))
                for name, meaning in names.items())
