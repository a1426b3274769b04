#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vpnguard maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: pf_killswitch
short_description: Enforce a VPN kill switch on macOS with a PF anchor of its own
version_added: "0.1.0"
description:
  - Puts a strict VPN kill switch in macOS's packet filter (PF), as one anchor of its own,
    C(com.vpnguard.killswitch), that blocks every packet (IPv4 and IPv6, both directions) that does
    not go through a tunnel interface or match what the policy names.
  - The anchor passes loopback, what leaves through the tunnel interfaces and its replies (states bound to
    the tunnel interface, so nothing unsolicited comes in through the VPN), the VPN endpoints (exact
    address, port and protocol; by default only for root's sockets), DHCPv4 broadcasts, DHCPv6, ICMPv6
    neighbour discovery and MLD,
    the LAN when O(allow_lan=true), the management plane (connections in and only replies out) and
    the bypass exceptions (O(exceptions[].uid) or O(exceptions[].gid)). DNS (ports 53 and 853, UDP
    and TCP) goes only to O(dns_servers) and only through the tunnel. Every rule is C(quick), so rules
    evaluated after the anchor cannot pass what it blocks.
  - The anchor is loaded whole with C(pfctl -a com.vpnguard.killswitch -f), which PF applies
    atomically, after C(pfctl -n) checked it; other anchors and the main ruleset's rules are never
    flushed. The anchor is referenced from C(/etc/pf.conf) by a marked block (C(anchor) and
    C(load anchor)); the main ruleset is reloaded from C(/etc/pf.conf) only when that block was added
    or the loaded ruleset does not reference the anchor.
  - When the anchor changes, the states the new policy no longer allows are ended (C(pfctl -k) for
    removed endpoints and resolvers, C(pfctl -i IF -F states) for removed tunnels; every state when the
    previous policy is unknown or a bypass owner was removed). Every stateful rule that can match TCP
    says C(flags any), so an established connection the policy still allows (OpenVPN over TCP, a bypass
    session) goes on even after its state is lost.
  - The main ruleset is loaded from a file of the collection's own, C(/etc/vpnguard-killswitch/pf.conf)
    (C(/etc/pf.conf) plus the anchor), which a macOS update does not restore; C(/etc/pf.conf) gets the
    same block too.
  - The module always holds a PF enable reference (C(pfctl -E) token) of its own, so that another
    holder's C(pfctl -X) cannot stop PF; O(state=absent) releases it, and the watchdog's, and fails when
    PF still lists one of them.
  - With O(persist=true), a LaunchDaemon runs a watchdog script at boot, whenever C(/etc/pf.conf) changes
    (launchd C(WatchPaths)) and every O(watchdog_interval) seconds. It loads the collection's ruleset when
    the loaded main ruleset does not reference the anchor or the anchor is empty, and a fallback it carries itself (loopback
    and management only) when that fails to load, always before it enables PF; and it takes its own
    enable reference again when PF lost it (C(pfctl -d) by another tool drops every reference).
  - The result's RV(drift) lists what an audit should report (PF disabled, the token missing, the anchor
    not referenced, C(/etc/pf.conf) without the block (the stock file restored), an anchor that differs,
    other tools' anchors (a reload of the main ruleset unhooks them) and C(nat pass) rules (Internet
    Sharing), whose packets skip filtering).
  - A tunnel interface wildcard must follow a driver name (V(utun*)); PF on macOS matches interface
    names exactly, so it stands for the driver's first O(wildcard_units) units. A tunnel that comes up
    beyond them is blocked, not leaked.
author:
  - vpnguard maintainers (@vpnguard)
