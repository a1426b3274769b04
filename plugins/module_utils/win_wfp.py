# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vpnguard maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Windows backend: render a Policy as Windows Filtering Platform objects of the collection's own.

Runs on the controller (action plugin win_wfp_killswitch). The host's
module (win_wfp_killswitch.ps1 with the C# module_util Vpnguard.Wfp.cs)
only turns these dicts into FWPM_* structures, adds them in one BFE
transaction and reads them back. Windows Firewall's own policy (MpsSvc,
the local store, a domain GPO, Intune) is not touched.

Why the filters look the way they do (sources in tests/unit/win_model.py):

- One provider and one sublayer of ours, both persistent, so that the BFE
  enforces the filters from the moment it starts, whether or not the
  firewall service (MpsSvc, whose own filters are dynamic) runs.
- The sublayer has the highest weight (0xFFFF): sublayers are evaluated
  from the highest weight down and a block decision overrides a permit
  unless a higher sublayer cleared the action right (a hard permit). With
  ours first, nothing a lower sublayer (Windows Firewall's included) says
  can undo our blocks, which also clear the action right (hard blocks).
- Our permits keep the action right (soft permits): they only mean "the
  kill switch does not object"; Windows Firewall's blocks, and its
  default inbound Block, still apply. So the kill switch takes nothing
  away from the admin's policy and opens no port of its own.
- Inside the sublayer the first matching filter by weight decides, so the
  order below is the policy: loopback, then DNS (to the tunnel's resolvers
  through the tunnel only, every other DNS blocked), then the tunnel, then
  what may go outside it, then block everything.
- Boot-time filters (FWPM_FILTER_FLAG_BOOTTIME) block everything but
  loopback from the start of the TCP/IP stack until the BFE starts and the
  persistent filters take over. They cannot reference persistent objects,
  so they live in the built-in universal sublayer without a provider and
  are found by their keys.
- Traffic the host routes for others (Internet Connection Sharing, a host
  with forwarding on) is not the host's own and never reaches the ALE
  layers; at the IP forward layers it may only leave through the tunnel.
- VM traffic (WSL2, Hyper-V, Windows Sandbox) passes none of the host's
  WFP filters (Mullvad issue 6997 and PR 7120: "the normal firewall (WFP)
  filters normally do not apply for VMs"). The Hyper-V firewall (Windows 11
  22H2 and later) can block it: with block_vm_traffic, one outbound Block
  rule of ours for every VM creator. Windows Sandbox is not covered even
  then (Mullvad's known issues); the module reports what VMs the host has.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import json
import uuid

from ansible_collections.vpnguard.killswitch.plugins.module_utils.nft import REFUSED_COUNTERS, exception_counter
from ansible_collections.vpnguard.killswitch.plugins.module_utils.policy import DNS_PORTS, LAN_NETWORKS, PolicyError

NAME = 'vpnguard-killswitch'
# Fixed identities: the host finds everything of ours by these keys.
PROVIDER_KEY = '5b0c7a2e-8f3d-4c61-9a47-2d1e6f0b9c31'
SUBLAYER_KEY = '9e4a6d10-3b7c-4f25-8e19-c6a2b5d7f048'
_KEY_NAMESPACE = uuid.UUID('c1f3e2d4-7a86-4b59-9d0e-1f2a3b4c5d6e')
SUBLAYER_WEIGHT = 0xFFFF

# Layers (FWPM_LAYER_*): outbound connections and the first datagram to a
# remote are authorized at ALE_AUTH_CONNECT, inbound ones at
# ALE_AUTH_RECV_ACCEPT; the replies of an authorized flow pass by themselves.
CONNECT = {4: 'ALE_AUTH_CONNECT_V4', 6: 'ALE_AUTH_CONNECT_V6'}
RECV_ACCEPT = {4: 'ALE_AUTH_RECV_ACCEPT_V4', 6: 'ALE_AUTH_RECV_ACCEPT_V6'}
FORWARD = {4: 'IPFORWARD_V4', 6: 'IPFORWARD_V6'}
LAYERS = tuple(CONNECT.values()) + tuple(RECV_ACCEPT.values()) + tuple(FORWARD.values())

PERSISTENT = 'PERSISTENT'
BOOTTIME = 'BOOTTIME'
CLEAR_ACTION_RIGHT = 'CLEAR_ACTION_RIGHT'

# Filter weights (FWP_UINT8, 0-15) inside our sublayer: the first match decides.
WEIGHTS = dict(loopback=15, dns_tunnel=14, dns_block=13, tunnel=12, doh_block=11, endpoint=10, link=9,
               lan_names_block=8, lan=7, management=6, exception=5, block_all=0)

# The Hyper-V firewall rule (New-NetFirewallHyperVRule) that blocks what VMs send: the only
# object of ours outside WFP, and it only blocks.
VM_BLOCK_RULE = dict(Name=NAME + '-vm-block', DisplayName=NAME + ': VMs send nothing around the kill switch',
                     Direction='Outbound', Action='Block')

IP_PROTOCOLS = {'tcp': 6, 'udp': 17, 'icmp': 1, 'icmpv6': 58}
# Names a LAN must not carry: LLMNR, mDNS and NetBIOS name, datagram and session services.
LAN_NAME_PORTS = (5355, 5353, 137, 138, 139)
DHCP4 = dict(local=68, remote=67, servers=('255.255.255.255/32',))
DHCP6 = dict(local=546, remote=547, servers=('ff02::1:2/128', 'ff05::1:3/128'))
# ICMPv6 types the host must send and accept to keep IPv6 on the link alive
# (RFC 4861 neighbour discovery, RFC 3810 MLDv2), each to its scope only.
NDP_OUT = ((133, ('ff02::2/128',)),                                    # router solicitation
           (135, ('ff02::1:ff00:0/104', 'fe80::/10')),                 # neighbour solicitation
           (136, ('ff02::1/128', 'fe80::/10')),                        # neighbour advertisement
           (143, ('ff02::16/128',)))                                   # MLDv2 report
NDP_IN = ((134, ('fe80::/10',)), (135, ('fe80::/10',)), (136, ('fe80::/10',)), (137, ('fe80::/10',)))


def condition(field, value, match='EQUAL'):
    """One FWPM_FILTER_CONDITION0: conditions on one field are OR'ed, different fields AND'ed."""
    return dict(field=field, match=match, value=value)


def _addresses(field, networks, version):
    return [condition(field, str(n)) for n in (ipaddress.ip_network(x) for x in networks) if n.version == version]


def _ports(field, ports):
    return [condition(field, int(p)) for p in ports]


def _protocols(names):
    return [condition('IP_PROTOCOL', IP_PROTOCOLS[n]) for n in names]


def _tunnel(patterns):
    # Aliases are bound to interface LUIDs on the host (see the module); a
    # pattern no adapter matches binds to nothing, and the permit matches nothing.
    return [condition('IP_LOCAL_INTERFACE', p) for p in patterns]


def _key(slug):
    return str(uuid.uuid5(_KEY_NAMESPACE, slug))


def _filter(slug, reason, layer, action, weight, conditions, flags=(PERSISTENT,)):
    flags = list(flags) + ([CLEAR_ACTION_RIGHT] if action == 'BLOCK' else [])
    return dict(key=_key('%s/%s' % (layer, slug)), name='%s-%s' % (NAME, slug), description=reason,
                layer=layer, action=action, weight=weight, flags=sorted(flags), conditions=conditions)


def _per_family(slug, reason, layers, action, weight, build):
    """One filter per IP version whose conditions build(version) returns, skipping versions with none to match."""
    out = []
    for version in (4, 6):
        conditions = build(version)
        if conditions is None:
            continue
        out.append(_filter('%s-v%d' % (slug, version), reason, layers[version], action, weight, conditions))
    return out


def render(policy, endpoint_programs=(), block_vm_traffic=False):
    """The provider, sublayer, persistent filters and boot-time filters for policy; see the module docstring."""
    for i, exception in enumerate(policy.exceptions):
        if exception.selector != 'program':
            raise PolicyError('exceptions[%d].%s' % (i, exception.selector),
                              '%s exceptions are not available on Windows; WFP selects by program'
                              % exception.selector)
    tunnels = list(policy.tunnel_interfaces)
    doh = [str(a) for a in policy.doh_servers]
    resolvers = [str(a) for a in policy.dns_servers]
    w = WEIGHTS
    loopback = [condition('FLAGS', 'IS_LOOPBACK', 'FLAGS_ALL_SET')]
    dns = _protocols(('tcp', 'udp')) + _ports('IP_REMOTE_PORT', DNS_PORTS)
    f = []
    for layers, way in ((CONNECT, 'out'), (RECV_ACCEPT, 'in')):
        f += _per_family('loopback-' + way, 'loopback never leaves the host', layers, 'PERMIT', w['loopback'],
                         lambda v: loopback)
    # DNS is decided before the tunnel permit, so that the tunnel cannot carry it to another resolver.

    def dns_tunnel(version):
        if not resolvers:
            return _tunnel(tunnels) + dns
        remote = _addresses('IP_REMOTE_ADDRESS', resolvers, version)
        return _tunnel(tunnels) + dns + remote if remote else None

    f += _per_family('dns-tunnel', "DNS only to the tunnel's resolvers, only through the tunnel", CONNECT, 'PERMIT',
                     w['dns_tunnel'], dns_tunnel)
    f += _per_family('dns-block', 'every other DNS, on every interface', CONNECT, 'BLOCK', w['dns_block'],
                     lambda v: list(dns))
    f += _per_family('tunnel-out', 'the tunnel carries everything else', CONNECT, 'PERMIT', w['tunnel'],
                     lambda v: _tunnel(tunnels))
    # Inbound through the tunnel stays the admin's policy to decide: a soft permit opens nothing.
    f += _per_family('tunnel-in', "inbound through the tunnel is left to the admin's firewall policy", RECV_ACCEPT,
                     'PERMIT', w['tunnel'], lambda v: _tunnel(tunnels))
    f += _per_family('doh-block', 'DNS-over-HTTPS resolvers are never reachable outside the tunnel', CONNECT, 'BLOCK',
                     w['doh_block'], lambda v: _addresses('IP_REMOTE_ADDRESS', doh, v) or None)
    apps = [condition('ALE_APP_ID', p) for p in endpoint_programs]
    for n, e in enumerate(policy.endpoints):
        v = e.address.version
        f.append(_filter('endpoint-%d' % n, 'VPN server %s %s/%d%s' % (
            e.address, e.protocol, e.port, ', for the VPN client only' if apps else ''), CONNECT[v], 'PERMIT',
            w['endpoint'], _addresses('IP_REMOTE_ADDRESS', [str(e.address)], v)
            + _ports('IP_REMOTE_PORT', [e.port]) + _protocols([e.protocol]) + apps))
    f += _link(w['link'])
    if policy.allow_lan:
        lan = [str(n) for n in LAN_NETWORKS]
        for layers, way in ((CONNECT, 'out'), (RECV_ACCEPT, 'in')):
            f += _per_family('lan-names-block-' + way, 'LLMNR, mDNS and NetBIOS would carry names to the LAN',
                             layers, 'BLOCK', w['lan_names_block'],
                             lambda v: _protocols(('tcp', 'udp')) + _ports(
                                 'IP_REMOTE_PORT' if way == 'out' else 'IP_LOCAL_PORT', LAN_NAME_PORTS))
        f += _per_family('lan-out', 'the LAN, when allowed', CONNECT, 'PERMIT', w['lan'],
                         lambda v: _addresses('IP_REMOTE_ADDRESS', lan, v))
        f += _per_family('lan-in', "inbound from the LAN is left to the admin's firewall policy", RECV_ACCEPT,
                         'PERMIT', w['lan'], lambda v: _addresses('IP_REMOTE_ADDRESS', lan, v))
    for n, m in enumerate(policy.management):
        v = m.network.version
        f.append(_filter('management-%d' % n, 'management from %s to local %s/%d; its replies pass with the flow'
                         % (m.network, m.protocol, m.port), RECV_ACCEPT[v], 'PERMIT', w['management'],
                         _addresses('IP_REMOTE_ADDRESS', [str(m.network)], v)
                         + _ports('IP_LOCAL_PORT', [m.port]) + _protocols([m.protocol])))
    for n, e in enumerate(policy.exceptions):
        f += _per_family('exception-%d' % n, 'bypass for %s (never DNS, never a DoH resolver)' % e.value, CONNECT,
                         'PERMIT', w['exception'], lambda v: [condition('ALE_APP_ID', e.value)])
    for layers, way in ((CONNECT, 'out'), (RECV_ACCEPT, 'in')):
        f += _per_family('block-all-' + way, 'nothing else leaves or comes in outside the tunnel', layers, 'BLOCK',
                         w['block_all'], lambda v: [])
    f += _per_family('forward-tunnel', 'traffic the host routes for others may leave through the tunnel',
                     FORWARD, 'PERMIT', w['tunnel'], lambda v: [condition('IP_FORWARD_INTERFACE', p) for p in tunnels])
    f += _per_family('forward-block', 'forwarded traffic may leave through nothing else', FORWARD, 'BLOCK',
                     w['block_all'], lambda v: [])
    return dict(
        provider=dict(key=PROVIDER_KEY, name=NAME, flags=[PERSISTENT]),
        sublayer=dict(key=SUBLAYER_KEY, name=NAME, weight=SUBLAYER_WEIGHT, flags=[PERSISTENT]),
        filters=f,
        boottime=boottime_filters(),
        tunnel_interfaces=tunnels,
        dns=dict(servers=resolvers, namespace='.', comment=NAME),
        vm=dict(block=bool(block_vm_traffic), rule=VM_BLOCK_RULE),
        counters=counters(policy, f, bool(apps)),
    )


def counter_names(policy, endpoint_programs=False):
    """The counters the Windows kill switch keeps, with what each counts: Linux's names (module_utils/nft.py).

    refused_other_interface has no Windows filter (the ALE layers see only the host's own addresses), and
    refused_endpoint exists only when endpoint_programs keeps other programs from the endpoints.
    """
    names = dict((k, v) for k, v in REFUSED_COUNTERS.items() if k != 'refused_other_interface')
    if not endpoint_programs or not policy.endpoints:
        del names['refused_endpoint']
    for e in policy.exceptions:
        names[exception_counter(e)] = 'exception %s: %s used' % (e.selector, e.value)
    return names


def counters(policy, filters, endpoint_programs=False):
    """Which counter a WFP net event of each of our filters counts in (WFP keeps no hit counts of its own).

    The host reads the net events of its filters (CLASSIFY_DROP for blocks, CLASSIFY_ALLOW for the
    exceptions' permits) and counts each in the first rule of its filter that the event matches: a rule
    with 'remote' (networks), 'remote_port' or 'protocol' matches only events with those fields; one
    without matches every event. Filters that are not listed (the tunnel's permits, loopback) count nothing.
    """
    names = counter_names(policy, endpoint_programs)
    resolvers = [str(ipaddress.ip_network(a)) for a in policy.dns_servers]
    rules = {}
    for f in filters:
        slug = f['name'][len(NAME) + 1:]
        version = 6 if f['layer'].endswith('V6') else 4
        if slug.startswith('dns-block-'):
            # The tunnel's resolvers are refused only outside the tunnel; any other resolver anywhere.
            rules[f['name']] = ([dict(counter='refused_dns_outside', remote=resolvers),
                                 dict(counter='refused_dns_resolver')] if resolvers
                                else [dict(counter='refused_dns_outside')])
        elif slug.startswith('doh-block-'):
            rules[f['name']] = [dict(counter='refused_doh')]
        elif slug.startswith(('block-all-out-', 'lan-names-block-out-')):
            # With endpoint_programs, another program's packet to an endpoint falls through to block-all.
            rules[f['name']] = [dict(counter='refused_endpoint', remote=[str(ipaddress.ip_network(e.address))],
                                     remote_port=e.port, protocol=IP_PROTOCOLS[e.protocol])
                                for e in policy.endpoints if e.address.version == version
                                and 'refused_endpoint' in names and slug.startswith('block-all-out-')]
            rules[f['name']].append(dict(counter='refused_out_v%d' % version))
        elif slug.startswith(('block-all-in-', 'lan-names-block-in-')):
            rules[f['name']] = [dict(counter='refused_in_v%d' % version)]
        elif slug.startswith('forward-block-'):
            rules[f['name']] = [dict(counter='refused_forward_v%d' % version)]
        elif slug.startswith('exception-'):
            rules[f['name']] = [dict(counter=exception_counter(policy.exceptions[int(slug.split('-')[1])]))]
    return dict(names=names, filters=rules)


def _link(weight):
    """DHCP, DHCPv6 and neighbour discovery, each to the addresses and ports it uses on the link only."""
    out = []
    for layers, way, remote_field in ((CONNECT, 'out', 'IP_REMOTE_ADDRESS'), (RECV_ACCEPT, 'in', None)):
        for v, dhcp, name in ((4, DHCP4, 'dhcp'), (6, DHCP6, 'dhcpv6')):
            conditions = _protocols(['udp']) + _ports('IP_LOCAL_PORT', [dhcp['local']]) + _ports(
                'IP_REMOTE_PORT', [dhcp['remote']])
            if remote_field:
                conditions += _addresses(remote_field, dhcp['servers'], v)
            out.append(_filter('%s-%s' % (name, way), '%s with its servers on the link' % name.upper(),
                               layers[v], 'PERMIT', weight, conditions))
        for icmp_type, scope in (NDP_OUT if way == 'out' else NDP_IN):
            out.append(_filter('ndp-%d-%s' % (icmp_type, way), 'ICMPv6 type %d on the link' % icmp_type,
                               layers[6], 'PERMIT', weight, _protocols(['icmpv6'])
                               + [condition('ICMP_TYPE', icmp_type)] + _addresses('IP_REMOTE_ADDRESS', scope, 6)))
    return out


def boottime_filters():
    """Block everything but loopback until the BFE starts; no provider, the universal sublayer (see above)."""
    out = []
    for layers, way in ((CONNECT, 'out'), (RECV_ACCEPT, 'in')):
        for v in (4, 6):
            out.append(dict(_filter('boot-loopback-%s-v%d' % (way, v), 'loopback at boot', layers[v], 'PERMIT', 15,
                                    [condition('FLAGS', 'IS_LOOPBACK', 'FLAGS_ALL_SET')], flags=(BOOTTIME,)),
                            sublayer='UNIVERSAL'))
            out.append(dict(_filter('boot-block-%s-v%d' % (way, v), 'nothing leaves before the kill switch is loaded',
                                    layers[v], 'BLOCK', 0, [], flags=(BOOTTIME,)), sublayer='UNIVERSAL'))
    for v in (4, 6):
        out.append(dict(_filter('boot-block-forward-v%d' % v, 'nothing is forwarded before the kill switch is loaded',
                                FORWARD[v], 'BLOCK', 0, [], flags=(BOOTTIME,)), sublayer='UNIVERSAL'))
    return out


def canonical(wfp_filter):
    """The comparable form of a filter: what the host reads back must equal this, byte for byte."""
    keep = dict((k, wfp_filter[k]) for k in ('key', 'layer', 'action', 'weight', 'flags'))
    keep['conditions'] = sorted(json.dumps(c, sort_keys=True) for c in wfp_filter['conditions'])
    keep['flags'] = sorted(keep['flags'])
    return json.dumps(keep, sort_keys=True)


def drift(rendered, found):
    """What differs between the rendered filters and those the host read back (after binding aliases).

    found: dict with 'provider' (bool), 'sublayer' (dict or None), 'filters' (list of filter dicts as read
    back, tunnel conditions already rendered as the patterns they were bound from) and 'boottime' (same).
    Only what applying the rendered set puts right; foreign_overrides and environment_drift report the rest.
    """
    problems = []
    if not found.get('provider'):
        problems.append('the provider %s is missing' % PROVIDER_KEY)
    sublayer = found.get('sublayer')
    if not sublayer:
        problems.append('the sublayer %s is missing' % SUBLAYER_KEY)
    elif sublayer.get('weight') != SUBLAYER_WEIGHT:
        problems.append('the sublayer weight is %s, not %d' % (sublayer.get('weight'), SUBLAYER_WEIGHT))
    for kind in ('filters', 'boottime'):
        wanted = dict((f['key'], f) for f in rendered[kind])
        have = dict((f['key'], f) for f in found.get(kind, []))
        for key in sorted(set(wanted) - set(have)):
            problems.append('%s %s is missing' % (kind[:-1] if kind == 'filters' else 'boot-time filter',
                                                  wanted[key]['name']))
        for key in sorted(set(have) - set(wanted)):
            problems.append('%s is ours but not in the policy' % have[key].get('name', key))
        for key in sorted(set(wanted) & set(have)):
            if canonical(wanted[key]) != canonical(have[key]):
                problems.append('%s was changed on the host' % wanted[key]['name'])
    return problems


def environment_drift(environment, vm_blocked=False):
    """What the host runs beside the filters that they cannot hold: VMs, which pass no filter of the host."""
    environment = environment or {}
    problems = ['VMs on the external Hyper-V switch of %s reach the network without passing this host\'s filters' % a
                for a in environment.get('external_switch_adapters') or []]
    creators = environment.get('vm_creators') or []
    if creators and not vm_blocked:
        problems.append('VMs of %s send around the kill switch (WFP does not filter them); set block_vm_traffic'
                        % ', '.join(creators))
    if environment.get('sandbox'):
        problems.append('Windows Sandbox sends around the kill switch; neither WFP nor the Hyper-V firewall filters it')
    return problems


def foreign_overrides(foreign):
    """Other providers' filters that can let through what we block.

    Only a hard permit (action right cleared) from a sublayer evaluated before
    ours can: one of higher weight, or of equal weight, whose order against
    ours is undefined. Every other foreign decision is overridden by our hard
    block or is a block itself.
    """
    return ['%s (provider %s, sublayer weight %d) is a hard permit that can override the kill switch'
            % (f.get('name'), f.get('provider'), f['sublayer_weight'])
            for f in foreign if f['action'] == 'PERMIT' and CLEAR_ACTION_RIGHT in f.get('flags', ())
            and f['sublayer_weight'] >= SUBLAYER_WEIGHT and f.get('layer') in LAYERS]


# The script the host's scheduled tasks run without Ansible (written beside the
# C# it loads by the module): "rebind" at boot and when a network connects binds
# the tunnel patterns to the adapters there now, keeping the LUIDs bound before;
# "rollback" puts back the filter set from before an unconfirmed change (or
# removes ours when there was none). Both leave the filters as they are when
# anything fails, and filters that stay are the kill switch: they fail closed.
TASK_SCRIPT = r'''param([Parameter(Mandatory = $true)][ValidateSet('rebind', 'rollback')][string]$Mode)
$ErrorActionPreference = 'Stop'
$Name = 'vpnguard-killswitch'
$Here = Split-Path -Parent $MyInvocation.MyCommand.Path
$StatePath = Join-Path $Here 'state.json'
$Ns = 'ansible_collections.vpnguard.killswitch.plugins.module_utils.WfpKillSwitch'

# The .NET serializer gives plain dictionaries, arrays and numbers, as the C# takes them
# (ConvertFrom-Json's objects would need converting, and could arrive wrapped).
Add-Type -AssemblyName System.Web.Extensions
$Json = New-Object -TypeName System.Web.Script.Serialization.JavaScriptSerializer
$Json.MaxJsonLength = [int]::MaxValue

Function Read-Json {
    param([string]$Path)
    , $Json.DeserializeObject((Get-Content -LiteralPath $Path -Raw))
}

Add-Type -TypeDefinition (Get-Content -LiteralPath (Join-Path $Here 'WfpKillSwitch.cs') -Raw)
$state = Read-Json $StatePath
if ($Mode -eq 'rebind' -and -not $state['applied']) { exit 0 }  # nothing of ours to bind
$engine = New-Object -TypeName "$Ns.Engine" -ArgumentList '%(provider)s', '%(sublayer)s'
try {
    if ($Mode -eq 'rebind') {
        $engineType = "$Ns.Engine" -as [type]
        $bindingType = "$Ns.TunnelBinding" -as [type]
        $bound = $bindingType::Bind($state['applied']['tunnel_interfaces'], $engineType::AdapterLuids(), $state['bindings'])
        $bindings = $Json.DeserializeObject($Json.Serialize($bound))
        # Compared pattern by pattern, LUIDs sorted by Bind: the order of the keys means nothing.
        $same = $bindings.Count -eq $state['bindings'].Count
        foreach ($pattern in $bindings.Keys) {
            $same = $same -and $state['bindings'].ContainsKey($pattern) -and
            (@($bindings[$pattern]) -join ',') -eq (@($state['bindings'][$pattern]) -join ',')
        }
        if (-not $same) {
            $engine.Apply($state['applied'], $bindings)
            $state['bindings'] = $bindings
        }
    }
    else {
        $previous = Join-Path $Here 'previous.json'
        if (Test-Path -LiteralPath $previous) {
            $before = Read-Json $previous
            $engine.Apply($before['rendered'], $before['bindings'])
            $state['applied'] = $before['rendered']
            $state['bindings'] = $before['bindings']
            Remove-Item -LiteralPath $previous
        }
        else {
            $engine.RemoveAll(@($state['applied']['boottime'] | ForEach-Object { $_['key'] }))
            $state['applied'] = $null
            Unregister-ScheduledTask -TaskName "$Name-rebind" -Confirm:$false -ErrorAction SilentlyContinue
        }
        Unregister-ScheduledTask -TaskName "$Name-rollback" -Confirm:$false
    }
    Set-Content -LiteralPath "$StatePath.tmp" -Value $Json.Serialize($state) -Encoding UTF8
    Move-Item -LiteralPath "$StatePath.tmp" -Destination $StatePath -Force
}
finally {
    $engine.Dispose()
}
''' % dict(provider=PROVIDER_KEY, sublayer=SUBLAYER_KEY)
