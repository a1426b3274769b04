"""The C# module_util compiles with Debian's mono-mcs as C# 5 (Windows PowerShell's compiler), and its host-side
decisions (tunnel binding, DNS rollback, read-back of LUIDs) run under mono with the expected results.

mcs has the P/Invoke surface, not the WFP runtime: the native calls are compiled, not run. Without mcs the tests
skip locally and fail in CI (CI=true), where scripts/bootstrap installs it.
"""

import os
import shutil
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(HERE))))
UTIL = os.path.join(REPO, 'plugins', 'module_utils', 'WfpKillSwitch.cs')
PROBE = os.path.join(HERE, 'csharp', 'WfpKillSwitchProbe.cs')
NAMESPACE = 'ansible_collections.vpnguard.killswitch.plugins.module_utils.WfpKillSwitch'


def _tool(name):
    path = shutil.which(name)
    if path is None:
        if os.environ.get('CI', '').lower() == 'true':
            pytest.fail('%s is missing in CI: scripts/bootstrap installs it (Debian mono-mcs)' % name)
        pytest.skip('%s is not installed here (Debian mono-mcs)' % name)
    return path


def _mcs(tmp_path, *sources, **kw):
    out = str(tmp_path / kw.get('out', 'out.dll'))
    target = kw.get('target', 'library')
    return subprocess.run([_tool('mcs'), '-langversion:5', '-warnaserror', '-target:' + target, '-out:' + out]
                          + list(sources), capture_output=True, text=True, check=False), out


def test_the_util_compiles_as_csharp_5_without_warnings(tmp_path):
    result = _mcs(tmp_path, UTIL)[0]
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_util_is_named_as_ansible_loads_collection_csharp_utils():
    with open(UTIL) as f:
        source = f.read()
    assert 'namespace %s\n' % NAMESPACE in source
    with open(os.path.join(REPO, 'plugins', 'modules', 'win_wfp_killswitch.ps1')) as f:
        assert '#AnsibleRequires -CSharpUtil ..module_utils.WfpKillSwitch\n' in f.read()


def test_the_compile_check_does_catch_broken_csharp(tmp_path):
    broken = tmp_path / 'Broken.cs'
    broken.write_text('namespace X { public class Y { public int Z() { return "a"; } } }\n')
    assert _mcs(tmp_path, str(broken))[0].returncode != 0
    newer = tmp_path / 'Newer.cs'
    newer.write_text('namespace X { public class Y { public string Z(int a) { return $"{a}"; } } }\n')
    assert _mcs(tmp_path, str(newer))[0].returncode != 0, 'C# 6 is refused, as Windows PowerShell refuses it'


@pytest.fixture(scope='module')
def probe(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp('probe')
    result, exe = _mcs(tmp_path, UTIL, PROBE, target='exe', out='probe.exe')
    assert result.returncode == 0, result.stdout + result.stderr
    run = subprocess.run([_tool('mono'), exe], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    return dict(line.split('=', 1) for line in run.stdout.splitlines())


def test_aliases_bind_to_luids_and_a_pattern_without_adapter_binds_to_none(probe):
    assert probe['bind_present'] == 'Wintun*:0;openvpn*:11;wg0:7', 'case-insensitive, "*" a prefix wildcard'
    assert probe['bind_never'] == 'wg0:0', 'LUID 0 matches no interface: an empty condition would match all'
    assert probe['bind_star_is_prefix_only'] == 'False,True'


def test_luids_are_read_however_they_were_boxed(probe):
    assert probe['bind_boxed'] == 'tap0:9;tun0:8;wg0:7;wg1:10'


def test_point4_a_tunnel_down_during_the_run_keeps_its_luid(probe):
    assert probe['bind_down'] == 'wg0:7'


def test_luids_read_back_turn_into_patterns_and_strangers_stay_visible(probe):
    assert probe['unbind'] == 'luid:9,wg0', 'a pattern only when all its LUIDs are there; tun* (8) is not'


def test_point6_dns_rollback_restores_dhcp_as_dhcp_by_guid_and_skips_missing_adapters(probe):
    assert probe['rollback'] == 'tun1:set:192.0.2.53 2001:db8::53;gone:skip:198.51.100.1;wg0:reset:'


def test_ipv6_read_back_is_written_as_python_writes_it(probe):
    import ipaddress
    assert probe['ipv6_text'] == str(ipaddress.ip_address('ff02::1:ff00:0'))
