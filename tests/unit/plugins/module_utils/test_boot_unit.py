"""boot_unit: what it asks of systemd, with systemctl replaced by a recorder."""

import pytest

from ansible_collections.vpnguard.killswitch.plugins.module_utils import boot_unit


class FakeModule:
    def __init__(self, check_mode=False, active=True):
        self.check_mode, self.active, self.commands = check_mode, active, []

    def get_bin_path(self, name, required=False):
        return '/usr/bin/' + name

    def run_command(self, argv, check_rc=False):
        self.commands.append(argv[1:])
        return (0 if self.active or argv[1] != 'is-active' else 3), '', ''


@pytest.fixture
def systemd(tmp_path, monkeypatch):
    monkeypatch.setattr(boot_unit, 'SYSTEMD_RUNNING_MARKER', str(tmp_path))


def test_nothing_is_asked_where_systemd_does_not_run(tmp_path, monkeypatch):
    monkeypatch.setattr(boot_unit, 'SYSTEMD_RUNNING_MARKER', str(tmp_path / 'absent'))
    module = FakeModule(active=False)
    assert not boot_unit.activate(module, unit_changed=True)
    boot_unit.forget(module, unit_removed=True)
    assert module.commands == []


def test_an_active_unit_is_left_alone_and_a_changed_one_reloaded(systemd):
    module = FakeModule()
    assert not boot_unit.activate(module, unit_changed=False)
    assert module.commands == [['is-active', '--quiet', boot_unit.UNIT_NAME]]
    module = FakeModule()
    assert not boot_unit.activate(module, unit_changed=True)
    assert module.commands[0] == ['daemon-reload']


def test_an_inactive_unit_is_started_but_not_in_check_mode(systemd):
    module = FakeModule(active=False)
    assert boot_unit.activate(module, unit_changed=False)
    assert module.commands[-1] == ['start', boot_unit.UNIT_NAME]
    module = FakeModule(check_mode=True, active=False)
    assert boot_unit.activate(module, unit_changed=True)
    assert module.commands == [['is-active', '--quiet', boot_unit.UNIT_NAME]]


def test_a_removed_unit_is_forgotten(systemd):
    module = FakeModule()
    boot_unit.forget(module, unit_removed=True)
    boot_unit.forget(FakeModule(check_mode=True), unit_removed=True)
    assert module.commands == [['daemon-reload']]


def test_the_unit_runs_the_boot_files_and_is_enabled_by_a_link():
    files = boot_unit.files('/usr/sbin/nft', '/etc/v/ruleset.nft', '/etc/v/routing-guard.sh')
    unit = files[boot_unit.UNIT_PATH]
    assert 'ExecStart=/usr/sbin/nft -f /etc/v/ruleset.nft\nExecStart=/bin/sh /etc/v/routing-guard.sh\n' in unit
    assert 'Before=network-pre.target' in unit and 'PartOf=nftables.service' in unit
    assert files[boot_unit.LINK_PATH] == boot_unit.UNIT_PATH
    assert boot_unit.files() == {boot_unit.UNIT_PATH: None, boot_unit.LINK_PATH: None}
