"""The fault matrix: the failures that break real kill switches, each provable both ways.

Every fault runs while the traffic generator (TCP, UDP, DNS, ICMP over IPv4 and
IPv6) runs in the host, with tcpdump on the ISP side of its uplink. With the
kill switch (--expect none) nothing but the tunnel's own packets may cross; the
control (--expect leak) runs the same fault without it and must see packets,
so every check here can fail. Each fault also prints the evidence that it took
effect, so that a pass is never a pass for the wrong reason.
"""

import os
import shlex
import subprocess
import sys
import time

import vpnlab
from vpnlab import FWMARK, HERE, INTERNET_V4, INTERNET_V6, flows_ok, generate, verdict

FLAPS = 200


def _report(lab, name, case, expect, cap, counters, evidence, applied):
    leaked = len(cap.packets())
    ok = verdict(case, leaked, expect, '%s; generator: %s' % (evidence, vpnlab.json.dumps(counters, sort_keys=True)), cap)
    if not applied:
        print('FAIL %s: the fault did not take effect, so the check proves nothing' % case, flush=True)
    return ok and applied


def _flows_again(lab, name, case):
    with lab.capture(name) as cap:
        again = generate(lab, name, 2)
    back = flows_ok(again) and not cap.packets()
    print('%s %s: traffic flows through the tunnel afterwards, nothing re-run: %s'
          % ('PASS' if back else 'FAIL', case, vpnlab.json.dumps(again, sort_keys=True)), flush=True)
    return back


def _finish(lab, name, case, expect, ok):
    """Whatever the fault left, the tunnel is up again; with the kill switch, traffic must flow without help."""
    lab.tunnel_up(name)
    if expect == 'none':
        ok = _flows_again(lab, name, case) and ok
    return ok


def flap(lab, name, expect):
    """The tunnel goes down and up 200 times in a row, reconfigured by its client each time."""
    h = lab.state['hosts'][name]
    script = ('n=0; for i in $(seq %d); do ip link set wg0 down; sleep 0.02; ip link set wg0 up; '
              'ip -6 addr replace %s/128 dev wg0 nodad; '
              'ip route replace default dev wg0 table %d; ip -6 route replace default dev wg0 table %d; '
              'n=$((n+1)); sleep 0.02; done; echo $n'
              % (FLAPS, h['tunnel_v6'], FWMARK, FWMARK))
    done = []
    with lab.capture(name) as cap:
        counters = generate(lab, name, 25, during=lambda: done.append(lab.sh(name, script, timeout=120).strip()),
                            lead=1)
    flaps = int(done[0]) if done else 0
    ok = _report(lab, name, 'flap', expect, cap, counters, '%d down/up cycles under traffic' % flaps, flaps == FLAPS)
    return _finish(lab, name, 'flap', expect, ok)


def rename(lab, name, expect):
    """The tunnel comes back as wg1: the policy's wg* must cover it."""
    def fault():
        lab.tunnel_delete(name)
        time.sleep(1)
        lab.tunnel_up(name, interface='wg1')

    with lab.capture(name) as cap:
        counters = generate(lab, name, 6, during=fault)
    applied = lab.run(name, ['ip', 'link', 'show', 'wg1'], check=False).returncode == 0
    ok = _report(lab, name, 'rename', expect, cap, counters, 'wg0 deleted, the tunnel back as wg1', applied)
    if expect == 'none':
        ok = _flows_again(lab, name, 'rename') and ok
    lab.tunnel_delete(name, interface='wg1')
    lab.tunnel_up(name)
    return ok


