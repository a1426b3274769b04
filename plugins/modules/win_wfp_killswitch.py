#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vpnguard maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

# The module is win_wfp_killswitch.ps1; this file documents it, as Windows modules do.

DOCUMENTATION = r'''
---
module: win_wfp_killswitch
short_description: Enforce a VPN kill switch on Windows with Windows Firewall rules of its own
version_added: "0.1.0"
description:
  - Puts a strict VPN kill switch in Windows Defender Firewall (the Windows Filtering Platform
    underneath). Every profile's default outbound action becomes Block, and allow rules in the group
    C(vpnguard-killswitch) let through the tunnel interfaces, the VPN endpoints (exact address, port and
    protocol), DHCPv4, DHCPv6, ICMPv6 neighbour discovery, the LAN when O(allow_lan=true), the management
    plane (inbound; Windows passes the replies) and the bypass exceptions (by program).
  - In Windows Firewall a matching block rule beats every allow rule, so blocking "everything" with a
    rule would also block the tunnel; default Block plus allow rules is the only sound shape. The only
    block rules keep DNS (ports 53 and 853, TCP and UDP) from any resolver but O(dns_servers), on every
    interface, the tunnel included.
  - DNS outside the tunnel is held by the default Block, not by a block rule. Windows Firewall has no
    "every interface but this one" condition and binds an interface condition to the adapters present
    when the rule is made, so a block rule naming the physical adapters would miss one plugged in later.
    None of the module's allow rules that work outside the tunnel (LAN, exceptions) lets ports 53 or 853
    through.
  - Windows and installed applications bring outbound allow rules of their own (Core Networking - DNS lets
    svchost reach port 53 anywhere). The rules and profile settings therefore live in the local group policy
    store (C(-PolicyStore localhost)) with AllowLocalFirewallRules set to False, so that rules of the local
    store, inbound ones included, no longer apply; only this module's and domain group policy's do.
    O(merge_local_rules=true) keeps them, and with them every hole they open.
  - The policy is validated and rendered on the controller by the action plugin of the same name, so that
    bad input fails before the host is touched. The PowerShell module then adds and removes only the
    difference. A rule's name carries a digest of its conditions, new block rules go in first, stale allow
    rules go before new ones come, stale block rules last; at no moment is the host less strict than both
    the old and the new policy.
  - With O(configure_resolver=true) and O(dns_servers), names resolve through the tunnel's resolvers, by an NRPT
    rule for the namespace C(.) (every name) with the comment C(vpnguard-killswitch), and the servers on the
    tunnel adapters. The DNS client cache is cleared after a change.
  - Firewall rules and profile settings are stored in the registry and enforced from boot. Until the firewall
    service (MpsSvc) has loaded them, the Base Filtering Engine applies Windows Firewall's boot-time filters,
    which block traffic that is not needed to start; so there is no window at boot where the kill switch is
    off.
  - The previous profile settings and the tunnel adapters' DNS servers are saved before the first change and
    put back on O(state=absent), which removes the group's rules and the NRPT rule, and nothing else.
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
        V(OpenVPN TAP-Windows6). A trailing C(*) is a wildcard, matched against the adapters present when the
        module runs; an adapter that appears later is blocked until the module runs again.
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
      - Allow RFC 1918, 169.254.0.0/16, fc00::/7, fe80::/10 and multicast outside the tunnel (TCP and UDP on every
        port but DNS's, and ICMP), and inbound from them.
    type: bool
    default: false
  management:
    description:
      - Management plane (WinRM, SSH...) kept reachable from outside the tunnel, that is connections from
        O(management[].cidr) to the local O(management[].port). The host cannot open connections to them.
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
    description: Programs allowed out whatever the tunnel does (TCP and UDP on every port but DNS's, and ICMP).
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
  merge_local_rules:
    description:
      - Keep applying the rules of the local store (Windows' own and those applications add), inbound and
        outbound. Their outbound allow rules then carry traffic around the tunnel.
    type: bool
    default: false
  configure_resolver:
    description: Set the NRPT rule and the tunnel adapters' DNS servers to O(dns_servers).
    type: bool
    default: true
  state_dir:
    description: Where the previous profile settings and DNS servers are saved.
    type: path
    default: '%ProgramData%\vpnguard-killswitch'
notes:
  - Supports C(check_mode) and C(diff); the diff shows the group's rules, the profile settings and the NRPT rule.
  - Runs through its action plugin; calling the PowerShell module without it fails.
  - A rule changed behind the module's back in its name, action or enabled state is drift and is replaced; the
    rule's other conditions are identified by the digest in its name.
seealso:
  - module: vpnguard.killswitch.nft_killswitch
  - module: vpnguard.killswitch.pf_killswitch
  - name: Windows Firewall rule precedence
    description: Block rules beat allow rules; allow rules beat the default action.
    link: https://learn.microsoft.com/windows/security/operating-system-security/network-security/windows-firewall/rules
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
rules:
  description: The names of the group's rules after this run (each ends with a digest of its conditions).
  returned: always
  type: list
  elements: str
  sample: [vpnguard-killswitch-tunnel-out-1f0c9a2b3d4e]
added_rules:
  description: Rules this run added.
  returned: always
  type: list
  elements: str
removed_rules:
  description: Rules this run removed.
  returned: always
  type: list
  elements: str
rendered:
  description: The rule specs, profile settings and resolver rendered from the policy on the controller.
  returned: when O(state=present)
  type: dict
'''
