#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vpnguard maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: nft_killswitch
short_description: Enforce a VPN kill switch with nftables and a policy-routing guard
version_added: "0.1.0"
description:
  - Puts a strict VPN kill switch in the Linux kernel, as one C(inet) nftables table of its own,
    C(vpnguard_killswitch), that drops every outbound and forwarded packet (IPv4 and IPv6) that
    does not leave through a tunnel interface, plus policy-routing rules (the routing guard) that
    stop traffic from falling back to the physical default route when the tunnel's routes vanish.
    The guard lets only the endpoints (their protocol and port) and replies to the management
    networks (from the served port) use that route.
  - The firewall allows loopback, the tunnel interfaces, the VPN endpoints (by default only for
    the tunnel's own packets), DHCPv4, DHCPv6 and ICMPv6 neighbour discovery, the LAN when
    O(allow_lan=true), replies to the management networks, and the bypass exceptions.
    DNS (ports 53 and 853, UDP and TCP) goes only to O(dns_servers) and only through the tunnel.
  - DHCP, neighbour discovery and MLD are held to their protocols' addresses and hop limits, so that
    none can carry data beyond the link. The input chain accepts nothing by connection state but the
    bypass exceptions' own connections; a prerouting chain at C(raw) priority
    drops, before conntrack, a packet for one interface's address that arrives on another, such as
    a packet forged on the LAN for the tunnel's address (CVE-2019-14899). Loopback, the tunnels and
    the management networks are exempt from that check.
  - Connection tracking is left off where no rule needs it, since any rule that asks it makes the
    kernel track every packet of the host, the tunnel's included. The tunnel, the endpoints, TCP to the
    management networks and the ICMP errors about them (path MTU) are matched without it, an ICMP error
    by the packet it quotes. Only replies to forwarded traffic (O(forwarding)), the bypass
    O(exceptions) and UDP replies to O(management) networks use it; C(conntrack) in RV(summary) says whether
    this host's table does.
  - The whole input is validated before anything on the host is touched. The table is replaced in
    one nftables transaction, checked by the kernel first; if anything fails the previous table
    stays in place. Each base chain ends in an explicit C(drop) as well as its drop policy, which
    the kernel sets a moment after the new rules go live during a replace.
  - Routes through tunnel interfaces in the main table are used, default routes included, since the
    module keeps the interfaces matching O(tunnel_interfaces) in interface group 86 (and installs a
    udev rule that does it for those created later); a default route out of any other interface is
    refused by the guard.
  - Route-based kernel IPsec works - its XFRM interface (C(ipsec0)) is a tunnel interface, and an
    endpoint with protocol C(esp) lets the ESP packets that carry the SA's output mark (swanctl
    C(set_mark_out)) reach the server and takes ESP from it. Policy-based kernel IPsec (outbound XFRM
    policies without an interface id) is refused before anything is touched - its packets leave the
    physical interface owned by the sending application and are encrypted only after the firewall -
    with the settings that make it route-based named.
  - Other tables, chains and policy rules are never flushed or edited. The module finds its own
    policy rules by their protocol number (86).
  - Needs the C(nftables) Python binding (Debian and Ubuntu C(python3-nftables), Fedora
    C(python3-nftables)). When the interpreter running the module lacks it, the module re-runs
    itself under the system Python that has it. When no Python has it the module fails before
    changing anything, naming it in RV(missing_requirements). The routing guard speaks rtnetlink
    with the standard library.
author:
  - vpnguard maintainers (@vpnguard)