def dhcp_route(lab, name, expect):
    """While the VPN reconnects, DHCP puts back a default route with a lower metric (10 < 100)."""
    a = lab.state['hosts'][name]
    add = ('ip route add default via %s dev eth0 metric 10 proto dhcp && '
           'ip -6 route add default via %s dev eth0 metric 10 proto dhcp' % (a['gw4'], a['gw6']))

    def fault():
        lab.tunnel_delete(name)
        lab.sh(name, add)
        time.sleep(2)

    with lab.capture(name) as cap:
        counters = generate(lab, name, 6, during=fault)
    routes = lab.sh(name, 'ip route show default; ip -6 route show default')
    applied = routes.count('proto dhcp metric 10') == 2
    ok = _report(lab, name, 'dhcp-route', expect, cap, counters,
                 'tunnel down, then default routes metric 10 (IPv4 and IPv6) via eth0', applied)
    lab.sh(name, 'ip route del default metric 10; ip -6 route del default metric 10', check=False)
    return _finish(lab, name, 'dhcp-route', expect, ok)


def router_advert(lab, name, expect):
    """While the VPN reconnects, a router advertisement gives eth0 a new global address and a default route."""
    i = vpnlab.host_index(name)
    prefix = '2001:db8:1:%x::' % (0x100 + i)
    isp_side = lab.state['hosts'][name]['isp_side']
    lab.sh(name, 'sysctl -qw net.ipv6.conf.eth0.accept_ra=2')

    def fault():
        lab.tunnel_delete(name)
        lab.run('isp', [sys.executable, os.path.join(HERE, 'traffic.py'), 'ra', isp_side, prefix, '1800'])
        time.sleep(2)

    with lab.capture(name) as cap:
        counters = generate(lab, name, 6, during=fault)
    state = lab.sh(name, 'ip -6 -o addr show dev eth0 to %s/64; ip -6 route show default proto ra' % prefix)
    applied = prefix.rstrip(':') in state and 'default via fe80:' in state
    ok = _report(lab, name, 'router-advert', expect, cap, counters,
                 'tunnel down, then an RA for %s/64 with a default route; the host took: %s'
                 % (prefix, ' | '.join(line.split()[3] for line in state.splitlines() if 'inet6' in line)), applied)
    lab.run('isp', [sys.executable, os.path.join(HERE, 'traffic.py'), 'ra', isp_side, prefix, '0'])
    lab.sh(name, 'ip -6 route del default proto ra; for a in $(ip -6 -o addr show dev eth0 to %s/64 | '
                 'awk \'{print $4}\'); do ip -6 addr del $a dev eth0; done' % prefix, check=False)
    return _finish(lab, name, 'router-advert', expect, ok)


ACCEPT_ALL = ('table inet fault_accept_all {\n'
              '  chain output_all { type filter hook output priority -300; policy accept;'
              ' ct state established,related accept; accept; }\n'
              '  chain forward_all { type filter hook forward priority -300; policy accept; accept; }\n'
              '  chain input_all { type filter hook input priority -300; policy accept; accept; }\n'
              '}\n')


def other_table(lab, name, expect):
    """Another tool loads a table that accepts everything, then the tunnel drops. The table is left in place."""
    def fault():
        lab.run(name, ['nft', '-f', '-'], input=ACCEPT_ALL)
        lab.tunnel_delete(name)

    with lab.capture(name) as cap:
        counters = generate(lab, name, 4, during=fault)
    applied = lab.run(name, ['nft', 'list', 'table', 'inet', 'fault_accept_all'], check=False).returncode == 0
    ok = _report(lab, name, 'other-table', expect, cap, counters,
                 'table inet fault_accept_all (policy accept, accept everything, priority -300), then tunnel deleted',
                 applied)
    return _finish(lab, name, 'other-table', expect, ok)


def flush_ruleset(lab, name, expect):
    """Another tool runs nft flush ruleset, then the tunnel drops: only the routing guard is left."""
    flushed = []

    def fault():
        lab.sh(name, 'nft flush ruleset')
        flushed.append(time.time())
        lab.tunnel_delete(name)

    with lab.capture(name) as cap:
        counters = generate(lab, name, 4, during=fault)
    with open(os.path.join(lab.dir, name + '.flushed'), 'w') as f:
        f.write('%.3f\n' % flushed[0])
    applied = not lab.sh(name, 'nft list tables').strip()
    ok = _report(lab, name, 'flush-ruleset', expect, cap, counters,
                 'nft flush ruleset, then tunnel deleted; routing rules left: %s'
                 % ', '.join(sorted(set(line.split(':')[0] for line in
                                        lab.sh(name, 'ip -4 rule; ip -6 rule').splitlines()))), applied)
    return _finish(lab, name, 'flush-ruleset', expect, ok)


