"""The VPN clients fleets run, in the lab, each hardened with its README recipe and proven.

    vpnlab.py clients openvpn|openvpn-def1|openconnect|strongswan --host H [--playbooks DIR]

Each client runs against its real server in the `isp` namespace, on the
lab's endpoint address 203.0.113.1, and under a supervisor loop on the host
(what systemd's Restart= does on a real one). The wg-quick tunnel of the
lab is taken down first. For each client, in order:

    control      no kill switch: the client stops (as it does on a server
                 outage), its routes go, and the traffic generator leaks
    harden       harden.yml with the client's recipe (CLIENTS[...]['recipe'])
    flows        TCP through the tunnel: the web host sees the tunnel address
    server       the server restarts: the client comes back by itself
    killed       the client is killed: the supervisor starts it again and it
                 comes back, its new tunnel device grouped by its own hook
    exception    openvpn only: uid 4343, a bypass exception, gets an answer
                 from the web host, which sees the uplink's address
    other-uid    uid 4242 sends a marker to each endpoint port: never on the wire
                 (in the control, while the tunnel is up: on the wire)
    down         the client stops: the uplink sees only the tunnel's own packets
    rollback     rollback.yml, the client stopped, the host as before

Clients: openvpn (user nobody, plain redirect-gateway: the default route
in main, the tunnel's mark), openvpn-def1 (root, def1: the /1 routes in
main), openconnect (vpnc-script's default route in main, -U nobody, tcp and
udp 443), strongswan (IKEv2, kernel-libipsec on ipsec0, udp 500 and 4500).

Tunnel networks (documentation ranges, inside the lab only): OpenVPN
198.18.201.0/24, ocserv 198.18.202.0/24, strongSwan 198.18.203.0/24.
"""

import json
import os
import signal
import subprocess
import time

import vpnlab

OTHER_UID = 4242
EXCEPTION_UID = 4343  # a bypass exception in the openvpn recipe
TUNNEL_GROUP_HOOK = 'ip link set dev "$%s" group 86'  # the routing guard's tunnel group

# Each client's recipe, as the README gives it: the collection's side.
COMMON = {'killswitch_dns_servers': [vpnlab.SERVER_TUNNEL_V4], 'killswitch_allow_lan': False,
          'killswitch_management': [], 'killswitch_exceptions': [], 'killswitch_routing_guard': True,
          'killswitch_restrict_endpoints_to_tunnel': True}
CLIENTS = {
    'openvpn': dict(
        tunnel='tun0', network='198.18.201.', ports=[('udp', 1194)],
        recipe=dict(COMMON, killswitch_tunnel_interfaces=['tun*'], killswitch_tunnel_fwmark=51820,
                    killswitch_exceptions=[{'uid': EXCEPTION_UID}],
                    killswitch_endpoints=[{'address': vpnlab.ENDPOINT, 'port': 1194, 'protocol': 'udp'}])),
    # OpenVPN as root with def1: the /1 routes in main, the socket root's.
    'openvpn-def1': dict(
        tunnel='tun0', network='198.18.201.', ports=[('udp', 1194)],
        recipe=dict(COMMON, killswitch_tunnel_interfaces=['tun*'],
                    killswitch_endpoints=[{'address': vpnlab.ENDPOINT, 'port': 1194, 'protocol': 'udp'}])),
    'openconnect': dict(
        tunnel='tun0', network='198.18.202.', ports=[('tcp', 443), ('udp', 443)],
        recipe=dict(COMMON, killswitch_tunnel_interfaces=['tun*'],
                    killswitch_endpoints=[{'address': vpnlab.ENDPOINT, 'port': 443, 'protocols': ['tcp', 'udp'],
                                           'uid': [65534]}])),
    'strongswan': dict(
        tunnel='ipsec0', network='198.18.203.', ports=[('udp', 500), ('udp', 4500)],
        recipe=dict(COMMON, killswitch_tunnel_interfaces=['ipsec0'],
                    killswitch_endpoints=[{'address': vpnlab.ENDPOINT, 'ports': [500, 4500], 'protocol': 'udp'}])),
}