options:
  state:
    description:
      - V(present) enforces the kill switch; V(absent) removes the table, the routing guard
        and the module's saved state, and nothing else.
    type: str
    choices: [present, absent]
    default: present
  tunnel_interfaces:
    description:
      - Interfaces that traffic may leave through, for example V(wg0). A trailing C(*) matches
        every interface with that prefix (V(tun*)); a bare C(*) is refused.
      - Required when O(state=present).
    type: list
    elements: str
    default: []
  endpoints:
    description:
      - The VPN servers, reachable outside the tunnel so that it can be established.
      - With O(restrict_endpoints_to_tunnel=true) only the tunnel's packets may use them - those
        carrying O(tunnel_fwmark) (or the endpoint's O(endpoints[].mark)), root's sockets, and the
        sockets of the endpoint's O(endpoints[].uid) - so that no other process can send around the
        tunnel through them.
    type: list
    elements: dict
    default: []
    suboptions:
      address:
        description: IPv4 or IPv6 address of the server (no host names, as DNS may be unreachable).
        type: str
        required: true
      port:
        description:
          - Server port. Give O(endpoints[].port) or O(endpoints[].ports), except for V(esp), which has
            no ports.
        type: int
      ports:
        description:
          - Several ports of the server, for example V([500, 4500]) for IKEv2 with NAT traversal
            (udp/4500 alone is refused, since IKE starts on udp/500).
        type: list
        elements: int
      protocol:
        description:
          - Transport protocol; V(udp) unless O(endpoints[].protocols) is given.
          - V(esp) is the ESP of route-based kernel IPsec (IP protocol 50, no port). The kernel sends
            ESP on the socket of the application whose packet it encrypted, so ESP is told by the
            SA's output mark (O(endpoints[].mark), or O(tunnel_fwmark); swanctl C(set_mark_out)), or
            root's sockets; O(endpoints[].uid) applies to the entry's other protocols only.
        type: str
        choices: [udp, tcp, esp]
      protocols:
        description:
          - Several protocols on the same ports, for example V([tcp, udp]) for AnyConnect (443), or
            V([udp, esp]) with V([500, 4500]) for IKE and the ESP of route-based IPsec.
        type: list
        elements: str
        choices: [udp, tcp, esp]
      uid:
        description:
          - Users besides root whose sockets may use the endpoint - the user the VPN client runs as
            once it dropped root (OpenVPN C(user nobody) is 65534; openconnect C(-U)). Only with
            O(restrict_endpoints_to_tunnel=true).
        type: list
        elements: int
      mark:
        description:
          - The firewall mark the VPN client puts on its packets to this server (OpenVPN C(mark),
            WireGuard C(fwmark)); O(tunnel_fwmark) when not given.
        type: int
      unit:
        description:
          - Refused, with the reason - nftables matches a cgroup by the id it has when the rules are
            loaded, and a restarted systemd unit gets a new one, so its client could not reconnect.
            Name the unit's user in O(endpoints[].uid) or its client's mark in O(endpoints[].mark).
        type: str
  dns_servers:
    description:
      - Resolvers that DNS may reach, only through the tunnel. When empty, DNS may go to any
        resolver, but still only through the tunnel.
    type: list
    elements: str
    default: []
  doh_servers:
    description:
      - Addresses of known DNS-over-HTTPS resolvers. Traffic to them is dropped outside the tunnel even
        where the LAN or a bypass exception would allow it, so that no application resolves around the
        tunnel's resolvers. Kept in nftables sets, so the cost per packet does not grow with the list.
    type: list
    elements: str
    default: []
  allow_lan:
    description:
      - Allow traffic to and from RFC 1918 networks, 169.254.0.0/16, fc00::/7, fe80::/10 and
        multicast outside the tunnel. DNS to the LAN stays blocked.
    type: bool
    default: false
  management:
    description:
      - Management plane (SSH, WinRM...) kept reachable from outside the tunnel. Connections from
        O(management[].cidr) to the local O(management[].port) are accepted and only their
        replies go out; the host cannot open connections to those networks.
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
    description:
      - Sockets allowed to bypass the kill switch, each selected by exactly one of O(exceptions[].uid),
        O(exceptions[].gid) or O(exceptions[].cgroup). Their packets are let through the firewall
        and marked with O(tunnel_fwmark), so that the VPN client's own policy rules (wg-quick's
        C(not fwmark 51820)) and the routing guard let them use the physical path; their connections
        carry the mark C(0x564b) (C(ct mark)), which lets their replies in.
    type: list
    elements: dict
    default: []
    suboptions:
      uid:
        description: Owner user ID of the socket.
        type: int
      gid:
        description: Owner group ID of the socket.
        type: int
      cgroup:
        description:
          - cgroup v2 path of the socket's process, relative to the cgroup root, for example
            V(system.slice/backup.service). It must exist when the rules are loaded.
        type: str
  tunnel_fwmark:
    description:
      - Firewall mark the tunnel puts on its own encrypted packets (WireGuard's C(fwmark),
        51820 with wg-quick). Packets of O(exceptions) carry it too, so that the client's rules exempt them.
        It must not be C(0x564b), the mark of the exceptions' connections.
    type: int
    default: 51820
  restrict_endpoints_to_tunnel:
    description:
      - Allow traffic to the endpoints only from root-owned sockets or packets carrying
        O(tunnel_fwmark), so that no other process can use the endpoint exception to send
        data around the tunnel. Turn off only for a VPN client that runs unprivileged.
    type: bool
    default: true
  forwarding:
    description:
      - Whether the host routes packets for others (a router, containers, VMs). Packets it forwards may
        leave only through a tunnel either way; only a forwarding host lets their replies back, by
        connection state, which turns connection tracking on for every packet of the host.
      - V(auto) reads the kernel's forwarding settings (C(net.ipv4.conf.*.forwarding), which
        C(net.ipv4.ip_forward) sets, and C(net.ipv6.conf.*.forwarding)) at each apply (and each
        check-mode audit), so that forwarding turned on later (a container engine
        installed) shows as a change to apply; until then the replies are refused and counted
        (C(refused_forward_v4), C(refused_forward_v6)), and nothing leaks.
      - V(enabled) or V(disabled) sets it whatever the kernel says.
    type: str
    choices: [auto, enabled, disabled]
    default: auto
  routing_guard:
    description: Install the policy-routing guard next to the firewall.
    type: bool
    default: true
  routing_guard_priority:
    description:
      - Priority of the guard's rules. They must come after the VPN client's own rules and before
        the main table's (32766). Rules that the VPN client adds later without a priority are
        placed before existing ones by the kernel, so the default suits wg-quick and most clients.
    type: int
    default: 32765
  state_dir:
    description: Where the module records what it applied, to tell drift from a policy change.
    type: path
    default: /var/lib/vpnguard-killswitch
  persist:
    description:
      - Lay the kill switch at boot, before any network interface comes up. The module writes the
        nft transaction (C(ruleset.nft)) and the routing guard's script (C(routing-guard.sh)) in
        O(persist_dir), the systemd unit C(/etc/systemd/system/vpnguard-killswitch.service) that
        loads them, and its enable link in C(sysinit.target.wants). Where systemd runs, the unit is
        also started, so that a reload of C(nftables.service), which flushes the whole ruleset,
        lays the kill switch again.
      - V(false) removes all of them.
      - Needs systemd (C(systemctl)); without it the module fails before changing anything.
    type: bool
    default: false
  persist_dir:
    description: Where the boot files live.
    type: path
    default: /etc/vpnguard-killswitch
  confirm_timeout:
    description:
      - Commit-confirmed. When the run changes the kill switch, first arm a timer on the host that
        restores the previous kill switch (table, routing guard and boot files) after this many
        seconds, unless a later task confirms with O(confirm=true). A policy that cuts the
        controller off is thereby undone by the host itself. V(0) disables it.
      - While a change is unconfirmed, a further change keeps the rollback to the last confirmed state.
    type: int
    default: 0
  log:
    description:
      - What the kill switch writes to the kernel log (journald reads it), each line prefixed
        C(vpnguard) and the rule's reason (C(refused out-v4), C(refused dns-resolver),
        C(exception uid 998), ...) and carrying the socket's uid where the kernel knows it, at most
        10 lines a second per rule.
      - V(none) logs nothing; V(exceptions) the packets the bypass exceptions let through;
        V(refused) the packets the kill switch refused; V(all) both.
      - The counters in RV(counters) are kept whatever this says.
    type: str
    choices: [none, exceptions, refused, all]
    default: none
  probe:
    description:
      - After enforcing (or, in check mode, comparing), probe the host live, as the audit does - sockets bound
        to every interface that is not a tunnel try UDP, TCP and DNS (IPv4 and IPv6) to the canary
        addresses, and a DNS query goes to the canary as a resolver that is not the tunnel's, while a packet
        socket watches what the host transmits. Results in RV(probe), RV(tunnel) and RV(routes_outside_tunnel).
      - The probe sends only to the canaries and, on a host that holds, nothing leaves it. It changes nothing
        on the host, so it also runs in check mode.
    type: bool
    default: false
  confirm:
    description:
      - Confirm the pending change and stop the rollback timer; run it over a fresh connection
        (after C(meta) C(reset_connection)) so that it proves the controller still reaches the host.
        The policy options are then ignored.
    type: bool
    default: false
