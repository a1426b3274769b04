#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vpnguard maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

# The module is win_wfp_killswitch.ps1; this file documents it, as Windows modules do.

DOCUMENTATION = r'''
---
module: win_wfp_killswitch
short_description: Enforce a VPN kill switch on Windows in the Windows Filtering Platform, beside the firewall policy
version_added: "0.1.0"
description:
  - Puts a strict VPN kill switch in the Windows Filtering Platform (WFP) itself, in a provider and a sublayer of the
    collection's own (C(vpnguard-killswitch)), with persistent filters that the Base Filtering Engine (BFE) enforces
    from the moment it starts, whether or not the Windows Firewall service (MpsSvc) runs, and boot-time filters that
    block everything but loopback from the start of the TCP/IP stack until the BFE has loaded them.
  - Windows Firewall's policy (profiles, default actions and rules, from whichever store, local, domain group
    policy or Intune) is not touched and keeps deciding as before; the one exception is the first run after an
    upgrade from 0.x, which takes the rules, profile settings and DNS servers 0.x put in the local policy store
    back out (reported as drift until then). The kill switch only adds blocks; its permits keep the
    action right (soft permits), so they never override a block of the admin's policy and open no port.
  - "Outbound, at the ALE connect layers (IPv4 and IPv6), the first matching filter of the sublayer decides, in this
    order: loopback; DNS (TCP and UDP 53 and 853) only to O(dns_servers) and only through the tunnel, every other DNS
    blocked, before the tunnel permit; the tunnel interfaces; DNS-over-HTTPS resolvers (O(doh_servers)) blocked; the
    endpoints (address, port and protocol, only for O(endpoint_programs) when given); DHCP to 255.255.255.255,
    DHCPv6 to ff02::1:2 and ff05::1:3, neighbour discovery to ff02::2, solicited-node multicast and fe80::/10, MLDv2
    reports to ff02::16; with O(allow_lan), LLMNR, mDNS and NetBIOS blocked, then the LAN; the O(exceptions)
    programs; everything else blocked."
  - Inbound, at the ALE receive/accept layers, everything outside the tunnel is blocked but loopback, DHCP and
    neighbour discovery replies, O(management) and, with O(allow_lan), the LAN; inbound through the tunnel and from
    the LAN stays what the admin's firewall policy says (a soft permit opens nothing).
  - Traffic the host routes for others (Internet Connection Sharing, forwarding) may only leave through the tunnel
    (IP forward layers). VM traffic (WSL2, Hyper-V, Windows Sandbox) passes none of the host's WFP filters; with
    O(block_vm_traffic) a Hyper-V firewall rule of the module's own blocks everything VMs send (Windows 11 22H2 and
    later). VMs the host has without it, VMs on an external Hyper-V switch and Windows Sandbox (which even the
    Hyper-V firewall does not filter) are reported in RV(drift).
  - The sublayer has the highest weight (0xFFFF) and every block clears the action right (hard block), so no lower
    sublayer, Windows Firewall's included, can override it. Only a hard permit of another provider in a sublayer of
    the same or higher weight could; the module reads every filter of the layers back and reports such a filter in
    RV(drift), as it does our provider or sublayer missing and any filter of ours missing, added or changed in any
    condition.
  - The tunnel interfaces are bound to interface LUIDs on the host. A tunnel that is down when the module runs keeps
    the LUIDs it was bound to (WireGuard and Wintun re-create an adapter with the same GUID, hence the same LUID); a
    scheduled task (C(vpnguard-killswitch-rebind)) binds new adapters matching a pattern at boot and whenever a
    network connects. An alias that never matched binds to nothing, so its traffic is blocked.
  - The policy is validated and rendered on the controller by the action plugin of the same name, which reads the
    host back first and applies only on drift. The apply replaces our WFP objects in one BFE transaction, so the host
    has the old filter set until the commit and the new one after it.
  - With O(confirm_timeout), a scheduled task (C(vpnguard-killswitch-rollback)) puts the previous filter set back (or
    removes ours if there was none) unless a later run with O(confirm=true), over a fresh connection, removes it.
  - With O(configure_resolver=true) and O(dns_servers), names resolve through the tunnel's resolvers, by an NRPT
    rule for the namespace C(.) with the comment C(vpnguard-killswitch), and the servers on the tunnel adapters. The
    servers set by hand before the first change are saved by adapter GUID; O(state=absent) sets them back, resets
    adapters whose servers came from DHCP to automatic, and skips adapters that are gone.
  - O(state=absent) removes the provider, the sublayer, their filters, the boot-time filters, the tasks and the NRPT
    rule, restores DNS, the browser policies, and the net event and audit settings the module changed for its
    counters and O(log); run twice, it changes nothing the second time.
  - The counters (RV(counters)) are always kept. For them the module has the BFE collect net events (the default)
    and, while the policy has O(exceptions), log allow events as well (the C(CLASSIFY_ALLOW) keyword); a host
    where either was off reports it as drift until the module puts it right.
  - Proven on the controller only (no Windows host in CI) by the exact filter set per policy, a model of WFP
    arbitration the filters are run against (tests/unit/win_model.py), the C# compiled with mono and its host-side
    decisions run under mono, and the PowerShell parsed. The C(windows) Molecule scenario covers boot, the firewall
    service stopped, the tunnel re-created and the rollback on a real host.
author:
  - vpnguard maintainers (@vpnguard)
options:
  state:
    description: V(present) enforces the kill switch; V(absent) removes everything the module put on the host.
    type: str
    choices: [present, absent]
    default: present
  tunnel_interfaces:
    description:
      - Adapter aliases traffic may leave through (as C(Get-NetAdapter) names them), for example V(wg0) or
        V(OpenVPN TAP-Windows6). A trailing C(*) is a prefix wildcard. Each is bound to the LUIDs of the matching
        adapters when the module runs, when a network connects and at boot; LUIDs bound before are kept, so a
        tunnel that is down during a run works again when it comes back.
      - Required when O(state=present).
    type: list
    elements: str
    default: []
  endpoints:
    description: The VPN servers, reachable outside the tunnel so that it can be established.
    type: list
    elements: dict
    default: []
    suboptions:
      address:
        description: IPv4 or IPv6 address of the server.
        type: str
        required: true
      port:
        description: Server port.
        type: int
        required: true
      protocol:
        description: Transport protocol.
        type: str
        choices: [udp, tcp]
        default: udp
  endpoint_programs:
    description:
      - Programs that may reach the endpoints, for example V(C:\\Program Files\\WireGuard\\wireguard.exe), so that
        no other process can use the endpoint to send data around the tunnel. Empty allows any process.
    type: list
    elements: str
    default: []
  dns_servers:
    description:
      - Resolvers that DNS may reach, only through the tunnel. When empty, DNS may go to any resolver, but still
        only through the tunnel, and the resolver configuration is left alone.
    type: list
    elements: str
    default: []
  doh_servers:
    description: Addresses of known DNS-over-HTTPS resolvers, never reachable outside the tunnel.
    type: list
    elements: str
    default: []
  allow_lan:
    description:
      - Allow RFC 1918, 169.254.0.0/16, fc00::/7, fe80::/10 and multicast outside the tunnel, but not DNS, LLMNR
        (5355), mDNS (5353) or NetBIOS (137-139), which would carry names to the LAN. Inbound from the LAN is then
        left to the admin's firewall policy; the kill switch opens no port.
    type: bool
    default: false
  management:
    description:
      - Management plane (WinRM, SSH...) kept reachable from outside the tunnel, that is connections from
        O(management[].cidr) to the local O(management[].port), whose replies pass with the connection. The host
        cannot open connections to them. The admin's firewall policy must allow them too.
    type: list
    elements: dict
    default: []
    suboptions:
      cidr:
        description: Network the management connections come from.
        type: str
        required: true
      port:
        description: Local port they connect to.
        type: int
        required: true
      protocol:
        description: Transport protocol.
        type: str
        choices: [udp, tcp]
        default: tcp
  exceptions:
    description: Programs allowed out whatever the tunnel does, but never DNS nor a DoH resolver (nor LLMNR, mDNS and NetBIOS with O(allow_lan)).
    type: list
    elements: dict
    default: []
    suboptions:
      program:
        description:
          - Absolute path of the program, for example V(C:\\Program Files\\Backup\\backup.exe) or
            V(%ProgramFiles%\\Backup\\backup.exe).
        type: str
        required: true
  configure_resolver:
    description: Set the NRPT rule and the tunnel adapters' DNS servers to O(dns_servers).
    type: bool
    default: true
  block_browser_doh:
    description:
      - Turn DNS over HTTPS off in Chrome, Edge and Firefox by their enterprise policies (HKLM), so that browsers
        resolve through the system resolver. The values from before are put back on O(state=absent).
    type: bool
    default: false
  block_vm_traffic:
    description:
      - Block everything VMs send (WSL2, Hyper-V) with one outbound Block rule of the Hyper-V firewall, named
        C(vpnguard-killswitch-vm-block), since WFP does not filter VM traffic. Their network then stops, tunnel or
        not. Needs Windows 11 22H2 or later.
    type: bool
    default: false
  confirm_timeout:
    description:
      - Seconds the host waits for O(confirm=true) after a change before its scheduled task puts the previous filter
        set back by itself. V(0) turns commit-confirmed off.
    type: int
    default: 0
  confirm:
    description: Confirm the last change (remove the rollback task); every other option is ignored.
    type: bool
    default: false
  state_dir:
    description: Where the bindings, the DNS servers from before, and the scheduled tasks' script are kept.
    type: path
    default: '%ProgramData%\vpnguard-killswitch'
  log:
    description:
      - What the kill switch has the Security log record, through the Windows Filtering Platform audit events
        (opt-in; the counters in RV(counters) are kept whatever this says). V(refused) turns on failure auditing
        of the C(Filtering Platform Packet Drop) and C(Filtering Platform Connection) subcategories (events 5152
        and 5157, each with the process, the addresses and the C(Filter Run-Time ID) of the filter that refused;
        RV(counters) and C(netsh wfp show filters) map that id to the filter's name, C(vpnguard-killswitch-<reason>)).
        V(exceptions) turns on success auditing of C(Filtering Platform Connection) (event 5156, permitted
        connections, the exceptions' among all others). V(all) both; V(none) neither.
      - The module only adds to the audit policy the host had. What it had before the first change is recorded in
        O(state_dir) and put back by V(none) and by O(state=absent).
      - The policy is read and set through the audit API (C(AuditQuerySystemPolicy), C(AuditSetSystemPolicy)), in
        whatever display language the host has. A setting recorded by an earlier release in a language other than
        English cannot be read back; it is left as it is, with a warning, rather than put back as no auditing.
      - The Security log has no per-rule rate limit; it is bounded by its own size and retention, which the
        module leaves to the admin.
    type: str
    choices: [none, exceptions, refused, all]
    default: none
  probe:
    description:
      - Probe the host live, as the audit does (after enforcing, or in check mode after comparing). For every
        interface that is up and not a tunnel nor loopback, sockets bound to its first global IPv4 and IPv6
        address try a UDP send and a TCP connect to port 9 of the canary and a DNS query to port 53 of it; a DNS
        query also goes to the canary as a resolver that is not the tunnel's when O(dns_servers) is set.
      - A check is C(refused) when a filter refused the call (WSAEACCES, from the ALE connect layer, which decides
        before the first packet is built), when routing had no way out (WSAENETUNREACH), or when a drop net event
        of the BFE names the filter that dropped it; C(LEAKED) when the call went through, or the canary or the
        link answered (WSAECONNREFUSED, WSAETIMEDOUT, WSAEHOSTUNREACH), and no filter dropped it; C(not run) with
        the reason otherwise (interface down, no global address, address not bindable, another error).
      - The probe sends only to the canaries. It changes nothing on the host.
    type: bool
    default: false
  _rendered:
    description:
      - Private, set by the action plugin of the same name, never by a task - the filter set rendered and checked
        on the controller.
    type: dict
  _phase:
    description:
      - Private, set by the action plugin - V(read) binds the tunnels and reads our objects back (with the counters
        and, with O(probe), the probe); V(apply) replaces them; V(evidence) counts and probes again after an apply.
    type: str
    choices: [read, apply, evidence]
    default: read
  _task_script:
    description: Private, set by the action plugin - the script the rebind and rollback scheduled tasks run.
    type: str
  _csharp_source:
    description: Private, set by the action plugin - the C# module_util the scheduled tasks load.
    type: str
  _boottime_keys:
    description: Private, set by the action plugin - the fixed keys of the boot-time filters, so that removal needs no saved state.
    type: list
    elements: str
    default: []
extends_documentation_fragment:
  - vpnguard.killswitch.evidence
attributes:
  check_mode:
    support: full
    description:
      - Reads the host back and reports what would change, changing nothing of the kill switch. It does update the
        counters' ledger (C(counters.json) in O(state_dir)), so that the next audit counts from this one.
  diff_mode:
    support: partial
    description: The diff lists the drift found, not the filter set.
  platform:
    support: full
    platforms: windows
    description: 64-bit Windows 10, Windows Server 2016 and later.
notes:
  - Needs 64-bit Windows 10, Windows Server 2016 or later with the Base Filtering Engine running, and the PowerShell
    modules NetAdapter, DnsClient and ScheduledTasks.
  - Runs through its action plugin; calling the PowerShell module without it fails.
  - Programs in O(exceptions) and O(endpoint_programs) must exist on the host (WFP matches the file's app id).
  - Reading and setting the Security audit policy needs C(SeSecurityPrivilege), which an administrator's token holds;
    the module enables it for the run and, without it, fails before it changes anything.
  - The admin's firewall policy still applies on top, so a block rule of theirs blocks tunnel traffic too, and inbound
    management connections need an allow of theirs as well as O(management).
seealso:
  - module: vpnguard.killswitch.nft_killswitch
  - module: vpnguard.killswitch.pf_killswitch
  - name: WFP filter arbitration
    description: Sublayer and filter weights, soft and hard permits and blocks.
    link: https://learn.microsoft.com/windows/win32/fwp/filter-arbitration
'''

