"""A model of Windows Filtering Platform arbitration, enough to run rendered filters and a Windows Firewall policy against packets.

Every rule below is taken from Microsoft's documentation; where the text
allows two readings, the model takes both (a parameter) and the tests must
hold under each.

[ARB] Filter Arbitration, https://learn.microsoft.com/windows/win32/fwp/filter-arbitration
  - Each layer is divided into sublayers ordered by weight; traffic
    traverses them from the highest weight to the lowest, and every
    sublayer is evaluated even when a higher one has blocked.
  - Inside a sublayer, matching filters are evaluated from the highest
    weight down until one returns Permit or Block; the rest are skipped.
  - Across sublayers: Block overrides Permit. The FWPS_RIGHT_ACTION_WRITE
    right decides whether a lower sublayer may override: a Permit with the
    right is a soft permit (another sublayer may block), without it a hard
    permit (only a callout's Veto can block it). A Block without the right
    is final (a hard block); "a Block with the right can be overridden" is
    the reading we cannot pin down for non-callout filters, so
    `soft_block_overridable` selects it.
  - A callout may Veto a higher sublayer's hard permit.
[FLT] FWPM_FILTER0, https://learn.microsoft.com/windows/win32/api/fwpmtypes/ns-fwpmtypes-fwpm_filter0
  - FWPM_FILTER_FLAG_PERSISTENT: the filter survives BFE stop/start.
    FWPM_FILTER_FLAG_BOOTTIME: enforced at boot, even before BFE starts
    (the two cannot be combined). FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT: the
    filter clears the action right, so lower sublayers cannot override it.
    Filters without either lifetime flag are dynamic: they go with the
    session (the service) that added them.
[CND] FWPM_FILTER_CONDITION0, https://learn.microsoft.com/windows/win32/api/fwpmtypes/ns-fwpmtypes-fwpm_filter_condition0
  - Conditions with the same field are OR'ed, conditions on different
    fields AND'ed; a filter without conditions matches everything.
  - fwpmu.h: FWPM_CONDITION_ICMP_TYPE is FWPM_CONDITION_IP_LOCAL_PORT and
    FWPM_CONDITION_ICMP_CODE is FWPM_CONDITION_IP_REMOTE_PORT, so an ICMP
    packet's type is its "local port" to a filter.
[ALE] ALE layers, https://learn.microsoft.com/windows/win32/fwp/application-layer-enforcement--ale-
  - ALE_AUTH_CONNECT authorizes outbound connections and the first
    datagram to a remote; ALE_AUTH_RECV_ACCEPT inbound ones; the packets of
    an authorized flow are not classified there again.
  - ALE_AUTH_CONNECT comes before the first packet of the flow is built
    (TCP: before the SYN reaches OUTBOUND_TRANSPORT, "TCP Packet Flows",
    https://learn.microsoft.com/windows/win32/fwp/tcp-packet-flows): what it
    blocks puts nothing on the wire (the audit's probe, issue 15).
  - Traffic the host routes for others (ICS, forwarding on) is not the
    host's own: it only reaches the IP forward layers
    (FWPM_LAYER_IPFORWARD_V4/V6, "Filtering Layer Identifiers").
[VM] VM traffic (WSL2, Hyper-V, Windows Sandbox) passes none of the host's
  WFP filters: Mullvad issue 6997 (WSL2 reached the internet through
  their lockdown) and PR 7120 ("the normal firewall (WFP) filters normally
  do not apply for VMs"), which blocks it with a Hyper-V firewall rule
  (https://learn.microsoft.com/windows/security/operating-system-security/network-security/windows-firewall/hyper-v-firewall);
  Windows Sandbox is not filtered even by that (Mullvad PR 7589).
[WF] Windows Firewall, https://learn.microsoft.com/windows/security/operating-system-security/network-security/windows-firewall/rules
  and "Windows Firewall boot-time filtering" (MS-FASP, WFAS documentation):
  - Windows Firewall (MpsSvc) puts its policy in WFP as filters of its own
    sublayer, below the highest weight; a matching block rule beats every
    allow rule, an allow rule beats the profile's default action; rules
    with "override block rules" (authenticated bypass) are hard permits.
  - MpsSvc adds its filters as dynamic ones: with the service stopped its
    policy is gone. At boot, until it has loaded, Windows Firewall's
    boot-time filters block unsolicited inbound traffic only. (Both as
    issue 11 read them in "Windows Firewall boot-time filtering"; the model
    takes that worst case: nothing of Windows Firewall holds then.)
  - The weight of Windows Firewall's sublayer (FWPM_SUBLAYER_MPSSVC_WF) is
    not documented; the model puts it below ours. Were it equal, its hard
    permits would be what win_wfp.foreign_overrides reports: another
    provider's hard permit at weight 0xFFFF, read back by the module.
  - When nothing at a layer decides, WFP permits.

Keys the model does not know make it raise: an unknown condition is never
silently treated as "matches".
"""

