"""A lab of Linux network namespaces with a real WireGuard tunnel, and the leak proof.

    isp:        the ISP and the VPN server. Internet host 198.51.100.10 and
                2001:db8:2::10 (HTTP :8080, UDP echo :9999, TCP sink :9998), VPN
                endpoint 203.0.113.1 udp 51820 (wireguard-go "wgs", 192.0.2.1/24).
                Resolvers (dnsmasq, lab.example -> 198.51.100.10): the ISP's
                on 198.51.100.53, the tunnel's on 192.0.2.1.
    lab-hostN:  a managed host: uplink eth0 198.18.N.2/24 and 2001:db8:1:N::2/64
                (ISP side upN, .1), default routes metric 100 as DHCP leaves
                them, /etc/resolv.conf naming the ISP's resolver, and private
                /etc, /var/lib, /usr/local and /run.
                Its VPN client is done the way wg-quick does it: wireguard-go
                wg0 with fwmark 51820, default routes in table 51820, and the
                rules "lookup main suppress_prefixlength 0" and
                "not fwmark 51820 lookup 51820".
                Management: mgmt0 198.19.N.2/24, sshd on it (root, key only).
    mgmt:       the controller's network (198.19.N.1, HTTP :8080); Ansible
                runs here (vpnlab.py controller -- CMD) to reach hosts by SSH.

Nothing here is routed out of the machine; every address is a documentation
range owned by a namespace the lab made. Teardown kills every process in the
lab's namespaces, found by namespace, never by name.

    vpnlab.py create --hosts N [--state DIR]     vpnlab.py destroy [--state DIR]
    vpnlab.py tunnel up|delete|kill --host H      vpnlab.py exec --host H -- CMD...            vpnlab.py controller -- CMD...
    vpnlab.py prove SCENARIO --host H --expect leak|none [--apply CMD]
    vpnlab.py clients openvpn|openvpn-def1|openconnect|strongswan... --host H   (clients.py)

The scenarios are below and, for the fault matrix, in faults.py.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from tcpdump import Tcpdump

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_STATE = os.path.join(REPO, '.lab', 'default')

INTERNET_V4, INTERNET_V6 = '198.51.100.10', '2001:db8:2::10'
ISP_RESOLVER = '198.51.100.53'
ENDPOINT, WG_PORT, FWMARK = '203.0.113.1', 51820, 51820
SERVER_TUNNEL_V4, SERVER_TUNNEL_V6 = '192.0.2.1', '2001:db8:ff::1'

# What may cross the uplink whatever happens: the tunnel's own packets and
# link-local control traffic. Anything else that the capture sees is a leak.
ALLOWED = ('(udp and dst host %s and dst port %d) or arp '
           'or (ip6 and (dst net ff02::/16 or dst net fe80::/10)) '
           'or (udp and (port 67 or port 68 or port 546 or port 547))' % (ENDPOINT, WG_PORT))
LEAK_FILTER = 'not (%s)' % ALLOWED

HOST_SETUP = r'''
set -e
for d in etc var/lib usr/local; do
    mkdir -p "$1/$d.upper" "$1/$d.work"
    mount -t overlay overlay -o "lowerdir=/$d,upperdir=$1/$d.upper,workdir=$1/$d.work" "/$d"
done
mount -t tmpfs tmpfs /run
hostname "$2"
ip link set lo up
exec sleep infinity
'''


def host_index(name):
    return int(name.replace('lab-host', ''))


def host_addresses(i):
    return {
        'mgmt': '198.19.%d.2' % i, 'controller': '198.19.%d.1' % i, 'mgmt_side': 'mg%d' % i,
        'uplink': 'eth0', 'isp_side': 'up%d' % i,
        'v4': '198.18.%d.2' % i, 'gw4': '198.18.%d.1' % i,
        'v6': '2001:db8:1:%d::2' % i, 'gw6': '2001:db8:1:%d::1' % i,
        'tunnel_v4': '192.0.2.%d' % (10 + i), 'tunnel_v6': '2001:db8:ff::%d' % (10 + i),
    }


class Lab:
    def __init__(self, state_dir=DEFAULT_STATE):
        self.dir = os.path.abspath(state_dir)
        self.path = os.path.join(self.dir, 'state.json')
        self.state = {}
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.state = json.load(f)

    def save(self):
        with open(self.path, 'w') as f:
            json.dump(self.state, f, indent=1, sort_keys=True)

    # -- running things inside namespaces -------------------------------------------

    def pid(self, name):
        return self.state['namespaces'][name]['pid']

    def run(self, name, command, check=True, timeout=30, **kwargs):
        argv = ['nsenter', '-t', str(self.pid(name)), '-n', '-m', '-u', '--'] + list(command)
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
        if check and result.returncode != 0:
            raise RuntimeError('%s: %s failed: %s' % (name, ' '.join(command), result.stderr.strip()))
        return result

    def sh(self, name, script, check=True, timeout=30):
        return self.run(name, ['sh', '-c', script], check=check, timeout=timeout).stdout

    def spawn(self, name, command, log):
        """A background process inside the namespace; nsenter execs it, so its PID is ours to kill."""
        with open(os.path.join(self.dir, log), 'ab') as out:
            proc = subprocess.Popen(['nsenter', '-t', str(self.pid(name)), '-n', '-m', '-u', '--'] + command,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        return proc.pid

    def _namespace(self, name, setup_args):
        with open(os.path.join(self.dir, name + '.log'), 'ab') as out:
            holder = subprocess.Popen(
                ['unshare', '--net', '--mount', '--uts', '--propagation', 'private', '--fork', '--kill-child',
                 'sh', '-c', HOST_SETUP, name] + setup_args,
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        for attempt in range(200):
            children = subprocess.run(['pgrep', '-P', str(holder.pid)], capture_output=True, text=True, check=False).stdout.split()
            if children and os.readlink('/proc/%s/exe' % children[0]).endswith('sleep'):
                pid = int(children[0])
                self.state['namespaces'][name] = {
                    'pid': pid, 'holder': holder.pid, 'netns': os.readlink('/proc/%d/ns/net' % pid)}
                self.save()
                with open(os.path.join(self.dir, name + '.pid'), 'w') as f:
                    f.write('%d\n' % pid)
                return pid
            if holder.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError('namespace %s did not come up; see %s.log' % (name, name))

    def _wait(self, what, predicate, seconds=10):
        deadline = time.time() + seconds
        while time.time() < deadline:
            if predicate():
                return
            time.sleep(0.1)
        raise RuntimeError('timed out waiting for ' + what)

    # -- building and tearing down ----------------------------------------------

    def create(self, hosts):
        os.makedirs(self.dir, exist_ok=True)
        if self.state.get('namespaces'):
            raise RuntimeError('a lab already exists in %s; destroy it first' % self.dir)
        self.state = {'namespaces': {}, 'hosts': {}, 'processes': {}}
        self.save()
        try:
            self._create(hosts)
        except BaseException:
            self.destroy()
            raise

    def _genkey(self, name):
        private = subprocess.run(['wg', 'genkey'], capture_output=True, text=True, check=True).stdout
        public = subprocess.run(['wg', 'pubkey'], input=private, capture_output=True, text=True, check=True).stdout
        path = os.path.join(self.dir, name + '.key')
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 'w') as f:
            f.write(private)
        return path, public.strip()

    def _create(self, hosts):
        self._namespace('isp', [os.path.join(self.dir, 'isp.fs'), 'isp'])
        self.sh('isp', 'ip addr add %s/32 dev lo && ip addr add %s/32 dev lo && ip addr add %s/32 dev lo '
                       '&& ip -6 addr add %s/128 dev lo' % (INTERNET_V4, ENDPOINT, ISP_RESOLVER, INTERNET_V6))
        www = os.path.join(self.dir, 'www')
        os.makedirs(www, exist_ok=True)
        self.state['processes']['http'] = self.spawn('isp', [sys.executable, '-u', '-m', 'http.server', '8080',
                                                             '--bind', '::', '--directory', www], 'http.log')
        self.state['processes']['udp_echo'] = self.spawn('isp', [sys.executable, '-u', os.path.join(HERE, 'traffic.py'),
                                                                 'echo', '9999'], 'udp_echo.log')
        self.state['processes']['tcp_sink'] = self.spawn('isp', [sys.executable, '-u', os.path.join(HERE, 'traffic.py'),
                                                                 'sink', '9998'], 'tcp_sink.log')
        key, server_public = self._genkey('isp')
        self.state['server_public'] = server_public
        self.state['processes']['wgs'] = self.spawn('isp', ['wireguard-go', '-f', 'wgs'], 'wgs.log')
        self._wait('wgs', lambda: self.run('isp', ['test', '-S', '/run/wireguard/wgs.sock'], check=False).returncode == 0)
        self.sh('isp', 'wg set wgs listen-port %d private-key %s && ip addr add %s/24 dev wgs '
                       '&& ip -6 addr add %s/64 dev wgs nodad && ip link set wgs up'
                % (WG_PORT, key, SERVER_TUNNEL_V4, SERVER_TUNNEL_V6))
        self._namespace('mgmt', [os.path.join(self.dir, 'mgmt.fs'), 'mgmt'])
        self.state['processes']['mgmt_http'] = self.spawn('mgmt', [sys.executable, '-u', '-m', 'http.server', '8080',
                                                                   '--bind', '::', '--directory', www], 'mgmt_http.log')
        subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-f', os.path.join(self.dir, 'controller_key')],
                       check=True)
        for resolver, address in (('isp', ISP_RESOLVER), ('tunnel', SERVER_TUNNEL_V4)):
            self.state['processes']['dns_' + resolver] = self.spawn('isp', [
                'dnsmasq', '--keep-in-foreground', '--conf-file=/dev/null', '--no-resolv', '--no-hosts',
                '--bind-interfaces', '--listen-address=' + address, '--user=root', '--pid-file=',
                '--address=/lab.example/' + INTERNET_V4, '--log-queries',
                '--log-facility=' + os.path.join(self.dir, 'dns-%s.log' % resolver)], 'dnsmasq.log')
        for i in range(1, hosts + 1):
            self._create_host(i)
        self.save()
        self.write_inventory()

    def _create_host(self, i):
        name = 'lab-host%d' % i
        a = host_addresses(i)
        pid = self._namespace(name, [os.path.join(self.dir, name + '.fs'), name])
        self.sh('isp', 'ip link add %s type veth peer name eth0 netns %d' % (a['isp_side'], pid))
        for ns, dev, addr, addr6 in (('isp', a['isp_side'], a['gw4'], a['gw6']), (name, 'eth0', a['v4'], a['v6'])):
            self.sh(ns, 'sysctl -qw net.ipv6.conf.%s.accept_dad=0 && ip addr add %s/24 dev %s '
                        '&& ip -6 addr add %s/64 dev %s nodad && ip link set %s up' % (dev, addr, dev, addr6, dev, dev))
        self.sh(name, 'ip route add default via %s metric 100 && ip -6 route add default via %s metric 100 '
                      '&& rm -f /etc/resolv.conf && echo "nameserver %s" > /etc/resolv.conf'
                % (a['gw4'], a['gw6'], ISP_RESOLVER))
        self.sh('mgmt', 'ip link add %s type veth peer name mgmt0 netns %d && ip addr add %s/24 dev %s '
                        '&& ip link set %s up' % (a['mgmt_side'], pid, a['controller'], a['mgmt_side'], a['mgmt_side']))
        self.sh(name, 'ip addr add %s/24 dev mgmt0 && ip link set mgmt0 up' % a['mgmt'])
        self._start_sshd(name, a['mgmt'])
        key, public = self._genkey(name)
        self.state['hosts'][name] = dict(a, key=key, public=public)
        self.sh('isp', 'wg set wgs peer %s allowed-ips %s/32,%s/128' % (public, a['tunnel_v4'], a['tunnel_v6']))
        self.save()
        self.tunnel_up(name)

    def _start_sshd(self, name, address):
        """sshd on the management address only, with its keys and config in the host's private /etc."""
        with open(os.path.join(self.dir, 'controller_key.pub')) as f:
            authorized = f.read()
        self.sh(name, 'ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/vpnguard-lab-host-key '
                      '&& printf "%%s" "%s" > /etc/ssh/vpnguard-lab-authorized-keys && mkdir -p /run/sshd '
                      '&& printf "ListenAddress %s\\nHostKey /etc/ssh/vpnguard-lab-host-key\\n'
                      'AuthorizedKeysFile /etc/ssh/vpnguard-lab-authorized-keys\\nPermitRootLogin prohibit-password\\n'
                      'PasswordAuthentication no\\nKbdInteractiveAuthentication no\\nUsePAM no\\n'
                      'PidFile none\\n" > /etc/ssh/vpnguard-lab-sshd_config' % (authorized.strip(), address))
        self.state['processes'][name + ':sshd'] = self.spawn(
            name, ['/usr/sbin/sshd', '-D', '-e', '-f', '/etc/ssh/vpnguard-lab-sshd_config'], name + '-sshd.log')

    @staticmethod
    def _kill_namespace_processes(netns, holders):
        for entry in os.listdir('/proc'):
            if not entry.isdigit():
                continue
            try:
                if os.readlink('/proc/%s/ns/net' % entry) in netns:
                    os.kill(int(entry), signal.SIGKILL)
            except OSError:
                pass
        for pid in holders:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def destroy(self):
        namespaces = self.state.get('namespaces', {}).values()
        self._kill_namespace_processes(set(n['netns'] for n in namespaces), [n['holder'] for n in namespaces])
        self.state = {}
        if os.path.isdir(self.dir):
            subprocess.run(['rm', '-rf', self.dir], check=False)

    def write_inventory(self):
        hosts = {}
        for name in sorted(self.state['hosts']):
            hosts[name] = {'ansible_connection': 'community.docker.nsenter', 'ansible_nsenter_pid': self.pid(name),
                           'ansible_python_interpreter': '/usr/bin/python3', 'ansible_become': False,
                           'lab_uplink': 'eth0'}
        with open(os.path.join(self.dir, 'inventory.yml'), 'w') as f:
            json.dump({'all': {'children': {'lab_hosts': {'hosts': hosts}}}}, f, indent=1)
        # The same hosts over real SSH on the management network, for Ansible run
        # inside the mgmt namespace; a lockout fails fast instead of hanging.
        ssh_hosts = dict((name, {
            'ansible_host': self.state['hosts'][name]['mgmt'], 'ansible_user': 'root',
            'ansible_ssh_private_key_file': os.path.join(self.dir, 'controller_key'),
            'ansible_ssh_common_args': '-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null '
                                       '-o ConnectTimeout=5 -o ServerAliveInterval=2 -o ServerAliveCountMax=3',
            'ansible_python_interpreter': '/usr/bin/python3', 'ansible_become': False,
            # Every lab's hosts have the same addresses: a control socket in the
            # shared ~/.ansible/cp would carry one lab's Ansible into another's host.
            'ansible_control_path_dir': os.path.join(self.dir, 'ssh-cp'),
        }) for name in sorted(self.state['hosts']))
        with open(os.path.join(self.dir, 'inventory-ssh.yml'), 'w') as f:
            json.dump({'all': {'children': {'lab_hosts': {'hosts': ssh_hosts}}}}, f, indent=1)

    # -- the VPN client -------------------------------------------------------------

    def tunnel_up(self, name, wait=True, interface='wg0'):
        h = self.state['hosts'][name]
        if self.run(name, ['ip', 'link', 'show', interface], check=False).returncode != 0:
            # A killed wireguard-go leaves its socket behind; waiting for the
            # socket would then end at once, and wg would talk to nobody.
            self.run(name, ['rm', '-f', '/run/wireguard/%s.sock' % interface])
            self.state['processes'][name + ':' + interface] = self.spawn(name, ['wireguard-go', '-f', interface],
                                                                         name + '-' + interface + '.log')
            self.save()
            self._wait(interface + ' on ' + name, lambda: self.run(
                name, ['test', '-S', '/run/wireguard/%s.sock' % interface], check=False).returncode == 0)
            self.sh(name, 'wg set {dev} private-key {key} fwmark {mark} peer {peer} endpoint {ep}:{port} '
                          'allowed-ips 0.0.0.0/0,::/0 persistent-keepalive 1 '
                          '&& ip addr add {t4}/32 dev {dev} && ip -6 addr add {t6}/128 dev {dev} nodad '
                          '&& ip link set {dev} up && ip route replace default dev {dev} table {mark} '
                          '&& ip -6 route replace default dev {dev} table {mark}'
                    .format(dev=interface, key=h['key'], mark=FWMARK, peer=self.state['server_public'],
                            ep=ENDPOINT, port=WG_PORT, t4=h['tunnel_v4'], t6=h['tunnel_v6']))
        for family in ('-4', '-6'):
            if not self.sh(name, 'ip %s rule show priority 1000' % family).strip():
                self.sh(name, 'ip %s rule add table main suppress_prefixlength 0 priority 999 '
                              '&& ip %s rule add not fwmark %d table %d priority 1000' % (family, family, FWMARK, FWMARK))
        if wait:
            self._wait('a handshake on ' + name, lambda: self.run(
                name, ['ping', '-c', '1', '-W', '1', SERVER_TUNNEL_V4], check=False).returncode == 0, seconds=20)

    def tunnel_delete(self, name, interface='wg0'):
        self.run(name, ['ip', 'link', 'del', interface], check=False)

    def tunnel_kill(self, name):
        pid = self.state['processes'].get(name + ':wg0')
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self._wait('wg0 to vanish', lambda: self.run(name, ['ip', 'link', 'show', 'wg0'], check=False).returncode != 0)

    # -- a guest routed through a host -------------------------------------------------

    def guest_address(self, name):
        return '198.18.%d.2' % (100 + host_index(name))

    def add_guest(self, name):
        """A container-like namespace behind the host (gst0), with forwarding on in the host."""
        i = host_index(name)
        guest = name + '-guest'
        pid = self._namespace(guest, [os.path.join(self.dir, guest + '.fs'), guest])
        self.sh(name, 'ip link add gst0 type veth peer name eth0 netns %d && ip addr add 198.18.%d.1/24 dev gst0 '
                      '&& ip -6 addr add 2001:db8:3:%d::1/64 dev gst0 nodad && ip link set gst0 up '
                      '&& sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1' % (pid, 100 + i, i))
        self.sh(guest, 'ip addr add %s/24 dev eth0 && ip -6 addr add 2001:db8:3:%d::2/64 dev eth0 nodad '
                       '&& ip link set eth0 up && ip route add default via 198.18.%d.1 '
                       '&& ip -6 route add default via 2001:db8:3:%d::1' % (self.guest_address(name), i, 100 + i, i))
        return guest

    def remove_guest(self, name):
        guest = name + '-guest'
        self.sh(name, 'ip link del gst0; sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0', check=False)
        entry = self.state['namespaces'].pop(guest, None)
        if entry:
            self._kill_namespace_processes({entry['netns']}, [entry['holder']])
        self.save()

    # -- the sniffer ------------------------------------------------------------------

    def capture(self, name):
        return Capture(self, name)


