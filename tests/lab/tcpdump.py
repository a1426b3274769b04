"""tcpdump in a namespace, for what a host put on the wire: the one capture the lab and the unit tests share."""

import signal
import subprocess
import time


class Tcpdump:
    """Capture what arrives on iface inside the namespace of pid (the far side of a host's uplink) into pcap."""

    def __init__(self, pid, iface, pcap, mount=True):
        self.pid, self.iface, self.pcap, self.mount = pid, iface, pcap, mount
        self.log = pcap + '.log'
        self.proc = None

    def start(self):
        namespaces = ['-n', '-m'] if self.mount else ['-n']
        with open(self.log, 'wb') as out:
            self.proc = subprocess.Popen(
                ['nsenter', '-t', str(self.pid)] + namespaces + ['--', 'tcpdump', '-i', self.iface, '-Q', 'in', '-n',
                                                                 '--immediate-mode', '-U', '-w', self.pcap],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        # Only once tcpdump says it listens does it see what comes next; and only in immediate mode does it
        # take each packet as it comes, not in blocks a second later (that a stop then lost).
        deadline = time.time() + 10
        while b'listening on' not in open(self.log, 'rb').read():
            if time.time() > deadline or self.proc.poll() is not None:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError('tcpdump did not start listening on %s' % self.iface)
            time.sleep(0.05)
        return self

    def stop(self):
        time.sleep(0.5)  # let packets in flight reach the capture
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def packets(self, bpf=''):
        out = subprocess.run(['tcpdump', '-r', self.pcap, '-nn', '-tt'] + ([bpf] if bpf else []),
                             capture_output=True, text=True, timeout=30, check=False).stdout
        return out.splitlines()

    def contains(self, marker):
        with open(self.pcap, 'rb') as f:
            return marker.encode() in f.read()
