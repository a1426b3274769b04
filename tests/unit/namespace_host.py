"""A throwaway Linux host for tests: its own network stack and private /etc and /var/lib.

The namespaces are held open by a sleeping process that the test owns; the
overlays make configuration written by a module land in a temporary
directory, never on the machine running the tests.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'lab'))
from tcpdump import Tcpdump  # noqa: E402  (tests/lab is not a package)

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
ANSIBLE = os.path.join(os.path.dirname(sys.executable), 'ansible')
PLAYBOOK = os.path.join(os.path.dirname(sys.executable), 'ansible-playbook')
CAN_RUN = os.geteuid() == 0 and shutil.which('nft') and shutil.which('unshare') and os.path.exists(ANSIBLE)

SETUP = r'''
set -e
for d in etc var/lib; do
    mkdir -p "$1/$d.upper" "$1/$d.work"
    mount -t overlay overlay -o "lowerdir=/$d,upperdir=$1/$d.upper,workdir=$1/$d.work" "/$d"
done
ip link set lo up
exec sleep 600
'''


class Host:
    def __init__(self, tmp_path):
        self.tmp = str(tmp_path)
        self.state_dir = '/var/lib/vpnguard-killswitch'
        self.persist_dir = '/etc/vpnguard-killswitch'
        self.proc = subprocess.Popen(
            ['unshare', '--net', '--mount', '--propagation', 'private', '--fork', '--kill-child',
             'sh', '-c', SETUP, 'host', os.path.join(self.tmp, 'overlay')],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pid = None
        for attempt in range(100):
            children = subprocess.run(['pgrep', '-P', str(self.proc.pid)], capture_output=True, text=True, check=False).stdout.split()
            if children and os.readlink('/proc/%s/exe' % children[0]).endswith('sleep'):
                self.pid = int(children[0])
                break
            time.sleep(0.05)
        assert self.pid, 'namespace did not start'

    def sh(self, command, check=True):
        result = subprocess.run(['nsenter', '-t', str(self.pid), '-n', '-m', '--', 'sh', '-c', command],
                                capture_output=True, text=True, timeout=60, check=False)
        if check:
            assert result.returncode == 0, result.stderr
        return result.stdout

    def module(self, name, *flags, **args):
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, '.cache', 'collections'),
                   ANSIBLE_STDOUT_CALLBACK='json', ANSIBLE_LOAD_CALLBACK_PLUGINS='1',
                   ANSIBLE_PYTHON_INTERPRETER='/usr/bin/python3')
        result = subprocess.run(
            ['nsenter', '-t', str(self.pid), '-n', '-m', '--', ANSIBLE, 'localhost', '-c', 'local',
             '-m', 'vpnguard.killswitch.' + name, '-a', json.dumps(args)] + list(flags),
            capture_output=True, text=True, env=env, timeout=120, check=False)
        return json.loads(result.stdout)['plays'][0]['tasks'][0]['hosts']['localhost']

    def playbook(self, *argv, **env):
        """ansible-playbook ARGV run inside the host, with the collection and extra environment ENV."""
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, '.cache', 'collections'),
                   ANSIBLE_NOCOLOR='1', **env)
        return subprocess.run(['nsenter', '-t', str(self.pid), '-n', '-m', '--', PLAYBOOK] + list(argv),
                              capture_output=True, text=True, env=env, timeout=300, check=False)

    def hide_nftables_binding(self):
        """Make `import nftables` fail on this host only, as where python3-nftables is not installed.

        Returns the binding's directory, bind-mounted over in the host's own mount namespace.
        """
        hidden = os.path.join(self.tmp, 'hidden-binding')
        os.mkdir(hidden)
        with open(os.path.join(hidden, '__init__.py'), 'w') as f:
            f.write('raise ImportError("not installed on this host")\n')
        binding = self.sh("/usr/bin/python3 -c 'import nftables, os; print(os.path.dirname(nftables.__file__))'").strip()
        self.sh('mount --bind %s %s' % (hidden, binding))
        return binding

    def close(self):
        # Anything a module left in the namespace (a commit-confirmed timer)
        # goes with it: found by namespace, never by name.
        namespace = os.readlink('/proc/%d/ns/net' % self.pid)
        for entry in os.listdir('/proc'):
            try:
                if entry.isdigit() and os.readlink('/proc/%s/ns/net' % entry) == namespace:
                    os.kill(int(entry), 9)
            except OSError:
                pass
        self.proc.kill()
        self.proc.wait()


class UplinkHost(Host):
    """A host with an uplink eth0 and default routes through an ISP namespace that drops what it gets."""

    def __init__(self, tmp_path):
        super(UplinkHost, self).__init__(tmp_path)
        os.mkdir(os.path.join(self.tmp, 'isp'))
        self.isp = Host(os.path.join(self.tmp, 'isp'))
        self.sh('ip link add eth0 type veth peer name up0 netns %d' % self.isp.pid)
        for host, dev, v4, v6 in ((self, 'eth0', '198.18.1.2', '2001:db8:1:1::2'),
                                  (self.isp, 'up0', '198.18.1.1', '2001:db8:1:1::1')):
            host.sh('sysctl -qw net.ipv6.conf.%s.accept_dad=0 && ip addr add %s/24 dev %s && '
                    'ip -6 addr add %s/64 dev %s nodad && ip link set %s up' % (dev, v4, dev, v6, dev, dev))
        self.sh('ip route add default via 198.18.1.1 metric 100 && ip -6 route add default via 2001:db8:1:1::1 metric 100')

    def capture(self):
        """tcpdump on the ISP side of the uplink, for what the host put on the wire."""
        return Tcpdump(self.isp.pid, 'up0', os.path.join(self.tmp, 'uplink.pcap'), mount=False).start()

    def captured(self, capture, bpf):
        capture.stop()
        return capture.packets(bpf)

    def close(self):
        self.isp.close()
        super(UplinkHost, self).close()


def host_fixture(cls):
    """A pytest fixture giving each test a fresh host of class cls, torn down after it."""
    @pytest.fixture
    def host(tmp_path):
        h = cls(tmp_path)
        yield h
        h.close()
    return host