class Capture(Tcpdump):
    """tcpdump on the ISP side of a host's uplink: everything the host sends out of it."""

    def __init__(self, lab, name):
        fd, pcap = tempfile.mkstemp(prefix='capture-', suffix='.pcap', dir=lab.dir)
        os.close(fd)
        super().__init__(lab.pid('isp'), lab.state['hosts'][name]['isp_side'], pcap)

    def packets(self, bpf=LEAK_FILTER):
        return super().packets(bpf)


# -- traffic from inside a host ---------------------------------------------------

def generate(lab, name, seconds, during=None, user=None, lead=None):
    """Run the traffic generator in the host; call during() after lead seconds (half way). Returns its counters."""
    command = [sys.executable, os.path.join(HERE, 'traffic.py'), 'generate', str(seconds)]
    if user:
        command = ['setpriv', '--reuid=%d' % user, '--regid=%d' % user, '--clear-groups'] + command
    argv = ['nsenter', '-t', str(lab.pid(name)), '-n', '-m', '--'] + command
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if during:
        time.sleep(seconds / 2.0 if lead is None else lead)
        during()
    out, err = proc.communicate(timeout=seconds + 30)
    if proc.returncode != 0:
        raise RuntimeError('traffic generator failed: ' + err)
    return json.loads(out)


