"""pf_killswitch run in-process against a fake pfctl, with the macOS paths moved into a temporary directory."""

import errno
import json
import os
import plistlib
import socket
import subprocess
import sys

import pytest

from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args

from ansible_collections.vpnguard.killswitch.plugins.module_utils import pf, probe_darwin
from ansible_collections.vpnguard.killswitch.plugins.modules import pf_killswitch

import fake_pfctl
from fake_pfctl import STOCK_PF_CONF, FakePf
from pf_model import packet

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
    own = etc / 'vpnguard-killswitch'
    # raising=False: the same tests run against the module before issue 12, which lacks these names.
    monkeypatch.setattr(pf, 'OWN_DIR', str(own), raising=False)
    monkeypatch.setattr(pf, 'RULESET_FILE', str(own / 'pf.conf'), raising=False)
    monkeypatch.setattr(pf, 'WATCHDOG_SCRIPT', str(own / 'watchdog.sh'), raising=False)
    monkeypatch.setattr(pf, 'with_hook', lambda text, anchor_file=None, _w=pf.with_hook: _w(text, pf.ANCHOR_FILE))
    monkeypatch.setattr(pf, 'has_hook', lambda text, anchor_file=None, _h=pf.has_hook: _h(text, pf.ANCHOR_FILE))
    monkeypatch.setattr(pf_killswitch.os.path, 'exists',
                        lambda p, _e=os.path.exists: True if p == pf.PFCTL else _e(p))
    # pfctl as a program too, for the watchdog script run by a real /bin/sh.
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'pfctl').write_text('#!/bin/sh\nexec %s %s "$@"\n' % (sys.executable, fake_pfctl.__file__))
    (bin_dir / 'pfctl').chmod(0o755)
    monkeypatch.setattr(pf, 'PFCTL', str(bin_dir / 'pfctl'))
    (bin_dir / 'launchctl').write_text('#!/bin/sh\nexec %s %s --launchctl "$@"\n' % (sys.executable, fake_pfctl.__file__))
    (bin_dir / 'launchctl').chmod(0o755)
    monkeypatch.setattr(pf, 'LAUNCHCTL', str(bin_dir / 'launchctl'), raising=False)
    monkeypatch.setattr(pf, 'CONFIRM_PLIST', str(daemons / 'com.vpnguard.killswitch.confirm.plist'), raising=False)
    monkeypatch.setattr(pf, 'CONFIRM_SCRIPT', str(own / 'confirm-rollback.sh'), raising=False)
    monkeypatch.setattr(pf, 'CONFIRM_PREVIOUS', str(own / 'confirm-previous.anchor'), raising=False)
    for name in ('PF_CONF', 'ANCHOR_FILE', 'LAUNCHD_PLIST', 'OWN_DIR', 'RULESET_FILE',
                 'WATCHDOG_SCRIPT', 'CONFIRM_PLIST', 'CONFIRM_SCRIPT', 'CONFIRM_PREVIOUS'):
        # Every host path the module writes must be moved here: these tests run as root.
        assert not hasattr(pf, name) or getattr(pf, name).startswith(str(tmp_path)), name
    fake = FakePf()
    monkeypatch.setattr(basic.AnsibleModule, 'run_command', lambda self, argv, **kw: fake(argv))
    monkeypatch.setattr(basic.AnsibleModule, 'exit_json', exit_json)
    fake.warnings = []
    monkeypatch.setattr(basic.AnsibleModule, 'warn', lambda self, msg: fake.warnings.append(msg))
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
    result = dict(e.value.result, warnings=list(mac.warnings))
    del mac.warnings[:]
    return result if not e.value.failed else dict(result, failed=True)


def host_files(mac):
    return dict((str(p.relative_to(mac.tmp)), p.read_text()) for p in sorted(mac.tmp.rglob('*')) if p.is_file())


