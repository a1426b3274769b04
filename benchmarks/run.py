"""Benchmarks of vpnguard.killswitch on the namespace lab (tests/lab/vpnlab.py).

    benchmarks/run [--small] [--hosts 1,10,50] [--entries 10000] [--repeat N]
                   [--fleet-repeat N] [--phases datapath,profile,apply,fleet]
                   [--out DIR] [--state DIR] [--keep-other-phases]

Phases, each on a lab of its own made here with vpnlab's Lab class and
destroyed afterwards, also on failure or SIGTERM/SIGINT:

datapath  TCP and UDP throughput through the WireGuard tunnel (iperf3 server in
          the isp namespace on the tunnel address 192.0.2.1, client in
          lab-host1). The states (DATAPATH_STATES: no kill switch, the default
          policy, N doh_servers entries, without counters, killswitch_log: all,
          and diagnostics) are switched by one nft transaction each while one
          iperf3 stream runs; every state's slot sits next to a slot without the
          kill switch, in random order, and the receiver's 0.25 s intervals
          that began after the switch was done make the slot's figure. The
          bench's rulesets are checked first against what the module lays.
          Reported: per pair, state / off for Mbit/s and for Mbit per CPU
          second of the datapath's processes; the median of the pairs with a
          bootstrap 95 % interval.
profile   Where the sender's CPU goes in each state (PROFILE_STATES): one iperf3
          stream (TCP, then UDP) per state, perf record on the sender's CPU for
          6 s (3 with --small) in its middle, PROFILE_ROUNDS rounds (1 with
          --small) with the states taking turns; the share of the datapath
          processes' samples in nftables' and in conntrack's functions, pooled,
          with a Wilson 95 % interval widened by the rounds' overdispersion, and
          the idle share (the CPU was the bottleneck when it is near 0). Needs
          perf (Debian: linux-perf); skipped without.
apply     The module's payload as Ansible ships it (AnsiballZ, kept on the host
          with ANSIBLE_KEEP_REMOTE_FILES=1 after one run of benchmarks/module.yml)
          run by itself with the host's /usr/bin/python3 inside the host's
          namespaces: wall time of the whole process for a first apply (nothing
          in place), a replace (the other policy in place) and a no-change run,
          with the default policy and with N set entries. Peak resident memory
          of the same process is ru_maxrss from wait4(2) (nsenter execs the
          module, so that is the module process's VmHWM). benchmarks/apply_probe.py
          times the nftables steps alone (render, kernel dry run, the atomic
          transaction, list).
fleet     ansible-playbook vpnguard.killswitch.harden (first run, then the
          idempotent run) and vpnguard.killswitch.audit --check on 1, 10, 50
          hosts (--hosts), forks 10, and the same three on benchmarks/baseline.yml
          (template + nft -f, table inet naive_killswitch). Between repetitions
          and sizes the hosts are reset, untimed, with the rollback playbook
          and baseline.yml -e naive_state=absent.

Writes OUT/latest.json (every sample, medians, the machine, versions, load),
OUT/latest.png and OUT/latest.md (the table). The targets are printed against
the figures, never asserted: the exit status only says whether the benchmark
itself ran. Traffic stays between namespaces the lab made, on documentation
addresses; nothing is routed out of the machine.
"""

import argparse
import datetime
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, 'tests', 'lab'))
import vpnlab  # noqa: E402  (tests/lab is not a package)

COLLECTIONS = os.path.join(REPO, '.cache', 'collections')
HOST = 'lab-host1'
TUNNEL_SERVER = vpnlab.SERVER_TUNNEL_V4
IPERF_PORT = 5201
# DoH entries: 198.18.128.0/17 is documentation space (198.18.0.0/15) that the
# lab does not use (uplinks are 198.18.N.0/24 with N <= 127, guests 198.18.1NN).
DOH_BASE = (198 << 24) | (18 << 16) | (128 << 8)
DOH_MAX = 1 << 15
HOSTS_MAX = 127

TARGETS = {'ratio_default': 0.99, 'ratio_entries': 0.99, 'apply_entries_s': 1.0}
BASE_POLICY = {
    'tunnel_interfaces': ['wg*'],
    'endpoints': [{'address': vpnlab.ENDPOINT, 'port': vpnlab.WG_PORT, 'protocol': 'udp'}],
    'dns_servers': [TUNNEL_SERVER],
}


class Stop(Exception):
    pass


def log(*args):
    print('[bench %s]' % time.strftime('%H:%M:%S'), *args, flush=True)


def median(values):
    return statistics.median(values) if values else None


def doh_addresses(n):
    if n > DOH_MAX:
        raise SystemExit('--entries: at most %d (198.18.128.0/17)' % DOH_MAX)
    return ['%d.%d.%d.%d' % ((a >> 24) & 255, (a >> 16) & 255, (a >> 8) & 255, a & 255)
            for a in range(DOH_BASE, DOH_BASE + n)]


def policy(entries=0):
    p = dict(BASE_POLICY)
    p['doh_servers'] = doh_addresses(entries)
    return p


def role_vars(p):
    return dict(('killswitch_' + k, v) for k, v in p.items())


def write_json(path, data):
    with open(path, 'w') as f:
        json.dump(data, f, indent=1, sort_keys=True)
    return path


def env():
    e = dict(os.environ)
    e['PATH'] = os.path.dirname(sys.executable) + os.pathsep + e.get('PATH', '')
    e['ANSIBLE_COLLECTIONS_PATH'] = COLLECTIONS
    e['ANSIBLE_NOCOLOR'] = '1'
    e['ANSIBLE_FORCE_COLOR'] = '0'
    e.pop('ANSIBLE_KEEP_REMOTE_FILES', None)
    return e


def ansible_playbook(args, log_path, extra_env=None, timeout=3600):
    """Run ansible-playbook; returns (wall seconds, recap {host: counters}). Raises on failure."""
    e = env()
    e.update(extra_env or {})
    argv = ['ansible-playbook'] + args
    start = time.perf_counter()
    with open(log_path, 'a') as out:
        out.write('\n$ %s\n' % ' '.join(a if len(a) < 200 else a[:200] + '...' for a in argv))
        out.flush()
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              cwd=REPO, env=e, timeout=timeout, stdin=subprocess.DEVNULL)
        out.write(proc.stdout)
    wall = time.perf_counter() - start
    recap = {}
    for m in re.finditer(r'^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)', proc.stdout, re.M):
        recap[m.group(1)] = dict(ok=int(m.group(2)), changed=int(m.group(3)),
                                 unreachable=int(m.group(4)), failed=int(m.group(5)))
    if proc.returncode != 0 or any(r['failed'] or r['unreachable'] for r in recap.values()):
        raise RuntimeError('ansible-playbook %s failed (rc %d); see %s'
                           % (' '.join(args[-3:]), proc.returncode, log_path))
    return wall, recap


