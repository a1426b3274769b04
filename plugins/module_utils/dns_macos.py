# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vpnguard maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""macOS backend of dns_lockdown: the tunnel's resolvers on every resolver path configd builds.

configd builds the system's resolver list (scutil --dns) from every
State:/Network/Service/<id>/DNS key; the primary service's servers become
resolver #1, the default, and what configd writes to /etc/resolv.conf (which
dig and host read). A key without domains is only a supplemental resolver,
whose place among the others is mDNSResponder's ordering; so besides a key of
our own (SupplementalMatchDomains "", SearchOrder 1), ServerAddresses is
replaced in every service's DNS key, the rest of each dictionary kept (scutil
`get`, `d.add`, `set`), as Mullvad does for every network service. Each key's
dictionary before the first change is saved and put back exactly on removal,
unless the system has written a fresh one since (a DHCP renewal), which is
then left alone. DHCP renewals rewrite the service keys, so the LaunchDaemon
runs the same script at boot and every BOOT_INTERVAL seconds.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

from ansible_collections.vpnguard.killswitch.plugins.module_utils import file_snapshot

SCUTIL = '/usr/sbin/scutil'
SERVICE = 'vpnguard-killswitch'
KEY = 'State:/Network/Service/%s/DNS' % SERVICE
ORDER = 1
MANIFEST = 'dns-macos.json'
BOOT_SCRIPT = '/etc/vpnguard-killswitch/dns.sh'
BOOT_INTERVAL = 30
# A service's DNS from DHCP (State:) and as set by hand in System Settings (Setup:, which
# configd prefers when it has servers); Mullvad's talpid-core watches and sets both.
SERVICE_PATTERNS = ('State:/Network/Service/[^/]+/DNS', 'Setup:/Network/Service/[^/]+/DNS')
BOOT_LABEL = 'com.vpnguard.killswitch.dns'
BOOT_PLIST = '/Library/LaunchDaemons/%s.plist' % BOOT_LABEL
# mDNSResponder keeps answers it got from the old resolvers until told.
RESOLV_CONF = '/etc/resolv.conf'
FLUSH_COMMANDS = (['/usr/bin/dscacheutil', '-flushcache'], ['/usr/bin/killall', '-HUP', 'mDNSResponder'])


def desired(servers):
    """Our key's dictionary, as parse_show() reads it back."""
    return {
        'ServerAddresses': [str(s) for s in servers],
        'SupplementalMatchDomains': [''],
        'SearchOrder': str(ORDER),
    }


def _add(key, value):
    if isinstance(value, list):
        return 'd.add %s * %s' % (key, ' '.join('""' if v == '' else v for v in value))
    if re.match(r'^\d+$', value):
        return 'd.add %s # %s' % (key, value)
    return 'd.add %s %s' % (key, value)


def set_script(dictionary, key=KEY):
    """scutil input that replaces key with dictionary."""
    lines = ['d.init'] + [_add(k, dictionary[k]) for k in sorted(dictionary)] + ['set %s' % key, 'quit']
    return '\n'.join(lines) + '\n'


def remove_script(key=KEY):
    return 'remove %s\nquit\n' % key


def show_script(key=KEY):
    return 'show %s\nquit\n' % key


def parse_show(text):
    """scutil's `show` output as a dict of strings and lists of strings; None when the key is absent.

    <dictionary> {
      SearchOrder : 1
      ServerAddresses : <array> {
        0 : 192.0.2.1
      }
    }
    """
    if not text or 'No such key' in text or '<dictionary>' not in text:
        return None
    result, array = {}, None
    for line in text.splitlines()[1:]:
        line = line.strip()
        if line == '}':
            array = None
            continue
        match = re.match(r'^(\S+) :(?: (.*))?$', line)
        if not match:
            continue
        name, value = match.group(1), match.group(2) or ''
        if array is not None:
            result[array].append('' if value == '""' else value)
        elif value == '<array> {':
            array = name
            result[name] = []
        else:
            result[name] = value
    return result


