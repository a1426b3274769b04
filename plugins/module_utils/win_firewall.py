# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vpnguard maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Windows backend: render a Policy as Windows Firewall rule specs and profile settings.

Runs on the controller (the action plugin win_wfp_killswitch); the
PowerShell module applies the result. Each spec's keys are
New-NetFirewallRule's parameter names, so the module passes them through.

How Windows Firewall decides, and what follows from it:

- A matching block rule beats every allow rule; an allow rule beats the
  profile's default action. The default outbound action is therefore Block
  (a "block all" rule would beat the tunnel's allow) and the kill switch is
  made of allow rules; its only block rules are ones that must hold against
  every allow: DNS to a resolver that is not the tunnel's, on any interface,
  the tunnel included.
- Windows and the applications installed on it bring their own outbound
  allow rules (Core Networking - DNS lets svchost send port 53 anywhere).
  The rules and profile settings therefore go into the local group policy
  store (`-PolicyStore localhost`), whose AllowLocalFirewallRules False
  stops the local store's rules from being merged; only ours and domain
  policy's apply. merge_local_rules keeps them, at that cost.
- There is no "every interface but the tunnel" condition, and an
  InterfaceAlias is resolved to the adapters present when the rule is made:
  a block rule listing the physical adapters would miss one plugged in
  later (fails open). So DNS outside the tunnel is left to the default
  Block, and no allow rule of ours that works outside the tunnel lets
  ports 53 or 853 through: LAN and exception rules name every other port.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress

from ansible_collections.vpnguard.killswitch.plugins.module_utils.policy import DNS_PORTS, LAN_NETWORKS, PolicyError

PREFIX = 'vpnguard-killswitch'
GROUP = PREFIX
POLICY_STORE = 'localhost'
PROFILES = ('Domain', 'Private', 'Public')
NRPT_NAMESPACE = '.'
ICMP6_OUT = ('133', '135', '136', '143')        # router/neighbour solicitation, advertisement, MLDv2 report
ICMP6_IN = ('134', '135', '136', '2')           # router/neighbour advertisement, solicitation, packet too big
ICMP4_IN = ('3:4',)                             # fragmentation needed: path MTU discovery to the endpoint

_MAX = {4: 2 ** 32 - 1, 6: 2 ** 128 - 1}


def _intervals(networks, version):
    return sorted((int(n.network_address), int(n.broadcast_address))
                  for n in (ipaddress.ip_network(x) for x in networks) if n.version == version)


def _merge(intervals):
    out = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _subtract(keep, remove):
    out = []
    for start, end in _merge(keep):
        for r_start, r_end in _merge(remove):
            if r_end < start or r_start > end:
                continue
            if r_start > start:
                out.append((start, r_start - 1))
            start = r_end + 1
            if start > end:
                break
        if start <= end:
            out.append((start, end))
    return out


def _format(intervals, version):
    make = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    return [str(make(s)) if s == e else '%s-%s' % (make(s), make(e)) for s, e in intervals]


def addresses(keep, remove=(), versions=(4, 6)):
    """Windows Firewall RemoteAddress values for keep minus remove (addresses or networks)."""
    result = []
    for v in versions:
        result += _format(_subtract(_intervals(keep, v), _intervals(remove, v)), v)
    return result


def everything_but(remove):
    return addresses(['0.0.0.0/0', '::/0'], remove)


def ports_but(excluded):
    """Every port but excluded, as Windows Firewall port ranges."""
    return _format_ports(_subtract([(1, 65535)], [(p, p) for p in excluded]))


def _format_ports(intervals):
    return [str(s) if s == e else '%d-%d' % (s, e) for s, e in intervals]


def _rule(slug, reason, direction, **conditions):
    spec = dict(Name='%s-%s' % (PREFIX, slug), DisplayName='%s: %s' % (PREFIX, reason), Group=GROUP,
                Direction=direction, Action=conditions.pop('Action', 'Allow'), Profile='Any', Enabled='True')
    spec.update((k, v) for k, v in conditions.items() if v is not None)
    return spec


def _open_everywhere(slug, reason, remote, program=None):
    """Allow TCP, UDP (every port but DNS's) and ICMP to remote; DNS stays the tunnel's."""
    v4 = [a for a in remote if ':' not in a]
    v6 = [a for a in remote if ':' in a]
    rules = [_rule('%s-%s' % (slug, p.lower()), '%s (%s, not DNS)' % (reason, p), 'Outbound', Protocol=p,
                   RemoteAddress=remote, RemotePort=ports_but(DNS_PORTS), Program=program) for p in ('TCP', 'UDP')]
    if v4:
        rules.append(_rule(slug + '-icmpv4', reason + ' (ICMPv4)', 'Outbound', Protocol='ICMPv4',
                           RemoteAddress=v4, Program=program))
    if v6:
        rules.append(_rule(slug + '-icmpv6', reason + ' (ICMPv6)', 'Outbound', Protocol='ICMPv6',
                           RemoteAddress=v6, Program=program))
    return rules


def render(policy, merge_local_rules=False, endpoint_programs=()):
    """What win_wfp_killswitch.ps1 applies: the rule specs, the profile settings and the resolver."""
    for i, exception in enumerate(policy.exceptions):
        if exception.selector != 'program':
            raise PolicyError('exceptions[%d].%s' % (i, exception.selector),
                              '%s exceptions are not available on Windows; Windows Firewall selects by program'
                              % exception.selector)
    tunnels = list(policy.tunnel_interfaces)
    doh = [str(a) for a in policy.doh_servers]
    rules = [
        _rule('tunnel-out', 'the tunnel carries everything', 'Outbound', InterfaceAlias=tunnels),
        _rule('tunnel-in', 'the tunnel carries everything', 'Inbound', InterfaceAlias=tunnels),
    ]
    if policy.dns_servers:
        # A block rule, so that no allow (the tunnel's included) lets DNS reach another resolver.
        other = everything_but([str(a) for a in policy.dns_servers])
        rules += [_rule('dns-other-%s' % p.lower(), 'DNS to a resolver that is not the tunnel\'s (%s)' % p,
                        'Outbound', Action='Block', Protocol=p, RemoteAddress=other,
                        RemotePort=[str(d) for d in DNS_PORTS]) for p in ('TCP', 'UDP')]
    for n, e in enumerate(e for e in policy.endpoints if str(e.address) not in doh):
        for m, program in enumerate(list(endpoint_programs) or [None]):
            slug = 'endpoint-%d' % n + ('-program-%d' % m if program else '')
            rules.append(_rule(slug, 'VPN server %s %s/%d' % (e.address, e.protocol, e.port), 'Outbound',
                               Protocol=e.protocol.upper(), RemoteAddress=[str(e.address)],
                               RemotePort=[str(e.port)], Program=program))
        rules.append(_rule('endpoint-%d-in' % n, 'VPN server %s %s/%d may open the handshake'
                           % (e.address, e.protocol, e.port), 'Inbound', Protocol=e.protocol.upper(),
                           RemoteAddress=[str(e.address)], RemotePort=[str(e.port)]))
    # As everywhere outside the tunnel, never to a DoH resolver.
    not_doh = everything_but(doh) if doh else None
    rules += [
        _rule('dhcp-out', 'DHCPv4', 'Outbound', Protocol='UDP', LocalPort=['68'], RemotePort=['67'],
              RemoteAddress=not_doh),
        _rule('dhcp-in', 'DHCPv4', 'Inbound', Protocol='UDP', LocalPort=['68'], RemotePort=['67']),
        _rule('dhcpv6-out', 'DHCPv6', 'Outbound', Protocol='UDP', LocalPort=['546'], RemotePort=['547'],
              RemoteAddress=not_doh),
        _rule('dhcpv6-in', 'DHCPv6', 'Inbound', Protocol='UDP', LocalPort=['546'], RemotePort=['547']),
        _rule('nd-out', 'IPv6 neighbour discovery and MLD', 'Outbound', Protocol='ICMPv6', IcmpType=list(ICMP6_OUT),
              RemoteAddress=not_doh),
        _rule('nd-in', 'IPv6 neighbour discovery and path MTU', 'Inbound', Protocol='ICMPv6', IcmpType=list(ICMP6_IN)),
        _rule('pmtu-in', 'IPv4 path MTU discovery', 'Inbound', Protocol='ICMPv4', IcmpType=list(ICMP4_IN)),
    ]
    if policy.allow_lan:
        lan = addresses([str(n) for n in LAN_NETWORKS], doh)
        rules += _open_everywhere('lan', 'the LAN', lan)
        rules.append(_rule('lan-in', 'the LAN', 'Inbound', RemoteAddress=lan))
    for n, m in enumerate(policy.management):
        # Inbound only: Windows Firewall passes the replies of an allowed connection by itself.
        rules.append(_rule('management-%d' % n, 'management from %s to %s/%d' % (m.network, m.protocol, m.port),
                           'Inbound', Protocol=m.protocol.upper(), RemoteAddress=[str(m.network)],
                           LocalPort=[str(m.port)]))
    for n, e in enumerate(policy.exceptions):
        rules += _open_everywhere('exception-%d' % n, 'bypass for %s' % e.value, everything_but(doh), program=e.value)
    return dict(
        group=GROUP,
        policy_store=POLICY_STORE,
        rules=rules,
        profiles=dict(Name=list(PROFILES), Enabled='True', DefaultOutboundAction='Block',
                      AllowLocalFirewallRules='NotConfigured' if merge_local_rules else 'False'),
        tunnel_interfaces=tunnels,
        dns=dict(servers=[str(a) for a in policy.dns_servers], namespace=NRPT_NAMESPACE, comment=PREFIX),
    )