def test_check_mode_checks_with_pfctl_and_changes_nothing(mac):
    before = host_files(mac)
    result = run(mac, check=True, diff=True, **POLICY)
    assert not result.get("failed"), result
    assert result["changed"]
    assert host_files(mac) == before
    assert mac.anchors == {} and not mac.enabled
    assert any(c[:4] == [pf.PFCTL, '-n', '-a', pf.ANCHOR] for c in mac.calls)
    headers = [d['after_header'] for d in result['diff']]
    assert pf.ANCHOR_FILE in headers and pf.PF_CONF in headers


def test_apply_loads_one_anchor_hooks_pf_conf_and_enables_pf_then_is_idempotent(mac):
    result = run(mac, **POLICY)
    assert result['changed'] and result['summary']['anchor_changed']
    assert mac.enabled and len(mac.tokens) == 1
    assert 'block drop out quick inet all label "refused_out_v4"' in mac.anchors[pf.ANCHOR][0]
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
    anchor_loads = [c for c in mac.calls[calls:] if c[:3] == [pf.PFCTL, '-a', pf.ANCHOR] and '-f' in c]
    assert len(anchor_loads) == 1
    assert any('<vpnguard_lan>' in r for r in mac.anchors[pf.ANCHOR][0])


def test_persist_writes_and_starts_the_watchdog_and_false_stops_and_removes_it(mac):
    result = run(mac, persist=True, **POLICY)
    assert pf.LAUNCHD_PLIST in result['changed_files'] and pf.WATCHDOG_SCRIPT in result['changed_files']
    assert open(pf.LAUNCHD_PLIST).read() == pf.launchd_plist()
    assert mac.jobs == {pf.LAUNCHD_LABEL}
    assert not run(mac, persist=True, **POLICY)['changed']
    assert run(mac, persist=False, **POLICY)['changed'] and not os.path.exists(pf.LAUNCHD_PLIST)
    assert mac.jobs == set() and not os.path.exists(pf.WATCHDOG_SCRIPT)


def test_absent_removes_only_what_it_owns_and_puts_pf_conf_back_byte_for_byte(mac):
    before = host_files(mac)
    mac.anchors['com.apple'] = (['anchor "200.AirDrop/*" all'], {})
    other = mac.switch.start_ref()  # another tool's reference
    run(mac, persist=True, **POLICY)
    assert run(mac, state='absent', check=True)['changed'] and pf.ANCHOR in mac.anchors
    removed = run(mac, state='absent', diff=True)
    assert removed['changed']
    assert host_files(mac) == before
    assert pf.ANCHOR not in mac.anchors and 'com.apple' in mac.anchors
    assert mac.tokens == {other} and mac.enabled, 'only our enable reference is released'
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


# What a Mac does to the kill switch, run against PF's model ---------------------------------------------

OUT_EN0 = packet('out', iface='en0', dst='198.51.100.7', dport=443, uid=501)