extends_documentation_fragment:
  - vpnguard.killswitch.attributes
  - vpnguard.killswitch.evidence
attributes:
  platform:
    support: full
    platforms: linux
    description: Target OS/families that can be operated against.
requirements:
  - nftables (the nft Python binding, python3-nftables)
  - Linux with nf_tables and policy routing
notes:
  - Supports C(check_mode) and C(diff). In check mode the ruleset is still validated by the kernel
    without being applied.
  - The module compares the live table with the one it last applied and with the rendered policy;
    a table edited behind its back is drift and is replaced.
seealso:
  - name: nftables wiki
    description: The nftables documentation.
    link: https://wiki.nftables.org/
'''

EXAMPLES = r'''
- name: Only WireGuard may carry traffic
  vpnguard.killswitch.nft_killswitch:
    tunnel_interfaces: [wg0]
    endpoints:
      - {address: 203.0.113.1, port: 51820, protocol: udp}
    dns_servers: [192.0.2.1]

- name: OpenVPN tunnels, LAN allowed, SSH kept reachable from the admin network
  vpnguard.killswitch.nft_killswitch:
    tunnel_interfaces: ['tun*']
    endpoints:
      - {address: 198.51.100.7, port: 1194, protocol: tcp}
    allow_lan: true
    management:
      - {cidr: 198.18.0.0/24, port: 22, protocol: tcp}
    exceptions:
      - {cgroup: system.slice/backup.service}

- name: Route-based IPsec through the XFRM interface ipsec0 (swanctl if_id_in/out, set_mark_out = 42)
  vpnguard.killswitch.nft_killswitch:
    tunnel_interfaces: [ipsec0]
    endpoints:
      - {address: 203.0.113.1, ports: [500, 4500], protocols: [udp, esp], mark: 42}
    dns_servers: [192.0.2.1]

- name: A container host whose engine may start after the kill switch (replies to its containers let back)
  vpnguard.killswitch.nft_killswitch:
    tunnel_interfaces: [wg0]
    endpoints:
      - {address: 203.0.113.1, port: 51820, protocol: udp}
    dns_servers: [192.0.2.1]
    forwarding: enabled

- name: Remove the kill switch
  vpnguard.killswitch.nft_killswitch:
    state: absent
'''

RETURN = r'''
ruleset:
  description: The nftables table rendered from the policy (nft syntax).
  returned: when O(state=present)
  type: str
  sample: "table inet vpnguard_killswitch {\n\tchain output {\n ..."
