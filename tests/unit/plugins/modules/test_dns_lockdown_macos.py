"""dns_lockdown on macOS, in-process: a fake scutil keeps configd's dynamic store in memory."""

import json
import os
import re
import subprocess
import sys

import pytest

from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args

from ansible_collections.vpnguard.killswitch.plugins.module_utils import dns_macos
from ansible_collections.vpnguard.killswitch.plugins.modules import dns_lockdown


class Exit(Exception):
    def __init__(self, result, failed):
        super(Exit, self).__init__(result.get('msg'))
        self.result, self.failed = result, failed


class FakeScutil:
    """scutil's d.init / d.add / set / remove / show, on a dict of keys."""

    def __init__(self):
        self.store, self.calls, self.flushed = {}, [], 0

    def __call__(self, argv, data=None, **kw):
        self.calls.append((list(argv), data))
        if argv[0] != dns_macos.SCUTIL:
            self.flushed += 1
            return 0, '', ''
        if argv[1:] == ['--dns']:
            return 0, self.dns(), ''
        out, current = '', None
        for line in data.splitlines():
            words = line.split(' ')
            if words[0] == 'd.init':
                current = {}
            elif words[0] == 'list':
                keys = sorted(k for k in self.store if re.match('^%s$' % words[1], k))
                out += ''.join('  subKey [%d] = %s\n' % (i, k) for i, k in enumerate(keys)) or '  no subKey(s).\n'
            elif words[0] == 'get':
                current = dict(self.store.get(words[1], {}))
            elif words[0] == 'd.add':
                key, kind, values = words[1], words[2], words[3:]
                values = ['' if v == '""' else v for v in values]
                current[key] = values if kind == '*' else values[0] if kind == '#' else ' '.join([kind] + values)
            elif words[0] == 'set':
                self.store[words[1]] = current
            elif words[0] == 'remove':
                self.store.pop(words[1], None)
            elif words[0] == 'show':
                out += self.show(words[1])
        return 0, out, ''

    def dns(self):
        """scutil --dns as configd orders it: the primary service's resolver first, supplemental ones after."""
        primary = self.store.get(self.primary, {}) if getattr(self, 'primary', None) else {}
        others = [v for k, v in sorted(self.store.items()) if k != getattr(self, 'primary', None)]
        out = 'DNS configuration\n\n'
        for n, resolver in enumerate([primary] + others, 1):
            servers = enumerate(resolver.get('ServerAddresses', []))
            out += 'resolver #%d\n' % n + ''.join('  nameserver[%d] : %s\n' % (i, a) for i, a in servers) + '\n'
        return out

    def show(self, key):
        if key not in self.store:
            return '  No such key\n'
        lines = ['<dictionary> {']
        for k, v in sorted(self.store[key].items()):
            if isinstance(v, list):
                lines += ['  %s : <array> {' % k] + [('    %d : %s' % (i, x)).rstrip() for i, x in enumerate(v)] + ['  }']
            else:
                lines.append('  %s : %s' % (k, v))
        return '\n'.join(lines + ['}']) + '\n'


def exit_json(self, **result):
    raise Exit(result, False)


def fail_json(self, **result):
    raise Exit(result, True)


@pytest.fixture
def mac(tmp_path, monkeypatch):
    fake = FakeScutil()
    monkeypatch.setattr(dns_lockdown.platform, 'system', lambda: 'Darwin')
    monkeypatch.setattr(dns_macos, 'BOOT_SCRIPT', str(tmp_path / 'etc' / 'vpnguard-killswitch' / 'dns.scutil'))
    monkeypatch.setattr(dns_macos, 'BOOT_PLIST', str(tmp_path / 'LaunchDaemons' / 'dns.plist'))
    monkeypatch.setattr(basic.AnsibleModule, 'run_command', lambda self, argv, **kw: fake(argv, **kw))
    monkeypatch.setattr(basic.AnsibleModule, 'exit_json', exit_json)
    monkeypatch.setattr(basic.AnsibleModule, 'fail_json', fail_json)
    monkeypatch.setattr(dns_macos, 'RESOLV_CONF', str(tmp_path / 'resolv.conf'), raising=False)
    fake.state_dir = str(tmp_path / 'state')
    fake.tmp = tmp_path
    return fake


def run(mac, check=False, **args):
    args.setdefault('state_dir', mac.state_dir)
    if check:
        args['_ansible_check_mode'] = True
    with patch_module_args(args):
        with pytest.raises(Exit) as e:
            dns_lockdown.main()
    return dict(e.value.result, failed=e.value.failed)


def test_the_tunnel_resolver_is_set_by_scutil_and_removal_leaves_nothing(mac):
    assert run(mac, check=True, servers=['192.0.2.1'])['changed'] and mac.store == {}
    result = run(mac, servers=['192.0.2.1', '2001:db8:ff::1'])
    assert result['changed'] and result['mode'] == 'scutil' and not result['failed']
    sets = [data for argv, data in mac.calls if data and data.startswith('d.init')]
    assert sets == [dns_macos.set_script(dns_macos.desired(['192.0.2.1', '2001:db8:ff::1']))]
    assert mac.flushed == 2, 'the DNS cache was not flushed'
    assert not run(mac, servers=['192.0.2.1', '2001:db8:ff::1'])['changed']

    removed = run(mac, state='absent')
    assert removed['changed'] and mac.store == {}
    assert not os.path.exists(mac.state_dir)
    assert not run(mac, state='absent')['changed']