EXAMPLES = r'''
- name: Only the WireGuard tunnel may carry traffic; WinRM stays reachable from the admin network
  vpnguard.killswitch.win_wfp_killswitch:
    tunnel_interfaces: [wg0]
    endpoints:
      - {address: 203.0.113.1, port: 51820, protocol: udp}
    endpoint_programs: ['C:\Program Files\WireGuard\wireguard.exe']
    dns_servers: [192.0.2.1]
    management:
      - {cidr: 198.18.0.0/24, port: 5986, protocol: tcp}

- name: Remove the kill switch
  vpnguard.killswitch.win_wfp_killswitch:
    state: absent
'''

RETURN = r'''
drift:
  description:
    - What differed from the policy before this run (empty when compliant), and what the module cannot put right
      but a compliant host must not have (another provider's hard permit above our sublayer, VMs on an external
      switch).
  returned: when O(state=present)
  type: list
  elements: str
  sample: [vpnguard-killswitch-dns-block-v4 was changed on the host]
environment:
  description: What runs beside the kill switch, for audits.
  returned: when O(state=present)
  type: dict
  sample: {bfe: Running, mpssvc: Stopped, vm_switches: [vEthernet (WSL)], nat: [], external_switch_adapters: []}
bindings:
  description: Interface LUIDs each tunnel pattern is bound to (0 is no adapter).
  returned: when O(state=present)
  type: dict
  sample: {wg0: [1689399632855040]}
confirm_pending:
  description: A rollback task waits for O(confirm=true).
  returned: when a change was applied
  type: bool
rendered:
  description:
    - The provider, sublayer, filters and boot-time filters rendered from the policy on the controller, and
      C(counters) - which counter each of our filters' net events count in.
  returned: when O(state=present)
  type: dict
counters:
  description:
    - The kill switch's counters, one per verdict class and one per bypass exception, with the names the Linux
      module uses, each with what it counts. WFP filters keep no hit counts - each counter counts the net events the
      BFE logged for the filters mapped to it (C(CLASSIFY_DROP) for the blocks, C(CLASSIFY_ALLOW) for the
      exceptions), read at every run into a ledger on the host and added up there since the kill switch was first
      loaded; C(packets) is that number of events (a connection attempt is one event) and C(bytes) is null.
    - The BFE keeps net events in a bounded buffer, so events overwritten between two runs are not counted - every
      count is a lower bound.
  returned: when O(state=present) and the kill switch was in place when the module read the host
  type: dict
  sample:
    refused_out_v4: {packets: 12, bytes: null, counts: outbound IPv4 refused outside the tunnel}
    exception_program_0cd9c065f6d4: {packets: 3, bytes: null, counts: "exception program: C:\\Tools\\backup.exe used"}
probe:
  description:
    - With O(probe=true), each check of the live probe (C(check), C(interface), C(family), C(protocol), C(source),
      C(verdict) - C(refused), C(LEAKED) or C(not run) - and C(detail), which names the filter that refused where
      a drop event names it), whether any leaked, and C(counters_after), the counters after the probe (its own
      refusals counted too; RV(counters) are from before it).
  returned: when O(probe=true), O(state=present) and the kill switch was in place
  type: dict
  sample:
    leaked: false
    checks:
      - {check: udp ipv4 bound to Ethernet, interface: Ethernet, family: ipv4, protocol: udp, source: 198.18.1.10,
         verdict: refused, detail: refused by the firewall (WSAEACCES) at vpnguard-killswitch-block-all-out-v4}
    counters_after: {refused_out_v4: 14}
tunnel:
  description: With O(probe=true), the adapters matching O(tunnel_interfaces), their state and addresses.
  returned: when O(probe=true), O(state=present) and the kill switch was in place
  type: dict
  sample: {up: true, interfaces: [{interface: wg0, state: Up, addresses: [192.0.2.11]}]}
routes_outside_tunnel:
  description:
    - With O(probe=true), the default routes (and C(0.0.0.0/1)-style halves) of the active store that leave through
      an adapter that is not a tunnel.
  returned: when O(probe=true), O(state=present) and the kill switch was in place
  type: list
  elements: str
  sample: [0.0.0.0/0 via 198.18.1.1 dev Ethernet metric 0]
'''
