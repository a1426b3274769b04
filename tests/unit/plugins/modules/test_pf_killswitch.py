"""pf_killswitch run in-process against a fake pfctl, with the macOS paths moved into a temporary directory."""

import json
import os

import pytest

from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args

from ansible_collections.vpnguard.killswitch.plugins.module_utils import pf
from ansible_collections.vpnguard.killswitch.plugins.modules import pf_killswitch

from fake_pfctl import STOCK_PF_CONF, FakePf

POLICY = {'tunnel_interfaces': ['utun*'], 'wildcard_units': 4,
          'endpoints': [{'address': '203.0.113.1', 'port': 51820, 'protocol': 'udp'}],
          'dns_servers': ['192.0.2.1'],
          'management': [{'cidr': '198.18.0.0/24', 'port': 22, 'protocol': 'tcp'}]}


class Exit(Exception):
    def __init__(self, result, failed):
        super(Exit, self).__init__(result.get('msg'))
        self.result, self.failed = result, failed


def exit_json(self, **result):
    raise Exit(result, False)


def fail_json(self, **result):
    raise Exit(result, True)


@pytest.fixture
def mac(tmp_path, monkeypatch):
    """A macOS host in tmp_path: pf.conf as shipped, pfctl faked, state_dir private."""
    etc = tmp_path / 'etc'
    (etc / 'pf.anchors').mkdir(parents=True)
    (etc / 'pf.conf').write_text(STOCK_PF_CONF)
    (etc / 'pf.anchors' / 'com.apple').write_text('anchor "200.AirDrop/*"\n')
    daemons = tmp_path / 'LaunchDaemons'
    daemons.mkdir()
    monkeypatch.setattr(pf, 'PF_CONF', str(etc / 'pf.conf'))
    monkeypatch.setattr(pf, 'ANCHOR_FILE', str(etc / 'pf.anchors' / pf.ANCHOR))
    monkeypatch.setattr(pf, 'LAUNCHD_PLIST', str(daemons / 'com.vpnguard.killswitch.plist'))
    monkeypatch.setattr(pf, 'with_hook', lambda text, anchor_file=None, _w=pf.with_hook: _w(text, pf.ANCHOR_FILE))
    monkeypatch.setattr(pf, 'has_hook', lambda text, anchor_file=None, _h=pf.has_hook: _h(text, pf.ANCHOR_FILE))
    monkeypatch.setattr(pf_killswitch.os.path, 'exists',
                        lambda p, _e=os.path.exists: True if p == pf.PFCTL else _e(p))
    fake = FakePf()
    monkeypatch.setattr(basic.AnsibleModule, 'run_command', lambda self, argv, **kw: fake(argv))
    monkeypatch.setattr(basic.AnsibleModule, 'exit_json', exit_json)
    monkeypatch.setattr(basic.AnsibleModule, 'fail_json', fail_json)
    fake.tmp = fake.root = tmp_path
    fake.state_dir = str(tmp_path / 'db')
    return fake


def with_(**changes):
    args = dict(POLICY)
    args.update(changes)
    return args


def run(mac, check=False, diff=False, **args):
    args.setdefault('state_dir', mac.state_dir)
    if check:
        args['_ansible_check_mode'] = True
    if diff:
        args['_ansible_diff'] = True
    with patch_module_args(args):
        with pytest.raises(Exit) as e:
            pf_killswitch.main()
    return e.value.result if not e.value.failed else dict(e.value.result, failed=True)


def host_files(mac):
    return dict((str(p.relative_to(mac.tmp)), p.read_text()) for p in sorted(mac.tmp.rglob('*')) if p.is_file())


def test_check_mode_checks_with_pfctl_and_changes_nothing(mac):
    before = host_files(mac)
    result = run(mac, check=True, diff=True, **POLICY)
    assert not result.get("failed"), result
    assert result["changed"]
    assert host_files(mac) == before
    assert mac.anchors == {} and not mac.enabled
    assert ['/sbin/pfctl', '-n', '-a', pf.ANCHOR] == mac.calls[-2][:4] or any(
        c[:4] == ['/sbin/pfctl', '-n', '-a', pf.ANCHOR] for c in mac.calls)
    headers = [d['after_header'] for d in result['diff']]
    assert pf.ANCHOR_FILE in headers and pf.PF_CONF in headers