import fnmatch
import ipaddress
from collections import namedtuple

OUT, IN, FORWARD, VM = 'out', 'in', 'forward', 'vm'
PROTOCOL_NUMBERS = {'TCP': 6, 'UDP': 17, 'ICMPv4': 1, 'ICMPv6': 58}
LAYER_OF = {(OUT, 4): 'ALE_AUTH_CONNECT_V4', (OUT, 6): 'ALE_AUTH_CONNECT_V6',
            (IN, 4): 'ALE_AUTH_RECV_ACCEPT_V4', (IN, 6): 'ALE_AUTH_RECV_ACCEPT_V6',
            (FORWARD, 4): 'IPFORWARD_V4', (FORWARD, 6): 'IPFORWARD_V6'}
MAX_SUBLAYER_WEIGHT = 0xFFFF

Packet = namedtuple('Packet', 'direction iface proto remote local_port remote_port icmp program loopback')


def packet(direction=OUT, iface='Ethernet', proto='TCP', remote='198.51.100.7', local_port=40000, remote_port=443,
           icmp=None, program='C:\\Windows\\System32\\svchost.exe', loopback=False):
    if proto.startswith('ICMP'):
        # [CND]: an ICMP packet's type and code are its local and remote "ports".
        local_port, remote_port = (icmp, 0) if icmp is not None else (None, None)
    return Packet(direction, iface, proto, ipaddress.ip_address(remote), local_port, remote_port, icmp, program,
                  loopback)


def layer_of(p):
    return LAYER_OF[(p.direction, p.remote.version)]


# WFP filters -----------------------------------------------------------------

class Sublayer(namedtuple('Sublayer', 'key weight provider')):
    pass


def _condition_matches(c, p, bindings):
    field, value = c['field'], c['value']
    if field in ('IP_LOCAL_INTERFACE', 'IP_FORWARD_INTERFACE'):
        return p.iface in bindings.get(value, ())
    if field == 'IP_REMOTE_ADDRESS':
        network = ipaddress.ip_network(value)
        return network.version == p.remote.version and p.remote in network
    if field == 'IP_REMOTE_PORT':
        return p.remote_port == value
    if field in ('IP_LOCAL_PORT', 'ICMP_TYPE'):
        return p.local_port == value
    if field == 'IP_PROTOCOL':
        return PROTOCOL_NUMBERS[p.proto] == value
    if field == 'ALE_APP_ID':
        return p.program is not None and p.program.lower() == value.lower()
    if field == 'FLAGS':
        if (c['match'], value) != ('FLAGS_ALL_SET', 'IS_LOOPBACK'):
            raise ValueError('the model does not know the flags condition %r' % (c,))
        return p.loopback
    raise ValueError('the model does not know the condition field %s' % field)


def filter_matches(f, p, bindings):
    """[CND]: OR inside a field, AND across fields."""
    if f['layer'] != layer_of(p):
        return False
    by_field = {}
    for c in f['conditions']:
        if c['match'] not in ('EQUAL', 'FLAGS_ALL_SET'):
            raise ValueError('the model does not know the match type %s' % c['match'])
        by_field.setdefault(c['field'], []).append(c)
    return all(any(_condition_matches(c, p, bindings) for c in cs) for cs in by_field.values())


Decision = namedtuple('Decision', 'action hard veto')


def sublayer_decision(filters, p, bindings):
    """[ARB]: the highest-weight matching filter decides for its sublayer; None when nothing matches."""
    for f in sorted(filters, key=lambda f: -f['weight']):
        if filter_matches(f, p, bindings):
            return Decision(f['action'], 'CLEAR_ACTION_RIGHT' in f['flags'], f.get('veto', False))
    return None


