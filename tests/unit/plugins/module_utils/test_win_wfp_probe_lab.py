"""The Windows probe's socket code (WfpKillSwitch.cs: Host.Interfaces, Host.Run, ProbeVerdict) run for real under mono,
in a network namespace whose only route leads to a canary namespace the test owns (documentation addresses only).

There is no WFP here, so no drop event ever comes: what this proves is the wiring (interfaces found, the tunnel and
loopback skipped, sockets bound to each global address, the Winsock codes mono reports) and that the verdict follows
the wire: with nothing in the way every check is LEAKED and the canary counts the packets; with a firewall that
drops them (nftables here standing in for WFP) the canary counts none, the sends are refused, and a connect left in
progress with no drop event to explain it is LEAKED: without evidence of a refusal the probe fails closed.
"""

import os
import shutil
import subprocess
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(HERE))))
UTIL = os.path.join(REPO, 'plugins', 'module_utils', 'WfpKillSwitch.cs')
RUN = os.path.join(HERE, 'csharp', 'WfpProbeRun.cs')
CANARY_V4, CANARY_V6 = '203.0.113.254', '2001:db8:ffff::fe'

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ('ip', 'nft', 'mcs', 'mono')),
    reason='needs root, ip, nft and Debian mono-mcs')


def sh(*args, **kw):
    return subprocess.run(list(args), capture_output=True, text=True, check=kw.get('check', True), timeout=120)


@pytest.fixture
def lab(tmp_path):
    host, canary = 'vpg-winprobe-h-%d' % os.getpid(), 'vpg-winprobe-c-%d' % os.getpid()
    exe = str(tmp_path / 'run.exe')
    built = sh('mcs', '-langversion:5', '-warnaserror', '-target:exe', '-out:' + exe, UTIL, RUN, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    try:
        for ns in (host, canary):
            sh('ip', 'netns', 'add', ns)
            sh('ip', '-n', ns, 'link', 'set', 'lo', 'up')
        sh('ip', 'link', 'add', 'a0', 'netns', host, 'type', 'veth', 'peer', 'name', 'b0', 'netns', canary)
        for ns, dev, v4, v6 in ((host, 'a0', '198.18.50.2/24', '2001:db8:50::2/64'),
                                (canary, 'b0', '198.18.50.1/24', '2001:db8:50::1/64')):
            sh('ip', '-n', ns, 'addr', 'add', v4, 'dev', dev)
            sh('ip', '-n', ns, '-6', 'addr', 'add', v6, 'dev', dev, 'nodad')
            sh('ip', '-n', ns, 'link', 'set', dev, 'up')
        # The host's only way out is the canary namespace, which has no way further.
        sh('ip', '-n', host, 'route', 'add', 'default', 'via', '198.18.50.1')
        sh('ip', '-n', host, '-6', 'route', 'add', 'default', 'via', '2001:db8:50::1')
        sh('ip', '-n', host, 'tuntap', 'add', 'wg0', 'mode', 'tun')
        sh('ip', '-n', host, 'addr', 'add', '192.0.2.11/32', 'dev', 'wg0')
        sh('ip', '-n', host, 'link', 'set', 'wg0', 'up')
        sh('ip', '-n', canary, 'addr', 'add', CANARY_V4 + '/32', 'dev', 'lo')
        sh('ip', '-n', canary, '-6', 'addr', 'add', CANARY_V6 + '/128', 'dev', 'lo', 'nodad')
        sh('ip', 'netns', 'exec', canary, 'nft', 'add table inet seen; add chain inet seen input '
           '{ type filter hook input priority 0; }; add rule inet seen input ip saddr 198.18.50.2 counter; '
           'add rule inet seen input ip6 saddr 2001:db8:50::2 counter')

        def probe():
            run = sh('ip', 'netns', 'exec', host, 'mono', exe, 'wg*', CANARY_V4, CANARY_V6)
            return dict(line.split('=', 1) for line in run.stdout.splitlines())

        def arrived():
            time.sleep(1)  # packets queued behind a neighbour request arrive once it is answered
            listing = sh('ip', 'netns', 'exec', canary, 'nft', 'list', 'table', 'inet', 'seen').stdout
            return sum(int(part.split()[0]) for part in listing.split('packets ')[1:])

        yield dict(host=host, probe=probe, arrived=arrived)
    finally:
        for ns in (host, canary):
            sh('ip', 'netns', 'del', ns, check=False)


def test_control_with_nothing_in_the_way_every_check_leaks_and_the_canary_sees_it(lab):
    checks = lab['probe']()
    assert sorted(checks) == sorted(['udp ipv4 bound to a0', 'tcp ipv4 bound to a0', 'dns ipv4 bound to a0',
                                     'udp ipv6 bound to a0', 'tcp ipv6 bound to a0', 'dns ipv6 bound to a0',
                                     "dns ipv4 to a resolver that is not the tunnel's",
                                     "dns ipv6 to a resolver that is not the tunnel's"]), 'wg0 and lo are not probed'
    assert {c: v.split('|')[0] for c, v in checks.items()} == dict((c, 'LEAKED') for c in checks), checks
    seen = lab['arrived']()
    assert seen >= len(checks), (seen, checks)


def test_with_a_firewall_that_drops_them_nothing_arrives_and_no_check_passes_for_compliant_by_luck(lab):
    sh('ip', 'netns', 'exec', lab['host'], 'nft', 'add table inet ks; add chain inet ks out '
       '{ type filter hook output priority 0; policy accept; }; add rule inet ks out oifname { "lo", "wg0" } accept; '
       'add rule inet ks out meta l4proto { tcp, udp } drop')
    checks = lab['probe']()
    verdicts = {c: v.split('|')[0] for c, v in checks.items()}
    assert len(checks) == 8
    # UDP sends fail at once (EPERM, which mono reports as WSAEACCES): refused.
    assert {v for c, v in verdicts.items() if not c.startswith('tcp')} == {'refused'}, checks
    assert checks['udp ipv4 bound to a0'] == 'refused|refused by the firewall (WSAEACCES)'
    # Linux leaves a dropped SYN's connect in progress; without a drop event naming a filter (there is no WFP
    # here) the probe cannot tell that from a SYN on the wire, so it says LEAKED: it fails closed. On Windows the
    # BFE's CLASSIFY_DROP event of that socket's port makes it refused (test_win_wfp_csharp.py).
    assert checks['tcp ipv4 bound to a0'].startswith('LEAKED|connection attempt in progress')
    assert lab['arrived']() == 0, 'nothing of the probe reached the canary'