options:
  state:
    description:
      - V(present) enforces the kill switch; V(absent) stops the watchdog, flushes the anchor, takes the
        block out of C(/etc/pf.conf) and reloads it, removes the anchor file, the collection's ruleset
        files, the watchdog and the module's saved state, and releases the module's and the watchdog's PF
        enable references. Nothing else is touched.
    type: str
    choices: [present, absent]
    default: present
  tunnel_interfaces:
    description:
      - Interfaces that traffic may leave through, for example V(utun4). A trailing C(*) after a
        driver name (V(utun*)) covers its first O(wildcard_units) units. Required when O(state=present).
      - V(utun*) trusts every utun interface, Apple's own (iCloud Private Relay and other system tunnels)
        and other VPN clients' as well as yours; the module warns. Name the unit where it is fixed.
    type: list
    elements: str
    default: []
  wildcard_units:
    description: How many units of a driver a wildcard in O(tunnel_interfaces) covers.
    type: int
    default: 32
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
  dns_servers:
    description:
      - Resolvers that DNS may reach, only through the tunnel. When empty, DNS may go to any
        resolver, but still only through the tunnel.
    type: list
    elements: str
    default: []
  doh_servers:
    description: Addresses of known DNS-over-HTTPS resolvers, blocked outside the tunnel.
    type: list
    elements: str
    default: []
  allow_lan:
    description:
      - Allow RFC 1918, 169.254.0.0/16, fc00::/7, fe80::/10 and multicast outside the tunnel, both
        ways. DNS to the LAN stays blocked.
    type: bool
    default: false
  management:
    description:
      - Management plane (SSH...) kept reachable from outside the tunnel. Connections from
        O(management[].cidr) to the local O(management[].port) are passed in and only their replies
        out; the host cannot open connections to those networks.
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
      - Sockets allowed out whatever the tunnel does, by owner; PF knows the owner of TCP and UDP
        sockets only. Where their packets go is up to routing.
    type: list
    elements: dict
    default: []
    suboptions:
      uid:
        description: Owner user ID of the socket (PF C(user)).
        type: int
      gid:
        description:
          - Owner group ID of the socket (PF C(group)). PF compares the socket owner's effective (primary)
            group only, never supplementary groups, so V(20) (staff, every account's primary group) and
            V(12) (everyone) would exempt every user and are refused.
        type: int
  restrict_endpoints_to_tunnel:
    description:
      - Pass traffic to the endpoints only from the sockets of O(endpoint_users) (PF C(user)), so that no
        other process can use the endpoint to send data around the tunnel.
    type: bool
    default: true
  endpoint_users:
    description:
      - The users whose sockets may reach the endpoints when O(restrict_endpoints_to_tunnel=true), as uids
        or V(console) (the logged-in user, the owner of C(/dev/console) when the module runs).
      - Per client. The built-in IKEv2 client and Tunnelblick or OpenVPN running as root, V([0]). OpenVPN
        with C(user nobody) opens its socket again as nobody on every reconnect, V([0, 4294967294]).
        The App Store WireGuard app, whose Network Extension runs as the logged-in user, V([0, console]);
        on a Mac several people log in to, list their uids.
    type: list
    elements: str
    default: ['0']
  endpoint_preflight:
    description:
      - Before anything is changed, look for the Mac's VPN clients (C(/Applications/WireGuard.app), the
        C(user) line of Tunnelblick's and OpenVPN's configurations) and refuse, naming O(endpoint_users),
        a restriction that would keep their tunnel from coming up.
    type: bool
    default: true
  persist:
    description:
      - Install and start the LaunchDaemon C(/Library/LaunchDaemons/com.vpnguard.killswitch.plist) and its
        script C(/etc/vpnguard-killswitch/watchdog.sh), which keep PF enabled with the anchor at boot, after
        a macOS update and after another tool disabled PF. V(false) stops and removes them.
    type: bool
    default: false
  watchdog_interval:
    description: Seconds between two runs of the watchdog (launchd C(StartInterval)), from 10 to 3600.
    type: int
    default: 60
  confirm_timeout:
    description:
      - Commit-confirmed. When the run changes the anchor, first start a launchd job
        (C(com.vpnguard.killswitch.confirm)) that restores the previous anchor after this many seconds,
        in PF and in its file, unless a later task confirms with O(confirm=true) over a fresh connection.
        A reboot before the confirmation runs it too. V(0) turns it off.
      - While a change is unconfirmed, a further change keeps the rollback to the last confirmed anchor.
    type: int
    default: 0
  confirm:
    description:
      - Confirm the pending change (stop the rollback job); every other option is ignored.
    type: bool
    default: false
  state_dir:
    description: Where the module records what it applied and its PF enable token.
    type: path
    default: /var/db/vpnguard-killswitch
  log:
    description:
      - What the kill switch copies to PF's log interface C(pflog0) (PF C(log) on the rules), read with
        C(tcpdump -n -e -ttt -i pflog0). V(none) logs nothing; V(exceptions) the first packet of each
        connection a bypass exception lets through; V(refused) every packet the kill switch refused; V(all) both.
      - PF names no reason in its log; each logged packet carries the number of the rule that decided it
        (C(rule N.com.vpnguard.ki...) in tcpdump), and C(pfctl -a com.vpnguard.killswitch -vv -s rules) shows
        rule N with its C(label), the reason (C(refused_out_v4), C(refused_dns_resolver), C(exception_uid_501)...).
        The socket's owner is in the log header when a C(user) rule had looked it up.
      - PF has no log rate limit of its own. A packet is copied only while C(pflog0) exists and something reads
        it (xnu C(pflog_packet) returns at once otherwise), and the reader's bpf buffer bounds what it keeps.
        The module creates C(pflog0) (C(ifconfig pflog0 create)) when this is not V(none), and so does the
        watchdog at boot with O(persist=true); a run that finds it missing reports that in RV(drift).
      - The counters in RV(counters) are kept whatever this says.
    type: str
    choices: [none, exceptions, refused, all]
    default: none
  probe:
    description:
      - After enforcing (or, in check mode, comparing), probe the host live, as the audit does. For every interface
        that is up, has a global address and is not a tunnel, sockets bound to it (C(IP_BOUND_IF) or C(IPV6_BOUND_IF),
        and its address) try a UDP send, a TCP connect and a DNS query to the canary addresses, IPv4 and IPv6, and a
        DNS query goes to the canary as a resolver that is not the tunnel's. Results in RV(probe), RV(tunnel) and
        RV(routes_outside_tunnel).
      - Each check runs alone between two readings of the anchor's labels. It is refused when a refusing label
        counted a packet meanwhile, or when the kernel found no route; it LEAKED when the socket call went through
        and PF counted no refusal. xnu hides PF's drop of an IPv4 packet from the sender, so the count decides,
        not the error. macOS has no capture without bpf, so the probe infers from PF's counters that nothing left.
      - The probe sends only to the canaries. It changes nothing on the host, so it also runs in check mode.
    type: bool
    default: false
