#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vpnguard maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: dns_lockdown
short_description: Make names resolve only through the VPN tunnel's resolvers
version_added: "0.1.0"
description:
  - Points the host's resolver at the tunnel's resolvers the way the host manages DNS, and puts
    everything it changed back exactly as it was on O(state=absent).
  - On Linux it detects the resolver mode. With systemd-resolved it adds a drop-in with the servers
    and the C(~.) routing domain; with NetworkManager it stops NetworkManager from writing
    C(/etc/resolv.conf) and writes the file; with a plain C(/etc/resolv.conf) it writes the file and,
    where dhclient has an enter-hooks directory, a hook that keeps dhclient from rewriting it.
  - On macOS it adds a resolver of its own to configd's dynamic store, the key
    C(State:/Network/Service/vpnguard-killswitch/DNS), with the servers, the empty match domain (every
    name) and search order 1, so that it answers before any interface's resolver (C(scutil --dns) shows
    it); it is set by a C(scutil) script on standard input and the DNS cache is flushed. What was under
    the key before is saved and put back on removal.
  - Every file is saved before the first change (bytes, mode, owner, or the symlink) and restored
    byte for byte on removal. If the saved originals are missing or corrupt, removal deletes the
    files that are only the collection's and reports those it could not restore.
  - The firewall side (DNS only to these servers and only through the tunnel, DNS over HTTPS
    resolvers blocked outside it) is M(vpnguard.killswitch.nft_killswitch)'s.
author:
  - vpnguard maintainers (@vpnguard)
options:
  state:
    description: V(present) locks DNS down; V(absent) restores what the host had.
    type: str
    choices: [present, absent]
    default: present
  servers:
    description: The tunnel's resolvers (IPv4 or IPv6 addresses). Required when O(state=present).
    type: list
    elements: str
    default: []
  mode:
    description:
      - How the host resolves; V(auto) detects it from C(/etc/resolv.conf) on Linux and is V(scutil)
        on macOS, the only mode there.
    type: str
    choices: [auto, resolv.conf, systemd-resolved, networkmanager, scutil]
    default: auto
  persist:
    description:
      - macOS only. configd's dynamic store does not survive a reboot, so V(true) writes the scutil script
        to C(/etc/vpnguard-killswitch/dns.scutil) and a LaunchDaemon,
        C(/Library/LaunchDaemons/com.vpnguard.killswitch.dns.plist), that feeds it to C(scutil) at boot.
        V(false) removes them. Linux resolver files persist by themselves.
    type: bool
    default: false
  block_browser_doh:
    description:
      - Turn off the browsers' own DNS over HTTPS by enterprise policy (Firefox C(policies.json),
        Chromium and Chrome managed policies), so that they use the system resolver.
    type: bool
    default: false
  state_dir:
    description: Where the originals are saved.
    type: path
    default: /var/lib/vpnguard-killswitch
extends_documentation_fragment:
  - vpnguard.killswitch.attributes
attributes:
  platform:
    support: full
    platforms: [linux, darwin]
    description: Target OS/families that can be operated against.
