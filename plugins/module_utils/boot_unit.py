# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vpnguard maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The systemd unit that lays the Linux kill switch at boot, and its enable link.

The link is all `systemctl enable` makes for this unit; made directly it
works offline and in check mode, where systemctl needs a running systemd.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.vpnguard.killswitch.plugins.module_utils.file_snapshot import Link

UNIT_NAME = 'vpnguard-killswitch.service'
UNIT_PATH = '/etc/systemd/system/' + UNIT_NAME
WANTED_BY = 'sysinit.target'
LINK_PATH = '/etc/systemd/system/%s.wants/%s' % (WANTED_BY, UNIT_NAME)
# sd_booted(3): systemd runs as the init system when this directory exists.
SYSTEMD_RUNNING_MARKER = '/run/systemd/system'

UNIT = '''\
# Managed by vpnguard.killswitch (nft_killswitch persist=true); local edits are replaced.
# Lays the kill switch at boot, before any network interface comes up, so
# nothing leaks before the VPN connects.
[Unit]
Description=VPN kill switch (vpnguard.killswitch nftables table and routing guard)
DefaultDependencies=no
Wants=network-pre.target
Before=network-pre.target shutdown.target
# nftables.service flushes the whole ruleset when it starts or reloads:
# come after it, and lay the table again whenever it does.
After=nftables.service local-fs.target
PartOf=nftables.service
ReloadPropagatedFrom=nftables.service
Conflicts=shutdown.target
ConditionPathExists={ruleset}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={nft} -f {ruleset}
ExecStart=/bin/sh {guard}
ExecReload={nft} -f {ruleset}
ExecReload=/bin/sh {guard}

[Install]
WantedBy={wanted_by}
'''


def files(nft_command=None, ruleset=None, guard_script=None):
    """The unit and its enable link as file_snapshot.sync() takes them; no arguments: both absent."""
    if nft_command is None:
        return {UNIT_PATH: None, LINK_PATH: None}
    text = UNIT.format(nft=nft_command, ruleset=ruleset, guard=guard_script, wanted_by=WANTED_BY)
    return {UNIT_PATH: text, LINK_PATH: Link(UNIT_PATH)}


def systemd_running():
    return os.path.isdir(SYSTEMD_RUNNING_MARKER)


def activate(module, unit_changed):
    """Where systemd runs, have it know the unit and keep it active, so that a reload of
    nftables.service (which flushes the ruleset) lays the kill switch again.

    Returns whether anything was (or in check mode would be) done.
    """
    if not systemd_running():
        return False
    systemctl = module.get_bin_path('systemctl', required=True)
    if unit_changed and not module.check_mode:
        module.run_command([systemctl, 'daemon-reload'], check_rc=True)
    rc = module.run_command([systemctl, 'is-active', '--quiet', UNIT_NAME])[0]
    if rc == 0:
        return False
    if not module.check_mode:
        module.run_command([systemctl, 'start', UNIT_NAME], check_rc=True)
    return True


def forget(module, unit_removed):
    """Where systemd runs, drop a removed unit from its view."""
    if unit_removed and systemd_running() and not module.check_mode:
        module.run_command([module.get_bin_path('systemctl', required=True), 'daemon-reload'], check_rc=True)