extends_documentation_fragment:
  - vpnguard.killswitch.evidence
requirements:
  - macOS with C(/sbin/pfctl), run as root
attributes:
  check_mode:
    description: Can run in check mode and return the changes it would make, with the drift, without making them.
    support: full
    details: The anchor and the main ruleset are still checked by C(pfctl -n) without being loaded.
  diff_mode:
    description: Returns the rendered files and the live anchor, before and after.
    support: full
  platform:
    description: Target OS that the module can be run against.
    support: full
    platforms: darwin
notes:
  - In check mode the anchor and the main ruleset are still checked by C(pfctl -n) without being loaded.
  - The module compares the live anchor (C(pfctl -a com.vpnguard.killswitch -s rules) and its tables)
    with what it last loaded and with the rendered policy; an anchor edited behind its back is drift
    and is reloaded.
  - Quick rules evaluated before the anchor (earlier in C(/etc/pf.conf)) still decide first.
  - macOS software updates may restore C(/etc/pf.conf); the watchdog keeps loading the collection's own
    ruleset, and the next run puts the block back and reports it as drift.
  - Reloading the main ruleset (the watchdog, or any C(pfctl -f /etc/pf.conf)) unhooks anchors that other
    VPN clients (Mullvad, IVPN) insert at run time; such anchors are reported in RV(drift) and warned about.
seealso:
  - name: pf.conf(5)
    description: The PF rule syntax.
    link: https://man.openbsd.org/pf.conf
'''

EXAMPLES = r'''
- name: Only the WireGuard tunnel may carry traffic
  vpnguard.killswitch.pf_killswitch:
    tunnel_interfaces: ['utun*']
    endpoints:
      - {address: 203.0.113.1, port: 51820, protocol: udp}
    dns_servers: [192.0.2.1]
    persist: true

- name: Keep SSH reachable from the admin network and let uid 501 bypass
  vpnguard.killswitch.pf_killswitch:
    tunnel_interfaces: [utun4]
    endpoints:
      - {address: 198.51.100.7, port: 1194, protocol: udp}
    management:
      - {cidr: 198.18.0.0/24, port: 22, protocol: tcp}
    exceptions:
      - {uid: 501}

- name: Remove the kill switch
  vpnguard.killswitch.pf_killswitch:
    state: absent
'''

RETURN = r'''
ruleset:
  description: The anchor rendered from the policy (pf.conf syntax).
  returned: when O(state=present)
  type: str
  sample: "tunnels = \"utun4\"\n...\nblock drop out quick all\nblock drop in quick all\n"
live_rules:
  description: The anchor's rules as PF reported them before this run (C(pfctl -s rules)), empty when none.
  returned: always
  type: str
confirm_pending:
  description: Whether a commit-confirmed rollback job is waiting on the host after this run.
  returned: when O(state=present)
  type: bool
confirmed:
  description: Whether O(confirm=true) stopped a pending rollback.
  returned: when O(confirm=true)
  type: bool
drift:
  description: How the host differed from the policy before this run, in words an audit can report.
  returned: when O(state=present)
  type: list
  elements: str
  sample: ['PF is disabled', 'PF enable reference (token) of the kill switch is missing']
changed_files:
  description: Files written, changed or removed by this run.
  returned: always
  type: list
  elements: str
  sample: [/etc/pf.anchors/com.vpnguard.killswitch, /etc/pf.conf]
