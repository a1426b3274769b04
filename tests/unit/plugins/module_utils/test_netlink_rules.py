"""netlink_rules against the real kernel, in a private network namespace, read back with ip(8)."""

import json
import os

import pytest

from namespace_host import CAN_RUN, REPO, Host, host_fixture

pytestmark = pytest.mark.skipif(not CAN_RUN, reason='needs root and unshare')

host = host_fixture(Host)

SCRIPT = r'''
import json, socket, sys
from ansible_collections.vpnguard.killswitch.plugins.module_utils.netlink_rules import RuleSocket
netlink = RuleSocket()
out = {}
for step in json.loads(sys.argv[1]):
    verb, rule = step
    try:
        if verb == 'dump':
            out.setdefault('dumps', []).append(
                [r for r in netlink.rules(getattr(socket, rule)) if r['protocol'] == 86])
        else:
            getattr(netlink, verb)(**rule)
    except OSError as e:
        out.setdefault('errors', []).append([verb, e.errno])
print(json.dumps(out))
'''

TO_MAIN, UNREACHABLE = 1, 7
V4 = 2
V6 = 10


def run(host, *steps):
    collections = os.path.join(REPO, '.cache', 'collections')
    path = os.path.join(host.tmp, 'netlink_script.py')
    with open(path, 'w') as f:
        f.write(SCRIPT)
    out = host.sh("PYTHONPATH=%s /usr/bin/python3 %s '%s'" % (collections, path, json.dumps(list(steps))))
    return json.loads(out)


def rule(family=V4, action=TO_MAIN, priority=32765, **extra):
    r = dict(family=family, action=action, priority=priority, protocol=86)
    if action == TO_MAIN:
        r['table'] = 254
    r.update(extra)
    return r


def test_rules_added_read_back_as_ip_shows_them(host):
    out = run(host,
              ('add', rule(dst='203.0.113.1', dst_len=32, ip_proto=17, dport=[51820, 51820])),
              ('add', rule(dst='198.18.0.0', dst_len=15, ip_proto=6, sport=[22, 22])),
              ('add', rule(fwmark=0x2a)),
              ('add', rule(suppress_prefixlen=0)),
              ('add', rule(action=UNREACHABLE)),
              ('add', rule(family=V6, dst='2001:db8::1', dst_len=128)),
              ('dump', 'AF_INET'), ('dump', 'AF_INET6'))
    assert 'errors' not in out
    v4, v6 = out['dumps']
    assert [(r['dst'], r['dst_len'], r['fwmark'], r['suppress_prefixlen'], r['action'], r['table']) for r in v4] == [
        ('203.0.113.1', 32, 0, 0xffffffff, TO_MAIN, 254),
        ('198.18.0.0', 15, 0, 0xffffffff, TO_MAIN, 254),
        (None, 0, 0x2a, 0xffffffff, TO_MAIN, 254),
        (None, 0, 0, 0, TO_MAIN, 254),
        (None, 0, 0, 0xffffffff, UNREACHABLE, 0)]
    assert [(r['ip_proto'], r['sport'], r['dport']) for r in v4[:3]] == [
        (17, None, [51820, 51820]), (6, [22, 22], None), (0, None, None)]
    assert [(r['dst'], r['dst_len'], r['priority']) for r in v6] == [('2001:db8::1', 128, 32765)]
    assert host.sh('ip -N -4 rule show priority 32765') == (
        '32765:\tfrom all to 203.0.113.1 ipproto ipproto-17 dport 51820 lookup 254 proto 86\n'
        '32765:\tfrom all to 198.18.0.0/15 ipproto ipproto-6 sport 22 lookup 254 proto 86\n'
        '32765:\tfrom all fwmark 0x2a lookup 254 proto 86\n'
        '32765:\tfrom all lookup 254 suppress_prefixlength 0 proto 86\n'
        '32765:\tfrom all 7 proto 86\n')


def test_a_delete_removes_only_the_rule_it_names(host):
    host.sh('ip rule add priority 32765 lookup main')  # another tool's rule, same priority, no protocol
    out = run(host,
              ('add', rule(dst='203.0.113.1', dst_len=32)),
              ('add', rule(dst='203.0.113.2', dst_len=32)),
              ('delete', rule(dst='203.0.113.2', dst_len=32)),
              ('dump', 'AF_INET'))
    assert 'errors' not in out
    assert [r['dst'] for r in out['dumps'][0]] == ['203.0.113.1']
    assert 'from all lookup main' in host.sh('ip -4 rule show priority 32765')


def test_kernel_errors_are_raised_with_their_errno(host):
    out = run(host,
              ('add', rule(action=UNREACHABLE)),
              ('add', rule(action=UNREACHABLE)),
              ('delete', rule(dst='198.51.100.9', dst_len=32)))
    assert out['errors'] == [['add', 17], ['delete', 2]]  # EEXIST, ENOENT


DUMPS = r'''
import json, sys
from ansible_collections.vpnguard.killswitch.plugins.module_utils.netlink_rules import RuleSocket, XfrmSocket
print(json.dumps(dict(links=RuleSocket().link_groups(), policies=XfrmSocket().policies())))
'''


def dumps(host):
    collections = os.path.join(REPO, '.cache', 'collections')
    path = os.path.join(host.tmp, 'netlink_dumps.py')
    with open(path, 'w') as f:
        f.write(DUMPS)
    return json.loads(host.sh('PYTHONPATH=%s /usr/bin/python3 %s' % (collections, path)))


def test_the_link_dump_gives_every_interface_and_group_as_ip_lists_them(host):
    host.sh('ip link add tun0 type veth peer name xtun0 && ip link set tun0 group 86 '
            '&& ip link add eth0 type veth peer name isp0 && ip link set isp0 group 7')
    listed = {}
    for line in host.sh('ip -o -N link show').splitlines():
        name, group = line.split(':')[1].strip().split('@')[0], line.split(' group ')[1].split()[0]
        listed[name] = int(group)
    assert dumps(host)['links'] == listed == {'lo': 0, 'tun0': 86, 'xtun0': 0, 'eth0': 0, 'isp0': 7}


def test_the_xfrm_dump_tells_policy_based_from_route_based_ipsec(host):
    """The kernel's own policies, as ip xfrm lays them: with and without an XFRM interface id."""
    host.sh('ip xfrm policy add src 198.18.203.1/32 dst 0.0.0.0/0 dir out '
            'tmpl src 198.18.1.2 dst 203.0.113.1 proto esp mode tunnel reqid 1')
    host.sh('ip xfrm policy add src 0.0.0.0/0 dst 0.0.0.0/0 dir out if_id 42 '
            'tmpl src 198.18.1.2 dst 203.0.113.2 proto esp mode tunnel reqid 2')
    host.sh('ip -6 xfrm policy add src ::/0 dst 2001:db8:5::/48 dir in if_id 42 '
            'tmpl src 2001:db8::2 dst 2001:db8::3 proto esp mode tunnel reqid 3')
    host.sh('ip xfrm policy add src 198.18.1.0/24 dst 198.18.1.0/24 dir out priority 10')  # a bypass
    policies = sorted((p['src'], p['dst'], p['dir'], p['templates'], p['if_id']) for p in dumps(host)['policies'])
    assert policies == [('0.0.0.0/0', '0.0.0.0/0', 1, True, 42),
                        ('198.18.1.0/24', '198.18.1.0/24', 1, False, 0),
                        ('198.18.203.1/32', '0.0.0.0/0', 1, True, 0),
                        ('::/0', '2001:db8:5::/48', 0, True, 42)]
    host.sh('ip xfrm policy flush')
    assert dumps(host)['policies'] == []