def list_script():
    return ''.join('list %s\n' % pattern for pattern in SERVICE_PATTERNS) + 'quit\n'


def parse_list(text):
    """The keys `scutil` `list` prints (  subKey [0] = State:/...), ours left out."""
    keys = re.findall(r'=\s*((?:State|Setup):/Network/Service/[^/\s]+/DNS)\s*$', text or '', re.MULTILINE)
    return sorted(k for k in set(keys) if k != KEY)


def override_script(keys, servers):
    """scutil input that replaces ServerAddresses in each key and keeps the rest of its dictionary."""
    lines = []
    for key in keys:
        lines += ['get %s' % key, _add('ServerAddresses', [str(s) for s in servers]), 'set %s' % key]
    return '\n'.join(lines + ['quit']) + '\n'


def parse_dns(text):
    """The nameservers of resolver #1 of `scutil --dns` (the default resolver), in order."""
    block = re.search(r'^resolver #1\n(.*?)(?:\n\n|\Z)', text or '', re.MULTILINE | re.DOTALL)
    return re.findall(r'nameserver\[\d+\]\s*:\s*(\S+)', block.group(1)) if block else []


def parse_resolv_conf(text):
    return re.findall(r'^\s*nameserver\s+(\S+)', text or '', re.MULTILINE)


def boot_shell(servers):
    """/bin/sh for the LaunchDaemon: our key, then every service's ServerAddresses, as present() sets them."""
    addresses = [str(s) for s in servers]
    return '''#!/bin/sh
# vpnguard.killswitch: managed by Ansible; the tunnel's resolvers on every resolver path.
%(set)s
for key in $(printf '%(lists)squit\\n' | %(scutil)s | sed -n 's/.*= *\\(S[a-z]*:.*\\/DNS\\)$/\\1/p'); do
    [ "$key" = %(own)s ] && continue
    printf 'get %%s\\nd.add ServerAddresses * %(servers)s\\nset %%s\\nquit\\n' "$key" "$key" | %(scutil)s
done
''' % dict(set="printf '%s' | %s" % (set_script(desired(addresses)).replace('%', '%%').replace('\n', '\\n'), SCUTIL),
           lists=''.join('list %s\\n' % pattern for pattern in SERVICE_PATTERNS), scutil=SCUTIL, own=KEY, servers=' '.join(addresses).replace('%', '%%'))


def boot_plist():
    """A LaunchDaemon that runs the boot script at boot and every BOOT_INTERVAL seconds (DHCP rewrites the keys)."""
    return ''.join([
        '<?xml version="1.0" encoding="UTF-8"?>\n',
        '<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n',
        '<!-- vpnguard.killswitch: managed by Ansible; sets the tunnel resolvers at boot -->\n',
        '<plist version="1.0">\n<dict>\n',
        '\t<key>Label</key>\n\t<string>%s</string>\n' % BOOT_LABEL,
        '\t<key>ProgramArguments</key>\n\t<array>\n\t\t<string>/bin/sh</string>\n\t\t<string>%s</string>\n'
        '\t</array>\n' % BOOT_SCRIPT,
        '\t<key>RunAtLoad</key>\n\t<true/>\n',
        '\t<key>StartInterval</key>\n\t<integer>%d</integer>\n' % BOOT_INTERVAL,
        '</dict>\n</plist>\n',
    ])


def _scutil(module, script):
    rc, out, err = module.run_command([SCUTIL], data=script, binary_data=True)
    if rc != 0:
        module.fail_json(msg='scutil failed: %s' % (err or out).strip(), script=script)
    return out


def _flush_cache(module):
    for argv in FLUSH_COMMANDS:
        module.run_command(argv)


def _boot_files(persist, script):
    return {BOOT_SCRIPT: script if persist else None, BOOT_PLIST: boot_plist() if persist else None}


def _sync_boot_files(module, files):
    return file_snapshot.sync(files, module.check_mode, own_directory=os.path.dirname(BOOT_SCRIPT))