def preexisting_connection(lab, name, expect, apply_command):
    """A TCP connection through eth0, tracked by conntrack, is open when the kill switch is applied."""
    marker = 'VPNGUARD-STREAM-%d' % os.getpid()
    # The conntrack hole only shows when conntrack already tracks the flow.
    lab.run(name, ['nft', '-f', '-'], input='table inet fault_conntrack {\n'
            '  chain out { type filter hook output priority 100; ct state established accept; }\n}\n')
    argv = ['nsenter', '-t', str(lab.pid(name)), '-n', '-m', '--', sys.executable,
            os.path.join(HERE, 'traffic.py'), 'stream', INTERNET_V4, '9998', '20', marker]
    with lab.capture(name) as cap:
        stream = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        try:
            time.sleep(2)
            started = time.time()
            subprocess.run(shlex.split(apply_command), check=True, stdout=subprocess.DEVNULL, timeout=300)
            applied_at = time.time()
            time.sleep(3)
        finally:
            stream.kill()
            stream.wait()
    tracked = 'tcp' in lab.sh(name, 'cat /proc/net/nf_conntrack 2>/dev/null || conntrack -L 2>/dev/null || true')
    lab.run(name, ['nft', 'delete', 'table', 'inet', 'fault_conntrack'], check=False)
    data = 'tcp and dst port 9998 and (ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2)) > 0'
    stamps = [float(line.split()[0]) for line in cap.packets(data)]
    before = len([t for t in stamps if t < started])
    after = len([t for t in stamps if t > applied_at])
    ok = verdict('preexisting-connection', after, expect,
                 'a TCP stream via eth0 sent %d data packets before the apply and %d after it (%s, took %.1f s); '
                 'conntrack tracked it: %s' % (before, after, apply_command.split()[0], applied_at - started, tracked))
    if not before:
        print('FAIL preexisting-connection: the stream never flowed through eth0, so the check proves nothing',
              flush=True)
    return ok and before > 0


def policy_swap(lab, name, expect, apply_command=None):
    """The ruleset is swapped 100 times between two policies while the tunnel is down and traffic runs.

    With the kill switch the swaps are the module's own atomic transaction (and
    then apply_command, a real harden with a changed policy); the control does
    the same swaps the naive way, delete then load, which opens a window.
    """
    mode = 'atomic' if expect == 'none' else 'naive'
    swapped = []

    def fault():
        lab.tunnel_delete(name)
        out = lab.run(name, ['/usr/bin/python3', os.path.join(HERE, 'swap.py'), mode, '100'], timeout=120).stdout
        swapped.append(out.strip())
        if apply_command:
            subprocess.run(shlex.split(apply_command), check=True, stdout=subprocess.DEVNULL, timeout=300)
            swapped.append('then ' + apply_command.split()[0])

    with lab.capture(name) as cap:
        counters = generate(lab, name, 25, during=fault, lead=1)
    ok = _report(lab, name, 'policy-swap', expect, cap, counters, 'tunnel down, %s' % '; '.join(swapped), bool(swapped))
    return _finish(lab, name, 'policy-swap', expect, ok)


def route_injection(lab, name, expect):
    """TunnelVision: DHCP option 121 routes the internet host's network via the physical gateway, tunnel up."""
    a = lab.state['hosts'][name]
    lab.sh(name, 'ip route add 198.51.100.0/24 via %s dev eth0 proto dhcp && '
                 'ip -6 route add 2001:db8:2::/64 via %s dev eth0 proto dhcp' % (a['gw4'], a['gw6']))
    try:
        with lab.capture(name) as cap:
            counters = generate(lab, name, 3)
        routes = lab.sh(name, 'ip route get %s; ip -6 route get %s' % (INTERNET_V4, INTERNET_V6))
    finally:
        lab.sh(name, 'ip route del 198.51.100.0/24 proto dhcp; ip -6 route del 2001:db8:2::/64 proto dhcp',
               check=False)
    applied = routes.count('dev eth0') == 2
    ok = _report(lab, name, 'route-injection', expect, cap, counters,
                 'routes to 198.51.100.0/24 and 2001:db8:2::/64 via eth0, the kernel picks: %s'
                 % ' | '.join(line.strip() for line in routes.splitlines() if 'dev' in line), applied)
    return _finish(lab, name, 'route-injection', expect, ok)