def verdict(scenario, leaked, expect, detail, capture=None):
    ok = (leaked > 0) if expect == 'leak' else (leaked == 0)
    line = '%s %s: %d leaked packets (expect %s); %s' % ('PASS' if ok else 'FAIL', scenario, leaked, expect, detail)
    print(line, flush=True)
    if leaked and capture is not None:
        for packet in capture.packets()[:5]:
            print('    leaked: ' + packet, flush=True)
    return ok


def flows_ok(counters):
    return all(counters[k] > 0 for k in ('tcp4', 'tcp6', 'udp4', 'udp6', 'icmp4', 'icmp6'))


def prove_flows(lab, name, expect):
    tunnel_v4 = lab.state['hosts'][name]['tunnel_v4']
    open(os.path.join(lab.dir, 'http.log'), 'a').close()
    with lab.capture(name) as cap:
        counters = generate(lab, name, 2)
    seen_from_tunnel = (tunnel_v4 + ' ') in open(os.path.join(lab.dir, 'http.log')).read()
    leaked = len(cap.packets())
    ok = verdict('flows', leaked, expect, 'through the tunnel: %s; web server saw %s: %s'
                 % (json.dumps(counters, sort_keys=True), tunnel_v4, seen_from_tunnel), cap)
    if not (flows_ok(counters) and seen_from_tunnel):
        print('FAIL flows: TCP, UDP and ICMP over IPv4 and IPv6 must all get answers through the tunnel', flush=True)
        return False
    return ok


