# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vpnguard maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Linux routing guard: policy rules that keep traffic off the physical default route.

The VPN client's own rules (wg-quick's `not fwmark ... table ...`, OpenVPN's
/1 routes) steer traffic into the tunnel. When the tunnel's routes vanish, a
lookup would fall through to the main table's default route, out of the
physical interface. The guard sits just before the main table's rule and
ends every such lookup in `unreachable`, except for the tunnel's packets to
its endpoints, replies to the management networks and bypass sockets: the
same narrow openings, down to protocol and port, that the firewall makes.

Clients that put their routes in the main table (OpenVPN without `def1`,
openconnect's vpnc-script: `default dev tun0`) keep working: the kill switch
puts the tunnel interfaces in an interface group of ours (TUNNEL_IFGROUP),
and a rule uses the main table unless its route leaves through a device of
the default group 0, which every physical interface is in. A tunnel that
did not get the group fails closed: nothing flows, nothing leaks.
It is the second, independent layer: the firewall holds if the guard is
removed, and the guard if the firewall is.

Our rules carry their own protocol number, which is how we find them and how
we leave everyone else's rules alone.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import os
import socket
from collections import namedtuple

from ansible_collections.vpnguard.killswitch.plugins.module_utils.nft import BYPASS_FWMARK

RULE_PROTOCOL = 86
# iproute2 reads extra protocol names from here, so that `ip rule` shows "proto vpnguard".
PROTOCOL_NAME_FILE = '/etc/iproute2/rt_protos.d/vpnguard-killswitch.conf'
DEFAULT_PRIORITY = 32765  # just before the main table's rule (32766)
MAIN_TABLE = 254
FR_ACT_TO_TBL = 1
FR_ACT_UNREACHABLE = 7
NO_SUPPRESS = 0xffffffff
# The interface group the kill switch keeps tunnel interfaces in (ip link set
# dev tun0 group 86); physical interfaces stay in the default group 0.
TUNNEL_IFGROUP = 86
DEFAULT_IFGROUP = 0

FAMILIES = ((4, socket.AF_INET), (6, socket.AF_INET6))
IP_PROTOCOLS = {'tcp': socket.IPPROTO_TCP, 'udp': socket.IPPROTO_UDP, 'esp': 50}
IP_PROTOCOL_NAMES = {number: name for name, number in IP_PROTOCOLS.items()}

RULE_FIELDS = 'version priority action dst dst_len ip_proto sport dport fwmark suppress_prefixlen suppress_ifgroup table'
Rule = namedtuple('Rule', RULE_FIELDS)
# Rules written before interface groups compare equal to those read back.
Rule.__new__.__defaults__ = (NO_SUPPRESS, MAIN_TABLE)

# The kill switch's own routing table: a default route per IP version out of
# the physical path, looked up only by packets with the bypass mark.
BYPASS_TABLE = 0x564b
TABLE_NAME_FILE = '/etc/iproute2/rt_tables.d/vpnguard-killswitch.conf'
BypassRoute = namedtuple('BypassRoute', 'version gateway oif')


def _selector_words(rule):
    words = []
    if rule.dst:
        words += ['to', '%s/%d' % (rule.dst, rule.dst_len)]
    if rule.ip_proto:
        words += ['ipproto', IP_PROTOCOL_NAMES.get(rule.ip_proto, str(rule.ip_proto))]
    for word, port_range in (('sport', rule.sport), ('dport', rule.dport)):
        if port_range:
            words += [word, '%d' % port_range[0] if port_range[0] == port_range[1] else '%d-%d' % port_range]
    if rule.fwmark:
        words += ['fwmark', '0x%x' % rule.fwmark]
    if rule.action == FR_ACT_UNREACHABLE:
        words.append('unreachable')
    else:
        words += ['lookup', 'main' if rule.table == MAIN_TABLE else str(rule.table)]
    if rule.suppress_prefixlen != NO_SUPPRESS:
        words += ['suppress_prefixlength', str(rule.suppress_prefixlen)]
    if rule.suppress_ifgroup != NO_SUPPRESS:
        words += ['suppress_ifgroup', str(rule.suppress_ifgroup)]
    return words


def describe(rule):
    """The rule much as `ip rule` shows it, for results and diffs."""
    return ' '.join(['ipv%d' % rule.version, '%d:' % rule.priority] + _selector_words(rule))


def ip_command(rule, verb):
    """The rule as an ip(8) command line, for the boot script."""
    return ' '.join(['ip', '-%d' % rule.version, 'rule', verb, 'priority', str(rule.priority)]
                    + _selector_words(rule) + ['proto', str(RULE_PROTOCOL)])


def guard_commands(rules, stale=()):
    """ip(8) commands that lay rules in order, whether or not they (or stale ones) are there.

    All deletes come first: re-adding a rule one by one would move it behind
    its siblings of the same priority. Each delete names the whole rule, so
    it can only ever match that rule.
    """
    deletes = [ip_command(r, 'del') + ' 2>/dev/null' for r in list(stale) + list(rules)]
    return deletes + [ip_command(r, 'add') + ' || exit 1' for r in rules]


def boot_script(rules):
    lines = ['#!/bin/sh', '# Routing guard of vpnguard.killswitch, generated by Ansible: changes are overwritten.']
    return '\n'.join(lines + guard_commands(rules)) + '\n'


def protocol_name_files(named):
    """The files naming our rule protocol and our table, as file_snapshot.sync() takes them.

    Only where iproute2 has the directory: newer ones keep their defaults
    elsewhere, and a directory made here would be ours to explain.
    """
    files = {}
    for path, text in ((PROTOCOL_NAME_FILE, '%d vpnguard\n' % RULE_PROTOCOL),
                       (TABLE_NAME_FILE, '%d vpnguard-bypass\n' % BYPASS_TABLE)):
        if not named:
            files[path] = None
        elif os.path.isdir(os.path.dirname(path)):
            files[path] = text
    return files


def desired_rules(policy, priority=DEFAULT_PRIORITY):
    """The guard's rules for policy, in the order they must be evaluated."""
    rules = []
    for version, _family in FAMILIES:
        def to_main(dst=None, dst_len=0, ip_proto=0, sport=None, dport=None, fwmark=0, suppress=NO_SUPPRESS,
                    suppress_ifgroup=NO_SUPPRESS):
            return Rule(version, priority, FR_ACT_TO_TBL, dst, dst_len, ip_proto, sport, dport, fwmark, suppress,
                        suppress_ifgroup)
        full = 32 if version == 4 else 128
        # Only the tunnel's own protocol and port: anything else to the
        # server (a port-unreachable for a packet that arrived after the
        # client's socket closed) would leave outside the tunnel.
        rules += [to_main(str(e.address), full, IP_PROTOCOLS[e.protocol], dport=(e.port, e.port))
                  for e in policy.endpoints_of(version) if e.port]
        # ESP of route-based IPsec: the kernel looks the server up with the
        # SA's output mark (xfrm_bundle_create: xfrm_smark_get), and, from
        # "xfrm: respect ip protocols rules criteria when performing dst
        # lookups" (Linux 6.12), with ESP (or UDP 4500) as the protocol too.
        for e in policy.endpoints_of(version):
            if not e.port:
                mark = policy.tunnel_fwmark if e.mark is None else e.mark
                rules += [to_main(str(e.address), full, IP_PROTOCOLS[e.protocol]),
                          to_main(str(e.address), full, fwmark=mark)]
        # Management networks connect to the host: only its replies, from the served port.
        rules += [to_main(str(m.network.network_address), m.network.prefixlen, IP_PROTOCOLS[m.protocol],
                          sport=(m.port, m.port))
                  for m in policy.management_of(version)]
        if policy.exceptions:
            # Bypass sockets never take a route of the main table into a
            # tunnel. Where the best route is the tunnel's (its default or
            # /1 routes in main) their lookup goes on to the rules below.
            rules.append(to_main(fwmark=BYPASS_FWMARK, suppress_ifgroup=TUNNEL_IFGROUP))
            # There, they take our table's default route out of the physical
            # path (bypass_routes()); an empty table ends in the rules below.
            rules.append(Rule(version, priority, FR_ACT_TO_TBL, None, 0, 0, None, None, BYPASS_FWMARK, NO_SUPPRESS,
                              NO_SUPPRESS, BYPASS_TABLE))
        # More specific routes of the main table (the tunnel's own, the LAN's)
        # stay usable; only its default route is refused...
        rules.append(to_main(suppress=0))
        # ...unless it leaves through a tunnel: anything but the group of
        # physical interfaces.
        rules.append(to_main(suppress_ifgroup=DEFAULT_IFGROUP))
        rules.append(Rule(version, priority, FR_ACT_UNREACHABLE, None, 0, 0, None, None, 0, NO_SUPPRESS))
    return rules


def _from_netlink(version, rule):
    return Rule(version=version, priority=rule['priority'], action=rule['action'], dst=rule['dst'],
                dst_len=rule['dst_len'], ip_proto=rule['ip_proto'], sport=rule['sport'],
                dport=rule['dport'], fwmark=rule['fwmark'], suppress_prefixlen=rule['suppress_prefixlen'],
                suppress_ifgroup=rule.get('suppress_ifgroup', NO_SUPPRESS),
                table=rule['table'] if rule['action'] == FR_ACT_TO_TBL else MAIN_TABLE)


class RoutingGuard:
    """Reads and replaces our policy rules through a netlink_rules.RuleSocket."""

    def __init__(self, netlink):
        self._netlink = netlink

    @property
    def netlink(self):
        return self._netlink

    def live_rules(self):
        return [_from_netlink(version, rule)
                for version, family in FAMILIES
                for rule in self._netlink.rules(family) if rule['protocol'] == RULE_PROTOCOL]

    @staticmethod
    def _netlink_args(rule):
        args = dict(family=dict(FAMILIES)[rule.version], priority=rule.priority,
                    protocol=RULE_PROTOCOL, action=rule.action)
        if rule.action == FR_ACT_TO_TBL:
            args['table'] = rule.table
        if rule.dst:
            args.update(dst=rule.dst, dst_len=rule.dst_len)
        if rule.ip_proto:
            args['ip_proto'] = rule.ip_proto
        if rule.sport:
            args['sport'] = rule.sport
        if rule.dport:
            args['dport'] = rule.dport
        if rule.fwmark:
            args['fwmark'] = rule.fwmark
        if rule.suppress_prefixlen != NO_SUPPRESS:
            args['suppress_prefixlen'] = rule.suppress_prefixlen
        if rule.suppress_ifgroup != NO_SUPPRESS:
            args['suppress_ifgroup'] = rule.suppress_ifgroup
        return args

    def _add(self, rule):
        self._netlink.add(**self._netlink_args(rule))

    def _delete(self, rule):
        self._netlink.delete(**self._netlink_args(rule))

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


# udev puts a tunnel interface in the group the moment the kernel creates it,
# with no process of ours left running; where udev does not run (containers),
# the VPN client's own hook does it (README: a recipe per client).
UDEV_RULE_FILE = '/etc/udev/rules.d/70-vpnguard-killswitch-tunnels.rules'


def udev_rule_files(policy):
    """The udev rule that groups tunnel interfaces as they appear, as file_snapshot.sync() takes it."""
    if policy is None:
        return {UDEV_RULE_FILE: None}
    if not os.path.isdir(os.path.dirname(os.path.dirname(UDEV_RULE_FILE))):
        return {}
    lines = ['# Tunnel interfaces of vpnguard.killswitch, generated by Ansible: changes are overwritten.',
             '# The routing guard lets main-table routes through interface group %d be used.' % TUNNEL_IFGROUP]
    lines += ['SUBSYSTEM=="net", ACTION=="add", KERNEL=="%s", RUN+="/sbin/ip link set dev %%k group %d"'
              % (name, TUNNEL_IFGROUP) for name in policy.tunnel_interfaces]
    return {UDEV_RULE_FILE: '\n'.join(lines) + '\n'}


def is_tunnel(name, patterns):
    return any(name.startswith(p[:-1]) if p.endswith('*') else name == p for p in patterns)


def regrouped_links(links, patterns):
    """(name, group) changes that leave exactly the links matching patterns in TUNNEL_IFGROUP.

    links maps every interface name to its group. A link of ours that no
    longer matches goes back to the default group; others' groups are kept.
    """
    changes = []
    for name, group in sorted(links.items()):
        if is_tunnel(name, patterns) and group != TUNNEL_IFGROUP:
            changes.append((name, TUNNEL_IFGROUP))
        elif not is_tunnel(name, patterns) and group == TUNNEL_IFGROUP:
            changes.append((name, DEFAULT_IFGROUP))
    return changes


class LinkGroups:
    """Interface groups: read over rtnetlink, set through ip(8), which every host with the guard has."""

    def __init__(self, module, netlink):
        self._module = module
        self._netlink = netlink
        self._ip = module.get_bin_path('ip', required=True)

    def links(self):
        """{name: group} of every interface, from one link dump (no ip run on an apply that changes nothing)."""
        return self._netlink.link_groups()

    def apply(self, changes):
        for name, group in changes:
            rc, out, err = self._module.run_command([self._ip, 'link', 'set', 'dev', name, 'group', str(group)])
            # A tunnel may vanish between listing and setting; it is grouped when it comes back.
            if rc != 0 and 'Cannot find device' not in err:
                raise OSError('ip link set dev %s group %d failed: %s' % (name, group, err.strip()))


def bypass_routes(policy, links, main_routes):
    """Our table's default routes for policy: one per IP version, out of the physical path.

    links maps interface indexes to (name, group); main_routes maps each IP
    version to the main table's routes. Main's best default route through a
    physical interface (group 0) where there is one; else the route through a
    physical interface and a gateway to a VPN endpoint, which the client keeps
    when it replaces the default route (OpenVPN's redirect-gateway,
    openconnect's vpnc-script). None without exceptions: nothing to route.
    """
    if not policy.exceptions:
        return []
    routes = []
    for version, family in FAMILIES:
        physical = [r for r in main_routes[version] if not r['multipath'] and r['oif']
                    and links.get(r['oif'], ('', TUNNEL_IFGROUP))[1] == DEFAULT_IFGROUP]
        defaults = [r for r in physical if r['dst_len'] == 0]
        if not defaults:
            endpoints = [ipaddress.ip_address(str(e.address)) for e in policy.endpoints_of(version)]
            defaults = [r for r in physical if r['gateway'] and r['dst'] and any(
                a in ipaddress.ip_network('%s/%d' % (r['dst'], r['dst_len']), strict=False) for a in endpoints)]
            defaults.sort(key=lambda r: -r['dst_len'])
        defaults.sort(key=lambda r: r['metric'])
        if defaults:
            routes.append(BypassRoute(version, defaults[0]['gateway'], defaults[0]['oif']))
    return routes


def describe_route(route, links):
    words = ['ipv%d' % route.version, 'default']
    if route.gateway:
        words += ['via', route.gateway]
    words += ['dev', links.get(route.oif, (str(route.oif),))[0], 'table', str(BYPASS_TABLE)]
    return ' '.join(words)


class BypassTable:
    """Our table's routes (those of our protocol), read and replaced over a netlink_rules.RuleSocket."""

    def __init__(self, netlink):
        self._netlink = netlink

    def main_routes(self):
        return dict((version, self._netlink.routes(family, MAIN_TABLE)) for version, family in FAMILIES)

    def live(self):
        return [BypassRoute(version, r['gateway'], r['oif'])
                for version, family in FAMILIES for r in self._netlink.routes(family, BYPASS_TABLE)
                if r['protocol'] == RULE_PROTOCOL and r['dst_len'] == 0]

    def _route(self, route):
        return dict(family=dict(FAMILIES)[route.version], table=BYPASS_TABLE, protocol=RULE_PROTOCOL,
                    oif=route.oif, gateway=route.gateway)

    def replace(self, desired):
        """Make our routes exactly desired; only bypass-marked packets ever look them up."""
        live = self.live()
        for route in live:
            if route not in desired:
                self._netlink.delete_default_route(**self._route(route))
        for route in desired:
            if route not in live:
                self._netlink.add_default_route(**self._route(route))

    def remove(self):
        self.replace([])