PKI = r'''
set -e
cd "$1"
ca() { openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.crt \
        -days 2 -subj /CN=vpnguard-lab-ca 2>/dev/null; }
leaf() {
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$1.key" -out "$1.csr" \
        -subj "/CN=$1" 2>/dev/null
    printf 'extendedKeyUsage=%s\nkeyUsage=digitalSignature,keyAgreement\nsubjectAltName=%s\n' "$2" "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$1.crt" -days 2 \
        -extfile "$1.ext" 2>/dev/null
}
ca
leaf server serverAuth IP:203.0.113.1
leaf client clientAuth DNS:client.lab
chmod 644 *.key
openssl x509 -in server.crt -pubkey -noout | openssl pkey -pubin -outform der \
    | openssl dgst -sha256 -binary | base64 > server.pin
'''


class ClientLab:
    def __init__(self, lab, host, kind):
        self.lab, self.host, self.kind = lab, host, kind
        self.spec = CLIENTS[kind]
        self.pki = os.path.join(lab.dir, 'pki')
        self.tunnel_v4 = None

    # -- plumbing ------------------------------------------------------------------

    def write(self, namespace, path, text, mode=0o644):
        self.lab.run(namespace, ['sh', '-c', 'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod %o "$1"' % mode,
                                 'write', path], input=text)

    def supervise(self, namespace, name, script):
        """script run again a second after it ends, as systemd's Restart=always does."""
        key = '%s:%s' % (namespace, name)
        self.lab.state['processes'][key] = self.lab.spawn(
            namespace, ['sh', '-c', 'while :; do %s; sleep 1; done' % script], name + '.log')
        self.lab.save()

    def supervised_children(self, namespace, name):
        pid = self.lab.state['processes'].get('%s:%s' % (namespace, name))
        out = subprocess.run(['pgrep', '-P', str(pid)], capture_output=True, text=True, check=False).stdout
        return [int(p) for p in out.split()]

    def kill_supervised(self, namespace, name, sig=signal.SIGKILL):
        for child in self.supervised_children(namespace, name):
            try:
                os.kill(child, sig)
            except OSError:
                pass

    def stop_supervised(self, namespace, name, sig=signal.SIGTERM):
        """The supervisor first, then its child with sig: SIGTERM lets a client undo its routes."""
        key = '%s:%s' % (namespace, name)
        children = self.supervised_children(namespace, name)
        pid = self.lab.state['processes'].pop(key, None)
        self.lab.save()
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for child in children:
            try:
                os.kill(child, sig)
            except OSError:
                pass
        deadline = time.time() + 10
        while time.time() < deadline and any(os.path.exists('/proc/%d' % c) for c in children):
            time.sleep(0.1)

    # -- servers and clients ---------------------------------------------------------

    def prepare(self):
        """The PKI once per lab; the host without the lab's wg-quick tunnel and its rules."""
        if not os.path.exists(os.path.join(self.pki, 'server.pin')):
            os.makedirs(self.pki, exist_ok=True)
            subprocess.run(['sh', '-c', PKI, 'pki', self.pki], check=True, timeout=60)
        self.lab.tunnel_delete(self.host)
        self.lab.sh(self.host, 'for f in -4 -6; do ip $f rule del priority 999 2>/dev/null; '
                               'ip $f rule del priority 1000 2>/dev/null; done; true')

    def start(self):
        """The server, the client's configuration and the client."""
        self.client_command = getattr(self, '_start_' + self.kind.replace('-', '_'))()
        self.start_client()

    def start_client(self):
        self.supervise(self.host, self.kind, self.client_command)

    def stop(self, sig=signal.SIGTERM):
        self.stop_supervised(self.host, self.kind, sig)

    def stop_all(self):
        self.stop()
        self.stop_supervised('isp', self.kind + '-server', signal.SIGKILL)

    def restart_server(self):
        self.kill_supervised('isp', self.kind + '-server')

    def _start_openvpn_def1(self):
        return self._start_openvpn(['redirect-gateway def1'])

    def _start_openvpn(self, client_options=None):
        p = self.pki
        self.write('isp', '/etc/openvpn/lab-server.conf', '\n'.join([
            'port 1194', 'proto udp', 'local %s' % vpnlab.ENDPOINT, 'dev tuns0', 'topology subnet',
            'server 198.18.201.0 255.255.255.0', 'keepalive 1 4', 'dh none', 'disable-dco',
            'ca %s/ca.crt' % p, 'cert %s/server.crt' % p, 'key %s/server.key' % p, 'verb 3', '']))
        self.supervise('isp', self.kind + '-server', 'openvpn --config /etc/openvpn/lab-server.conf')
        # The client side of the recipe: plain redirect-gateway (the default
        # route in main), user nobody, the tunnel's mark, the group hook.
        self.write(self.host, '/etc/openvpn/vpnguard-tunnel-group', '#!/bin/sh\nexec %s\n'
                   % (TUNNEL_GROUP_HOOK % '1'), 0o755)
        self.write(self.host, '/etc/openvpn/client/lab.conf', '\n'.join([
            'client', 'dev tun0', 'proto udp', 'remote %s 1194' % vpnlab.ENDPOINT, 'nobind', 'disable-dco',
            'ca %s/ca.crt' % p, 'cert %s/client.crt' % p, 'key %s/client.key' % p, 'remote-cert-tls server',
            'script-security 2', 'up /etc/openvpn/vpnguard-tunnel-group'] + (client_options or [
                'redirect-gateway', 'user nobody', 'group nogroup', 'persist-tun', 'persist-key', 'mark 51820']) + [
            'connect-retry 1 1', 'verb 3', '']))
        return 'openvpn --config /etc/openvpn/client/lab.conf'

    def _start_openconnect(self):
        p = self.pki
        self.write('isp', '/etc/ocserv/lab.conf', '\n'.join([
            'auth = "certificate"', 'tcp-port = 443', 'udp-port = 443', 'listen-host = %s' % vpnlab.ENDPOINT,
            'run-as-user = nobody', 'run-as-group = nogroup', 'socket-file = /run/ocserv-socket',
            'server-cert = %s/server.crt' % p, 'server-key = %s/server.key' % p, 'ca-cert = %s/ca.crt' % p,
            'cert-user-oid = 2.5.4.3', 'isolate-workers = false', 'max-clients = 16', 'keepalive = 10',
            'dpd = 2', 'mobile-dpd = 2', 'try-mtu-discovery = false', 'device = vpns',
            'ipv4-network = 198.18.202.0', 'ipv4-netmask = 255.255.255.0', 'route = default',
            'dns = %s' % vpnlab.SERVER_TUNNEL_V4, 'pid-file = /run/ocserv.pid', 'use-occtl = false',
            'predictable-ips = true', '']))
        self.supervise('isp', 'openconnect-server', 'ocserv --foreground -c /etc/ocserv/lab.conf')
        # vpnc-script sources /etc/vpnc/connect.d/* before it sets the routes.
        self.write(self.host, '/etc/vpnc/connect.d/vpnguard-tunnel-group', TUNNEL_GROUP_HOOK % 'TUNDEV' + '\n')
        self.lab.sh(self.host, 'mkdir -p /run/vpnc')  # where vpnc-script keeps resolv.conf's backup
        with open(os.path.join(p, 'server.pin')) as f:
            pin = f.read().strip()
        return ('openconnect --non-inter -i tun0 -U nobody '
                '--servercert pin-sha256:%s -c %s/client.crt -k %s/client.key '
                '--script /usr/share/vpnc-scripts/vpnc-script https://%s/' % (pin, p, p, vpnlab.ENDPOINT))

    def _strongswan_conf(self, namespace, connection):
        self.write(namespace, '/etc/strongswan.d/charon/kernel-libipsec.conf',
                   'kernel-libipsec {\n    load = yes\n}\n')
        self.write(namespace, '/etc/swanctl/conf.d/lab.conf', connection, 0o600)
        # A restarted server is noticed in seconds, not after the default ~165 s of retransmits.
        self.write(namespace, '/etc/strongswan.d/vpnguard-lab.conf',
                   'charon {\n    retransmit_tries = 3\n    retransmit_timeout = 1.0\n    retransmit_base = 1.4\n}\n')

    def _start_strongswan(self):
        secret = 'secrets {\n  ike-lab {\n    secret = vpnguard-lab-psk\n  }\n}\n'
        self._strongswan_conf('isp', '''connections {
  lab {
    local_addrs = %s
    pools = lab_pool
    encap = yes
    dpd_delay = 2s
    local { auth = psk
      id = server.lab }
    remote { auth = psk
      id = client.lab }
    children { lab { local_ts = 0.0.0.0/0
      esp_proposals = aes128-sha256 } }
  }
}
pools { lab_pool { addrs = 198.18.203.0/24 } }
''' % vpnlab.ENDPOINT + secret)
        loop = '/usr/lib/ipsec/charon & sleep 1; swanctl --load-all --noprompt >/dev/null; wait'
        self.supervise('isp', 'strongswan-server', loop)
        self._strongswan_conf(self.host, '''connections {
  lab {
    remote_addrs = %s
    vips = 0.0.0.0
    encap = yes
    dpd_delay = 2s
    keyingtries = 0
    local { auth = psk
      id = client.lab }
    remote { auth = psk
      id = server.lab }
    children { lab { remote_ts = 0.0.0.0/0
      esp_proposals = aes128-sha256
      start_action = start
      dpd_action = restart
      close_action = start } }
  }
}
''' % vpnlab.ENDPOINT + secret)
        return loop

    # -- what is seen ----------------------------------------------------------------

    def web_request(self, uid=None):
        """The address the web host saw an answered request from (as uid), or None."""
        log = os.path.join(self.lab.dir, 'http.log')
        before = os.path.getsize(log)
        as_uid = ['setpriv', '--reuid=%d' % uid, '--regid=%d' % uid, '--clear-groups'] if uid else []
        answered = self.lab.run(self.host, as_uid + ['curl', '-s', '-o', '/dev/null', '--max-time', '1',
                                                     'http://%s:8080/' % vpnlab.INTERNET_V4], check=False).returncode == 0
        if not answered:
            return None
        time.sleep(0.2)
        with open(log) as f:
            f.seek(before)
            seen = [line.split()[0].replace('::ffff:', '') for line in f if 'GET' in line]
        return seen[-1] if seen else None

    def through_tunnel(self, seconds=30):
        """A web request answered, and the web host saw it from the tunnel's address."""
        self.tunnel_v4 = None
        deadline = time.time() + seconds
        while time.time() < deadline:
            seen = self.web_request()
            if seen and seen.startswith(self.spec['network']):
                self.tunnel_v4 = seen
                return True
            time.sleep(0.5)
        return False

    def leak_filter(self):
        own = ' or '.join('(%s and dst host %s and dst port %d)' % (proto, vpnlab.ENDPOINT, port)
                          for proto, port in self.spec['ports'])
        return ('not (%s or arp or (ip6 and (dst net ff02::/16 or dst net fe80::/10)) '
                'or (udp and (port 67 or port 68 or port 546 or port 547)))' % own)

    def down_leaks(self):
        """Packets beside the tunnel's own on the uplink while the client stops and stays down."""
        with self.lab.capture(self.host) as cap:
            counters = vpnlab.generate(self.lab, self.host, 4, during=self.stop, lead=1)
        return cap.packets(self.leak_filter()), counters

    def other_uid_leaks(self):
        """uid 4242 sends a marker to each endpoint port (unbound and bound to eth0): seen on the wire?"""
        marker = 'VPNGUARD-CLIENTS-%d' % os.getpid()
        python = '/usr/bin/python3'  # the test's own may live where another user cannot run it (pyenv under /root)
        script = ''
        for proto, port in self.spec['ports']:
            if proto == 'udp':
                script += '%s %s marker %s %d %s; ' % (python, os.path.join(vpnlab.HERE, 'traffic.py'),
                                                       vpnlab.ENDPOINT, port, marker)
            else:
                script += ("%s -c 'import socket; s = socket.create_connection((\"%s\", %d), 2); s.sendall(b\"%s\")'; "
                           % (python, vpnlab.ENDPOINT, port, marker))
        with self.lab.capture(self.host) as cap:
            sent = self.lab.run(self.host, ['setpriv', '--reuid=%d' % OTHER_UID, '--regid=%d' % OTHER_UID,
                                            '--clear-groups', 'sh', '-c', script + 'true'], check=False)
        if 'No such file' in sent.stderr or 'Permission denied' in sent.stderr:
            raise RuntimeError('the other uid could not run its sender: ' + sent.stderr)
        return cap.contains(marker)

    def playbook(self, playbooks, name, extra=None):
        vars_file = os.path.join(self.lab.dir, 'clients-%s.json' % self.kind)
        with open(vars_file, 'w') as f:
            json.dump(dict(self.spec['recipe'], **(extra or {})), f)
        env = dict(os.environ, ANSIBLE_NOCOLOR='1', ANSIBLE_FORCE_COLOR='0')
        result = subprocess.run(['ansible-playbook', '-i', os.path.join(self.lab.dir, 'inventory.yml'),
                                 '-l', self.host, '-e', '@' + vars_file, os.path.join(playbooks, name)],
                                capture_output=True, text=True, env=env, timeout=300, check=False)
        if result.returncode != 0:
            print(result.stdout[-3000:] + result.stderr[-2000:], flush=True)
        return result.returncode == 0


