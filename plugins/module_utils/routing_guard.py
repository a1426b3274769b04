# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vpnguard maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Linux routing guard: policy rules that keep traffic off the physical default route.

The VPN client's own rules (wg-quick's `not fwmark ... table ...`, OpenVPN's
/1 routes) steer traffic into the tunnel. When the tunnel's routes vanish, a
lookup would fall through to the main table's default route, out of the
physical interface. The guard sits just before the main table's rule and
ends every such lookup in `unreachable`, except for the endpoints, the
management networks and bypass sockets. It is the second, independent layer:
the firewall holds if the guard is removed, and the guard if the firewall is.

Our rules carry their own protocol number, which is how we find them and how
we leave everyone else's rules alone.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import socket
from collections import namedtuple

from ansible_collections.vpnguard.killswitch.plugins.module_utils.nft import BYPASS_FWMARK

RULE_PROTOCOL = 86
DEFAULT_PRIORITY = 32765  # just before the main table's rule (32766)
MAIN_TABLE = 254
FR_ACT_TO_TBL = 1
FR_ACT_UNREACHABLE = 7
NO_SUPPRESS = 0xffffffff

FAMILIES = ((4, socket.AF_INET), (6, socket.AF_INET6))

Rule = namedtuple('Rule', 'version priority action dst dst_len fwmark suppress_prefixlen')


def describe(rule):
    """The rule as `ip rule` would show it, for results and diffs."""
    words = ['ipv%d' % rule.version, '%d:' % rule.priority]
    if rule.dst:
        words += ['to', '%s/%d' % (rule.dst, rule.dst_len)]
    if rule.fwmark:
        words += ['fwmark', '0x%x' % rule.fwmark]
    if rule.action == FR_ACT_UNREACHABLE:
        words.append('unreachable')
    else:
        words += ['lookup', 'main']
    if rule.suppress_prefixlen != NO_SUPPRESS:
        words += ['suppress_prefixlength', str(rule.suppress_prefixlen)]
    return ' '.join(words)


def desired_rules(policy, priority=DEFAULT_PRIORITY):
    """The guard's rules for policy, in the order they must be evaluated."""
    rules = []
    for version, _family in FAMILIES:
        def to_main(dst=None, dst_len=0, fwmark=0, suppress=NO_SUPPRESS):
            return Rule(version, priority, FR_ACT_TO_TBL, dst, dst_len, fwmark, suppress)
        full = 32 if version == 4 else 128
        rules += [to_main(str(e.address), full) for e in policy.endpoints_of(version)]
        rules += [to_main(str(m.network.network_address), m.network.prefixlen)
                  for m in policy.management_of(version)]
        if policy.exceptions:
            rules.append(to_main(fwmark=BYPASS_FWMARK))
        # More specific routes of the main table (the tunnel's own, the LAN's)
        # stay usable; only its default route is refused.
        rules.append(to_main(suppress=0))
        rules.append(Rule(version, priority, FR_ACT_UNREACHABLE, None, 0, 0, NO_SUPPRESS))
    return rules


def _from_netlink(version, msg):
    attrs = dict(msg['attrs'])
    return Rule(
        version=version,
        priority=attrs.get('FRA_PRIORITY', 0),
        action=msg['action'],
        dst=attrs.get('FRA_DST'),
        dst_len=msg['dst_len'],
        fwmark=attrs.get('FRA_FWMARK', 0),
        suppress_prefixlen=attrs.get('FRA_SUPPRESS_PREFIXLEN', NO_SUPPRESS),
    )


class RoutingGuard:
    """Reads and replaces our policy rules through a pyroute2 IPRoute."""

    def __init__(self, ipr):
        self._ipr = ipr

    def live_rules(self):
        rules = []
        for version, family in FAMILIES:
            for msg in self._ipr.get_rules(family=family):
                if dict(msg['attrs']).get('FRA_PROTOCOL') == RULE_PROTOCOL:
                    rules.append(_from_netlink(version, msg))
        return rules

    @staticmethod
    def _netlink_args(rule):
        # A delete matches on the attributes given, so add and delete both
        # name everything that tells our rules apart from each other.
        args = dict(family=dict(FAMILIES)[rule.version], priority=rule.priority,
                    protocol=RULE_PROTOCOL, action=rule.action)
        if rule.action == FR_ACT_TO_TBL:
            args['table'] = MAIN_TABLE
        if rule.dst:
            args.update(dst=rule.dst, dst_len=rule.dst_len)
        if rule.fwmark:
            args.update(fwmark=rule.fwmark, fwmask=0xffffffff)
        if rule.suppress_prefixlen != NO_SUPPRESS:
            args['suppress_prefixlen'] = rule.suppress_prefixlen
        return args

    def _add(self, rule):
        self._ipr.rule('add', **self._netlink_args(rule))

    def _delete(self, rule):
        self._ipr.rule('del', **self._netlink_args(rule))

    def replace(self, desired):
        """Make our rules exactly desired, in order. Returns the rules it removed.

        Rules of one priority are evaluated in the order they were added, so
        the whole set is laid again. The firewall covers the instant between.
        If adding fails, the previous rules are put back before raising.
        """
        previous = self.live_rules()
        for rule in previous:
            self._delete(rule)
        added = []
        try:
            for rule in desired:
                self._add(rule)
                added.append(rule)
        except Exception:
            for rule in reversed(added):
                self._delete(rule)
            for rule in previous:
                self._add(rule)
            raise
        return previous

    def remove(self):
        previous = self.live_rules()
        for rule in previous:
            self._delete(rule)
        return previous