counters:
  description:
    - The anchor's labels after this run, one per verdict class and one per bypass exception, each with what it
      counts, named as on Linux where the class is the same (PF has no forward hook, so a forwarded packet is
      counted in C(refused_in_*) or C(refused_out_*)). Read with C(pfctl -a com.vpnguard.killswitch -s labels).
    - PF starts a rule's counters from 0 whenever the anchor is loaded; when this module reloads it, it adds what
      the labels had counted to a base kept in O(state_dir), so they count on across policy changes. A reboot
      starts them again (the base is dropped when C(kern.boottime) changed); a reload by anyone else (the watchdog
      after the anchor vanished) restarts them too, which the audit report takes as a reset.
  returned: when O(state=present)
  type: dict
  sample:
    refused_out_v4: {packets: 12, bytes: 720, counts: outbound IPv4 refused outside the tunnel}
    exception_uid_501: {packets: 3, bytes: 180, counts: "exception uid: 501 used"}
probe:
  description:
    - With O(probe=true), each check of the live probe and whether any leaked. C(verdict) is C(refused) (C(detail)
      says whether PF, and which label, or routing refused), C(LEAKED) or C(not run) (and why).
      C(counters_after) are the labels' packets after the probe, the base added (its own refusals are counted
      too; RV(counters) are from before it).
  returned: when O(probe=true) and O(state=present)
  type: dict
  sample:
    leaked: false
    checks:
      - {check: udp ipv4 bound to en0, interface: en0, family: ipv4, protocol: udp, verdict: refused,
         detail: "refused by PF (refused_out_v4 +1); nothing was captured (macOS has no capture without bpf)..."}
    counters_after: {refused_out_v4: 14}
tunnel:
  description: With O(probe=true), the interfaces of O(tunnel_interfaces) the host has, their state and addresses.
  returned: when O(probe=true) and O(state=present)
  type: dict
  sample: {up: true, interfaces: [{interface: utun4, state: up, addresses: [10.8.0.2]}]}
routes_outside_tunnel:
  description:
    - With O(probe=true), the default routes (and C(0/1)-style halves) of C(netstat -rn) that leave through an
      interface that is not a tunnel; a route scoped to its interface (flag C(I)) serves only sockets bound to it.
  returned: when O(probe=true) and O(state=present)
  type: list
  elements: str
  sample: [default via 192.168.1.1 dev en0 ipv4]
summary:
  description: What the kill switch enforces and what this run changed.
  returned: always
  type: dict
  sample:
    anchor: com.vpnguard.killswitch
    anchor_changed: true
    pf_conf_changed: true
    main_ruleset_changed: true
    pf_enabled: false
    token_held: false
    persist_changed: false
    foreign_anchors: []
    nat_pass: []
    tunnel_interfaces: [utun4]
    endpoints: 1
    dns_servers: 1
    allow_lan: false
    management: 0
    exceptions: 0