def report(case, ok, detail):
    print('%s %s: %s' % ('PASS' if ok else 'FAIL', case, detail), flush=True)
    return ok


def prove_client(lab, host, kind, playbooks):
    c = ClientLab(lab, host, kind)
    c.prepare()
    results = []
    try:
        c.start()
        up = c.through_tunnel(40)
        results.append(report('%s control-up' % kind, up, 'without the kill switch the tunnel carries the '
                              'traffic: web host saw %s' % c.tunnel_v4))
        leaked = c.other_uid_leaks()
        results.append(report('%s control-other-uid' % kind, leaked, 'no kill switch: uid %d\'s marker to the '
                              'endpoint on the wire: %s (expect leak)' % (OTHER_UID, leaked)))
        leaks, counters = c.down_leaks()
        results.append(report('%s control-leaks' % kind, len(leaks) > 0, 'client stopped, no kill switch: %d '
                              'packets beside the tunnel\'s own (expect leak); generator %s'
                              % (len(leaks), json.dumps(counters, sort_keys=True))))
        c.start_client()
        c.through_tunnel(40)
        results.append(report('%s harden' % kind, c.playbook(playbooks, 'harden.yml'),
                              'harden.yml with the recipe %s' % json.dumps(c.spec['recipe'], sort_keys=True)))
        up = c.through_tunnel(40)
        group = lab.sh(host, 'ip -o link show %s 2>/dev/null || true' % c.spec['tunnel'])
        results.append(report('%s flows' % kind, up, 'web host saw %s; %s' % (c.tunnel_v4, group.split('\\')[0])))
        c.restart_server()
        time.sleep(2)
        results.append(report('%s server-restart' % kind, c.through_tunnel(60),
                              'server restarted; the client came back by itself: %s' % c.tunnel_v4))
        c.kill_supervised(host, kind)
        time.sleep(1)
        results.append(report('%s client-killed' % kind, c.through_tunnel(60),
                              'client killed, started again by its supervisor: %s' % c.tunnel_v4))
        if c.spec['recipe']['killswitch_exceptions']:
            # Plain redirect-gateway leaves main no physical default: the kill switch's table gives the
            # exception one, and its connection is answered from the uplink's address, not the tunnel's.
            seen = c.web_request(EXCEPTION_UID)
            results.append(report('%s exception-bypasses' % kind, seen is not None and not seen.startswith(c.spec['network']),
                                  'uid %d (a bypass exception): web host saw %s' % (EXCEPTION_UID, seen)))
        leaked = c.other_uid_leaks()
        results.append(report('%s other-uid' % kind, not leaked, 'uid %d sent a marker to %s: on the wire: %s'
                              % (OTHER_UID, ', '.join('%s/%d' % p for p in c.spec['ports']), leaked)))
        leaks, counters = c.down_leaks()
        results.append(report('%s tunnel-down' % kind, not leaks, 'client stopped: %d packets beside the tunnel\'s '
                              'own (expect none)%s' % (len(leaks), ''.join('\n    leaked: ' + p for p in leaks[:5]))))
        results.append(report('%s rollback' % kind, c.playbook(playbooks, 'rollback.yml'), 'rollback.yml'))
    finally:
        c.stop_all()
    return all(results)
