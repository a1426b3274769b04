# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vpnguard maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""macOS backend of dns_lockdown: a resolver of our own in configd's dynamic store.

configd builds the system's resolver list (scutil --dns) from every
State:/Network/Service/<id>/DNS key. Ours is a service of no interface whose
resolver matches every name (SupplementalMatchDomains "") and comes first
(SearchOrder 1, lower than any service's), so it
answers before the physical interfaces' resolvers. The store is in memory:
what was under the key before (normally nothing) is saved and put back, and
a LaunchDaemon can feed the same scutil script in again at boot.
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
BOOT_SCRIPT = '/etc/vpnguard-killswitch/dns.scutil'
BOOT_LABEL = 'com.vpnguard.killswitch.dns'
BOOT_PLIST = '/Library/LaunchDaemons/%s.plist' % BOOT_LABEL
# mDNSResponder keeps answers it got from the old resolvers until told.
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


def boot_plist():
    """A LaunchDaemon that feeds the saved scutil script to scutil at boot; no shell involved."""
    return ''.join([
        '<?xml version="1.0" encoding="UTF-8"?>\n',
        '<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n',
        '<!-- vpnguard.killswitch: managed by Ansible; sets the tunnel resolvers at boot -->\n',
        '<plist version="1.0">\n<dict>\n',
        '\t<key>Label</key>\n\t<string>%s</string>\n' % BOOT_LABEL,
        '\t<key>ProgramArguments</key>\n\t<array>\n\t\t<string>%s</string>\n\t</array>\n' % SCUTIL,
        '\t<key>StandardInPath</key>\n\t<string>%s</string>\n' % BOOT_SCRIPT,
        '\t<key>RunAtLoad</key>\n\t<true/>\n',
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


def present(module, servers, state_dir):
    manifest = os.path.join(state_dir, MANIFEST)
    wanted = desired(servers)
    script = set_script(wanted)
    live = parse_show(_scutil(module, show_script()))
    changed = live != wanted
    if changed and not module.check_mode:
        if file_snapshot.load_json(manifest) is None:
            # The key as it was before the first change, saved before it is touched.
            file_snapshot.save(manifest, {'key': KEY, 'previous': live})
        _scutil(module, script)
        _flush_cache(module)
    boot = _sync_boot_files(module, _boot_files(module.params['persist'], script))
    return dict(changed=changed or bool(boot), mode='scutil', changed_files=([KEY] if changed else []) + boot,
                diff=[dict(before_header=KEY, after_header=KEY, before=_describe(live), after=script)])


def absent(module, state_dir):
    manifest = os.path.join(state_dir, MANIFEST)
    saved = file_snapshot.load_json(manifest)
    live = parse_show(_scutil(module, show_script()))
    previous = saved.get('previous') if saved else None
    changed = live != previous or saved is not None
    if changed and not module.check_mode:
        _scutil(module, remove_script() if previous is None else set_script(previous))
        _flush_cache(module)
        if saved is not None:
            os.remove(manifest)
            file_snapshot.remove_if_empty(state_dir)
    boot = _sync_boot_files(module, _boot_files(False, None))
    return dict(changed=changed or bool(boot), changed_files=([KEY] if changed else []) + boot, unrestored=[],
                diff=[dict(before_header=KEY, after_header=KEY, before=_describe(live), after=_describe(previous))])