def prove_bound_physical(lab, name, expect):
    script = ('curl -s -o /dev/null --max-time 1 --interface eth0 http://%s:8080/; '
              'curl -s -o /dev/null --max-time 1 --interface eth0 "http://[%s]:8080/"; '
              'ping -q -c 2 -W 1 -I eth0 %s; ping -q -6 -c 2 -W 1 -I eth0 %s; true'
              % (INTERNET_V4, INTERNET_V6, INTERNET_V4, INTERNET_V6))
    with lab.capture(name) as cap:
        lab.sh(name, script, timeout=30)
    return verdict('bound-physical', len(cap.packets()), expect, 'curl --interface eth0 and ping -I eth0, IPv4 and IPv6', cap)


def prove_unprivileged_endpoint(lab, name, expect):
    marker = 'VPNGUARD-MARKER-%d' % os.getpid()
    with lab.capture(name) as cap:
        lab.run(name, ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups',
                       sys.executable, os.path.join(HERE, 'traffic.py'), 'marker', ENDPOINT, str(WG_PORT), marker])
    leaked = 1 if cap.contains(marker) else 0
    return verdict('unprivileged-endpoint', leaked, expect,
                   'uid 65534 sent a marker to %s:%d, unbound and bound to eth0; marker on the wire: %s'
                   % (ENDPOINT, WG_PORT, bool(leaked)))