def machine_facts():
    def out(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except Exception:
            return None
    model = None
    with open('/proc/cpuinfo') as f:
        for line in f:
            if line.startswith('model name'):
                model = line.split(':', 1)[1].strip()
                break
    return {
        'cpus': os.cpu_count(), 'cpu_model': model, 'kernel': platform.release(),
        'nft': out(['nft', '--version']), 'iperf3': out(['iperf3', '--version']),
        'ansible_core': out(['ansible', '--version']),
        'wireguard_go': out(['dpkg-query', '-W', '-f=${Version}', 'wireguard-go']),
        'host_python': out(['/usr/bin/python3', '--version']),
    }


OTHERS = (b'molecule', b'ansible-lint', b'ansible-test', b'pytest', b'tests/run', b'vpnlab.py')


def load_snapshot():
    """The load average, and which test tools of others run beside us (read from /proc, never touched)."""
    with open('/proc/loadavg') as f:
        load = f.read().split()[:3]
    others = {}
    mine = str(os.getpid()).encode()
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open('/proc/%s/cmdline' % entry, 'rb') as f:
                    cmd = f.read().replace(b'\0', b' ')
                with open('/proc/%s/stat' % entry, 'rb') as f:
                    parent = f.read().rsplit(b')', 1)[1].split()[1]
            except (OSError, IndexError):
                continue
            if parent == mine:
                continue
            for name in OTHERS:
                if name in cmd:
                    others[name.decode()] = others.get(name.decode(), 0) + 1
    return {'time': time.time(), 'loadavg': [float(x) for x in load], 'other_test_processes': others}


# -- the lab ---------------------------------------------------------------------

class BenchLab:
    def __init__(self, state_dir, hosts):
        self.lab = vpnlab.Lab(state_dir)
        self.hosts = hosts

    def __enter__(self):
        if self.lab.state.get('namespaces'):
            log('destroying a lab left in %s' % self.lab.dir)
            self.lab.destroy()
            self.lab = vpnlab.Lab(self.lab.dir)
        log('creating the lab: %d host(s) in %s' % (self.hosts, self.lab.dir))
        start = time.perf_counter()
        self.lab.create(self.hosts)
        self.created_in = time.perf_counter() - start
        log('lab ready in %.1f s' % self.created_in)
        return self

    def __exit__(self, *exc):
        log('destroying the lab')
        self.lab.destroy()

    @property
    def dir(self):
        return self.lab.dir

    @property
    def inventory(self):
        return os.path.join(self.lab.dir, 'inventory.yml')

    def run(self, command, name=HOST, **kwargs):
        return self.lab.run(name, command, **kwargs)


def run_measured(lab, command, name=HOST, timeout=120):
    """Run command inside a host; returns (wall s, max RSS KiB, stdout). nsenter execs the command.

    Output goes to files, not pipes: a module's JSON with 10,000 entries would fill a pipe
    that nobody reads while we wait.
    """
    argv = ['nsenter', '-t', str(lab.lab.pid(name)), '-n', '-m', '-u', '--'] + command
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                raise RuntimeError('%s timed out' % ' '.join(command))
            time.sleep(0.001)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise RuntimeError('%s failed (%d): %s %s' % (' '.join(command[:3]), proc.returncode, stdout[-2000:], stderr[-2000:]))
    return wall, usage.ru_maxrss, stdout


class Payloads:
    """The module's AnsiballZ payloads for a few argument sets, kept on the host to be run directly."""

    def __init__(self, lab, log_path):
        self.lab, self.log_path, self.paths = lab, log_path, {}

    def make(self, name, args):
        remote = '/run/vpnguard-bench/%s' % name
        args_file = write_json(os.path.join(self.lab.dir, 'module-%s.json' % name), {'bench_args': args})
        ansible_playbook(['-i', self.lab.inventory, '-l', HOST, '-e', '@' + args_file,
                          '-e', 'ansible_remote_tmp=' + remote, os.path.join(HERE, 'module.yml')],
                         self.log_path, extra_env={'ANSIBLE_KEEP_REMOTE_FILES': '1'})
        found = self.lab.run(['find', remote, '-name', 'AnsiballZ_nft_killswitch.py']).stdout.split()
        if len(found) != 1:
            raise RuntimeError('expected one kept payload under %s, found %r' % (remote, found))
        self.paths[name] = found[0]

    def run(self, name, expect_changed=None):
        wall, rss, out = run_measured(self.lab, ['/usr/bin/python3', self.paths[name]])
        result = json.loads(out[out.index('{'):])
        if result.get('failed'):
            raise RuntimeError('module payload %s failed: %s' % (name, result.get('msg')))
        if expect_changed is not None and result['changed'] != expect_changed:
            raise RuntimeError('module payload %s: changed=%s, expected %s' % (name, result['changed'], expect_changed))
        return {'wall_s': wall, 'maxrss_kib': rss, 'changed': result['changed']}


def make_payloads(lab, entries, log_path):
    payloads = Payloads(lab, log_path)
    payloads.make('off', {'state': 'absent'})
    payloads.make('on', policy(0))
    payloads.make('entries', policy(entries))
    return payloads


def table_elements(lab):
    """Elements in the live doh_v4 set, or None without the table."""
    r = lab.run(['nft', '-j', 'list', 'set', 'inet', 'vpnguard_killswitch', 'doh_v4'], check=False)
    if r.returncode != 0:
        return None
    for item in json.loads(r.stdout)['nftables']:
        if 'set' in item:
            return len(item['set'].get('elem', []))
    return 0


# -- datapath ------------------------------------------------------------------------

# With two CPUs or more, the sender (iperf3 client and the host's wireguard-go)
# runs on CPU 0 and the receiver (the server's wireguard-go and iperf3) on CPU 1:
# the kill switch's work is on the sender's side, and the two sides no longer
# take each other's CPU at random, which made single runs differ by 20 %.
SENDER_CPU, RECEIVER_CPU = 0, 1


def pinned(cpu):
    return ['taskset', '-c', str(cpu)] if os.cpu_count() >= 2 else []


def pin_process(pid, cpu):
    """Every thread of pid (a process the lab started) onto cpu; threads made later inherit it."""
    if os.cpu_count() < 2:
        return
    for tid in os.listdir('/proc/%d/task' % pid):
        try:
            os.sched_setaffinity(int(tid), {cpu})
        except OSError:
            pass  # the thread ended meanwhile


# iperf3 reports what the receiver got every INTERVAL_S; the states are
# switched while one stream runs, and each slot of a state is SLOT_INTERVALS
# whole intervals that began after the switch was done (see run_slots).
INTERVAL_S = 0.25
SLOT_INTERVALS = 3
# Pairs of (off, state) per repetition: more for the states the targets are about, and for
# the table before issue 14, to compare with.
PAIRS_PER_REP = {'on': 3, 'entries': 2, 'before': 2}
TABLE = 'inet vpnguard_killswitch'
CT_TABLE = 'inet bench_ct'
# Diagnostic, no kill switch: one table with one rule that makes the kernel
# track connections (any ct expression turns conntrack on in the namespace,
# for every packet, whatever chain it is in).
CT_ONLY = ('table %s {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n'
           '\t\tct state established accept\n\t}\n}\n' % CT_TABLE)
# Diagnostic: the kill switch's base chains on their hooks with no rule at all, what any
# nftables kill switch costs before its first rule.
HOOKS_ONLY = 'table %s {\n%s}\n' % (TABLE, ''.join(
    '\tchain %s {\n\t\ttype filter hook %s priority %s; policy accept;\n\t}\n' % (hook, hook, priority)
    for hook, priority in (('prerouting', 'raw'), ('output', 'filter'), ('input', 'filter'), ('forward', 'filter'))))
# Diagnostic: the least any nftables kill switch must do, whatever else it does: let the
# tunnel's packets out and in, and the endpoint's for the tunnel's own socket (its mark),
# drop the rest. Two base chains, two rules each, written as the kill switch writes them.
MINIMAL = ('table %s {\n\tchain output {\n\t\ttype filter hook output priority filter; policy drop;\n'
           '\t\toifname "wg*" accept\n\t\tip daddr %s udp dport %d meta mark 0x%08x accept\n\t}\n'
           '\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n'
           '\t\tiifname "wg*" accept\n\t\tip saddr %s udp sport %d accept\n\t}\n}\n'
           % (TABLE, vpnlab.ENDPOINT, vpnlab.WG_PORT, vpnlab.FWMARK, vpnlab.ENDPOINT, vpnlab.WG_PORT))
# The default table as it was before issue 14 (conntrack on, the tunnel's packets third).
BEFORE = os.path.join(HERE, 'before-conntrack-off.nft')
DATAPATH_STATES = ('off', 'on', 'entries', 'nocounters', 'logall', 'noprerouting', 'noguard', 'forwarding', 'ct',
                   'hooks', 'minimal', 'before')


def collection_utils():
    """The collection's renderer, policy model and routing guard, as the module uses them."""
    if COLLECTIONS not in sys.path:
        sys.path.insert(0, COLLECTIONS)
    from ansible_collections.vpnguard.killswitch.plugins.module_utils import nft, policy as model, routing_guard
    return nft, model, routing_guard


def without_counters(ruleset):
    """The table with no counter at all: the named counters' objects and every rule's reference to one."""
    text = re.sub(r'\tcounter \w+ \{\n\t\}\n\n?', '', ruleset)
    return re.sub(r' ?counter name "\w+"', '', text)


def without_chain(ruleset, chain):
    return re.sub(r'\tchain %s \{\n.*?\n\t\}\n\n?' % chain, '', ruleset, flags=re.S)


def datapath_states(entries):
    """{state: (what it is, nft ruleset or '', routing guard on)}; every state replaces the whole of the others."""
    nft, model, _ = collection_utils()
    default = nft.render(model.parse_policy(policy(0)))
    return {
        'off': ('no kill switch', '', False),
        'on': ('kill switch, default policy', default, True),
        'entries': ('kill switch, %d doh_servers entries' % entries,
                    nft.render(model.parse_policy(policy(entries))), True),
        'nocounters': ('diagnostic: the kill switch without its counters', without_counters(default), True),
        'logall': ('the kill switch with killswitch_log: all', nft.render(model.parse_policy(policy(0)), log='all'), True),
        'noprerouting': ('diagnostic: the kill switch without its prerouting chain',
                         without_chain(default, 'prerouting'), True),
        'noguard': ('diagnostic: the kill switch, routing guard off', default, False),
        'forwarding': ('the kill switch of a forwarding host (conntrack on)',
                       nft.render(model.parse_policy(policy(0)), forwarding=True), True),
        'ct': ('diagnostic: no kill switch, one table with one ct rule (conntrack on)', CT_ONLY, False),
        'hooks': ('diagnostic: the base chains on their hooks, no rule (the floor)', HOOKS_ONLY, False),
        'minimal': ('diagnostic: the least a kill switch needs (tunnel and endpoint, out and in)', MINIMAL, True),
        'before': ('the kill switch before issue 14 (conntrack on)', open(BEFORE).read(), True),
    }


class StateSwitch:
    """Sets a datapath state in the host in one nft transaction (plus the guard's ip rules when they change)."""

    def __init__(self, lab, states):
        _, model, routing_guard = collection_utils()
        rules = routing_guard.desired_rules(model.parse_policy(policy(0)))
        self.guard_on = '\n'.join(routing_guard.guard_commands(rules))
        self.guard_off = '\n'.join(routing_guard.ip_command(r, 'del') + ' 2>/dev/null || true' for r in rules)
        self.lab, self.files, self.guard = lab, {}, None
        for state, (_, ruleset, _) in states.items():
            path = os.path.join(lab.dir, 'state-%s.nft' % state)
            with open(path, 'w') as f:
                # Declared first, so that the deletes are valid whether or not the tables are there.
                f.write('add table %s\ndelete table %s\nadd table %s\ndelete table %s\n%s'
                        % (TABLE, TABLE, CT_TABLE, CT_TABLE, ruleset))
            self.files[state] = path
        self.states = states

    def __call__(self, state):
        script = ['nft -f %s || exit 1' % self.files[state]]
        guard = self.states[state][2]
        if guard != self.guard:
            script.append(self.guard_on if guard else self.guard_off)
        start = time.perf_counter()
        self.lab.run(['sh', '-c', '\n'.join(script)])
        self.guard = guard
        return time.perf_counter() - start


def check_states_match_module(lab, payloads, switch, entries):
    """The bench's 'on' and 'off' are what the module itself lays (same table, same ip rules), and
    'entries' holds its entries."""
    def live():
        table = lab.run(['nft', '-s', 'list', 'table'] + TABLE.split(), check=False).stdout
        rules = lab.run(['sh', '-c', 'ip -4 -N rule show; ip -6 -N rule show']).stdout
        return table, rules
    for state in ('on', 'off'):
        payloads.run(state)
        by_module = live()
        switch.guard = None
        switch(state)
        if live() != by_module:
            raise RuntimeError('state %s: the bench ruleset or ip rules differ from what the module lays:\n%s\n%s'
                               % (state, by_module, live()))
    switch('entries')
    if table_elements(lab) != entries:
        raise RuntimeError('state entries: doh_v4 holds %r elements, expected %d' % (table_elements(lab), entries))
    switch('off')


INTERVAL_LINE = re.compile(r'^\[\s*\d+\]\s+([\d.]+)-([\d.]+)\s+sec\s+\S+\s+\S+\s+([\d.]+) Mbits/sec')


class ServerLog:
    """The receiver's interval lines, as the iperf3 server writes them (--forceflush)."""

    def __init__(self, path):
        self.path = path
        self.offset = os.path.getsize(path)
        self.partial = ''

    def lines(self):
        with open(self.path, 'rb') as f:
            f.seek(self.offset)
            chunk = f.read()
        self.offset += len(chunk)
        text = self.partial + chunk.decode(errors='replace')
        lines = text.split('\n')
        self.partial = lines.pop()
        return lines

    def intervals(self):
        """Mbit/s of each whole interval reported since the last call (not the end-of-test summary)."""
        out = []
        for line in self.lines():
            m = INTERVAL_LINE.match(line)
            if m and 'sender' not in line and 'receiver' not in line and \
                    float(m.group(2)) - float(m.group(1)) < INTERVAL_S * 1.5:
                out.append(float(m.group(3)))
        return out

    def wait_listening(self, timeout=10.0):
        """Until the server says it is ready for the next client (or timeout seconds pass)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not any('Server listening' in line for line in self.lines()):
            time.sleep(0.05)

    def next_intervals(self, n, client, timeout=10.0):
        got, deadline = [], time.monotonic() + timeout
        while len(got) < n:
            got += self.intervals()
            if len(got) >= n:
                break
            if client.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError('iperf3 stopped reporting (client exit %r)' % client.returncode)
            time.sleep(0.01)
        return got[:n], got[n:]


TICKS = os.sysconf('SC_CLK_TCK')


def cpu_seconds(pids):
    """User and system time so far of the processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        with open('/proc/%d/stat' % pid) as f:
            fields = f.read().rsplit(')', 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (stat fields 14 and 15)
    return total / float(TICKS)


def iperf3_client(lab, proto, seconds, *options):
    """argv of one iperf3 stream from the host through wg0, on the sender's CPU."""
    command = pinned(SENDER_CPU) + ['iperf3', '-c', TUNNEL_SERVER, '-p', str(IPERF_PORT), '-t', str(seconds)]
    command += list(options)
    if proto == 'udp':
        # As fast as the sender goes; 1300-byte datagrams fit wg0's MTU (1420) unfragmented.
        command += ['-u', '-b', '0', '-l', '1300']
    return ['nsenter', '-t', str(lab.lab.pid(HOST)), '-n', '-m', '-u', '--'] + command


def run_slots(lab, switch, proto, slots, server_log_path, datapath_pids):
    """One iperf3 stream through wg0; slots (states) set one after the other while it runs.

    A slot's figure is the mean of SLOT_INTERVALS receiver intervals that all
    began after its switch was done: what was reported before the switch
    ended is dropped, and so is the interval running when it ended.
    """
    argv = iperf3_client(lab, proto, int(len(slots) * (SLOT_INTERVALS + 3) * INTERVAL_S + 5), '-i', '0', '-J')
    switch(slots[0])
    server = ServerLog(server_log_path)
    results = []
    with tempfile.TemporaryFile() as out:
        client = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            server.next_intervals(2, client)  # the connection and TCP's slow start
            for i, state in enumerate(slots):
                took = switch(state) if i else 0.0
                server.intervals()  # reported before the switch was done
                # The interval running when it was done; after the large set came or went, one
                # more, while the kernel frees the old table's memory (in a worker, after the commit).
                settle = 2 if i and 'entries' in (state, slots[i - 1]) else 1
                _, extra = server.next_intervals(settle, client)
                pids = datapath_pids + [client.pid]
                cpu_before, wall_before = cpu_seconds(pids), time.monotonic()
                values, _ = server.next_intervals(SLOT_INTERVALS - len(extra), client)
                cpu, wall = cpu_seconds(pids) - cpu_before, time.monotonic() - wall_before
                values = (extra + values)[:SLOT_INTERVALS]
                mbps = statistics.mean(values)
                # Work per bit, whatever share of the CPUs the machine's other guests left us:
                # Mbit moved per CPU second of the datapath's processes (both ends' iperf3 and wireguard-go).
                results.append({'state': state, 'mbps': mbps, 'intervals': values, 'switch_s': took,
                                'cpu_s': cpu, 'wall_s': wall, 'mbit_per_cpu_s': mbps * wall / cpu if cpu else None})
        finally:
            if client.poll() is None:
                client.send_signal(signal.SIGINT)  # iperf3 ends the test and tells the server
                try:
                    client.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    client.kill()
                    client.wait()
    server.wait_listening()
    return results


class TunnelBench:
    """A one-host lab with the states ready to switch, the tunnel's two ends pinned and an iperf3 server."""

    def __init__(self, args, log_path, states):
        self.args, self.log_path, self.states = args, log_path, states

    def __enter__(self):
        self.bench_lab = BenchLab(self.args.state, 1)
        lab = self.lab = self.bench_lab.__enter__()
        try:
            payloads = Payloads(lab, self.log_path)
            payloads.make('off', {'state': 'absent'})
            payloads.make('on', policy(0))
            self.switch = StateSwitch(lab, self.states)
            check_states_match_module(lab, payloads, self.switch, self.args.entries)
            processes = lab.lab.state['processes']
            pin_process(processes['wgs'], RECEIVER_CPU)
            pin_process(processes[HOST + ':wg0'], SENDER_CPU)
            self.server_log = os.path.join(lab.dir, 'iperf3.log')
            self.server = lab.lab.spawn('isp', pinned(RECEIVER_CPU) + [
                'iperf3', '-s', '--forceflush', '-f', 'm', '-i', str(INTERVAL_S), '-B', TUNNEL_SERVER,
                '-p', str(IPERF_PORT)], 'iperf3.log')
            lab.lab._wait('the iperf3 server', lambda: os.path.exists(self.server_log)
                          and b'listening' in open(self.server_log, 'rb').read(), seconds=10)
            self.datapath_pids = [processes['wgs'], processes[HOST + ':wg0'], self.server]
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, *exc):
        server = getattr(self, 'server', None)
        if server:
            try:
                os.kill(server, signal.SIGTERM)
            except OSError:
                pass
        return self.bench_lab.__exit__(*exc)


def datapath(args, out_dir, log_path):
    states = datapath_states(args.entries)
    results = {'states': dict((s, v[0]) for s, v in states.items()), 'interval_s': INTERVAL_S,
               'slot_intervals': SLOT_INTERVALS, 'pairs_per_rep': PAIRS_PER_REP, 'repeat': args.repeat,
               'samples': [], 'load': [load_snapshot()],
               'pinning': ({'sender_cpu': SENDER_CPU, 'receiver_cpu': RECEIVER_CPU} if os.cpu_count() >= 2 else None)}
    rng = random.Random(14)
    with TunnelBench(args, log_path, states) as bench:
        pair = 0
        for rep in range(args.repeat):
            for proto in ('tcp', 'udp'):
                # Every state next to an 'off' slot, in a random order and on a random side of it:
                # a drift of the machine's speed hits both sides of a pair alike.
                pairs = [s for s in states if s != 'off' for _ in range(PAIRS_PER_REP.get(s, 1))]
                rng.shuffle(pairs)
                slots, pair_ids = [], []
                for s in pairs:
                    order = ['off', s] if rng.random() < 0.5 else [s, 'off']
                    slots += order
                    pair_ids += [pair, pair]
                    pair += 1
                for sample, pair_id in zip(run_slots(bench.lab, bench.switch, proto, slots, bench.server_log,
                                                     bench.datapath_pids), pair_ids):
                    sample.update(rep=rep, proto=proto, pair=pair_id)
                    results['samples'].append(sample)
                summary = summarize_datapath(results)[proto]
                log('datapath rep %d %s: ' % (rep, proto) + ', '.join(
                    '%s %.3f' % (s, summary['paired_ratio_' + s]) for s in DATAPATH_STATES[1:]))
            results['load'].append(load_snapshot())
        bench.switch('off')
    results['summary'] = summarize_datapath(results)
    return results


# Where the sender's CPU goes, by state: perf samples that CPU while one
# iperf3 stream runs and counts the samples in netfilter's functions. The
# sender's CPU is the bottleneck (it runs the host's wireguard-go, its kernel
# and the veth's delivery; perf sees it idle about 1 % of the time, under 4 %), so the
# share of it that netfilter takes is what the kill switch costs the
# throughput, measured to a fraction of a percent where the throughput
# itself varies by 10 % from one slot to the next.
PROFILE_STATES = ('off', 'on', 'entries', 'before', 'forwarding', 'ct', 'hooks', 'minimal', 'noprerouting')
PROFILE_STATES_SMALL = ('off', 'on', 'before', 'forwarding', 'hooks')
PROFILE_WARMUP_S = 1.5
# Rounds of the whole profile (every state once per round), so that the interval also holds
# what changes from one run to the next, not only the sampling within one (netfilter_share).
PROFILE_ROUNDS = 4
# Functions by what they do: nftables (the hooks, the chains, their expressions and sets)
# and connection tracking (with its defragmentation). Generic helpers they call (hashing,
# memcpy) are not counted, so both shares are lower bounds.
NETFILTER_SYMBOLS = {
    'rules': re.compile(r'^(nft_|__nft_|nf_tables_|nf_hook_slow|nf_hook_entr|nf_reinject)'),
    'conntrack': re.compile(r'^(nf_conntrack|__nf_conntrack|nf_ct_|__nf_ct_|nf_confirm|__nf_confirm|ipv[46]_conntrack'
                            r'|ipv[46]_confirm|hash_conntrack|nf_defrag|ipv6_defrag|nf_nat_)'),
    # The CPU with nothing to run: when it is, the sender's CPU was not the bottleneck.
    'idle': re.compile(r'(_idle|safe_halt|mwait|cpu_idle_poll)'),
}
# The datapath's own processes on the sender CPU (softirq work runs in whichever is current):
# other programs' samples (other guests' tests) are left out of the shares.
DATAPATH_COMMS = ('wireguard-go', 'iperf3', 'ksoftirqd/%d' % SENDER_CPU, 'swapper')
# What perf_shares counts: the datapath's samples, each kind of NETFILTER_SYMBOLS, and the others' samples.
PERF_COUNTS = ('samples',) + tuple(NETFILTER_SYMBOLS) + ('others',)
PERF_LINE = re.compile(r'^\s*[\d.]+%\s+(\d+)\s+(\S+)\s+\S+\s+\[[k.]\]\s+(\S+)')


def perf_shares(report_text):
    """{'samples': n, 'rules': n, 'conntrack': n, 'idle': n, 'others': n} of the datapath's processes,
    from `perf report -n --sort comm,dso,sym` text."""
    counts = dict.fromkeys(PERF_COUNTS, 0)
    for line in report_text.splitlines():
        m = PERF_LINE.match(line)
        if not m:
            continue
        n, comm, symbol = int(m.group(1)), m.group(2), m.group(3)
        if comm not in DATAPATH_COMMS:
            counts['others'] += n
            continue
        counts['samples'] += n
        for kind, pattern in NETFILTER_SYMBOLS.items():
            if pattern.search(symbol):
                counts[kind] += n
    return counts


def netfilter_share(counts):
    """(share, low, high): netfilter's share of the datapath's samples (nftables and conntrack), pooled over
    the rounds, with its 95 % interval: Wilson's, widened by how much more the rounds differ from one
    another than sampling alone would make them (overdispersion: a stream's own speed and the machine's
    other guests move the share from one run to the next, which the samples of one run do not see)."""
    k, n = counts['rules'] + counts['conntrack'], counts['samples']
    p = k / float(n)
    low, high = wilson_interval(k, n)
    factor = dispersion_factor([(r['rules'] + r['conntrack'], r['samples']) for r in counts.get('rounds', ())], p)
    centre = (low + high) / 2.0
    half = (high - low) / 2.0 * factor
    return p, max(0.0, centre - half), min(1.0, centre + half)


def dispersion_factor(rounds, p):
    """How many times wider than binomial the interval of a proportion p pooled over rounds [(k, n)] must
    be: the square root of Pearson's chi-square over its degrees of freedom, never below 1; 1 with fewer
    than two rounds (nothing to tell it by)."""
    rounds = [(k, n) for k, n in rounds if n]
    if len(rounds) < 2 or p <= 0.0 or p >= 1.0:
        return 1.0
    chi2 = sum((k - n * p) ** 2 / (n * p * (1 - p)) for k, n in rounds)
    return max(1.0, (chi2 / (len(rounds) - 1)) ** 0.5)


def wilson_interval(k, n, z=1.96):
    """95 % interval of a proportion k/n (Wilson score): the samples are the repetitions here."""
    if not n:
        return None
    p = k / float(n)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def profile(args, out_dir, log_path):
    """The profile phase: {'by_state': {state: {proto: counts and Mbit/s}}} of the sender's CPU while one
    stream runs in each state, with the states' labels ('states') and the seconds profiled."""
    if not shutil.which('perf'):
        log('perf not found: no profile of the sender CPU (Debian: linux-perf)')
        return {'skipped': 'perf not found'}
    names = PROFILE_STATES_SMALL if args.small else PROFILE_STATES
    states = datapath_states(args.entries)
    seconds = 3 if args.small else 6
    rounds = 1 if args.small else PROFILE_ROUNDS
    results = {'states': dict((s, states[s][0]) for s in names), 'seconds': seconds, 'rounds': rounds,
               'by_state': {}, 'load': [load_snapshot()]}
    with TunnelBench(args, log_path, states) as bench:
        results['by_state'] = profile_states(bench, names, seconds, rounds)
        bench.switch('off')
    results['load'].append(load_snapshot())
    return results


def profile_states(bench, states, seconds, rounds):
    """{state: {proto: counts pooled over the rounds, each round's ('rounds') and the median Mbit/s}};
    the states take turns within each round, so that a drift of the machine touches them all alike."""
    server = ServerLog(bench.server_log)
    by_round = {}
    for round_ in range(rounds):
        for state in states:
            for proto in ('tcp', 'udp'):
                counts = profile_stream(bench, server, state, proto, seconds)
                by_round.setdefault(state, {}).setdefault(proto, []).append(counts)
                log('profile round %d %s %s: %.0f Mbit/s, %d samples (%d of others left out), idle %.1f %%, '
                    'nftables %.2f %%, conntrack %.2f %%' % (
                        round_ + 1, state, proto, counts['mbps'], counts['samples'], counts['others'],
                        100.0 * counts['idle'] / max(counts['samples'], 1),
                        100.0 * counts['rules'] / max(counts['samples'], 1),
                        100.0 * counts['conntrack'] / max(counts['samples'], 1)))
    results = {}
    for state, protos in by_round.items():
        for proto, runs in protos.items():
            pooled = dict((key, sum(r[key] for r in runs)) for key in PERF_COUNTS)
            pooled.update(mbps=median([r['mbps'] for r in runs]), rounds=runs)
            results.setdefault(state, {})[proto] = pooled
    return results


def profile_stream(bench, server, state, proto, seconds):
    """perf's counts (perf_shares) on the sender CPU during one iperf3 stream in state, and its Mbit/s."""
    lab = bench.lab
    bench.switch(state)
    # It ends by itself after the profile, so that it reports what the receiver got.
    argv = iperf3_client(lab, proto, int(seconds + PROFILE_WARMUP_S + 1), '-f', 'm', '-i', '0')
    data = os.path.join(lab.dir, 'perf-%s-%s.data' % (state, proto))
    with tempfile.TemporaryFile() as out:
        client = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            time.sleep(PROFILE_WARMUP_S)
            subprocess.run(['perf', 'record', '-q', '-a', '-C', str(SENDER_CPU), '-o', data, '--',
                            'sleep', str(seconds)], check=True, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=seconds + 30)
            client.wait(timeout=seconds + 20)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
        out.seek(0)
        summary = out.read().decode(errors='replace')
    server.wait_listening()
    # A stream that never ran would profile an idle CPU and read as a free kill switch.
    received = re.findall(r'([\d.]+) Mbits/sec.*receiver', summary)
    if not received or float(received[-1]) <= 0:
        raise RuntimeError('profile %s %s: iperf3 moved nothing: %s' % (state, proto, summary[-500:]))
    text = subprocess.run(['perf', 'report', '-i', data, '-n', '--no-children', '--sort', 'comm,dso,sym',
                           '-g', 'none', '-q', '--percent-limit', '0'], capture_output=True, text=True,
                          check=True, timeout=120).stdout
    os.unlink(data)
    counts = perf_shares(text)
    counts['mbps'] = float(received[-1])
    return counts


def bootstrap_interval(values, level=0.95, draws=2000):
    """Interval of the median of values by resampling them (fixed seed: the report is reproducible)."""
    rng = random.Random(0)
    medians = sorted(median(rng.choices(values, k=len(values))) for _ in range(draws))
    return medians[int(draws * (1 - level) / 2)], medians[int(draws * (1 + level) / 2) - 1]


def summarize_datapath(results):
    """Medians per state, and the median of per-pair ratios (state / the adjacent off slot) with a 95 % interval.

    The interval says what the machine can resolve: a ratio is a finding only
    when its interval is narrower than the effect.
    """
    summary = {}
    for proto in ('tcp', 'udp'):
        samples = [x for x in results['samples'] if x['proto'] == proto]
        states = [s for s in DATAPATH_STATES if any(x['state'] == s for x in samples)]
        entry = summary[proto] = {'median_mbps': dict((s, median([x['mbps'] for x in samples if x['state'] == s]))
                                                      for s in states)}
        for metric, prefix in (('mbps', 'paired_ratio_'), ('mbit_per_cpu_s', 'paired_efficiency_')):
            by_pair = {}
            for x in samples:
                if x.get(metric):
                    by_pair.setdefault(x['pair'], {})[x['state']] = x[metric]
            for s in states[1:]:
                ratios = [p[s] / p['off'] for p in by_pair.values() if s in p and 'off' in p]
                if not ratios:
                    continue
                if metric == 'mbps':
                    entry['pairs_' + s] = len(ratios)
                entry[prefix + s] = median(ratios)
                entry[prefix + 'ci95_' + s] = bootstrap_interval(ratios)
    return summary


# -- apply latency and memory -------------------------------------------------------

def apply_latency(args, out_dir, log_path):
    repeat = max(args.repeat, 3)
    results = {'repeat': repeat, 'module': {}, 'probe': {}, 'load': [load_snapshot()]}
    with BenchLab(args.state, 1) as lab:
        payloads = make_payloads(lab, args.entries, log_path)
        samples = dict(((v, k), []) for v in ('on', 'entries') for k in ('first', 'replace', 'nochange', 'remove'))
        for rep in range(repeat):
            for variant, other in (('on', 'entries'), ('entries', 'on')):
                payloads.run('off')
                samples[(variant, 'first')].append(payloads.run(variant, expect_changed=True))
                samples[(variant, 'nochange')].append(payloads.run(variant, expect_changed=False))
                payloads.run(other, expect_changed=True)
                samples[(variant, 'replace')].append(payloads.run(variant, expect_changed=True))
                samples[(variant, 'remove')].append(payloads.run('off', expect_changed=True))
            log('apply rep %d: module first apply %.3f s (default), %.3f s (%d entries)'
                % (rep, samples[('on', 'first')][-1]['wall_s'], samples[('entries', 'first')][-1]['wall_s'], args.entries))
        for (variant, kind), runs in sorted(samples.items()):
            results['module'].setdefault(variant, {})[kind] = {
                'wall_s': [r['wall_s'] for r in runs], 'maxrss_kib': [r['maxrss_kib'] for r in runs],
                'median_wall_s': median([r['wall_s'] for r in runs]),
                'median_maxrss_kib': median([r['maxrss_kib'] for r in runs]),
                'max_maxrss_kib': max(r['maxrss_kib'] for r in runs)}
        # What the interpreter alone takes, for scale.
        bare = [run_measured(lab, ['/usr/bin/python3', '-c', 'import nftables']) for _ in range(repeat)]
        results['python_with_bindings'] = {'median_wall_s': median([b[0] for b in bare]),
                                           'median_maxrss_kib': median([b[1] for b in bare])}
        for variant, entries in (('on', 0), ('entries', args.entries)):
            path = write_json(os.path.join(lab.dir, 'probe-%s.json' % variant), policy(entries))
            out = lab.run(['/usr/bin/python3', os.path.join(HERE, 'apply_probe.py'), COLLECTIONS, path, str(repeat)],
                          timeout=300).stdout
            probe = json.loads(out)
            probe['median_s'] = dict((k, median(v)) for k, v in probe['seconds'].items())
            results['probe'][variant] = probe
            log('probe %s: %s' % (variant, ', '.join('%s %.1f ms' % (k, v * 1000) for k, v in sorted(probe['median_s'].items()))))
        results['load'].append(load_snapshot())
    return results


# -- fleet convergence ----------------------------------------------------------------

def fleet(args, out_dir, log_path):
    results = {'forks': args.forks, 'repeat': args.fleet_repeat, 'sizes': {}, 'load': [load_snapshot()]}
    with BenchLab(args.state, max(args.hosts)) as lab:
        results['lab_created_s'] = lab.created_in
        vars_file = write_json(os.path.join(lab.dir, 'fleet-policy.json'), role_vars(policy(0)))
        common = ['-i', lab.inventory, '-f', str(args.forks), '-e', '@' + vars_file]
        baseline = os.path.join(HERE, 'baseline.yml')
        runs = [('harden', 'first', ['vpnguard.killswitch.harden']),
                ('harden', 'idempotent', ['vpnguard.killswitch.harden']),
                ('harden', 'audit', ['vpnguard.killswitch.audit', '--check']),
                # The same audit without its live probe: what the probe costs per host.
                ('harden', 'audit_noprobe', ['vpnguard.killswitch.audit', '--check', '-e', 'killswitch_audit_probe=false']),
                ('baseline', 'first', [baseline]),
                ('baseline', 'idempotent', [baseline]),
                ('baseline', 'audit', [baseline, '--check', '--diff'])]
        for size in args.hosts:
            names = ['lab-host%d' % i for i in range(1, size + 1)]
            limit = ['-l', ','.join(names)]
            entry = results['sizes'][str(size)] = {'hosts': size, 'runs': {}}
            for rep in range(args.fleet_repeat):
                for order, (book, phase, extra) in enumerate(runs):
                    if book == 'baseline' and phase == 'first':
                        # Reset the collection's side, untimed, before the baseline goes.
                        ansible_playbook(common + limit + ['vpnguard.killswitch.rollback'], log_path)
                    wall, recap = ansible_playbook(common + limit + extra, log_path)
                    changed = sum(recap[n]['changed'] for n in names)
                    if len([n for n in names if n in recap]) != size:
                        raise RuntimeError('%s %s: the recap names %d of %d hosts' % (book, phase, len(recap), size))
                    if phase != 'first' and changed:
                        raise RuntimeError('%s %s on %d hosts changed %d things; expected none' % (book, phase, size, changed))
                    if phase == 'first' and not all(recap[n]['changed'] for n in names):
                        raise RuntimeError('%s first run left a host unchanged' % book)
                    entry['runs'].setdefault(book, {}).setdefault(phase, []).append(
                        {'wall_s': wall, 'changed': changed})
                    log('fleet %2d hosts rep %d %-8s %-10s %6.1f s (%.2f s/host), %d changed'
                        % (size, rep, book, phase, wall, wall / size, changed))
                ansible_playbook(common + limit + [baseline, '-e', 'naive_state=absent'], log_path)
                results['load'].append(load_snapshot())
            summary = entry['summary'] = {}
            for phase in ('first', 'idempotent', 'audit'):
                h = median([r['wall_s'] for r in entry['runs']['harden'][phase]])
                b = median([r['wall_s'] for r in entry['runs']['baseline'][phase]])
                summary[phase] = {'harden_s': h, 'baseline_s': b, 'harden_per_host_s': h / size,
                                  'baseline_per_host_s': b / size, 'ratio_to_baseline': h / b}
            if 'audit_noprobe' in entry['runs']['harden']:
                without = median([r['wall_s'] for r in entry['runs']['harden']['audit_noprobe']])
                summary['audit']['without_probe_s'] = without
                summary['audit']['probe_ratio'] = summary['audit']['harden_s'] / without
    return results


# -- report ------------------------------------------------------------------------------

def verdict(ok):
    return 'meets' if ok else 'MISSES'


def markdown(data):
    lines = []
    p = data['params']
    dp = data.get('datapath')
    if dp:
        lines += ['Datapath through the WireGuard tunnel (wireguard-go): states switched within one iperf3 stream, '
                  'each next to a slot without kill switch; %d repetitions; per pair, state / no kill switch: '
                  'median of the pairs (95 %% bootstrap interval):' % dp['repeat'], '',
                  '| State | pairs | TCP throughput | TCP Mbit per CPU s | UDP throughput | UDP Mbit per CPU s |',
                  '| --- | ---: | ---: | ---: | ---: | ---: |']

        def cell(s, prefix, state):
            if prefix + state not in s:
                return 'n/a'
            low, high = s[prefix + 'ci95_' + state]
            return '%.3f (%.3f-%.3f)' % (s[prefix + state], low, high)
        for state in DATAPATH_STATES[1:]:
            if state not in dp['summary']['tcp']['median_mbps']:
                continue
            cells = ['%d/%d' % (dp['summary']['tcp']['pairs_' + state], dp['summary']['udp']['pairs_' + state])]
            for proto in ('tcp', 'udp'):
                s = dp['summary'][proto]
                cells += [cell(s, 'paired_ratio_', state), cell(s, 'paired_efficiency_', state)]
            lines.append('| %s | %s |' % (dp['states'][state], ' | '.join(cells)))
        lines += ['', 'Medians, Mbit/s received: ' + '; '.join(
            '%s %s' % (proto.upper(), ', '.join('%s %.0f' % (st, m) for st, m in dp['summary'][proto]['median_mbps'].items()))
            for proto in ('tcp', 'udp')) + '.', '']
    pr = data.get('profile')
    if pr and pr.get('by_state'):
        lines += ['Where the sender\'s CPU goes (perf, %d s per state and protocol, one stream each, %d round(s) with '
                  'the states taking turns): the share of the datapath\'s samples in nftables and in connection '
                  'tracking, pooled, with the 95 %% interval of the total (Wilson\'s, widened by how much the rounds '
                  'differ beyond sampling); the idle share says whether that CPU was the bottleneck:' % (
                      pr['seconds'], pr.get('rounds', 1)), '',
                  '| State | TCP nftables | TCP conntrack | TCP netfilter | TCP idle | UDP nftables | UDP conntrack '
                  '| UDP netfilter | UDP idle |', '| --- |' + ' ---: |' * 8]
        for state in DATAPATH_STATES:
            if state not in pr['by_state']:
                continue
            cells = []
            for proto in ('tcp', 'udp'):
                c = pr['by_state'][state][proto]
                n = float(max(c['samples'], 1))
                cells += ['%.2f %%' % (100 * c['rules'] / n), '%.2f %%' % (100 * c['conntrack'] / n),
                          '%.2f %% (%.2f-%.2f)' % tuple(100 * x for x in netfilter_share(c)),
                          '%.1f %%' % (100 * c['idle'] / n)]
            label = pr['states'][state]
            lines.append('| %s | %s |' % (label, ' | '.join(cells)))
        lines.append('')
    ap = data.get('apply')
    if ap:
        mod = ap['module']
        lines += ['Apply, the module process on the host (median of %d; peak RSS from wait4):' % ap['repeat'], '',
                  '| Policy | First apply | Replace | No change | nft transaction alone | Peak RSS |',
                  '| --- | ---: | ---: | ---: | ---: | ---: |']
        for variant, label in (('on', 'default'), ('entries', '%d doh_servers' % p['entries'])):
            m = mod[variant]
            lines.append('| %s | %.3f s | %.3f s | %.3f s | %.1f ms | %.1f MiB |' % (
                label, m['first']['median_wall_s'], m['replace']['median_wall_s'], m['nochange']['median_wall_s'],
                ap['probe'][variant]['median_s']['apply'] * 1000,
                max(m[k]['max_maxrss_kib'] for k in ('first', 'replace', 'nochange')) / 1024.0))
        lines.append('')
    fl = data.get('fleet')
    if fl:
        lines += ['Fleet convergence, forks %d, wall time (per host), median of %d:' % (fl['forks'], fl['repeat']), '',
                  '| Hosts | harden first | baseline first | ratio | harden idempotent | baseline idempotent | ratio '
                  '| audit --check | baseline --check | ratio |',
                  '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
        for size in sorted(fl['sizes'], key=int):
            s = fl['sizes'][size]['summary']
            cells = []
            for phase in ('first', 'idempotent', 'audit'):
                x = s[phase]
                cells += ['%.1f s (%.2f)' % (x['harden_s'], x['harden_per_host_s']),
                          '%.1f s (%.2f)' % (x['baseline_s'], x['baseline_per_host_s']),
                          '%.2f' % x['ratio_to_baseline']]
            lines.append('| %s | %s |' % (size, ' | '.join(cells)))
        probe = [(size, fl['sizes'][size]['summary']['audit']) for size in sorted(fl['sizes'], key=int)
                 if 'probe_ratio' in fl['sizes'][size]['summary']['audit']]
        if probe:
            lines += ['', 'The audit with its live probe against the same audit without it (killswitch_audit_probe=false), '
                      'same runs: ' + ', '.join('%s host(s) %.1f s / %.1f s = %.2fx' % (
                          size, a['harden_s'], a['without_probe_s'], a['probe_ratio']) for size, a in probe) + '.']
        lines.append('')
    return '\n'.join(lines)


def targets(data):
    out = []
    state_targets = (('on', TARGETS['ratio_default']), ('entries', TARGETS['ratio_entries']))
    dp = data.get('datapath')
    for proto in ('tcp', 'udp') if dp else ():
        s = dp['summary'][proto]
        for state, target in state_targets:
            low, high = s['paired_ratio_ci95_' + state]
            out.append('%s: %s %s paired ratio %.3f (95 %% CI %.3f-%.3f, target >= %.2f)' % (
                verdict(s['paired_ratio_' + state] >= target), proto.upper(), state,
                s['paired_ratio_' + state], low, high, target))
    by_state = (data.get('profile') or {}).get('by_state', {})
    for proto in ('tcp', 'udp'):
        for state, target in state_targets:
            c = by_state.get(state, {}).get(proto)
            if c and c['samples']:
                # What the throughput can be at most, if all of netfilter's share came off a busy sender CPU.
                share, low, high = netfilter_share(c)
                out.append('%s: %s %s takes %.2f %% (95 %% CI %.2f-%.2f) of the sender CPU, so %.3f of the '
                           'throughput is left (target >= %.2f)' % (
                               verdict(1 - high >= target), proto.upper(), state, 100 * share, 100 * low,
                               100 * high, 1 - share, target))
        c = by_state.get('minimal', {}).get(proto)
        if c and c['samples']:
            # Not a target: what bounds every target above on this datapath.
            share, low, high = netfilter_share(c)
            out.append('bound: %s the least a kill switch needs takes %.2f %% (95 %% CI %.2f-%.2f) of the sender '
                       'CPU: no nftables kill switch leaves more than %.3f of the throughput here' % (
                           proto.upper(), 100 * share, 100 * low, 100 * high, 1 - low))
    ap = data.get('apply')
    if ap:
        worst = max(ap['module']['entries'][k]['median_wall_s'] for k in ('first', 'replace'))
        out.append('%s: apply with %d entries %.3f s for the whole module process (target < %.1f s)' % (
            verdict(worst < TARGETS['apply_entries_s']), data['params']['entries'], worst, TARGETS['apply_entries_s']))
    fl = data.get('fleet')
    if fl:
        # The issue's bar: an idempotent harden or an audit costs no more per host than one
        # run of the naive playbook (its first, the one that does the work).
        for size in sorted(fl['sizes'], key=int):
            s = fl['sizes'][size]['summary']
            single = s['first']['baseline_per_host_s']
            for phase, label in (('idempotent', 'harden idempotent'), ('audit', 'audit --check')):
                mine = s[phase]['harden_per_host_s']
                out.append('%s: %s on %s host(s) %.2f s/host, %.2fx the baseline run (%.2f s/host)' % (
                    verdict(mine <= single), label, size, mine, mine / single, single))
    return out


def plot(data, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    panels = [k for k in ('datapath', 'apply', 'fleet') if data.get(k)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.8), squeeze=False)
    entries = data['params']['entries']
    for ax, panel in zip(axes[0], panels):
        if panel == 'datapath':
            dp = data['datapath']
            states = [st for st in DATAPATH_STATES[1:] if st in dp['summary']['tcp']['median_mbps']]
            for j, (proto, colour) in enumerate((('tcp', '#1f77b4'), ('udp', '#ff7f0e'))):
                s = dp['summary'][proto]
                ys = [s['paired_ratio_' + st] for st in states]
                errors = [[y - s['paired_ratio_ci95_' + st][0] for st, y in zip(states, ys)],
                          [s['paired_ratio_ci95_' + st][1] - y for st, y in zip(states, ys)]]
                ax.errorbar([i + (j - 0.5) * 0.3 for i in range(len(states))], ys, yerr=errors, fmt='o',
                            color=colour, capsize=3, label=proto.upper() + ' (received)')
            ax.axhline(1.0, color='#999999', linewidth=1)
            ax.axhline(TARGETS['ratio_default'], color='red', linestyle='--', linewidth=1, label='target')
            ax.set_xticks(range(len(states)))
            ax.set_xticklabels(states, rotation=30, fontsize=8)
            ax.set_ylabel('throughput / no kill switch (paired, 95 % CI)')
            ax.set_title('Datapath: %d repetitions, %.2f s intervals' % (dp['repeat'], dp['interval_s']))
            ax.legend(fontsize=7, loc='lower left')
        elif panel == 'apply':
            ap = data['apply']
            kinds = ['first', 'replace', 'nochange']
            width = 0.38
            for i, (variant, label) in enumerate((('on', 'default policy'), ('entries', '%d entries' % entries))):
                xs = [k + (i - 0.5) * width for k in range(len(kinds))]
                ax.bar(xs, [ap['module'][variant][k]['median_wall_s'] for k in kinds], width, label=label)
                for x, k in zip(xs, kinds):
                    values = ap['module'][variant][k]['wall_s']
                    ax.plot([x] * len(values), values, 'k.', markersize=4)
            ax.axhline(TARGETS['apply_entries_s'], color='red', linestyle='--', linewidth=1, label='target (entries)')
            ax.set_xticks(range(len(kinds)))
            ax.set_xticklabels(['first apply', 'replace', 'no change'])
            ax.set_ylabel('seconds, whole module process')
            rss = max(ap['module']['entries'][k]['max_maxrss_kib'] for k in kinds) / 1024.0
            ax.set_title('Apply latency (peak RSS %.0f MiB with entries)' % rss)
            ax.legend(fontsize=8)
        else:
            fl = data['fleet']
            sizes = sorted(int(s) for s in fl['sizes'])
            styles = {'first': '-o', 'idempotent': '-s', 'audit': '-^'}
            for book, colour in (('harden', '#1f77b4'), ('baseline', '#999999')):
                for phase in ('first', 'idempotent', 'audit'):
                    ys = [fl['sizes'][str(s)]['summary'][phase][book + '_s'] for s in sizes]
                    ax.plot(sizes, ys, styles[phase], color=colour, label='%s %s' % (book, phase))
            ax.set_xlabel('hosts (forks %d)' % fl['forks'])
            ax.set_ylabel('wall seconds')
            ax.set_xticks(sizes)
            ax.set_ylim(bottom=0)
            ax.set_title('Fleet convergence')
            ax.legend(fontsize=7)
    fig.suptitle('vpnguard.killswitch benchmarks, %s, %d CPUs%s' % (
        data['date'][:10], data['machine']['cpus'], ' (small preset)' if data['params']['small'] else ''))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def git_commit():
    r = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True, cwd=REPO)
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], capture_output=True, text=True,
                           cwd=REPO).stdout.strip()
    return r.stdout.strip() + ('+dirty' if dirty else '')


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--small', action='store_true', help='CI preset: hosts 1,2, entries 1000, repeat 1; '
                                                             'results under OUT/small')
    parser.add_argument('--hosts', help='fleet sizes, comma-separated (default 1,10,50)')
    parser.add_argument('--entries', type=int, help='doh_servers entries (default 10000)')
    parser.add_argument('--repeat', type=int, help='datapath and apply repetitions (default 15)')
    parser.add_argument('--fleet-repeat', type=int, help='fleet repetitions (default 3)')
    parser.add_argument('--forks', type=int, default=10)
    parser.add_argument('--phases', default='datapath,profile,apply,fleet')
    parser.add_argument('--out', help='directory for latest.json/.png/.md (default benchmarks/results, '
                                      'or benchmarks/results/small with --small)')
    parser.add_argument('--keep-other-phases', action='store_true',
                        help='keep the figures of the phases not run from OUT/latest.json (to retake one phase)')
    parser.add_argument('--report-only', action='store_true',
                        help='measure nothing: summarize OUT/latest.json again and rewrite the table and the plot')
    parser.add_argument('--state', default=os.path.join(REPO, '.lab', 'bench'), help='the lab state directory')
    args = parser.parse_args(argv)
    small = dict(hosts='1,2', entries=1000, repeat=1, fleet_repeat=1)
    full = dict(hosts='1,10,50', entries=10000, repeat=15, fleet_repeat=3)
    for key, value in (small if args.small else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.hosts = sorted(set(int(h) for h in args.hosts.split(',')))
    if not args.hosts or args.hosts[0] < 1 or args.hosts[-1] > HOSTS_MAX:
        parser.error('--hosts: sizes between 1 and %d' % HOSTS_MAX)
    if args.repeat < 1 or args.fleet_repeat < 1:
        parser.error('--repeat and --fleet-repeat must be at least 1')
    doh_addresses(args.entries)
    args.phases = [p for p in args.phases.split(',') if p]
    unknown = set(args.phases) - {'datapath', 'profile', 'apply', 'fleet'}
    if unknown:
        parser.error('--phases: unknown %s' % ', '.join(sorted(unknown)))
    if args.out is None:
        args.out = os.path.join(HERE, 'results', 'small' if args.small else '')
    args.out = os.path.abspath(args.out)
    args.state = os.path.abspath(args.state)
    return args


def main(argv=None):
    args = parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit('benchmarks/run needs root (network namespaces, nftables)')

    def stop(signum, frame):
        raise Stop('signal %d' % signum)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)

    os.makedirs(args.out, exist_ok=True)
    if args.report_only:
        with open(os.path.join(args.out, 'latest.json')) as f:
            data = json.load(f)
        if data.get('datapath'):
            data['datapath']['summary'] = summarize_datapath(data['datapath'])
        return report(data, args.out)
    os.makedirs(os.path.dirname(args.state), exist_ok=True)
    log_path = os.path.join(os.path.dirname(args.state), 'bench-ansible.log')
    open(log_path, 'w').close()
    data = {'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
            'commit': git_commit(), 'machine': machine_facts(),
            'params': {'small': args.small, 'hosts': args.hosts, 'entries': args.entries, 'repeat': args.repeat,
                       'fleet_repeat': args.fleet_repeat, 'forks': args.forks,
                       'phases': args.phases},
            'targets': TARGETS,
            'method': {
                'datapath': 'iperf3 -c 192.0.2.1 from lab-host1 through wg0 (wireguard-go both ends) to the isp '
                            'namespace; TCP and UDP -b 0 -l 1300, receiver Mbit/s per 0.25 s interval; states '
                            'switched by nft transactions within one stream, each slot paired with an adjacent '
                            'off slot in random order; medians of per-pair ratios, bootstrap 95 % intervals',
                'profile': 'perf record -a -C <sender CPU> during one iperf3 stream per state and protocol; '
                           'samples of wireguard-go, iperf3, ksoftirqd and idle, by function name: nft_*/nf_hook* '
                           '(nftables) and nf_conntrack*/nf_ct_*/nf_defrag* (conntrack)',
                'apply': 'the AnsiballZ payload Ansible ships, kept with ANSIBLE_KEEP_REMOTE_FILES, run by '
                         '/usr/bin/python3 inside the host namespaces; wall = fork to exit; apply_probe.py times '
                         'the nft steps in-process',
                'memory': 'ru_maxrss of the module process from wait4(2) (nsenter execs the module, so this is '
                          'its VmHWM), KiB',
                'fleet': 'ansible-playbook wall time, community.docker.nsenter connection, forks as given, '
                         'default policy; hosts reset by the rollback playbook (untimed) before the baseline',
            },
            'doh_entries_range': '198.18.128.0/17 (IPv4, from the first address up)'}
    json_path = os.path.join(args.out, 'latest.json')
    if args.keep_other_phases and os.path.exists(json_path):
        with open(json_path) as f:
            previous = json.load(f)
        if previous['params']['entries'] != args.entries:
            raise SystemExit('--keep-other-phases: %s was taken with %d entries, not %d'
                             % (json_path, previous['params']['entries'], args.entries))
        for phase in ('datapath', 'profile', 'apply', 'fleet'):
            if phase not in args.phases and phase in previous:
                data[phase] = previous[phase]
                log('keeping the %s figures of %s' % (phase, previous[phase].get('date', previous['date'])))
    started = time.time()
    try:
        for phase, function in (('datapath', datapath), ('profile', profile), ('apply', apply_latency),
                                ('fleet', fleet)):
            if phase in args.phases:
                phase_start = time.time()
                data[phase] = function(args, args.out, log_path)
                data[phase].update(date=data['date'], commit=data['commit'], duration_s=time.time() - phase_start)
    except (Stop, KeyboardInterrupt) as e:
        log('stopped: %s' % e)
        return 2
    data['duration_s'] = time.time() - started
    report(data, args.out)
    log('took %.0f s (ansible output in %s)' % (data['duration_s'], log_path))
    return 0


def report(data, out):
    """Write OUT/latest.json, .png and .md, and print the table and the targets."""
    json_path = write_json(os.path.join(out, 'latest.json'), data)
    png_path = plot(data, os.path.join(out, 'latest.png'))
    table = markdown(data)
    with open(os.path.join(out, 'latest.md'), 'w') as f:
        f.write(table)
    print()
    print(table)
    for line in targets(data):
        print('target ' + line)
    log('wrote %s, %s and latest.md' % (json_path, png_path))
    return 0


if __name__ == '__main__':
    sys.exit(main())