notes:
  - Supports C(check_mode) and C(diff); the diff shows each resolver file that would change.
  - Linux and macOS. On Windows the resolver (an NRPT rule and the tunnel interface's servers) is set by
    M(vpnguard.killswitch.win_wfp_killswitch).
'''

EXAMPLES = r'''
- name: Resolve only through the tunnel's resolver
  vpnguard.killswitch.dns_lockdown:
    servers: [192.0.2.1, 2001:db8:ff::1]
    block_browser_doh: true

- name: Put the host's resolver configuration back as it was
  vpnguard.killswitch.dns_lockdown:
    state: absent
'''

RETURN = r'''
mode:
  description: The resolver mode used.
  returned: when O(state=present)
  type: str
  sample: systemd-resolved
changed_files:
  description: Files written, restored or removed by this run; on macOS also the dynamic store key.
  returned: always
  type: list
  elements: str
  sample: [/etc/resolv.conf]
unrestored:
  description: Files the collection changed whose originals were not saved, left as they are.
  returned: when O(state=absent)
  type: list
  elements: str
  sample: [/etc/resolv.conf]
primary_resolvers:
  description: On macOS, the resolvers C(scutil --dns) asked first (resolver 1) when the run began.
  returned: on macOS, when O(state=present)
  type: list
  elements: str
  sample: [10.64.0.1]
resolv_conf:
  description: On macOS, the nameservers C(/etc/resolv.conf) named when the run began (what tools that read the file ask).
  returned: on macOS, when O(state=present)
  type: list
  elements: str
  sample: [10.64.0.1]
dns_drift:
  description:
    - On macOS, where the resolvers macOS asked when the run began were not the tunnel's (empty when none);
      the role reports it as drift.
  returned: on macOS, when O(state=present)
  type: list
  elements: str
  sample: ["scutil --dns orders 192.168.1.1 first, not the tunnel's resolvers"]
setting:
  description:
    - The option whose value was refused (C(servers[1]), C(mode)), so that a caller can name what its user
      set; the role names its C(killswitch_*) variable from it.
  returned: when the input was refused
  type: str
  sample: servers[0]
'''

import os
import platform

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vpnguard.killswitch.plugins.module_utils import dns_linux, dns_macos, file_snapshot
from ansible_collections.vpnguard.killswitch.plugins.module_utils.policy import PolicyError, parse_addresses

MANIFEST = 'dns-originals.json'


def file_diff(path, before, after):
    return dict(before_header=path, after_header=path, before=before or '', after=after or '')


def reload_resolver(module, mode):
    """Tell the running resolver service; without systemd running there is nothing to tell."""
    if not os.path.isdir('/run/systemd/system'):
        return
    unit = {'systemd-resolved': 'systemd-resolved.service', 'networkmanager': 'NetworkManager.service'}.get(mode)
    if unit:
        module.run_command(['systemctl', 'try-reload-or-restart', unit], check_rc=True)


def present(module, manifest_path):
    params = module.params
    try:
        servers = parse_addresses('servers', params['servers'])
    except PolicyError as e:
        module.fail_json(msg='Invalid DNS lockdown, nothing was changed: %s' % e, setting=e.setting)
    if not servers:
        module.fail_json(msg='servers: at least one resolver is required', setting='servers')
    mode = dns_linux.detect_mode() if params['mode'] == 'auto' else params['mode']
    saved = file_snapshot.load(manifest_path) or {}
    wanted = dns_linux.desired_files(mode, servers, params['block_browser_doh'])

    changes = [(path, content) for path, content in sorted(wanted.items())
               if os.path.islink(path) or file_snapshot.read_text(path) != content]
    stale = [path for path in sorted(saved) if path not in wanted]
    diffs = [file_diff(p, file_snapshot.read_text(p), c) for p, c in changes]
    if not module.check_mode and (changes or stale):
        for path in dict(changes):
            if path not in saved:
                saved[path] = file_snapshot.capture(path, module)
        file_snapshot.save(manifest_path, saved, module)  # originals first, so a crash cannot lose them
        for path in stale:
            file_snapshot.restore(saved.pop(path), module)
        for path, content in changes:
            file_snapshot.write_text(path, content, 0o755 if path == dns_linux.DHCLIENT_HOOK else 0o644, module)
        file_snapshot.save(manifest_path, saved, module)
        reload_resolver(module, mode)
    return dict(changed=bool(changes or stale), mode=mode, changed_files=[path for path, content in changes] + stale,
                diff=diffs)


def absent(module, manifest_path):
    saved = file_snapshot.load(manifest_path)
    unrestored = []
    if saved is None:
        # Without the originals, remove only what is ours by name and say what stays.
        targets = [p for p in dns_linux.OWNED_PATHS if os.path.lexists(p)]
        for path in (dns_linux.RESOLV_CONF, dns_linux.FIREFOX_POLICIES):
            text = file_snapshot.read_text(path) or ''
            if text.startswith(dns_linux.HEADER) or 'DNSOverHTTPS' in text:
                unrestored.append(path)
        changed_files = targets + ([manifest_path] if os.path.lexists(manifest_path) else [])
        if not module.check_mode:
            for path in changed_files:
                os.remove(path)
            file_snapshot.remove_if_empty(os.path.dirname(manifest_path))
    else:
        changed_files = sorted(saved)
        if not module.check_mode:
            for path in changed_files:
                file_snapshot.restore(saved[path], module)
            os.remove(manifest_path)
            file_snapshot.remove_if_empty(os.path.dirname(manifest_path))
    if changed_files and not module.check_mode:
        reload_resolver(module, dns_linux.detect_mode())
    if unrestored:
        module.warn('original not saved, left as it is: %s' % ', '.join(unrestored))
    return dict(changed=bool(changed_files), changed_files=changed_files, unrestored=unrestored)


def darwin(module):
    params = module.params
    if params['mode'] not in ('auto', 'scutil'):
        module.fail_json(msg='mode: macOS resolves through configd; use auto or scutil', setting='mode')
    if params['block_browser_doh']:
        module.warn('block_browser_doh is not applied on macOS; browsers there take it from configuration profiles')
    if params['state'] == 'absent':
        return dns_macos.absent(module, params['state_dir'])
    try:
        servers = parse_addresses('servers', params['servers'])
    except PolicyError as e:
        module.fail_json(msg='Invalid DNS lockdown, nothing was changed: %s' % e, setting=e.setting)
    if not servers:
        module.fail_json(msg='servers: at least one resolver is required', setting='servers')
    return dns_macos.present(module, servers, params['state_dir'])


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type='str', default='present', choices=['present', 'absent']),
            servers=dict(type='list', elements='str', default=[]),
            mode=dict(type='str', default='auto', choices=['auto'] + list(dns_linux.MODES) + ['scutil']),
            block_browser_doh=dict(type='bool', default=False),
            persist=dict(type='bool', default=False),
            state_dir=dict(type='path', default='/var/lib/vpnguard-killswitch'),
        ),
        supports_check_mode=True,
    )
    if platform.system() == 'Darwin':
        module.exit_json(**darwin(module))
    if module.params['mode'] == 'scutil':
        module.fail_json(msg='mode: scutil is the macOS mode; this host runs %s' % platform.system(), setting='mode')
    manifest_path = os.path.join(module.params['state_dir'], MANIFEST)
    if module.params['state'] == 'present':
        result = present(module, manifest_path)
    else:
        result = absent(module, manifest_path)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