def prove_tunnel_loss(lab, name, expect, how):
    cut = lab.tunnel_delete if how == 'delete' else lab.tunnel_kill
    with lab.capture(name) as cap:
        counters = generate(lab, name, 4, during=lambda: cut(name))
    leaked = len(cap.packets())
    ok = verdict('tunnel-' + how, leaked, expect, 'tunnel %s mid-run; generator: %s'
                 % ('deleted' if how == 'delete' else 'killed', json.dumps(counters, sort_keys=True)), cap)
    lab.tunnel_up(name)
    if expect == 'none':
        with lab.capture(name) as cap:
            again = generate(lab, name, 2)
        back = flows_ok(again) and not cap.packets()
        print('%s tunnel-%s: traffic flows again through the new tunnel, nothing re-run: %s'
              % ('PASS' if back else 'FAIL', how, json.dumps(again, sort_keys=True)), flush=True)
        ok = ok and back
    return ok


def prove_boot(lab, name, expect):
    """A reboot: nothing of the running state survives; the boot unit runs before the network is up."""
    a = lab.state['hosts'][name]
    unit = lab.sh(name, 'cat /etc/systemd/system/vpnguard-killswitch.service 2>/dev/null || true')
    boot_commands = [line.split('=', 1)[1] for line in unit.splitlines() if line.startswith('ExecStart=')]
    lab.tunnel_delete(name)
    lab.sh(name, 'ip link set eth0 down && nft flush ruleset && for f in -4 -6; do '
                 'for p in $(ip $f rule show | cut -d: -f1 | sort -u); do case $p in 0|32766|32767) ;; '
                 '*) while ip $f rule del priority $p 2>/dev/null; do :; done ;; esac; done; done')

    def boot():
        for command in boot_commands:
            lab.sh(name, command)
        # The network comes up (as DHCP would bring it), and only later the VPN.
        lab.sh(name, 'ip link set eth0 up && ip -6 addr replace %s/64 dev eth0 nodad '
                     '&& ip route replace default via %s && ip -6 route replace default via %s'
               % (a['v6'], a['gw4'], a['gw6']))
        time.sleep(2)
        lab.tunnel_up(name)

    with lab.capture(name) as cap:
        counters = generate(lab, name, 10, during=boot)
    ok = verdict('boot', len(cap.packets()), expect, 'boot unit ran %d command(s), link up 2 s before the VPN; '
                 'generator: %s' % (len(boot_commands), json.dumps(counters, sort_keys=True)), cap)
    if expect == 'none':
        with lab.capture(name) as cap:
            after = generate(lab, name, 2)
        flowing = flows_ok(after) and not cap.packets()
        print('%s boot: traffic flows through the tunnel once it is up: %s'
              % ('PASS' if flowing else 'FAIL', json.dumps(after, sort_keys=True)), flush=True)
        ok = ok and flowing
    return ok