def test_a_key_that_was_there_before_is_put_back(mac):
    before = {'ServerAddresses': ['198.51.100.53'], 'SearchOrder': '200'}
    mac.store[dns_macos.KEY] = dict(before)
    run(mac, servers=['192.0.2.1'])
    run(mac, servers=['192.0.2.2'])  # the original is kept from the first change, not this one
    run(mac, state='absent')
    assert mac.store[dns_macos.KEY] == before


def test_persist_writes_the_boot_script_and_daemon_and_absent_removes_them(mac):
    run(mac, servers=['192.0.2.1'], persist=True)
    assert open(dns_macos.BOOT_SCRIPT).read() == dns_macos.boot_shell(['192.0.2.1'])
    assert re.search('StartInterval', open(dns_macos.BOOT_PLIST).read())
    run(mac, state='absent')
    assert not os.path.exists(dns_macos.BOOT_SCRIPT) and not os.path.exists(dns_macos.BOOT_PLIST)


def test_bad_servers_fail_with_the_setting_before_scutil_runs(mac):
    result = run(mac, servers=['192.0.2.1', 'resolver.example'])
    assert result['failed'] and result['setting'] == 'servers[1]' and mac.calls == []
    assert run(mac, servers=['192.0.2.1'], mode='systemd-resolved')['setting'] == 'mode'


WIFI = 'State:/Network/Service/0A1B-WIFI/DNS'
ETHERNET = 'State:/Network/Service/2C3D-ETHERNET/DNS'
ETHERNET_MANUAL = 'Setup:/Network/Service/2C3D-ETHERNET/DNS'


def dhcp_host(mac):
    """Two services with resolvers from DHCP, Wi-Fi the primary one; /etc/resolv.conf as configd writes it."""
    mac.store[WIFI] = {'ServerAddresses': ['198.51.100.53'], 'DomainName': 'example.net'}
    mac.store[ETHERNET] = {'ServerAddresses': ['203.0.113.53']}
    mac.store[ETHERNET_MANUAL] = {'ServerAddresses': ['203.0.113.99']}  # set by hand in System Settings
    mac.primary = WIFI
    (mac.tmp / 'resolv.conf').write_text('nameserver 198.51.100.53\n')


def test_issue12_point5_the_tunnel_resolvers_become_the_primary_resolver_of_every_service(mac):
    dhcp_host(mac)
    audit = run(mac, check=True, servers=['192.0.2.1'])
    assert audit['primary_resolvers'] == ['198.51.100.53'] and audit['dns_drift'], 'the audit names resolver #1'
    run(mac, servers=['192.0.2.1'])
    assert mac.store[WIFI] == {'ServerAddresses': ['192.0.2.1'], 'DomainName': 'example.net'}
    assert mac.store[ETHERNET]['ServerAddresses'] == ['192.0.2.1']
    assert mac.store[ETHERNET_MANUAL]['ServerAddresses'] == ['192.0.2.1'], 'a resolver set by hand wins over DHCP\'s'
    after = run(mac, check=True, servers=['192.0.2.1'])
    assert after['primary_resolvers'] == ['192.0.2.1'] and not after['changed']


def test_issue12_point5_rollback_puts_every_service_back_exactly(mac):
    dhcp_host(mac)
    before = dict((k, dict(v)) for k, v in mac.store.items())
    run(mac, servers=['192.0.2.1'])
    run(mac, servers=['192.0.2.1'])
    run(mac, state='absent')
    assert mac.store == before


def test_issue12_point5_a_key_the_system_rewrote_since_is_left_alone(mac):
    dhcp_host(mac)
    run(mac, servers=['192.0.2.1'])
    mac.store[ETHERNET] = {'ServerAddresses': ['203.0.113.54']}  # a DHCP renewal
    run(mac, state='absent')
    assert mac.store[ETHERNET] == {'ServerAddresses': ['203.0.113.54']}
    assert mac.store[WIFI] == {'ServerAddresses': ['198.51.100.53'], 'DomainName': 'example.net'}


def test_issue12_point5_the_boot_script_sets_every_service_under_a_real_shell(mac, tmp_path):
    """The LaunchDaemon's /bin/sh script, run by sh against a scutil that keeps the store in a file."""
    dhcp_host(mac)
    store = tmp_path / 'store.json'
    store.write_text(json.dumps(mac.store))
    scutil = tmp_path / 'scutil'
    # conftest first: on ansible-core before 2.19 it supplies what this test module imports.
    unit_tests = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    scutil.write_text('#!%s\nimport json, sys\nsys.path[:0] = [%r, %r]\nimport conftest\n'
                      'from test_dns_lockdown_macos import FakeScutil\n'
                      'fake = FakeScutil(); fake.store = json.load(open(%r))\n'
                      'rc, out, err = fake([%r], data=sys.stdin.read())\n'
                      'json.dump(fake.store, open(%r, "w")); sys.stdout.write(out)\n'
                      % (sys.executable, os.path.dirname(__file__), unit_tests, str(store), dns_macos.SCUTIL, str(store)))
    scutil.chmod(0o755)
    script = dns_macos.boot_shell(['192.0.2.1']).replace(dns_macos.SCUTIL, str(scutil))
    subprocess.run(['sh', '-c', script], check=True, timeout=60,
                   env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)))
    result = json.loads(store.read_text())
    assert result[WIFI] == {'ServerAddresses': ['192.0.2.1'], 'DomainName': 'example.net'}
    assert result[ETHERNET] == {'ServerAddresses': ['192.0.2.1']}
    assert result[ETHERNET_MANUAL] == {'ServerAddresses': ['192.0.2.1']}
    assert result[dns_macos.KEY] == dns_macos.desired(['192.0.2.1'])