'''

import glob
import os
import pwd
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vpnguard.killswitch.plugins.module_utils import evidence, file_snapshot, pf, probe_darwin
from ansible_collections.vpnguard.killswitch.plugins.module_utils.policy import (
    ID_MAX, POLICY_KEYS, PolicyError, parse_policy, policy_argument_spec)

STATE_FILE = 'pf_killswitch.json'
IFCONFIG = pf.IFCONFIG
NETSTAT = '/usr/sbin/netstat'
SYSCTL = '/usr/sbin/sysctl'


class PfError(Exception):
    pass


class Pfctl:
    """The pfctl calls the module makes, as argv lists; errors raised, not returned."""

    def __init__(self, module):
        self.module = module

    def run(self, argv, what):
        rc, out, err = self.module.run_command(argv)
        if rc != 0:
            raise PfError('%s: %s (%s)' % (what, (err or out).strip(), ' '.join(argv)))
        return out + err  # pfctl -E prints its token on stderr

    def query(self, argv):
        rc, out, err = self.module.run_command(argv)
        return out if rc == 0 else ''

    def listing(self):
        """The live anchor, rules then tables with their addresses; empty when the anchor is empty."""
        rules_argv, tables_argv = pf.listing_argvs()
        text = self.query(rules_argv)
        for name in sorted(self.query(tables_argv).split()):
            addresses = ' '.join(self.query(pf.table_argv(name)).split())
            text += 'table <%s> { %s }\n' % (name, addresses)
        return text

    def labels(self):
        """{label: (packets, bytes)} the anchor's rules have counted since it was loaded."""
        return pf.parse_labels(self.query(pf.labels_argv()))

    def check_text(self, text, argv_for):
        """Have pfctl -n parse text; the temporary file goes whatever happens."""
        fd, path = tempfile.mkstemp(prefix='vpnguard-pf.')
        try:
            with os.fdopen(fd, 'w') as f:
                f.write(text)
            self.run(argv_for(path, check=True), 'pfctl rejected the rules, nothing was changed')
        finally:
            os.remove(path)


def endpoint_users(module):
    """The uids of endpoint_users, `console` being the logged-in user's (the owner of /dev/console)."""
    users = []
    for i, value in enumerate(module.params['endpoint_users']):
        value = str(value).strip()
        if value == 'console':
            users.append(console_uid())
        elif value.isdigit() and int(value) <= ID_MAX:
            users.append(int(value))
        else:
            raise PolicyError('endpoint_users[%d]' % i, '%r is neither a uid nor console' % value)
    if not users:
        raise PolicyError('endpoint_users', 'name at least one uid (0 for a VPN client running as root)')
    return users


def console_uid():
    try:
        return os.stat(pf.CONSOLE).st_uid
    except OSError:
        return 0


def uid_of(name):
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return int(name) if name.isdigit() else None


def preflight(module, policy):
    """Refuse an endpoint restriction this Mac's VPN client could not use, before anything is touched."""
    if module.params['endpoint_preflight']:
        needed = pf.endpoint_users_needed(file_snapshot.read_text, os.path.exists, glob.glob, console_uid, uid_of)
        pf.endpoint_user_preflight(policy, endpoint_users(module), needed)


def validate(module):
    params = module.params
    try:
        policy = parse_policy(dict((k, params.get(k)) for k in POLICY_KEYS if k in params), system='Darwin')
        if not 1 <= params['wildcard_units'] <= 256:
            raise PolicyError('wildcard_units', 'must be between 1 and 256')
        if not 10 <= params['watchdog_interval'] <= 3600:
            raise PolicyError('watchdog_interval', 'must be between 10 and 3600 seconds')
        users = endpoint_users(module)
        ruleset = pf.render(policy, params['wildcard_units'], users, params['log'])
    except PolicyError as e:
        module.fail_json(msg='Invalid kill switch policy, nothing was changed: %s' % e, setting=e.setting)
    return policy, ruleset


def file_diff(path, before, after):
    return dict(before_header=path, after_header=path, before=before or '', after=after or '')


def arm_confirm(pfctl, previous, timeout):
    """Start the rollback job before the change. A pending one keeps its previous anchor: the last confirmed."""
    if os.path.exists(pf.CONFIRM_PLIST):
        pfctl.query([pf.LAUNCHCTL, 'bootout', 'system/%s' % pf.CONFIRM_LABEL])
    else:
        file_snapshot.sync({pf.CONFIRM_PREVIOUS: previous}, False)
    file_snapshot.sync({pf.CONFIRM_SCRIPT: pf.confirm_script(), pf.CONFIRM_PLIST: pf.confirm_plist(timeout)}, False)
    pfctl.run([pf.LAUNCHCTL, 'bootstrap', 'system', pf.CONFIRM_PLIST], 'launchctl failed to start the rollback timer')


def disarm_confirm(pfctl):
    """The controller reached the host again: stop the rollback job and forget the previous anchor."""
    pending = os.path.exists(pf.CONFIRM_PLIST)
    pfctl.query([pf.LAUNCHCTL, 'bootout', 'system/%s' % pf.CONFIRM_LABEL])
    for path in (pf.CONFIRM_PLIST, pf.CONFIRM_SCRIPT, pf.CONFIRM_PREVIOUS):
        if os.path.lexists(path):
            os.remove(path)
    return pending


def release_token(pfctl, token):
    """Drop one enable reference; an error only when PF still lists it (a reboot or `pfctl -d` drops them all)."""
    rc, out, err = pfctl.module.run_command(pf.pfctl('-X', token))
    if rc != 0 and token in pf.parse_references(pfctl.query(pf.pfctl('-s', 'References'))):
        raise PfError('pfctl could not release the enable reference %s, so PF may stay enabled: %s'
                      % (token, (err or out).strip()))


def observe(pfctl, state_dir):
    """What PF runs now, as the audit reports it."""
    anchors = pf.parse_anchors(pfctl.query(pf.pfctl('-s', 'Anchors', '-v')))
    nat = pf.nat_pass(pfctl.query(pf.pfctl('-s', 'nat')))
    for anchor in anchors:
        if anchor.startswith('com.apple'):  # Internet Sharing puts its `nat pass` in Apple's anchors
            nat += pf.nat_pass(pfctl.query(pf.pfctl('-a', anchor, '-s', 'nat')))
    watchdog_token = (file_snapshot.read_text(os.path.join(state_dir, pf.WATCHDOG_TOKEN)) or '').strip()
    return dict(
        enabled=pf.is_enabled(pfctl.query(pf.pfctl('-s', 'info'))),
        references=pf.parse_references(pfctl.query(pf.pfctl('-s', 'References'))),
        main_references=pf.references_anchor(pfctl.query(pf.pfctl('-s', 'rules'))),
        foreign_anchors=pf.foreign_anchors(anchors), nat_pass=nat, watchdog_token=watchdog_token)


def drift_of(seen, token_held, pf_conf_hooked, anchor_in_sync):
    """The audit's words for each way the host differs from the policy."""
    drift = []
    if not seen['enabled']:
        drift.append('PF is disabled')
    if not token_held:
        drift.append('PF enable reference (token) of the kill switch is missing')
    if not seen['main_references']:
        drift.append('the loaded main ruleset does not reference the anchor %s' % pf.ANCHOR)
    if not pf_conf_hooked:
        drift.append('%s lacks the kill switch block (a macOS update restores the stock file)' % pf.PF_CONF)
    if not anchor_in_sync:
        drift.append('PF anchor %s differs from the policy' % pf.ANCHOR)
    drift += ['foreign PF anchor %s (a reload of the main ruleset unhooks it)' % a for a in seen['foreign_anchors']]
    drift += ['translation rule passes packets around the filter: %s' % r for r in seen['nat_pass']]
    return drift


def present(module, policy, ruleset, pfctl, state_path):
    params = module.params
    state_dir = os.path.dirname(state_path)
    saved = file_snapshot.load_json(state_path) or {}
    live = pfctl.listing()
    seen = observe(pfctl, state_dir)
    anchor_file = file_snapshot.read_text(pf.ANCHOR_FILE)
    pf_conf = file_snapshot.read_text(pf.PF_CONF) or ''
    wanted_conf = pf.with_hook(pf_conf)
    private = pf.private_ruleset(pf_conf)
    token_held = seen['enabled'] and saved.get('token') in seen['references']

    # PF zeroes the labels when the anchor is loaded: what they counted is kept in a base, until a reboot.
    boot = pfctl.query([SYSCTL, '-n', 'kern.boottime']).strip()
    base = (saved.get('counter_base') or {}) if saved.get('boot') == boot else {}
    labels_before = pfctl.labels()

    anchor_in_sync = (bool(live) and anchor_file == ruleset and saved.get('digest') == pf.digest(ruleset)
                      and saved.get('listing') == live)
    main_in_sync = seen['main_references'] and file_snapshot.read_text(pf.RULESET_FILE) == private
    if not anchor_in_sync:
        pfctl.check_text(ruleset, pf.load_anchor_argv)
    if not main_in_sync or wanted_conf != pf_conf:
        # The load anchor line reads the anchor file, which may not be written yet.
        pfctl.check_text(private.replace(pf.ANCHOR_FILE, '/dev/null'), pf.load_conf_argv)

    files = {pf.ANCHOR_FILE: ruleset, pf.RULESET_FILE: private,
             pf.WATCHDOG_SCRIPT: pf.watchdog_script(state_dir, pf.fallback_ruleset(policy), params['log'] != 'none') if params['persist'] else None,
             pf.LAUNCHD_PLIST: pf.launchd_plist(params['watchdog_interval']) if params['persist'] else None}
    before = dict((path, file_snapshot.read_text(path)) for path in files)
    changed_files = sorted(path for path in files if not file_snapshot.holds(path, files[path]))
    diff = [file_diff(path, before[path], files[path]) for path in changed_files]
    if live != saved.get('listing'):
        diff.append(file_diff('pfctl -a %s -s rules (live)' % pf.ANCHOR, live, saved.get('listing') or ruleset))
    if wanted_conf != pf_conf:
        changed_files.append(pf.PF_CONF)
        diff.append(file_diff(pf.PF_CONF, pf_conf, wanted_conf))
    job_changed = bool(set(changed_files) & {pf.LAUNCHD_PLIST, pf.WATCHDOG_SCRIPT})
    states = pf.state_summary(policy, params['wildcard_units'])

    confirm = params['confirm_timeout'] > 0 and not anchor_in_sync
    if confirm and not module.check_mode:
        arm_confirm(pfctl, anchor_file if live else None, params['confirm_timeout'])
    pflog_created = params['log'] != 'none' and ensure_pflog(module)
    if not module.check_mode:
        if not main_in_sync or not anchor_in_sync:
            base = pf.carried_counters(base, labels_before)
        file_snapshot.sync(files, False, own_directory=pf.OWN_DIR)
        if wanted_conf != pf_conf:
            file_snapshot.write_text(pf.PF_CONF, wanted_conf)
        if not main_in_sync:
            # The main ruleset and, through its load anchor line, ours; loaded before PF is enabled.
            pfctl.run(pf.load_conf_argv(pf.RULESET_FILE), 'pfctl failed to load %s' % pf.RULESET_FILE)
        if not anchor_in_sync:
            pfctl.run(pf.load_anchor_argv(pf.ANCHOR_FILE),
                      'pfctl failed to load the anchor, the previous one is still in place')
            kills = pf.kill_states_argvs(saved.get('states'), states)
            for argv in kills if kills is not None else [pf.pfctl('-F', 'states')]:
                pfctl.run(argv, 'pfctl failed to end the states the new policy does not allow')
        if not token_held:
            # A reference of our own, whoever else holds one: without it another holder's -X stops PF.
            saved['token'] = pf.parse_token(pfctl.run(pf.pfctl('-E'), 'pfctl failed to enable PF'))
        saved.update(digest=pf.digest(ruleset), listing=pfctl.listing(), states=states, boot=boot,
                     counter_base=dict((name, list(value)) for name, value in base.items()))
        file_snapshot.save(state_path, saved)
        if job_changed:
            for argv in pf.launchd_argvs(params['persist']):
                if argv[1] == 'bootout':
                    pfctl.query(argv)  # not loaded yet is fine
                else:
                    pfctl.run(argv, 'launchctl failed to start the watchdog')

    drift = drift_of(seen, token_held, pf.has_hook(pf_conf), anchor_in_sync)
    if pflog_created:
        drift.append('%s was missing, so PF logged nothing of what log asks for' % pf.PFLOG)
    for line in drift:
        if line.startswith(('foreign', 'translation')):
            module.warn(line)
    if any(name.endswith('*') and name.startswith('utun') for name in policy.tunnel_interfaces):
        module.warn('utun* trusts every utun interface: Apple\'s own (iCloud Private Relay, Back to My Mac) '
                    'and other VPN clients\' tunnels as well as yours; name the unit where it is fixed')
    if any(e.selector == 'gid' for e in policy.exceptions):
        module.warn('PF matches a gid exception against the socket owner\'s effective (primary) group only, '
                    'never supplementary groups')

    changed = bool(not anchor_in_sync or not main_in_sync or not token_held or changed_files or pflog_created)
    counted = pf.carried_counters(base, pfctl.labels())
    return dict(
        counters=evidence.counters(counted, pf.counter_names(policy)),
        counter_base=base,
        changed=changed, ruleset=ruleset, confirm_pending=os.path.exists(pf.CONFIRM_PLIST), live_rules=live,
        changed_files=changed_files, diff=diff, drift=drift,
        summary=dict(
            anchor=pf.ANCHOR, anchor_changed=not anchor_in_sync, pf_conf_changed=wanted_conf != pf_conf,
            main_ruleset_changed=not main_in_sync, pf_enabled=seen['enabled'], token_held=token_held,
            persist_changed=job_changed, foreign_anchors=seen['foreign_anchors'], nat_pass=seen['nat_pass'],
            tunnel_interfaces=list(policy.tunnel_interfaces), endpoints=len(policy.endpoints),
            dns_servers=len(policy.dns_servers), allow_lan=policy.allow_lan,
            management=len(policy.management), exceptions=len(policy.exceptions)),
    )


def ensure_pflog(module):
    """pflog0, where PF's `log` copies packets: a cloned interface that exists only once created."""
    rc, out, err = module.run_command([IFCONFIG, pf.PFLOG])
    if rc == 0:
        return False
    if not module.check_mode:
        rc, out, err = module.run_command([IFCONFIG, pf.PFLOG, 'create'])
        if rc != 0:
            raise PfError('ifconfig could not create %s for the kill switch\'s log: %s' % (pf.PFLOG, (err or out).strip()))
    return True


def probe_host(module, policy, pfctl, base):
    """The live probe's evidence: does PF refuse traffic outside the tunnel right now?"""
    params = module.params
    tunnels = pf.tunnel_names(policy, params['wildcard_units'])
    interfaces = probe_darwin.parse_ifconfig(pfctl.query([IFCONFIG, '-a']))
    routes = probe_darwin.parse_netstat_routes(pfctl.query([NETSTAT, '-rn']))
    checks, skipped = probe_darwin.plan(interfaces, tunnels, policy.dns_servers,
                                        params['probe_canary_v4'], params['probe_canary_v6'])
    results, leaked = probe_darwin.run(checks, skipped, pfctl.labels)
    # The probe's own refusals are counted too: the next audit counts from here.
    after = dict((name, value[0]) for name, value in pf.carried_counters(base, pfctl.labels()).items())
    return dict(probe=dict(checks=results, leaked=leaked, counters_after=after),
                tunnel=probe_darwin.tunnel_state(interfaces, tunnels),
                routes_outside_tunnel=probe_darwin.routes_outside_tunnel(routes, tunnels))


def absent(module, pfctl, state_path):
    state_dir = os.path.dirname(state_path)
    saved = file_snapshot.load_json(state_path) or {}
    live = pfctl.listing()
    seen = observe(pfctl, state_dir)
    pf_conf = file_snapshot.read_text(pf.PF_CONF)
    wanted_conf = pf.without_hook(pf_conf) if pf_conf is not None else None
    token_path = os.path.join(state_dir, pf.WATCHDOG_TOKEN)
    paths = [p for p in (pf.ANCHOR_FILE, pf.LAUNCHD_PLIST, pf.WATCHDOG_SCRIPT, pf.RULESET_FILE,
                         pf.CONFIRM_PLIST, pf.CONFIRM_SCRIPT, pf.CONFIRM_PREVIOUS, token_path, state_path)
             if os.path.lexists(p)]
    # Every reference we took: the module's and the watchdog's (at boot, after `pfctl -d`).
    tokens = [t for t in (saved.get('token'), seen['watchdog_token']) if t and t in seen['references']]
    changed_files = paths + ([pf.PF_CONF] if wanted_conf != pf_conf else [])
    diff = [file_diff(p, file_snapshot.read_text(p), '') for p in paths if p not in (state_path, token_path)]
    if wanted_conf != pf_conf:
        diff.append(file_diff(pf.PF_CONF, pf_conf, wanted_conf))
    if live:
        diff.append(file_diff('pfctl -a %s -s rules (live)' % pf.ANCHOR, live, ''))
    changed = bool(live or changed_files or tokens or seen['main_references'])
    if changed and not module.check_mode:
        # The watchdog and a pending rollback first, or they put back what is taken away here.
        pfctl.query(pf.launchd_argvs(False)[0])
        pfctl.query([pf.LAUNCHCTL, 'bootout', 'system/%s' % pf.CONFIRM_LABEL])
        if wanted_conf != pf_conf:
            pfctl.check_text(wanted_conf, pf.load_conf_argv)
            file_snapshot.write_text(pf.PF_CONF, wanted_conf)
        if wanted_conf is not None and (wanted_conf != pf_conf or seen['main_references']):
            pfctl.run(pf.load_conf_argv(pf.PF_CONF), 'pfctl failed to load %s' % pf.PF_CONF)
        pfctl.run(pf.flush_anchor_argv(), 'pfctl failed to flush the anchor')
        for token in tokens:
            # Our references only; PF stays enabled while others hold theirs.
            release_token(pfctl, token)
        for path in paths:
            os.remove(path)
        file_snapshot.remove_if_empty(pf.OWN_DIR)
        file_snapshot.remove_if_empty(state_dir)
    return dict(changed=changed, live_rules=live, changed_files=changed_files, diff=diff,
                summary=dict(anchor=pf.ANCHOR, anchor_changed=bool(live), pf_conf_changed=wanted_conf != pf_conf,
                             persist_changed=pf.LAUNCHD_PLIST in paths, tokens_released=len(tokens)))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            wildcard_units=dict(type='int', default=pf.WILDCARD_UNITS),
            restrict_endpoints_to_tunnel=dict(type='bool', default=True),
            persist=dict(type='bool', default=False),
            watchdog_interval=dict(type='int', default=pf.WATCHDOG_INTERVAL),
            endpoint_users=dict(type='list', elements='str', default=['0']),
            endpoint_preflight=dict(type='bool', default=True),
            confirm_timeout=dict(type='int', default=0),
            confirm=dict(type='bool', default=False),
            state_dir=dict(type='path', default='/var/db/vpnguard-killswitch'),
            **dict(evidence.argument_spec(), **policy_argument_spec(dict(uid=dict(type='int'), gid=dict(type='int'))))
        ),
        supports_check_mode=True,
    )
    if module.params['confirm']:
        confirmed = os.path.exists(pf.CONFIRM_PLIST)
        if confirmed and not module.check_mode:
            disarm_confirm(Pfctl(module))
        module.exit_json(changed=confirmed, confirmed=confirmed, confirm_pending=False)
    if module.params['confirm_timeout'] < 0:
        module.fail_json(msg='confirm_timeout: must be 0 (off) or a number of seconds', setting='confirm_timeout')
    # Bad input fails before anything on the host is read or run.
    policy, ruleset = validate(module) if module.params['state'] == 'present' else (None, None)
    if not os.path.exists(pf.PFCTL):
        module.fail_json(msg='%s not found: pf_killswitch runs on macOS only' % pf.PFCTL)
    if policy:
        try:
            preflight(module, policy)
        except PolicyError as e:
            module.fail_json(msg='The VPN client on this host could not use the policy, nothing was changed: %s' % e,
                             setting=e.setting)
    pfctl = Pfctl(module)
    state_path = os.path.join(module.params['state_dir'], STATE_FILE)
    try:
        if policy:
            result = present(module, policy, ruleset, pfctl, state_path)
        else:
            result = absent(module, pfctl, state_path)
        if policy and module.params['probe']:
            result.update(probe_host(module, policy, pfctl, result.pop('counter_base')))
    except PfError as e:
        module.fail_json(msg=str(e))
    result.pop('counter_base', None)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