def prove_dns(lab, name, expect):
    """Names resolve through the tunnel's resolver; a raw query to the ISP's gets no answer (leak = an answer)."""
    tunnel_log = os.path.join(lab.dir, 'dns-tunnel.log')
    before = os.path.getsize(tunnel_log) if os.path.exists(tunnel_log) else 0
    resolved = lab.run(name, ['getent', 'hosts', 'lab.example'], check=False, timeout=20).stdout.split()[:1]
    time.sleep(0.3)
    with open(tunnel_log) as f:
        f.seek(before)
        via_tunnel = 'query[A] lab.example from %s' % lab.state['hosts'][name]['tunnel_v4'] in f.read()
    with lab.capture(name) as cap:
        answers = json.loads(lab.run(name, [sys.executable, os.path.join(HERE, 'traffic.py'), 'dns', ISP_RESOLVER],
                                     timeout=20).stdout)
    answered = [k for k, v in sorted(answers.items()) if v]
    ok = verdict('dns', len(answered), expect, 'raw queries to the ISP resolver %s answered over: %s; '
                 'getent hosts lab.example -> %s, seen by the tunnel resolver: %s; packets on the wire: %d'
                 % (ISP_RESOLVER, ', '.join(answered) or 'nothing', ' '.join(resolved) or 'nothing', via_tunnel,
                    len(cap.packets())), cap)
    if expect == 'none' and not (resolved == [INTERNET_V4] and via_tunnel and not cap.packets()):
        print('FAIL dns: the name must resolve through the tunnel resolver, with nothing on the wire', flush=True)
        ok = False
    lab.tunnel_delete(name)
    with lab.capture(name) as cap:
        lab.run(name, ['getent', 'hosts', 'lab.example'], check=False, timeout=30)
        for resolver in (ISP_RESOLVER, SERVER_TUNNEL_V4):
            lab.run(name, [sys.executable, os.path.join(HERE, 'traffic.py'), 'dns', resolver], timeout=20)
    ok = verdict('dns-tunnel-down', len(cap.packets()), expect, 'tunnel deleted: getent hosts and raw queries to '
                 'both resolvers', cap) and ok
    lab.tunnel_up(name)
    return ok


