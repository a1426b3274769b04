"""A small model of Windows Defender Firewall, enough to run rendered rule specs against packets.

Semantics (Windows Firewall with Advanced Security, rule precedence):
- a rule matches when every condition it names matches: direction, the
  interface (InterfaceAlias), protocol, remote address (CIDR, single or
  a-b range), remote and local port (single or a-b range), ICMP type
  (type or type:code), program (path, case-insensitive);
- any matching enabled block rule blocks, whatever allows;
- otherwise any matching enabled allow rule allows;
- otherwise the profile's default action decides (outbound: what
  DefaultOutboundAction says; inbound: Block);
- with AllowLocalFirewallRules False in the group policy store, rules of
  the local store are not part of the policy at all.
Keys the model does not know make it raise, so an unknown condition is
never silently treated as "matches".
"""

import fnmatch
import ipaddress
from collections import namedtuple

Packet = namedtuple('Packet', 'direction iface proto dst sport dport icmp program')
KNOWN = {'Name', 'DisplayName', 'Group', 'Direction', 'Action', 'Profile', 'Enabled', 'Protocol', 'RemoteAddress',
         'RemotePort', 'LocalPort', 'InterfaceAlias', 'IcmpType', 'Program'}


def packet(direction='Outbound', iface='Ethernet', proto='TCP', dst='198.51.100.7', sport=40000, dport=443,
           icmp=None, program='C:\\Windows\\System32\\svchost.exe'):
    return Packet(direction, iface, proto, ipaddress.ip_address(dst), sport, dport, icmp, program)


def _address_matches(values, address):
    for value in values:
        if value == 'Any':
            return True
        if '-' in value:
            start, end = (ipaddress.ip_address(v) for v in value.split('-'))
            if start.version == address.version and start <= address <= end:
                return True
        else:
            network = ipaddress.ip_network(value, strict=False)
            if network.version == address.version and address in network:
                return True
    return False


def _port_matches(values, port):
    for value in values:
        start, end = (value.split('-') + [value])[:2]
        if int(start) <= port <= int(end or start):
            return True
    return False


def matches(rule, p, interfaces):
    unknown = set(rule) - KNOWN
    if unknown:
        raise ValueError('the model does not know %s' % ', '.join(sorted(unknown)))
    if rule.get('Enabled', 'True') != 'True' or rule['Direction'] != p.direction:
        return False
    if 'InterfaceAlias' in rule:
        # Resolved when the rule is made: the present adapters the patterns match.
        resolved = [i for i in interfaces if any(fnmatch.fnmatchcase(i, pattern) for pattern in rule['InterfaceAlias'])]
        if p.iface not in resolved:
            return False
    protocol = rule.get('Protocol', 'Any')
    if protocol != 'Any' and protocol != p.proto:
        return False
    if 'RemoteAddress' in rule and not _address_matches(rule['RemoteAddress'], p.dst):
        return False
    remote_port, local_port = (p.dport, p.sport) if p.direction == 'Outbound' else (p.sport, p.dport)
    if 'RemotePort' in rule and (p.proto not in ('TCP', 'UDP') or not _port_matches(rule['RemotePort'], remote_port)):
        return False
    if 'LocalPort' in rule and (p.proto not in ('TCP', 'UDP') or not _port_matches(rule['LocalPort'], local_port)):
        return False
    if 'IcmpType' in rule:
        if p.proto not in ('ICMPv4', 'ICMPv6') or p.icmp is None:
            return False
        if not any(t == str(p.icmp[0]) or t == '%d:%d' % p.icmp for t in rule['IcmpType']):
            return False
    if 'Program' in rule and (p.program or '').lower() != rule['Program'].lower():
        return False
    return True


class Firewall:
    def __init__(self, rendered, interfaces, local_rules=()):
        self.rules = list(rendered['rules'])
        self.profiles = rendered['profiles']
        if self.profiles['AllowLocalFirewallRules'] != 'False':
            self.rules += list(local_rules)
        self.interfaces = list(interfaces)

    def allows(self, p):
        hits = [r for r in self.rules if matches(r, p, self.interfaces)]
        if any(r['Action'] == 'Block' for r in hits):
            return False
        if any(r['Action'] == 'Allow' for r in hits):
            return True
        default = self.profiles['DefaultOutboundAction'] if p.direction == 'Outbound' else 'Block'
        return default == 'Allow'


# Windows' own outbound allow rules, as a fresh install has them enabled (a few of many).
WINDOWS_DEFAULTS = [
    dict(Name='CoreNet-DNS-Out-UDP', DisplayName='Core Networking - DNS (UDP-Out)', Direction='Outbound',
         Action='Allow', Protocol='UDP', RemotePort=['53'], Program='C:\\Windows\\System32\\svchost.exe'),
    dict(Name='CoreNet-DHCP-Out', DisplayName='Core Networking - DHCP (DHCP-Out)', Direction='Outbound',
         Action='Allow', Protocol='UDP', LocalPort=['68'], RemotePort=['67']),
    dict(Name='Edge-Out', DisplayName='Microsoft Edge', Direction='Outbound', Action='Allow',
         Program='C:\\Program Files (x86)\\Microsoft\\Edge\\Application\\msedge.exe'),
    dict(Name='App-Any-Out', DisplayName='An installer\'s rule', Direction='Outbound', Action='Allow'),
]