def arbitrate(decisions, soft_block_overridable=False):
    """[ARB]: decisions of the sublayers, highest weight first, to one action; nothing decided permits."""
    action, overridable = None, True
    for d in decisions:
        if d is None:
            continue
        if action is None:
            action, overridable = d.action, not d.hard
        elif d.veto and d.action == 'BLOCK':
            action, overridable = 'BLOCK', False
        elif not overridable:
            continue
        elif d.action == 'BLOCK':
            action, overridable = 'BLOCK', not d.hard
        elif action == 'BLOCK' and soft_block_overridable:
            action, overridable = 'PERMIT', not d.hard
    return action or 'PERMIT'


# Windows Firewall (MpsSvc) -----------------------------------------------------

WF_RULE_KEYS = {'Name', 'DisplayName', 'Group', 'Direction', 'Action', 'Profile', 'Enabled', 'Protocol',
                'RemoteAddress', 'RemotePort', 'LocalPort', 'InterfaceAlias', 'IcmpType', 'Program',
                'OverrideBlockRules'}


def _wf_address_matches(values, address):
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


def _wf_port_matches(values, port):
    for value in values:
        start, end = (value.split('-') + [value])[:2]
        if port is not None and int(start) <= port <= int(end or start):
            return True
    return False


def wf_rule_matches(rule, p, adapters):
    unknown = set(rule) - WF_RULE_KEYS
    if unknown:
        raise ValueError('the model does not know %s' % ', '.join(sorted(unknown)))
    direction = {'Outbound': OUT, 'Inbound': IN}[rule['Direction']]
    if rule.get('Enabled', 'True') != 'True' or direction != p.direction:
        return False
    if 'InterfaceAlias' in rule:
        resolved = [i for i in adapters if any(fnmatch.fnmatchcase(i, x) for x in rule['InterfaceAlias'])]
        if p.iface not in resolved:
            return False
    protocol = rule.get('Protocol', 'Any')
    if protocol != 'Any' and protocol != p.proto:
        return False
    if 'RemoteAddress' in rule and not _wf_address_matches(rule['RemoteAddress'], p.remote):
        return False
    ports = p.proto in ('TCP', 'UDP')
    if 'RemotePort' in rule and not (ports and _wf_port_matches(rule['RemotePort'], p.remote_port)):
        return False
    if 'LocalPort' in rule and not (ports and _wf_port_matches(rule['LocalPort'], p.local_port)):
        return False
    icmp = p.proto.startswith('ICMP') and p.icmp is not None
    if 'IcmpType' in rule and not (icmp and any(t.split(':')[0] == str(p.icmp) for t in rule['IcmpType'])):
        return False
    if 'Program' in rule and (p.program or '').lower() != rule['Program'].lower():
        return False
    return True


class WindowsFirewall(namedtuple('WindowsFirewall', 'rules default_outbound default_inbound sublayer_weight')):
    """The effective Windows Firewall policy (whatever store it came from: local, GPO, Intune) as one sublayer."""

    def decision(self, p, adapters):
        """[WF]: block rule > allow rule > default action; an override-block-rules allow is a hard permit."""
        if p.direction == FORWARD:
            return None
        hits = [r for r in self.rules if wf_rule_matches(r, p, adapters)]
        if any(r['Action'] == 'Allow' and r.get('OverrideBlockRules') == 'True' for r in hits):
            return Decision('PERMIT', True, False)
        if any(r['Action'] == 'Block' for r in hits):
            return Decision('BLOCK', False, False)
        if hits:
            return Decision('PERMIT', False, False)
        default = self.default_outbound if p.direction == OUT else self.default_inbound
        return Decision('PERMIT' if default == 'Allow' else 'BLOCK', False, False)