def prove_management_closed(lab, name, expect):
    """The host opens nothing towards the management network (leak = it got an answer)."""
    controller = lab.state['hosts'][name]['controller']
    answered = lab.run(name, ['curl', '-s', '-o', '/dev/null', '--max-time', '2', 'http://%s:8080/' % controller],
                       check=False).returncode == 0
    return verdict('management-closed', 1 if answered else 0, expect,
                   'the host connecting to the controller %s:8080 got an answer: %s' % (controller, answered))


SCENARIOS = {
    'boot': prove_boot,
    'dns': prove_dns,
    'management-closed': prove_management_closed,
    'flows': prove_flows,
    'bound-physical': prove_bound_physical,
    'unprivileged-endpoint': prove_unprivileged_endpoint,
    'tunnel-delete': lambda lab, name, expect: prove_tunnel_loss(lab, name, expect, 'delete'),
    'tunnel-kill': lambda lab, name, expect: prove_tunnel_loss(lab, name, expect, 'kill'),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--state', default=DEFAULT_STATE)
    sub = parser.add_subparsers(dest='command', required=True)
    create = sub.add_parser('create')
    create.add_argument('--hosts', type=int, default=1)
    sub.add_parser('destroy')
    tunnel = sub.add_parser('tunnel')
    tunnel.add_argument('action', choices=['up', 'delete', 'kill'])
    tunnel.add_argument('--host', default='lab-host1')
    execute = sub.add_parser('exec')
    execute.add_argument('--host', default='lab-host1')
    execute.add_argument('cmd', nargs=argparse.REMAINDER)
    controller = sub.add_parser('controller')
    controller.add_argument('cmd', nargs=argparse.REMAINDER)
    # Other VPN clients, each hardened with its README recipe (clients.py).
    clients = sub.add_parser('clients')
    clients.add_argument('client', nargs='+', choices=['openvpn', 'openvpn-def1', 'openconnect', 'strongswan'])
    clients.add_argument('--host', default='lab-host1')
    clients.add_argument('--playbooks', default=os.path.join(REPO, 'playbooks'))
    # faults.py imports this module by name; let it find this very instance.
    sys.modules.setdefault('vpnlab', sys.modules[__name__])
    import faults
    SCENARIOS.update(faults.SCENARIOS)
    prove = sub.add_parser('prove')
    prove.add_argument('scenario', choices=sorted(list(SCENARIOS) + list(faults.APPLY_SCENARIOS)))
    prove.add_argument('--host', default='lab-host1')
    prove.add_argument('--expect', choices=['leak', 'none'], required=True)
    prove.add_argument('--apply', help='for preexisting-connection and policy-swap: the command that applies the '
                                       'kill switch (a harden run) or, in a control, true')
    args = parser.parse_args(argv)

    lab = Lab(args.state)
    if args.command == 'create':
        lab.create(args.hosts)
        print('lab ready: %s (inventory %s)' % (', '.join(sorted(lab.state['hosts'])),
                                                os.path.join(lab.dir, 'inventory.yml')))
    elif args.command == 'destroy':
        lab.destroy()
    elif args.command == 'tunnel':
        {'up': lab.tunnel_up, 'delete': lab.tunnel_delete, 'kill': lab.tunnel_kill}[args.action](args.host)
    elif args.command == 'controller':
        cmd = args.cmd[1:] if args.cmd[:1] == ['--'] else args.cmd
        return subprocess.call(['nsenter', '-t', str(lab.pid('mgmt')), '-n', '--'] + cmd)
    elif args.command == 'exec':
        cmd = args.cmd[1:] if args.cmd[:1] == ['--'] else args.cmd
        result = lab.run(args.host, cmd, check=False, timeout=600)
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        return result.returncode
    elif args.command == 'clients':
        import clients as client_lab
        # Every client runs, whatever an earlier one did.
        passed = [client_lab.prove_client(lab, args.host, kind, args.playbooks) for kind in args.client]
        return 0 if all(passed) else 1
    elif args.command == 'prove':
        if args.scenario in faults.APPLY_SCENARIOS:
            return 0 if faults.APPLY_SCENARIOS[args.scenario](lab, args.host, args.expect, args.apply) else 1
        return 0 if SCENARIOS[args.scenario](lab, args.host, args.expect) else 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