routing_rules:
  description: The routing guard's policy rules, in evaluation order, as C(ip rule) would show them.
  returned: always
  type: list
  elements: str
  sample: ["ipv4 32765: to 203.0.113.1/32 ipproto udp dport 51820 lookup main",
           "ipv4 32765: lookup main suppress_prefixlength 0",
           "ipv4 32765: lookup main suppress_ifgroup 0",
           "ipv4 32765: unreachable"]
bypass_routes:
  description:
    - The default routes of the kill switch's table C(22091) (C(0x564b), named C(vpnguard-bypass)), one per IP
      version, that only packets with O(tunnel_fwmark), which bypass exceptions' carry, look up
      (C(fwmark 0xca6c lookup 22091)), so that they leave
      outside the tunnel where the VPN client put its default or C(/1) routes in C(main). Copied at each apply
      from C(main)'s default route through a physical interface (group 0), else from C(main)'s route to an
      endpoint through a physical interface and a gateway. Empty without exceptions. A snapshot - a gateway
      changed since (DHCP, roaming) makes it stale until the next apply; that is not reported as drift
      (C(bypass_routes_changed) in RV(summary) tells it; check mode does not count it as a change). Nothing leaks
      either way. RV(routes_outside_tunnel) lists these routes too (table C(vpnguard-bypass)).
  returned: always
  type: list
  elements: str
  sample: ["ipv4 default via 198.18.1.1 dev eth0 table 22091"]
regrouped_interfaces:
  description:
    - Interfaces this run put in the tunnel group (86), because they match O(tunnel_interfaces), or back
      in the default group (0), because they no longer do or the kill switch was removed.
  returned: always
  type: list
  elements: str
  sample: ["tun0: group 86"]
removed_rules:
  description: Guard rules that were in place before and are not any more.
  returned: always
  type: list
  elements: str
  sample: ["ipv4 32765: to 203.0.113.9/32 ipproto udp dport 51820 lookup main"]
missing_requirements:
  description: What the host lacks (C(nftables), the Python binding; C(nft), the command the boot unit runs).
  returned: on that failure
  type: list
  elements: str
  sample: [nftables]
confirm_pending:
  description: Whether a commit-confirmed rollback timer is armed on the host after this run.
  returned: always
  type: bool
  sample: false
confirmed:
  description: Whether this run stopped a pending rollback timer.
  returned: when O(confirm=true)
  type: bool
  sample: true
setting:
  description:
    - The option whose value was refused, as a path into the options (C(endpoints[0].port)), so that a
      caller can name what its user set; the role names its C(killswitch_*) variable from it.
  returned: when the input was refused
  type: str
  sample: dns_servers[0]
persisted_files:
  description:
    - Files the module keeps, written or removed by this run (or that would be, in check mode) -
      the boot files, the unit and its enable link, and the file naming the rule protocol for C(ip rule)
      (C(/etc/iproute2/rt_protos.d/vpnguard-killswitch.conf), where that directory exists) and our table
      (C(/etc/iproute2/rt_tables.d/vpnguard-killswitch.conf), likewise).
  returned: always
  type: list
  elements: str
  sample: [/etc/vpnguard-killswitch/ruleset.nft]
counters:
  description:
    - The table's named counters after this run, one per verdict class and one per bypass exception,
      each with what it counts. They count from when the table was first loaded (a reboot or
      O(state=absent) resets them); a run that changes the policy carries them over, and no run reports
      them as drift.
  returned: when O(state=present)
  type: dict
  sample:
    refused_out_v4: {packets: 12, bytes: 720, counts: outbound IPv4 refused outside the tunnel}
    exception_uid_998: {packets: 3, bytes: 180, counts: "exception uid: 998 used"}
probe:
  description:
    - With O(probe=true), each check of the live probe and whether any leaked. C(verdict) is C(refused) (and
      C(detail) says which layer refused), C(LEAKED) (the probe's packet left the host; C(detail) says where),
      or C(not run) (and why). C(counters_after) are the table's counters after the probe (its own refusals
      are counted too; RV(counters) are from before it). C(no_route) counts the sends the kernel refused for want of a route since
      boot, the routing guard's refusals among them.
  returned: when O(probe=true) and O(state=present)
  type: dict
  sample:
    leaked: false
    checks:
      - {check: udp ipv4 bound to eth0, interface: eth0, family: ipv4, protocol: udp, verdict: refused,
         detail: refused by the firewall (EPERM)}
    no_route: {no_route_v4: 12, no_route_v6: 3}
tunnel:
  description: With O(probe=true), the interfaces matching O(tunnel_interfaces), their state and addresses.
  returned: when O(probe=true) and O(state=present)
  type: dict
  sample: {up: true, interfaces: [{interface: wg0, state: unknown, addresses: [192.0.2.11]}]}
routes_outside_tunnel:
  description:
    - With O(probe=true), the default routes (and C(0.0.0.0/1)-style halves) of any table that leave through an
      interface that is not a tunnel - the "double default route" that only the kill switch keeps from use.
  returned: when O(probe=true) and O(state=present)
  type: list
  elements: str
  sample: [default via 198.18.1.1 dev eth0 table main metric 100]