def test_apply_loads_one_anchor_hooks_pf_conf_and_enables_pf_then_is_idempotent(mac):
    result = run(mac, **POLICY)
    assert result['changed'] and result['summary']['anchor_changed']
    assert mac.enabled and len(mac.tokens) == 1
    assert 'block drop out quick all' in mac.anchors[pf.ANCHOR][0]
    assert mac.main.endswith('anchor "com.vpnguard.killswitch" all\n')
    assert open(pf.PF_CONF).read() == pf.with_hook(STOCK_PF_CONF)
    assert open(pf.ANCHOR_FILE).read() == result['ruleset']
    assert mac.states_flushed == 1
    saved = json.load(open(os.path.join(mac.state_dir, 'pf_killswitch.json')))
    assert saved['token'] in mac.tokens
    assert not any('-d' in c for c in mac.calls), 'PF is never disabled wholesale'

    calls = len(mac.calls)
    again = run(mac, **POLICY)
    assert not again['changed']
    loads = [c for c in mac.calls[calls:] if '-f' in c or '-E' in c or '-F' in c]
    assert loads == [], 'an idempotent run loaded or flushed something'


def test_an_anchor_flushed_behind_its_back_is_drift_and_is_reloaded(mac):
    run(mac, **POLICY)
    mac.anchors.pop(pf.ANCHOR)
    result = run(mac, check=True, diff=True, **POLICY)
    assert result['changed'] and result['summary']['anchor_changed']
    assert any(d['before_header'].endswith('(live)') for d in result['diff'])
    assert run(mac, **POLICY)['changed'] and pf.ANCHOR in mac.anchors
    assert not run(mac, **POLICY)['changed']


def test_a_restored_pf_conf_gets_the_hook_back_and_pf_reenabled(mac):
    run(mac, **POLICY)
    open(pf.PF_CONF, 'w').write(STOCK_PF_CONF)  # a macOS update
    mac.main = 'anchor "com.apple/*" all\n'
    mac.enabled = False
    result = run(mac, **POLICY)
    assert result['changed'] and result['summary']['pf_conf_changed']
    assert pf.has_hook(open(pf.PF_CONF).read()) and pf.references_anchor(mac.main) and mac.enabled


def test_a_changed_policy_replaces_the_anchor_in_one_load(mac):
    run(mac, **POLICY)
    calls = len(mac.calls)
    result = run(mac, **with_(allow_lan=True))
    assert result['changed']
    anchor_loads = [c for c in mac.calls[calls:] if c[:3] == ['/sbin/pfctl', '-a', pf.ANCHOR] and '-f' in c]
    assert len(anchor_loads) == 1
    assert any('<vpnguard_lan>' in r for r in mac.anchors[pf.ANCHOR][0])


def test_persist_writes_the_launch_daemon_and_false_removes_it(mac):
    result = run(mac, persist=True, **POLICY)
    assert pf.LAUNCHD_PLIST in result['changed_files']
    assert open(pf.LAUNCHD_PLIST).read() == pf.launchd_plist()
    assert not run(mac, persist=True, **POLICY)['changed']
    assert run(mac, persist=False, **POLICY)['changed'] and not os.path.exists(pf.LAUNCHD_PLIST)


def test_absent_removes_only_what_it_owns_and_puts_pf_conf_back_byte_for_byte(mac):
    before = host_files(mac)
    mac.anchors['com.apple'] = (['anchor "200.AirDrop/*" all'], {})
    mac.tokens.add('42')  # another tool's reference
    run(mac, persist=True, **POLICY)
    assert run(mac, state='absent', check=True)['changed'] and pf.ANCHOR in mac.anchors
    removed = run(mac, state='absent', diff=True)
    assert removed['changed']
    assert host_files(mac) == before
    assert pf.ANCHOR not in mac.anchors and 'com.apple' in mac.anchors
    assert mac.tokens == {'42'} and mac.enabled, 'only our enable reference is released'
    assert not run(mac, state='absent')['changed']


def test_bad_input_fails_naming_the_setting_before_pfctl_runs(mac):
    result = run(mac, **with_(tunnel_interfaces=['wg0', 'utun1*']))
    assert result['failed'] and result['setting'] == 'tunnel_interfaces[1]'
    result = run(mac, **with_(dns_servers=['192.0.2.300']))
    assert result['failed'] and result['setting'] == 'dns_servers[0]'
    assert mac.calls == []


def test_a_load_that_fails_leaves_the_previous_anchor(mac):
    run(mac, **POLICY)
    previous = mac.anchors[pf.ANCHOR]
    mac.fail_on = '-f'
    result = run(mac, **with_(allow_lan=True))
    assert result['failed'] and 'nothing was changed' in result['msg']
    assert mac.anchors[pf.ANCHOR] == previous