# The admin's Windows Firewall policies the tests put beside the kill switch.
WINDOWS_DEFAULT_RULES = [
    dict(Name='CoreNet-DNS-Out-UDP', Direction='Outbound', Action='Allow', Protocol='UDP', RemotePort=['53'],
         Program='C:\\Windows\\System32\\svchost.exe'),
    dict(Name='CoreNet-DHCP-Out', Direction='Outbound', Action='Allow', Protocol='UDP', LocalPort=['68'],
         RemotePort=['67']),
    dict(Name='RemoteDesktop-In-TCP', Direction='Inbound', Action='Allow', Protocol='TCP', LocalPort=['3389']),
    dict(Name='WINRM-HTTP-In-TCP', Direction='Inbound', Action='Allow', Protocol='TCP', LocalPort=['5985']),
]
WINDOWS_DEFAULTS = WindowsFirewall(WINDOWS_DEFAULT_RULES, 'Allow', 'Block', 0x1000)
ALLOW_EVERYTHING = WindowsFirewall([
    dict(Name='any-out', Direction='Outbound', Action='Allow'),
    dict(Name='any-in', Direction='Inbound', Action='Allow')], 'Allow', 'Allow', 0x1000)
# An admin who blocks SMB out and in: the kill switch must not take that away.
ADMIN_BLOCKS_SMB = WindowsFirewall(WINDOWS_DEFAULT_RULES + [
    dict(Name='no-smb-out', Direction='Outbound', Action='Block', Protocol='TCP', RemotePort=['445']),
    dict(Name='no-smb-in', Direction='Inbound', Action='Block', Protocol='TCP', LocalPort=['445'])],
    'Allow', 'Block', 0x1000)


# The host --------------------------------------------------------------------

BOOT, RUNNING, MPSSVC_STOPPED = 'boot', 'running', 'mpssvc-stopped'


class Host:
    """A Windows host: our rendered WFP objects, the admin's Windows Firewall, foreign filters, one state.

    bindings: tunnel pattern -> adapter aliases the host bound it to (what
    the module's binding resolves to interface LUIDs). foreign: other
    providers' filters, each with 'sublayer_weight' (and 'veto' for a callout).
    """

    def __init__(self, rendered, adapters, bindings=None, firewall=WINDOWS_DEFAULTS, state=RUNNING,
                 foreign=(), soft_block_overridable=False):
        self.rendered = rendered
        self.adapters = list(adapters)
        if bindings is None:
            bindings = dict((pattern, [a for a in adapters if fnmatch.fnmatchcase(a, pattern)])
                            for pattern in rendered.get('tunnel_interfaces', ()))
        self.bindings = bindings
        self.firewall = firewall
        self.state = state
        self.foreign = list(foreign)
        self.soft_block_overridable = soft_block_overridable

    def _sublayers(self):
        """(weight, filters or a callable) per sublayer in force in this state, highest weight first."""
        layers = []
        if self.state == BOOT:
            # [FLT]: only boot-time filters are enforced before the BFE starts; Windows Firewall's block inbound only [WF].
            boot = self.rendered.get('boottime', [])
            layers.append((MAX_SUBLAYER_WEIGHT, boot))
            layers.append((0, lambda p: Decision('BLOCK', False, False) if p.direction == IN else None))
            return layers
        layers.append((self.rendered['sublayer']['weight'], self.rendered['filters']))
        for weight in sorted(set(f['sublayer_weight'] for f in self.foreign), reverse=True):
            layers.append((weight, [f for f in self.foreign if f['sublayer_weight'] == weight]))
        if self.state == RUNNING and self.firewall is not None:
            layers.append((self.firewall.sublayer_weight, lambda p: self.firewall.decision(p, self.adapters)))
        # Equal weights have no documented order: ours goes last among equals, the worst case.
        return sorted(layers, key=lambda item: -item[0] + (0.5 if item[1] is self.rendered.get('filters') else 0))

    def allows(self, p):
        if p.direction == VM:
            # [VM]: no WFP filter sees it; only the Hyper-V firewall rule of ours, when there is one.
            return not self.rendered.get('vm', {}).get('block')
        decisions = []
        for _weight, content in self._sublayers():
            if callable(content):
                decisions.append(content(p))
            else:
                decisions.append(sublayer_decision(content, p, self.bindings))
        return arbitrate(decisions, self.soft_block_overridable) == 'PERMIT'


def legacy_windows_firewall(rendered, admin=WINDOWS_DEFAULTS):
    """The design before issue 11 (rules and profiles in Windows Firewall's local GPO store), as a WindowsFirewall.

    A control: the properties must catch what this design lets through.
    """
    rules = list(rendered['rules'])
    if rendered['profiles']['AllowLocalFirewallRules'] != 'False':
        rules += admin.rules
    return WindowsFirewall(rules, rendered['profiles']['DefaultOutboundAction'], 'Block', admin.sublayer_weight)