def forwarded(lab, name, expect):
    """A guest (container, VM) routed through the host with forwarding on; the tunnel drops under its traffic."""
    guest = lab.add_guest(name)
    try:
        with lab.capture(name) as cap:
            counters = generate(lab, guest, 4, during=lambda: lab.tunnel_delete(name))
        received = vpnlab.json.loads(lab.sh(name, 'ip -j -s link show gst0'))[0]['stats64']['rx']['packets']
    finally:
        lab.remove_guest(name)
    ok = _report(lab, name, 'forwarded', expect, cap, counters,
                 'guest %s behind the host, forwarding on; the host received %d packets from it'
                 % (lab.guest_address(name), received), received > 0)
    return _finish(lab, name, 'forwarded', expect, ok)


def _traffic(*args):
    return [sys.executable, os.path.join(HERE, 'traffic.py')] + [str(a) for a in args]


def _rx_packets(lab, name, device):
    return vpnlab.json.loads(lab.sh(name, 'ip -j -s link show ' + device))[0]['stats64']['rx']['packets']


def tunnel_injection(lab, name, expect):
    """CVE-2019-14899: from the LAN, datagrams forged as the internet host's, for the tunnel's address and a live flow.

    The host's sockets on its tunnel addresses talk to the internet host
    through the tunnel (conntrack tracks the flows); the ISP side then puts
    UDP datagrams on the uplink's wire for eth0's MAC, addressed to those
    sockets from the internet host's address and port. Leaked = sockets that
    received one. Reverse-path filtering is loose, as systemd sets it.
    """
    h = lab.state['hosts'][name]
    marker = 'VPNGUARD-INJECTED-%d' % os.getpid()
    mac = lab.sh(name, 'ip -br link show eth0').split()[2]
    rp_filter = lab.sh(name, 'sysctl -n net.ipv4.conf.all.rp_filter net.ipv4.conf.eth0.rp_filter').split()
    lab.sh(name, 'sysctl -qw net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.eth0.rp_filter=2')
    try:
        before = _rx_packets(lab, name, 'eth0')
        argv = ['nsenter', '-t', str(lab.pid(name)), '-n', '-m', '--'] + _traffic(
            'injectable', 40123, 3, marker, '%s>%s:9999' % (h['tunnel_v4'], INTERNET_V4),
            '%s>[%s]:9999' % (h['tunnel_v6'], INTERNET_V6))
        sockets = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        try:
            sockets.stdout.readline()  # ready: the flows are open
            for source, destination in (('%s:9999' % INTERNET_V4, '%s:40123' % h['tunnel_v4']),
                                        ('[%s]:9999' % INTERNET_V6, '[%s]:40123' % h['tunnel_v6'])):
                lab.run('isp', _traffic('inject', h['isp_side'], mac, source, destination, marker))
            received = vpnlab.json.loads(sockets.communicate(timeout=30)[0].splitlines()[-1])
        finally:
            if sockets.poll() is None:
                sockets.kill()
                sockets.wait()
        forged_in = _rx_packets(lab, name, 'eth0') - before
    finally:
        lab.sh(name, 'sysctl -qw net.ipv4.conf.all.rp_filter=%s net.ipv4.conf.eth0.rp_filter=%s' % tuple(rp_filter))
    reached = sorted(address for address, got in received.items() if got)
    ok = verdict('tunnel-injection', len(reached), expect,
                 'datagrams forged as %s:9999 and [%s]:9999 put on eth0 for %s and %s port 40123 (eth0 received '
                 '%d packets meanwhile); sockets that got one: %s'
                 % (INTERNET_V4, INTERNET_V6, h['tunnel_v4'], h['tunnel_v6'], forged_in, ', '.join(reached) or 'none'))
    if forged_in < 2:
        print('FAIL tunnel-injection: the forged datagrams never reached eth0, so the check proves nothing', flush=True)
    return ok and forged_in >= 2