summary:
  description:
    - What the kill switch enforces and what this run changed. With O(state=present), C(forwarding) says
      whether the table lets replies to forwarded traffic back (see O(forwarding)) and C(conntrack)
      whether any of its rules uses connection tracking (forwarding, O(exceptions), UDP O(management)).
      C(forwarding_changed) is true when, with O(forwarding=auto), the table in place is this policy's laid
      while the host did the opposite (it started or stopped forwarding since); the table follows at
      the next apply.
  returned: always
  type: dict
  sample:
    table: inet vpnguard_killswitch
    firewall_changed: true
    routing_guard_changed: false
    bypass_routes_changed: false
    persist_changed: false
    tunnel_interfaces: [wg0]
    endpoints: 1
    dns_servers: 1
    allow_lan: false
    management: 0
    exceptions: 0
    forwarding: false
    forwarding_changed: false
    conntrack: false
'''

import json
import os
import socket
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.common.respawn import has_respawned, probe_interpreters_for_module, respawn_module

from ansible_collections.vpnguard.killswitch.plugins.module_utils.policy import (
    POLICY_KEYS, PolicyError, parse_policy, policy_argument_spec)
from ansible_collections.vpnguard.killswitch.plugins.module_utils import evidence, probe
from ansible_collections.vpnguard.killswitch.plugins.module_utils.nft import (
    BYPASS_FWMARK, TABLE, Nft, NftError, counter_names, digest, needs_conntrack, render, replace_transaction,
    with_counter_values, without_counter_values)
from ansible_collections.vpnguard.killswitch.plugins.module_utils.routing_guard import (
    DEFAULT_PRIORITY, BypassTable, LinkGroups, RoutingGuard, boot_script, bypass_routes, describe, describe_route,
    desired_rules, guard_commands, protocol_name_files, regrouped_links, udev_rule_files)
from ansible_collections.vpnguard.killswitch.plugins.module_utils.netlink_rules import (
    XFRM_POLICY_ALLOW, XFRM_POLICY_OUT, RuleSocket, XfrmSocket)
from ansible_collections.vpnguard.killswitch.plugins.module_utils import boot_unit, commit_confirm, file_snapshot

NFTABLES_IMPORT_ERROR = None
try:
    import nftables
except ImportError:
    nftables = None
    NFTABLES_IMPORT_ERROR = traceback.format_exc()

# Distribution Pythons that carry python3-nftables when ansible_python_interpreter is another one.
SYSTEM_PYTHONS = ['/usr/bin/python3', '/usr/libexec/platform-python', '/usr/bin/python']
STATE_FILE = 'nft_killswitch.json'
BOOT_RULESET = 'ruleset.nft'
BOOT_GUARD = 'routing-guard.sh'


def ensure_requirements(module):
    """Fail, naming what is missing in missing_requirements, unless the host has what the module needs.

    The role installs the packages only on that failure, so that a host that has
    them pays nothing for the check.
    """
    if nftables is None and not has_respawned():
        interpreter = probe_interpreters_for_module(SYSTEM_PYTHONS, 'nftables')
        if interpreter:
            respawn_module(interpreter)  # does not return
    missing, messages = [], []
    if nftables is None:
        missing.append('nftables')
        messages.append(missing_required_lib('nftables', reason='to manage the kill switch table',
                                             url='install the package python3-nftables'))
    nft_command = module.get_bin_path('nft')
    if nft_command is None and module.params['persist']:
        missing.append('nft')
        messages.append(missing_required_lib('nft', reason='for the boot unit to load the table',
                                             url='install the package nftables'))
    if missing:
        module.fail_json(msg=' '.join(messages), missing_requirements=missing, exception=NFTABLES_IMPORT_ERROR)
    return nft_command


def load_state(path):
    """What we last applied; an unreadable file only means the table is laid again."""
    return file_snapshot.load_json(path) or {}


def owned_files(params, nft_command=None, transaction=None, rules=None, policy=None):
    """Every file the module keeps on the host, as file_snapshot.sync() takes them.

    With persist: the boot files, the unit that loads them and its enable link.
    Without a transaction, or without persist, those are absent. With the
    routing guard: the udev rule that groups the tunnel interfaces.
    """
    ruleset, guard = (os.path.join(params['persist_dir'], name) for name in (BOOT_RULESET, BOOT_GUARD))
    files = protocol_name_files(transaction is not None and params['routing_guard'])
    files.update(udev_rule_files(policy if transaction is not None and params['routing_guard'] else None))
    if transaction is not None and params['persist']:
        files.update({ruleset: transaction, guard: boot_script(rules)})
        files.update(boot_unit.files(nft_command, ruleset, guard))
    else:
        files.update({ruleset: None, guard: None})
        files.update(boot_unit.files())
    return files


def sync_owned_files(module, files):
    # Only persist_dir is ours to remove; systemd's and iproute2's directories are not.
    return file_snapshot.sync(files, module.check_mode, own_directory=module.params['persist_dir'], module=module)


def rollback_script(live_table, live_rules, wanted_rules, paths):
    """A script that puts back the kill switch as it is now: table, guard and owned files."""
    heredoc = "%s <<'VPNGUARD_EOF'\n%sVPNGUARD_EOF"
    lines = ['#!/bin/sh', '# vpnguard.killswitch commit-confirmed rollback: restores the kill switch',
             '# as it was before the unconfirmed change.',
             heredoc % ('nft -f -', replace_transaction(live_table))]
    lines += guard_commands(live_rules, stale=wanted_rules)
    for path in sorted(paths):
        content = file_snapshot.read_text(path)
        if os.path.islink(path):
            lines.append('mkdir -p %s && ln -sfn %s %s' % (os.path.dirname(path), os.readlink(path), path))
        elif content is None:
            lines.append('rm -f %s' % path)
        else:
            lines.append(heredoc % ('mkdir -p %s && cat > %s' % (os.path.dirname(path), path), content))
    return '\n'.join(lines) + '\n'


def diff_text(table, rules, routes=()):
    return ((without_counter_values(table) or '') + ''.join('# routing guard: %s\n' % describe(r) for r in rules)
            + ''.join('# bypass route: %s\n' % r for r in routes))


def validate(module):
    params = module.params
    try:
        policy = parse_policy(dict((k, params[k]) for k in POLICY_KEYS))
    except PolicyError as e:
        module.fail_json(msg='Invalid kill switch policy, nothing was changed: %s' % e, setting=e.setting)
    if policy.tunnel_fwmark == BYPASS_FWMARK:
        module.fail_json(msg='tunnel_fwmark: 0x%x is the mark of bypass exceptions; choose another'
                         % BYPASS_FWMARK, setting='tunnel_fwmark')
    if params['confirm_timeout'] < 0:
        module.fail_json(msg='confirm_timeout: must be 0 (off) or a number of seconds', setting='confirm_timeout')
    if not 1 <= params['routing_guard_priority'] <= DEFAULT_PRIORITY:
        module.fail_json(msg='routing_guard_priority: must be between 1 and %d so that the guard comes '
                             'before the main table' % DEFAULT_PRIORITY, setting='routing_guard_priority')
    if params['persist'] and not module.get_bin_path('systemctl'):
        module.fail_json(msg='persist: laying the kill switch at boot needs systemd, and this host has no '
                             'systemctl; nothing was changed. Set persist to false to enforce the kill switch '
                             'without boot persistence.', setting='persist')
    return policy


def policy_based_ipsec(xfrm):
    """The outbound XFRM policies that encrypt without an XFRM interface (policy-based IPsec), described.

    Such a policy takes a packet after the routing decision, on its way out of
    the physical interface: the output hook sees it in the clear, leaving
    that interface, owned by the application's socket, so the firewall drops
    it, and the tunnel would carry nothing. A policy with an interface id
    (if_id) only takes packets routed to its XFRM interface, which is a
    tunnel interface like any other. A policy without templates is a bypass.
    """
    try:
        netlink = xfrm()
    except (OSError, socket.error):  # a kernel without XFRM_USER has no kernel IPsec to check
        return []
    try:
        policies = netlink.policies()
    except (OSError, socket.error):  # not readable without CAP_NET_ADMIN, without which nothing applies
        return []
    finally:
        netlink.close()
    return ['src %s dst %s dir out' % (p['src'], p['dst']) for p in policies
            if p['dir'] == XFRM_POLICY_OUT and p['action'] == XFRM_POLICY_ALLOW and p['templates'] and not p['if_id']]


def refuse_policy_based_ipsec(module, xfrm=XfrmSocket):
    """Fail, before anything is touched, on a host whose VPN is policy-based kernel IPsec."""
    policies = policy_based_ipsec(xfrm)
    if policies:
        module.fail_json(
            msg='tunnel_interfaces: this host has policy-based kernel IPsec (XFRM policies without an interface '
                'id: %s), whose packets leave the physical interface owned by the sending application and are '
                'encrypted only after the firewall, so the kill switch would drop them and the tunnel would carry '
                'nothing; nothing was changed. Make it route-based: an XFRM interface (ip link add ipsec0 type xfrm '
                'dev eth0 if_id 42) and, in the swanctl connection, if_id_in = 42, if_id_out = 42 and '
                'set_mark_out = 0xca6c (tunnel_fwmark); then tunnel_interfaces [ipsec0] and an endpoint '
                '{address: SERVER, ports: [500, 4500], protocols: [udp, esp]}. Or use strongSwan\'s kernel-libipsec '
                'plugin (ESP in UDP on ipsec0).' % '; '.join(policies[:3]),
            setting='tunnel_interfaces', xfrm_policies=policies)


# IPv4 forwards by the interface a packet comes in on (conf.<if>.forwarding,
# which ip_forward sets for all), IPv6 likewise; default is what a new one gets.
FORWARDING_SYSCTLS = ('/proc/sys/net/ipv4/conf', '/proc/sys/net/ipv6/conf')


def host_forwards():
    """Whether the kernel forwards IPv4 or IPv6 on any interface now (a kernel without IPv6 has no such files)."""
    for directory in FORWARDING_SYSCTLS:
        try:
            interfaces = os.listdir(directory)
        except (IOError, OSError):
            continue
        for interface in interfaces:
            try:
                with open(os.path.join(directory, interface, 'forwarding')) as f:
                    if f.read().strip() != '0':
                        return True
            except (IOError, OSError):
                pass
    return False


def present(module, policy, nft, guard, state_path, nft_command):
    params = module.params
    refuse_policy_based_ipsec(module)
    forwarding = host_forwards() if params['forwarding'] == 'auto' else params['forwarding'] == 'enabled'
    ruleset = render(policy, params['log'], forwarding)
    wanted_rules = desired_rules(policy, params['routing_guard_priority']) if params['routing_guard'] else []
    transaction = replace_transaction(ruleset)
    files = owned_files(params, nft_command, transaction, wanted_rules, policy)
    link_groups = LinkGroups(module, guard.netlink)
    links = guard.netlink.links()
    regroup = regrouped_links(dict(links.values()), policy.tunnel_interfaces if params['routing_guard'] else ())
    # The groups as they are after this apply: a tunnel not grouped yet is no physical path.
    links = dict((index, (name, dict(regroup).get(name, group))) for index, (name, group) in links.items())
    bypass = BypassTable(guard.netlink)
    main_routes, live_routes = bypass.read()
    wanted_routes = bypass_routes(policy, links, main_routes) if params['routing_guard'] else []
    # A snapshot of the physical path, refreshed by each apply. Roaming makes it
    # stale without a leak, so check mode (an audit) does not count it as a change.
    routes_in_sync = sorted(live_routes) == sorted(wanted_routes)

    live_table = nft.list_table()
    live_rules = guard.live_rules()
    saved = load_state(state_path)
    # What the counters have counted since is not drift.
    table_in_sync = (live_table is not None and saved.get('digest') == digest(ruleset)
                     and saved.get('listing') == without_counter_values(live_table))
    rules_in_sync = live_rules == wanted_rules
    # The table in place is this policy's as laid for the other forwarding setting: with auto,
    # the host started (or stopped) forwarding since, which an audit names rather than a bare
    # "table differs" that sends an admin looking for a policy change nobody made. The other
    # table is rendered only when the saved setting says forwarding flipped (or a state file of
    # an earlier release does not say), so that a policy change (the usual replace) pays nothing.
    forwarding_changed = (params['forwarding'] == 'auto' and not table_in_sync and live_table is not None
                          and saved.get('forwarding', not forwarding) != forwarding
                          and saved.get('digest') == digest(render(policy, params['log'], not forwarding))
                          and saved.get('listing') == without_counter_values(live_table))

    if not table_in_sync:
        nft.check(transaction)  # the kernel validates it, even in check mode

    after_table = live_table if table_in_sync else ruleset
    removed = []
    in_sync = table_in_sync and rules_in_sync
    if not module.check_mode:
        if not in_sync and params['confirm_timeout'] > 0:
            commit_confirm.arm(params['state_dir'],
                               rollback_script(live_table, live_rules, wanted_rules, files),
                               params['confirm_timeout'])
        if not table_in_sync:
            # The new table counts on from where the old one was.
            nft.apply(replace_transaction(with_counter_values(ruleset, nft.counters())))
            after_table = nft.list_table()
            file_snapshot.save(state_path, {'digest': digest(ruleset), 'listing': without_counter_values(after_table),
                                            'forwarding': forwarding},
                               module)
        if not rules_in_sync:
            removed = guard.replace(wanted_rules)
        if not routes_in_sync:
            bypass.replace(wanted_routes, live_routes)
        # After the guard: the group only lets the tunnel's routes in main be used.
        link_groups.apply(regroup)
    elif not rules_in_sync:
        removed = live_rules
    persisted = sync_owned_files(module, files)
    unit_activated = params['persist'] and boot_unit.activate(module, boot_unit.UNIT_PATH in persisted)
    live_counters = nft.counters()

    return dict(
        counters=evidence.counters(live_counters, counter_names(policy)),
        changed=(not in_sync or bool(persisted) or unit_activated or bool(regroup)
                 or not (routes_in_sync or module.check_mode)),
        regrouped_interfaces=['%s: group %d' % change for change in regroup],
        confirm_pending=commit_confirm.pending(params['state_dir']),
        persisted_files=persisted,
        ruleset=ruleset,
        routing_rules=[describe(r) for r in wanted_rules],
        bypass_routes=[describe_route(r, links) for r in wanted_routes],
        removed_rules=[describe(r) for r in removed if r not in wanted_rules],
        diff=dict(before=diff_text(live_table, live_rules, [describe_route(r, links) for r in live_routes]),
                  after=diff_text(after_table, wanted_rules, [describe_route(r, links) for r in wanted_routes]),
                  before_header=TABLE, after_header=TABLE),
        summary=dict(
            table=TABLE, firewall_changed=not table_in_sync, routing_guard_changed=not rules_in_sync,
            bypass_routes_changed=not routes_in_sync,
            persist_changed=bool(persisted) or unit_activated,
            tunnel_interfaces=list(policy.tunnel_interfaces), endpoints=len(policy.endpoints),
            dns_servers=len(policy.dns_servers), allow_lan=policy.allow_lan,
            management=len(policy.management), exceptions=len(policy.exceptions),
            forwarding=forwarding, forwarding_changed=forwarding_changed,
            conntrack=needs_conntrack(policy, forwarding)),
    )


def absent(module, nft, guard, state_path):
    live_table = nft.list_table()
    live_rules = guard.live_rules()
    persisted = sync_owned_files(module, owned_files(module.params))
    boot_unit.forget(module, boot_unit.UNIT_PATH in persisted)
    link_groups = LinkGroups(module, guard.netlink)
    regroup = regrouped_links(link_groups.links(), ())
    bypass = BypassTable(guard.netlink)
    live_routes = bypass.read()[1]
    changed = (live_table is not None or bool(live_rules) or os.path.exists(state_path) or bool(persisted)
               or bool(regroup) or bool(live_routes))
    if regroup and not module.check_mode:
        link_groups.apply(regroup)
    if changed and not module.check_mode:
        if live_table is not None:
            nft.apply(replace_transaction(None))
        guard.remove()
        bypass.replace([], live_routes)
        if os.path.exists(state_path):
            os.remove(state_path)
        file_snapshot.remove_if_empty(os.path.dirname(state_path))
    return dict(
        changed=changed,
        confirm_pending=commit_confirm.pending(module.params['state_dir']),
        persisted_files=persisted,
        routing_rules=[],
        bypass_routes=[],
        regrouped_interfaces=['%s: group %d' % change for change in regroup],
        removed_rules=[describe(r) for r in live_rules],
        diff=dict(before=diff_text(live_table, live_rules), after='', before_header=TABLE, after_header=TABLE),
        summary=dict(table=TABLE, firewall_changed=live_table is not None, routing_guard_changed=bool(live_rules),
                     persist_changed=bool(persisted)),
    )


def main():
    module = AnsibleModule(
        argument_spec=dict(
            tunnel_fwmark=dict(type='int', default=51820),
            restrict_endpoints_to_tunnel=dict(type='bool', default=True),
            routing_guard=dict(type='bool', default=True),
            forwarding=dict(type='str', default='auto', choices=['auto', 'enabled', 'disabled']),
            routing_guard_priority=dict(type='int', default=DEFAULT_PRIORITY),
            state_dir=dict(type='path', default='/var/lib/vpnguard-killswitch'),
            persist=dict(type='bool', default=False),
            persist_dir=dict(type='path', default='/etc/vpnguard-killswitch'),
            confirm_timeout=dict(type='int', default=0),
            confirm=dict(type='bool', default=False),
            **dict(evidence.argument_spec(), **policy_argument_spec(
                dict(uid=dict(type='int'), gid=dict(type='int'), cgroup=dict(type='str')), endpoint_owners=True))
        ),
        supports_check_mode=True,
    )
    if module.params['confirm']:
        state_dir = module.params['state_dir']
        confirmed = commit_confirm.pending(state_dir)
        if confirmed and not module.check_mode:
            commit_confirm.disarm(state_dir)
        module.exit_json(changed=confirmed, confirmed=confirmed, confirm_pending=False)
    # Bad input fails before anything else, missing libraries included.
    policy = validate(module) if module.params['state'] == 'present' else None
    nft_command = ensure_requirements(module)
    nft = Nft(nftables)
    guard = RoutingGuard(RuleSocket())
    state_path = os.path.join(module.params['state_dir'], STATE_FILE)
    try:
        if policy:
            result = present(module, policy, nft, guard, state_path, nft_command)
        else:
            result = absent(module, nft, guard, state_path)
    except NftError as e:
        module.fail_json(msg=str(e))
    except Exception as e:  # netlink or file errors, after the firewall step
        module.fail_json(msg='failed after the nftables step, which did complete: %s' % e,
                         exception=traceback.format_exc())
    if policy and module.params['probe']:
        result.update(probe_host(module, policy, nft))
    module.exit_json(**result)


def probe_host(module, policy, nft):
    """The live probe's evidence: does the host refuse traffic outside the tunnel right now?"""
    params = module.params
    checks, leaked = probe.run(policy.tunnel_interfaces, policy.dns_servers,
                               params['probe_canary_v4'], params['probe_canary_v6'])
    # The probe's own refusals are counted too: the next audit counts from here.
    after = dict((name, value[0]) for name, value in nft.counters().items())
    routes = []
    for family in ('-4', '-6'):
        rc, out, err = module.run_command(['ip', '-j', family, 'route', 'show', 'table', 'all'])
        if rc == 0 and out.strip():
            routes += json.loads(out)
    return dict(probe=dict(checks=checks, leaked=leaked, no_route=probe.no_route_counters(), counters_after=after),
                tunnel=probe.tunnel_state(policy.tunnel_interfaces),
                routes_outside_tunnel=probe.routes_outside_tunnel(routes, policy.tunnel_interfaces))


if __name__ == '__main__':
    main()