def _describe(dictionary):
    return set_script(dictionary) if dictionary is not None else ''


def _services(module):
    """Every service's DNS key with its dictionary, as the store holds them now."""
    return dict((key, parse_show(_scutil(module, show_script(key)))) for key in parse_list(_scutil(module, list_script())))


def audit(module, servers):
    """Which resolvers macOS really asks first: resolver #1 of scutil --dns, and /etc/resolv.conf."""
    rc, out, err = module.run_command([SCUTIL, '--dns'])
    primary = parse_dns(out if rc == 0 else '')
    resolv = parse_resolv_conf(file_snapshot.read_text(RESOLV_CONF))
    wanted = [str(s) for s in servers]
    drift = []
    if not primary or any(a not in wanted for a in primary):
        drift.append('scutil --dns orders %s first, not the tunnel\'s resolvers' % (', '.join(primary) or 'no resolver'))
    if any(a not in wanted for a in resolv):
        drift.append('%s names %s' % (RESOLV_CONF, ', '.join(resolv)))
    return dict(primary_resolvers=primary, resolv_conf=resolv, dns_drift=drift)


def present(module, servers, state_dir):
    manifest = os.path.join(state_dir, MANIFEST)
    wanted = desired(servers)
    script = set_script(wanted)
    before = audit(module, servers)
    live = parse_show(_scutil(module, show_script()))
    services = _services(module)
    addresses = [str(s) for s in servers]
    stale = sorted(k for k, v in services.items() if v is not None and v.get('ServerAddresses') != addresses)
    changed = live != wanted or bool(stale)
    if changed and not module.check_mode:
        saved = file_snapshot.load_json(manifest)
        if saved is None:
            # The keys as they were before the first change, saved before they are touched.
            saved = {'key': KEY, 'previous': live, 'services': {}}
        for key in stale:
            saved.setdefault('services', {}).setdefault(key, services[key])
        file_snapshot.save(manifest, saved)
        if live != wanted:
            _scutil(module, script)
        if stale:
            _scutil(module, override_script(stale, servers))
        _flush_cache(module)
    boot = _sync_boot_files(module, _boot_files(module.params['persist'], boot_shell(servers)))
    diff = [dict(before_header=KEY, after_header=KEY, before=_describe(live), after=script)]
    diff += [dict(before_header=k, after_header=k, before=_describe(services[k]),
                  after=_describe(dict(services[k], ServerAddresses=addresses))) for k in stale]
    return dict(before, changed=changed or bool(boot), mode='scutil',
                changed_files=([KEY] if live != wanted else []) + stale + boot, diff=diff)


def absent(module, state_dir):
    manifest = os.path.join(state_dir, MANIFEST)
    saved = file_snapshot.load_json(manifest)
    live = parse_show(_scutil(module, show_script()))
    previous = saved.get('previous') if saved else None
    ours = (saved or {}).get('services') or {}
    services = _services(module) if ours else {}
    # A key still holding our servers goes back exactly; one the system rewrote since is left as it is.
    ours_now = (live or {}).get('ServerAddresses')
    restore = sorted(k for k in ours if k in services and services[k] is not None
                     and services[k].get('ServerAddresses') == ours_now)
    changed = live != previous or saved is not None
    if changed and not module.check_mode:
        _scutil(module, remove_script() if previous is None else set_script(previous))
        for key in restore:
            _scutil(module, set_script(ours[key], key))
        _flush_cache(module)
        if saved is not None:
            os.remove(manifest)
            file_snapshot.remove_if_empty(state_dir)
    boot = _sync_boot_files(module, _boot_files(False, None))
    diff = [dict(before_header=KEY, after_header=KEY, before=_describe(live), after=_describe(previous))]
    diff += [dict(before_header=k, after_header=k, before=_describe(services[k]), after=_describe(ours[k]))
             for k in restore]
    return dict(changed=changed or bool(boot), changed_files=([KEY] if changed else []) + restore + boot,
                unrestored=[], diff=diff)