LINK_CHANNELS = ('dhcp', 'dhcp6', 'router-solicit', 'neighbor-solicit', 'neighbor-advert', 'mld-report')


def link_channels(lab, name, expect):
    """DHCP, DHCPv6, ND and MLD messages used as a channel: from a socket bound to eth0, to the internet host."""
    marker = 'VPNGUARD-CHANNEL-%d' % os.getpid()
    with lab.capture(name) as cap:
        result = lab.run(name, _traffic('channels', 'eth0', marker))
    carried = [kind for kind in LINK_CHANNELS if cap.contains('%s-%s' % (marker, kind))]
    refused = [line.split('(', 1)[1].split(':', 1)[0] for line in result.stderr.splitlines() if 'send failed' in line]
    return verdict('link-channels', len(carried), expect,
                   'udp 68->67, udp fe80::%%eth0 546->547, ICMPv6 types 133, 135, 136, 143 with a marker to %s / %s '
                   'from a socket bound to eth0; on the wire: %s; refused by the kernel: %s'
                   % (INTERNET_V4, INTERNET_V6, ', '.join(carried) or 'none', ', '.join(refused) or 'none'))


def localnet(lab, name, expect):
    """TunnelCrack LocalNet, with the LAN allowed: the network hands out the internet host's ranges as on-link."""
    isp_side = lab.state['hosts'][name]['isp_side']
    lab.sh(name, 'ip addr add 198.51.100.77/24 dev eth0 && ip -6 addr add 2001:db8:2::77/64 dev eth0 nodad')
    # The ISP side answers for the internet host on the link, as the rogue network would.
    lab.sh('isp', 'sysctl -qw net.ipv6.conf.%s.proxy_ndp=1 && ip -6 neigh add proxy %s dev %s'
           % (isp_side, INTERNET_V6, isp_side))
    try:
        with lab.capture(name) as cap:
            counters = generate(lab, name, 3)
        routes = lab.sh(name, 'ip route get %s; ip -6 route get %s' % (INTERNET_V4, INTERNET_V6))
        lan = lab.run(name, ['nft', 'list', 'set', 'inet', 'vpnguard_killswitch', 'lan_v4'], check=False).stdout
    finally:
        lab.sh(name, 'ip addr del 198.51.100.77/24 dev eth0; ip -6 addr del 2001:db8:2::77/64 dev eth0', check=False)
        lab.sh('isp', 'ip -6 neigh del proxy %s dev %s; sysctl -qw net.ipv6.conf.%s.proxy_ndp=0'
               % (INTERNET_V6, isp_side, isp_side), check=False)
    applied = routes.count('dev eth0') == 2
    lan_elements = lan.split('elements = {', 1)[1].split('}', 1)[0].split() if 'elements' in lan else []
    ok = _report(lab, name, 'localnet', expect, cap, counters,
                 'eth0 given 198.51.100.77/24 and 2001:db8:2::77/64, the kernel picks: %s; the LAN set: %s'
                 % (' | '.join(line.strip() for line in routes.splitlines() if 'dev' in line),
                    ' '.join(lan_elements) or 'no kill switch'), applied)
    return _finish(lab, name, 'localnet', expect, ok)


SCENARIOS = {
    'tunnel-injection': tunnel_injection,
    'link-channels': link_channels,
    'localnet': localnet,
    'flap': flap,
    'rename': rename,
    'dhcp-route': dhcp_route,
    'router-advert': router_advert,
    'other-table': other_table,
    'flush-ruleset': flush_ruleset,
    'route-injection': route_injection,
    'forwarded': forwarded,
}
APPLY_SCENARIOS = {
    'preexisting-connection': preexisting_connection,
    'policy-swap': policy_swap,
}