def run_job(mac, plist_path, now=False):
    """What launchd runs for a LaunchDaemon: its ProgramArguments, a script under a real /bin/sh.

    now: the time the job waits for has passed (its last argument, seconds, becomes 0).
    """
    with open(plist_path, 'rb') as f:
        argv = plistlib.load(f)['ProgramArguments']
    if now:
        argv = argv[:-1] + ['0']
    if argv[0] != '/bin/sh':
        return mac(argv)
    state = str(mac.tmp / 'fake-pf.pickle')
    mac.save(state)
    done = subprocess.run(['sh'] + argv[1:], env=dict(os.environ, FAKE_PF_STATE=state), check=False,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    mac.__dict__.update(FakePf.load(state).__dict__)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def boot(mac):
    """A reboot: PF starts empty and disabled; Apple's com.apple.pfctl job loads /etc/pf.conf, then ours runs."""
    mac.reboot()
    mac(['/sbin/pfctl', '-f', pf.PF_CONF])
    if os.path.exists(pf.LAUNCHD_PLIST):
        run_job(mac, pf.LAUNCHD_PLIST)


def test_issue12_point1_after_a_macos_update_and_reboot_pf_still_evaluates_the_anchor(mac):
    run(mac, persist=True, **POLICY)
    open(pf.PF_CONF, 'w').write(STOCK_PF_CONF)  # the update restores the stock file, then reboots
    boot(mac)
    assert mac.enabled and pf.references_anchor(mac.main)
    assert not mac.send(OUT_EN0), 'after the update the kill switch was off until the next Ansible run'
    # ... and the audit says what happened.
    audit = run(mac, check=True, persist=True, **POLICY)
    assert any('lacks the kill switch block' in d for d in audit['drift']), audit['drift']


def test_issue12_point1_a_ruleset_that_fails_to_load_at_boot_fails_closed(mac):
    run(mac, persist=True, **POLICY)
    open(pf.ANCHOR_FILE, 'w').write('pass out all with garbage\n')  # a damaged anchor file
    boot(mac)
    assert mac.enabled
    assert not mac.send(OUT_EN0), 'PF was enabled with no rules: the boot failed open'
    os.remove(pf.RULESET_FILE)  # and the ruleset file gone too
    boot(mac)
    assert mac.enabled
    assert not mac.send(OUT_EN0), 'PF was enabled with no rules: the boot failed open'
    # Management still reaches the host, so that it can be repaired.
    assert mac.send(packet('in', iface='en0', src='198.18.0.1', dst='198.18.0.2', sport=50000, dport=22))


def test_issue12_point2_another_holders_release_does_not_stop_pf(mac):
    other = mac.switch.start_ref()  # Mullvad or IVPN enabled PF before us
    run(mac, **POLICY)
    assert mac(['/sbin/pfctl', '-X', other])[0] == 0
    assert mac.enabled, 'PF stopped with the other tool\'s reference: the module held none of its own'
    assert not mac.send(OUT_EN0)


def test_issue12_point2_pfctl_d_by_another_tool_is_reported_and_undone_by_the_watchdog(mac):
    run(mac, persist=True, **POLICY)
    with open(pf.LAUNCHD_PLIST, 'rb') as f:
        job = plistlib.load(f)
    assert job['WatchPaths'] == [pf.PF_CONF] and job['StartInterval'] == pf.WATCHDOG_INTERVAL
    mac(['/sbin/pfctl', '-d'])  # stops PF and invalidates every token
    assert mac.send(OUT_EN0), 'control: with PF disabled the packet leaks'
    audit = run(mac, check=True, persist=True, **POLICY)
    assert 'PF is disabled' in audit['drift']
    assert 'PF enable reference (token) of the kill switch is missing' in audit['drift']
    run_job(mac, pf.LAUNCHD_PLIST)  # the next StartInterval
    assert mac.enabled and not mac.send(OUT_EN0)
    assert open(os.path.join(mac.state_dir, pf.WATCHDOG_TOKEN)).read().strip() in mac.tokens


def test_issue12_point2_the_watchdog_reloads_when_something_loads_the_stock_pf_conf(mac):
    run(mac, persist=True, **POLICY)
    open(pf.PF_CONF, 'w').write(STOCK_PF_CONF)
    mac(['/sbin/pfctl', '-f', pf.PF_CONF])  # another tool reloads /etc/pf.conf: our anchor is unhooked
    assert mac.send(OUT_EN0), 'control: the unhooked anchor decides nothing'
    run_job(mac, pf.LAUNCHD_PLIST)  # WatchPaths fires
    assert not mac.send(OUT_EN0)


TCP_ENDPOINT = with_(endpoints=[{'address': '203.0.113.1', 'port': 443, 'protocol': 'tcp'}])


def test_issue12_point3_a_tcp_tunnel_and_tunnel_connections_survive_a_policy_change(mac):
    run(mac, **TCP_ENDPOINT)
    tunnel = packet('out', iface='en0', dst='203.0.113.1', sport=50123, dport=443, uid=0, flags='S')
    inner = packet('out', iface='utun1', src='10.64.0.2', dst='198.51.100.7', sport=40001, dport=443, flags='S')
    assert mac.send(tunnel) and mac.send(inner)
    reply = inner._replace(direction='in', src=inner.dst, dst=inner.src, sport=443, dport=40001, flags='SA')
    assert mac.send(reply)
    run(mac, **dict(TCP_ENDPOINT, allow_lan=True))  # any change of the anchor
    assert mac.send(tunnel._replace(flags='A')), 'OpenVPN over TCP lost its connection with the change'
    assert mac.send(reply._replace(flags='A')), 'a connection through the tunnel lost its state'


def test_issue12_point3_states_the_new_policy_does_not_allow_are_ended(mac):
    run(mac, **TCP_ENDPOINT)
    old = packet('out', iface='en0', dst='203.0.113.1', sport=50123, dport=443, uid=0)
    assert mac.send(old)
    run(mac, **with_(endpoints=[{'address': '203.0.113.9', 'port': 443, 'protocol': 'tcp'}]))
    assert not mac.send(old._replace(flags='A')), 'a connection to a removed endpoint outlived the policy'
    assert [c for c in mac.calls if '-k' in c] == [[pf.PFCTL, '-k', '0.0.0.0/0', '-k', '203.0.113.1']]


def test_issue12_point8_absent_disables_pf_the_boot_job_enabled(mac):
    run(mac, persist=True, **POLICY)
    boot(mac)
    assert mac.enabled
    result = run(mac, state='absent')
    assert result['changed']
    assert not mac.enabled, 'a reference the kill switch took (at boot) kept PF enabled after removal'
    assert not run(mac, state='absent')['changed']


def test_issue12_point8_absent_fails_when_pf_keeps_our_reference(mac):
    run(mac, **POLICY)
    mac.fail_on = '-X'
    result = run(mac, state='absent')
    assert result.get('failed') and 'could not release' in result['msg']


def test_issue12_point6_foreign_anchors_and_nat_pass_are_reported(mac):
    run(mac, **POLICY)
    mac.anchors['mullvad'] = (['block drop out quick all'], {})
    mac.nat['com.apple'] = 'nat pass on bridge100 inet from 192.168.2.0/24 to any -> (en0)\n'
    audit = run(mac, check=True, **POLICY)
    assert 'foreign PF anchor mullvad (a reload of the main ruleset unhooks it)' in audit['drift']
    assert any(d.startswith('translation rule passes packets around the filter: nat pass') for d in audit['drift'])
    assert any('mullvad' in w for w in audit.get('warnings', []))


def test_issue12_point8_utun_wildcard_and_gid_exceptions_warn(mac):
    result = run(mac, **with_(exceptions=[{'gid': 100}]))
    warnings = ' '.join(result.get('warnings', []))
    assert 'utun* trusts every utun interface' in warnings and 'effective (primary) group' in warnings
    refused = run(mac, **with_(exceptions=[{'gid': 20}]))
    assert refused['failed'] and refused['setting'] == 'exceptions[0].gid'


@pytest.fixture
def wireguard_app(mac, monkeypatch):
    """The App Store WireGuard app installed, with uid 501 logged in."""
    app = mac.tmp / 'Applications' / 'WireGuard.app'
    app.mkdir(parents=True)
    monkeypatch.setattr(pf, 'WIREGUARD_APP', str(app), raising=False)
    monkeypatch.setattr(pf_killswitch, 'console_uid', lambda: 501, raising=False)
    return mac


def test_issue12_point7_a_policy_the_wireguard_app_cannot_use_is_refused_naming_the_setting(wireguard_app):
    mac = wireguard_app
    before = host_files(mac)
    result = run(mac, **POLICY)
    assert result.get('failed'), 'the tunnel of the WireGuard app would silently never come up'
    assert result['setting'] == 'endpoint_users' and 'killswitch_pf_endpoint_users' in result['msg']
    assert host_files(mac) == before and mac.calls == []


def test_issue12_point7_the_documented_setting_lets_the_wireguard_app_through_and_no_one_else(wireguard_app):
    mac = wireguard_app
    result = run(mac, endpoint_users=['0', 'console'], **POLICY)
    assert not result.get('failed'), result
    assert 'user { 0 501 }' in result['ruleset']
    out = packet('out', iface='en0', proto='udp', dst='203.0.113.1', sport=51000, dport=51820)
    assert mac.send(out._replace(uid=501)) and mac.send(out._replace(uid=0, sport=51001))
    assert not mac.send(out._replace(uid=502, sport=51002))


def test_issue12_point7_openvpn_dropping_to_nobody_is_found_in_its_config(mac, monkeypatch):
    config = mac.tmp / 'openvpn' / 'client.conf'
    config.parent.mkdir()
    config.write_text('client\nremote 203.0.113.1 51820\nuser nobody\ngroup nobody\n')
    monkeypatch.setattr(pf, 'OPENVPN_CONFIGS', (str(mac.tmp / 'openvpn' / '*.conf'),), raising=False)
    monkeypatch.setattr(pf_killswitch, 'uid_of', lambda name: 4294967294 if name == 'nobody' else None, raising=False)
    refused = run(mac, **POLICY)
    assert refused.get('failed') and refused['setting'] == 'endpoint_users' and 'user nobody' in refused['msg']
    assert not run(mac, endpoint_users=['0', '4294967294'], **POLICY).get('failed')
    assert not run(mac, **with_(restrict_endpoints_to_tunnel=False)).get('failed')


def test_issue12_commit_confirmed_arms_a_launchd_rollback_that_confirm_stops(mac):
    run(mac, **POLICY)
    result = run(mac, confirm_timeout=60, **with_(allow_lan=True))
    assert result['changed'] and result['confirm_pending']
    assert pf.CONFIRM_LABEL in mac.jobs
    assert b'<integer>' not in open(pf.CONFIRM_PLIST, 'rb').read() and '<string>60</string>' in open(pf.CONFIRM_PLIST).read()
    confirmed = run(mac, confirm=True)
    assert confirmed['changed'] and confirmed['confirmed']
    assert pf.CONFIRM_LABEL not in mac.jobs and not os.path.exists(pf.CONFIRM_PLIST)
    assert not run(mac, confirm=True)['changed']
    assert not run(mac, confirm_timeout=60, **with_(allow_lan=True))['changed'], 'no change, no timer'


def test_issue12_commit_confirmed_an_unconfirmed_change_is_rolled_back_by_the_job(mac):
    previous = run(mac, **POLICY)['ruleset']
    listing = list(mac.anchors[pf.ANCHOR][0])
    run(mac, confirm_timeout=60, **with_(allow_lan=True))
    run(mac, confirm_timeout=60, **with_(allow_lan=True, doh_servers=['198.51.100.9']))  # keeps the first rollback
    assert any('<vpnguard_lan>' in r for r in mac.anchors[pf.ANCHOR][0])
    run_job(mac, pf.CONFIRM_PLIST, now=True)  # the controller never confirmed
    assert mac.anchors[pf.ANCHOR][0] == listing and open(pf.ANCHOR_FILE).read() == previous
    assert pf.CONFIRM_LABEL not in mac.jobs and not os.path.exists(pf.CONFIRM_PLIST)


# Issue 15: the evidence in the audit (counters, log, live probe) on macOS.

def test_counters_are_the_anchors_labels_named_as_on_linux(mac):
    result = run(mac, **with_(exceptions=[{'uid': 501}], doh_servers=['198.51.100.53']))
    assert sorted(result['counters']) == ['exception_uid_501', 'refused_dns_outside', 'refused_dns_resolver',
                                          'refused_doh', 'refused_endpoint', 'refused_in_v4', 'refused_in_v6',
                                          'refused_out_v4', 'refused_out_v6']
    assert all(c['packets'] == 0 for c in result['counters'].values())
    assert result['counters']['refused_out_v4']['counts'] == 'outbound IPv4 refused outside the tunnel'
    assert not mac.send(packet(iface='en0', dst='198.51.100.7', uid=4242))
    assert not mac.send(packet(iface='en0', proto='udp', dst='198.18.0.1', dport=53, uid=4242))
    assert mac.send(packet(iface='en0', dst='198.51.100.7', uid=501))
    counters = run(mac, check=True, **with_(exceptions=[{'uid': 501}], doh_servers=['198.51.100.53']))['counters']
    assert (counters['refused_out_v4']['packets'], counters['refused_dns_outside']['packets'],
            counters['exception_uid_501']['packets']) == (1, 1, 1)


def test_counters_count_on_when_the_module_reloads_the_anchor_and_start_again_after_a_reboot(mac):
    run(mac, **POLICY)
    for sport in (40001, 40002, 40003):
        mac.send(packet(iface='en0', dst='198.51.100.7', sport=sport, uid=4242))
    # A policy change reloads the anchor: PF zeroes its labels, the module carries them on.
    result = run(mac, **with_(allow_lan=True))
    assert result['summary']['anchor_changed']
    assert mac.labels(pf.ANCHOR).startswith('refused_dns_resolver 0 0 0')
    assert result['counters']['refused_out_v4']['packets'] == 3
    mac.send(packet(iface='en0', dst='198.51.100.7', uid=4242))
    assert run(mac, check=True, **with_(allow_lan=True))['counters']['refused_out_v4']['packets'] == 4
    mac.reboot()
    assert run(mac, **with_(allow_lan=True))['counters']['refused_out_v4']['packets'] == 0


def test_log_marks_the_rules_its_level_names_and_creates_pflog0(mac):
    result = run(mac, **with_(exceptions=[{'uid': 501}], log='refused'))
    assert 'block drop out log quick inet all label "refused_out_v4"' in result['ruleset']
    assert 'pass out quick proto { udp tcp } user 501 flags any keep state label "exception_uid_501"' in result['ruleset']
    assert 'pflog0' in mac.cloned and result['changed']
    result = run(mac, **with_(exceptions=[{'uid': 501}], log='exceptions'))
    assert 'block drop out quick inet all label "refused_out_v4"' in result['ruleset']
    assert 'pass out log quick proto { udp tcp } user 501' in result['ruleset']
    assert ' log ' not in run(mac, **POLICY)['ruleset']
    mac.cloned.clear()
    audit = run(mac, check=True, **with_(log='all'))
    assert 'pflog0 was missing, so PF logged nothing of what log asks for' in audit['drift']
    assert not mac.cloned


# The tunnel the recorded ifconfig has (macos_outputs.IFCONFIG_A).
ON_UTUN4 = with_(tunnel_interfaces=['utun4'])


class MacSocket:
    """A socket whose packets go through the fake Mac's PF as xnu sends them.

    Bound (IP_BOUND_IF) packets leave by their interface, others by `routes`. A packet PF drops:
    IPv4 senders are not told (ip_output drops pf_af_hook()'s error), IPv6 ones get EHOSTUNREACH
    (pf_inet6_hook). A non-blocking connect is in progress once its SYN went to the interface.
    """

    names = {11: 'en0'}
    routes = {socket.AF_INET: 'utun4', socket.AF_INET6: 'en0'}

    def __init__(self, mac, family, kind):
        self.mac, self.family, self.kind, self.iface, self.source = mac, family, kind, None, None

    def setblocking(self, flag):
        pass

    def setsockopt(self, level, option, value):
        self.iface = self.names[value]

    def bind(self, address):
        self.source = address[0]

    def _send(self, destination, proto):
        iface = self.iface or self.routes.get(self.family)
        if iface is None:
            raise OSError(errno.ENETUNREACH, 'no route')
        p = packet(iface=iface, proto=proto, src=self.source, dst=destination[0], dport=destination[1], uid=0, gid=0)
        if not self.mac.send(p) and self.family == socket.AF_INET6:
            raise OSError(errno.EHOSTUNREACH, 'pf')

    def connect(self, destination):
        self._send(destination, 'tcp')
        raise OSError(errno.EINPROGRESS, 'in progress')

    def sendto(self, data, destination):
        self._send(destination, 'udp')
        return len(data)

    def close(self):
        pass


@pytest.fixture
def mac_sockets(mac, monkeypatch):
    monkeypatch.setattr(probe_darwin, 'interface_index', lambda name: {'en0': 11}[name])
    monkeypatch.setattr(probe_darwin.socket, 'socket', lambda family, kind: MacSocket(mac, family, kind))
    return mac


def test_the_probe_finds_pf_refusing_every_check_and_reports_tunnel_and_routes(mac_sockets):
    mac = mac_sockets
    result = run(mac, **dict(ON_UTUN4, probe=True))
    checks = dict((c['check'], c) for c in result['probe']['checks'])
    assert not result['probe']['leaked']
    assert checks['udp ipv4 bound to en0']['verdict'] == 'refused'
    assert 'refused_out_v4 +1' in checks['udp ipv4 bound to en0']['detail']
    assert 'refused_out_v6 +1' in checks['tcp ipv6 bound to en0']['detail']
    assert 'EHOSTUNREACH' in checks['tcp ipv6 bound to en0']['detail']
    assert 'refused_dns_outside +1' in checks['dns ipv4 bound to en0']['detail']
    # Unbound, IPv4 DNS goes by the tunnel's 0/1 route to a resolver that is not the tunnel's.
    assert 'refused_dns_resolver +1' in checks["dns ipv4 to a resolver that is not the tunnel's"]['detail']
    assert checks['udp ipv4 bound to en1']['verdict'] == 'not run'
    assert len([c for c in checks.values() if c['verdict'] == 'refused']) == 8
    assert result['tunnel']['up'] and result['tunnel']['interfaces'][0]['interface'] == 'utun4'
    assert result['routes_outside_tunnel'][0] == 'default via 198.18.0.1 dev en0 ipv4'
    # Its own refusals are counted after it, for the next audit's baseline; the counters are from before it.
    assert result['probe']['counters_after']['refused_out_v4'] == 2
    assert result['counters']['refused_out_v4']['packets'] == 0


def test_the_probe_says_leaked_when_pf_passes_it_and_the_report_fails_the_host(mac_sockets):
    from ansible_collections.vpnguard.killswitch.plugins.filter.audit_report import audit_report
    mac = mac_sockets
    run(mac, **ON_UTUN4)
    # The control: another tool's anchor flushed ours (the main ruleset still references it, so it is drift).
    mac.anchors[pf.ANCHOR] = ([], {})
    mac.parsed.pop(pf.ANCHOR)
    result = run(mac, check=True, **dict(ON_UTUN4, probe=True))
    checks = dict((c['check'], c) for c in result['probe']['checks'])
    assert result['probe']['leaked']
    assert checks['udp ipv4 bound to en0']['verdict'] == 'LEAKED'
    report = audit_report({'mac': {'drift': result['drift'], 'result': result}})
    assert not report['hosts']['mac']['compliant'] and report['summary']['leaked'] == ['mac']
    assert 'LEAKED: udp ipv4 bound to en0' in report['hosts']['mac']['drift']


def test_the_report_counts_a_macs_attempts_since_the_previous_audit(mac_sockets):
    from ansible_collections.vpnguard.killswitch.plugins.filter.audit_report import audit_report
    mac = mac_sockets
    run(mac, **ON_UTUN4)
    first = run(mac, check=True, **dict(ON_UTUN4, probe=True))
    report = audit_report({'mac': {'drift': first['drift'], 'result': first}})
    assert report['hosts']['mac']['compliant'], report['hosts']['mac']
    assert report['hosts']['mac']['tunnel']['up'] and report['hosts']['mac']['routes_outside_tunnel']
    mac.send(packet(iface='en0', dst='198.51.100.7', uid=4242))
    mac.send(packet(iface='en0', proto='udp', dst='203.0.113.1', dport=51820, uid=4242))
    # A policy change between the audits reloads the anchor; the carried counters keep the count.
    run(mac, **dict(ON_UTUN4, allow_lan=True))
    second = run(mac, check=True, **dict(ON_UTUN4, allow_lan=True, probe=True))
    report = audit_report({'mac': {'drift': second['drift'], 'result': second}}, report)
    counters = report['hosts']['mac']['counters']
    assert counters['refused_out_v4']['packets'] == 1 and counters['refused_endpoint']['packets'] == 1
    assert report['hosts']['mac']['counters_since'] == 'the previous audit'
    assert report['summary']['refused_attempts'] == 2
