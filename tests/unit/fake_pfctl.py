"""A stand-in for /sbin/pfctl (and launchctl): the commands pf_killswitch and its watchdog run, against PF's model.

Rule text is parsed with the PF model, so a load of text the model refuses
fails as pfctl would. The listing pfctl prints is the loaded rule lines,
normalised (comments and macros gone), which is all the module compares.
Enable references follow xnu (pf_model.Switch), and packets can be sent
through the loaded main ruleset and its anchors with send().

Run as a program (FAKE_PF_STATE names a pickle of a FakePf), it is the
pfctl a real /bin/sh script runs: tests/unit/plugins/modules/test_pf_killswitch.py
runs the watchdog script that way.
"""

import os
import pickle
import sys

from pf_grammar import check as check_grammar
from pf_model import Ruleset, StateTable, Switch

OURS = 'com.vpnguard.killswitch'

# /etc/pf.conf as macOS ships it.
STOCK_PF_CONF = '''#
# Default PF configuration file.
#
scrub-anchor "com.apple/*"
nat-anchor "com.apple/*"
rdr-anchor "com.apple/*"
dummynet-anchor "com.apple/*"
anchor "com.apple/*"
load anchor "com.apple" from "/etc/pf.anchors/com.apple"
'''


class FakePf:
    def __init__(self, enabled=False):
        self.anchors = {}        # name -> (rules lines, tables)
        self.parsed = {}         # name -> Ruleset, for the anchors the model knows (ours)
        self.main_ruleset = Ruleset('')
        self.switch = Switch()
        if enabled:
            self.switch.start()
        self.table = StateTable()
        self.calls = []
        self.states_flushed = 0
        self.fail_on = None
        self.nat = {}            # anchor ('' for main) -> nat rules text, as `-s nat` prints them
        self.jobs = set()        # launchd labels bootstrapped
        self.rule_packets = {}   # (anchor, rule index) -> [packets in, bytes in, packets out, bytes out]
        # The rest of the Mac the probe reads: ifconfig -a, netstat -rn, kern.boottime, cloned interfaces.
        from macos_outputs import IFCONFIG_A, NETSTAT_RN
        self.ifconfig, self.netstat = IFCONFIG_A, NETSTAT_RN
        self.boottime = '{ sec = 1764650000, usec = 0 } Wed Dec  2 04:33:20 2026'
        self.cloned = set()

    root = None

    @property
    def enabled(self):
        return self.switch.running

    @enabled.setter
    def enabled(self, value):
        if value and not self.switch.running:
            self.switch.start()
        elif not value:
            self.switch.stop()

    @property
    def tokens(self):
        return self.switch.tokens

    @property
    def main(self):
        """The main ruleset as `pfctl -s rules` lists it."""
        return ''.join(getattr(r, 'text') + '\n' for r in self.main_ruleset.rules)

    @main.setter
    def main(self, text):
        self.main_ruleset = Ruleset(text)

    def host_path(self, path):
        """Where the test keeps the host's path."""
        if self.root and path.startswith('/etc/') and not path.startswith(str(self.root)):
            return str(self.root) + path
        return path

    def reboot(self):
        """PF as the kernel starts: disabled, no rules, no tokens, no states; launchd jobs not yet run."""
        self.anchors, self.parsed, self.main_ruleset = {}, {}, Ruleset('')
        self.switch, self.table, self.jobs = Switch(), StateTable(), set()
        self.rule_packets, self.cloned = {}, set()
        self.boottime = self.boottime.replace('sec = ', 'sec = 1')

    def _load_anchor(self, name, text):
        if name != OURS and not name.startswith('vpnguard.test'):  # others' syntax is theirs; the model knows ours
            self.anchors[name] = ([line for line in text.splitlines() if line.strip()], {})
            self.parsed.pop(name, None)
            return
        check_grammar(text, main=False)
        ruleset = Ruleset(text)  # raises on what pfctl would refuse
        rules = [r.text.replace('$tunnels', '') for r in ruleset.rules]
        self.anchors[name] = (rules, dict((k, [str(a) for a in v]) for k, v in ruleset.tables.items()))
        self.parsed[name] = ruleset
        # Adding a rule zeroes its counters (xnu bsd/net/pf_ioctl.c): a load counts from 0.
        self.rule_packets = dict((k, v) for k, v in self.rule_packets.items() if k[0] != name)

    def _load_conf(self, text, check):
        """A main ruleset: all or nothing, as pfctl loads it in one transaction."""
        check_grammar(text)
        ruleset = Ruleset(text)
        loaded = []
        for name, path in ruleset.loads:
            content = '' if path == '/dev/null' else open(self.host_path(path)).read()
            if name == OURS:
                check_grammar(content, main=False)
                Ruleset(content)
            loaded.append((name, content))
        if check:
            return
        self.main_ruleset = ruleset
        for name, content in loaded:
            self._load_anchor(name, content)

    def send(self, p):
        """True when PF, as loaded and enabled now, lets packet p through."""
        if not self.switch.running or self.table.lookup(p):
            return True
        rule = self.main_ruleset.decide(p, dict((n, r) for n, r in self.parsed.items() if n in self.anchors))
        if rule is None:
            return True
        self.table.create(rule, p)
        for name, ruleset in self.parsed.items():
            if any(r is rule for r in ruleset.rules):
                index = [i for i, r in enumerate(ruleset.rules) if r is rule][0]
                counted = self.rule_packets.setdefault((name, index), [0, 0, 0, 0])
                counted[0 if p.direction == 'in' else 2] += 1
                counted[1 if p.direction == 'in' else 3] += 60
        return rule.action == 'pass'

    def labels(self, anchor):
        """`pfctl -a anchor -s labels`: per labelled rule, as pfctl_show_rules(PFCTL_SHOW_LABELS) prints it."""
        ruleset = self.parsed.get(anchor)
        lines = []
        for index, rule in enumerate(ruleset.rules if ruleset else []):
            if getattr(rule, 'label', None):
                pin, bin_, pout, bout = self.rule_packets.get((anchor, index), [0, 0, 0, 0])
                numbers = (pin + pout, pin + pout, bin_ + bout, pin, bin_, pout, bout)
                lines.append('%s %d %d %d %d %d %d %d\n' % ((rule.label,) + numbers))
        return ''.join(lines)

    def __call__(self, argv):
        """run_command's (rc, out, err) for argv."""
        self.calls.append(list(argv))
        if argv[0].endswith('launchctl'):
            return self._launchctl(argv[1:])
        if argv[0] == '/sbin/ifconfig':
            return self._ifconfig(argv[1:])
        if argv == ['/usr/sbin/netstat', '-rn']:
            return 0, self.netstat, ''
        if argv == ['/usr/sbin/sysctl', '-n', 'kern.boottime']:
            return 0, self.boottime + '\n', ''
        if not argv[0].endswith('pfctl'):
            return 127, '', 'not pfctl'
        if self.fail_on and self.fail_on in argv:
            return 1, '', 'pfctl: simulated failure'
        args = argv[1:]
        check = '-n' in args
        args = [a for a in args if a != '-n']
        anchor = args[args.index('-a') + 1] if '-a' in args else None
        if '-f' in args:
            error = None
            try:
                path = args[args.index('-f') + 1]
                text = sys.stdin.read() if path == '-' else open(self.host_path(path)).read()
                if anchor:
                    if check and anchor == OURS:
                        check_grammar(text, main=False)
                        Ruleset(text)
                    elif not check:
                        self._load_anchor(anchor, text)
                else:
                    self._load_conf(text, check)
            except Exception as e:  # what the model refuses, pfctl refuses
                error = 'syntax error: %s' % e
            if '-E' in args and not check:
                # pfctl enables PF whether or not the rules loaded: the load failing fails open.
                rc, out, err = self._enable()
                return (1 if error else rc), out, (error or '') + err
            return (1, '', error) if error else (0, '', '')
        if args == ['-E']:
            return self._enable()
        if args == ['-e']:
            return (0, '', 'pf enabled\n') if self.switch.start() is None else (1, '', 'pfctl: pf already enabled\n')
        if args == ['-d']:
            return (0, '', 'pf disabled\n') if self.switch.stop() is None else (1, '', 'pfctl: pf not enabled\n')
        if args[:1] == ['-X']:
            error = self.switch.stop_ref(args[1])
            if error:
                return 1, '', 'pfctl: DIOCSTOPREF: %s\n' % error
            return 0, '', 'pf disabled\n' if not self.switch.running else ''
        if args == ['-s', 'info']:
            return 0, 'Status: %s for 0 days 00:00:01           Debug: Urgent\n' % (
                'Enabled' if self.enabled else 'Disabled'), ''
        if args == ['-s', 'References']:
            return 0, 'TOKENS:\nPID      Process Name                TOKEN                     TIMESTAMP\n' + ''.join(
                '%-8d %-27s %-25s 1 sec\n' % (100, 'pfctl', t) for t in sorted(self.switch.tokens)), ''
        if args == ['-s', 'Anchors', '-v']:
            names = set(self.anchors) | set(getattr(r, 'name') for r in self.main_ruleset.rules if hasattr(r, 'name'))
            return 0, ''.join('  %s\n' % a for a in sorted(names)), ''
        if args[-2:] == ['-s', 'nat']:
            return 0, self.nat.get(anchor or '', ''), ''
        if args[-2:] == ['-F', 'states']:
            self.states_flushed += 1
            self.table.flush(args[args.index('-i') + 1] if '-i' in args else None)
            return 0, '', ''
        if args[:1] == ['-k']:
            import ipaddress
            hosts = [ipaddress.ip_network(args[i + 1]) for i, a in enumerate(args) if a == '-k']
            self.table.kill(hosts[0], hosts[1] if len(hosts) > 1 else None)
            return 0, '', ''
        if anchor and args[-2:] == ['-s', 'labels']:
            return 0, self.labels(anchor), ''
        if anchor and args[-2:] == ['-s', 'rules']:
            return 0, ''.join(r + '\n' for r in self.anchors.get(anchor, ([], {}))[0]), ''
        if anchor and args[-2:] == ['-s', 'Tables']:
            return 0, ''.join('   %s\n' % t for t in sorted(self.anchors.get(anchor, ([], {}))[1])), ''
        if anchor and '-T' in args:
            table = args[args.index('-t') + 1]
            return 0, ''.join('   %s\n' % a for a in self.anchors[anchor][1][table]), ''
        if anchor and args[-2:] == ['-F', 'all']:
            self.anchors.pop(anchor, None)
            self.parsed.pop(anchor, None)
            return 0, '', ''
        if args == ['-s', 'rules']:
            return 0, self.main, ''
        return 1, '', 'fake pfctl does not know %r' % argv

    def _ifconfig(self, args):
        if args == ['-a']:
            return 0, self.ifconfig, ''
        if args == ['pflog0', 'create']:
            self.cloned.add('pflog0')
            return 0, '', ''
        if args == ['pflog0']:
            if 'pflog0' in self.cloned:
                return 0, 'pflog0: flags=0<> mtu 33172\n', ''
            return 1, '', 'ifconfig: interface pflog0 does not exist\n'
        return 1, '', 'fake ifconfig does not know %r' % args

    def _launchctl(self, args):
        if args[:1] == ['bootout']:
            label = args[1].split('/', 1)[1]
            if label not in self.jobs:
                return 3, '', 'Boot-out failed: 3: No such process\n'
            self.jobs.discard(label)
            return 0, '', ''
        if args[:2] == ['bootstrap', 'system']:
            self.jobs.add(os.path.basename(args[2])[:-len('.plist')])
            return 0, '', ''
        return 1, '', 'fake launchctl does not know %r' % args

    def _enable(self):
        token = self.switch.start_ref()
        return 0, '', 'pf enabled\nToken : %s\n' % token

    def save(self, path):
        with open(path, 'wb') as f:
            pickle.dump(self, f)

    @staticmethod
    def load(path):
        with open(path, 'rb') as f:
            return pickle.load(f)


def main(argv):
    state = os.environ['FAKE_PF_STATE']
    fake = FakePf.load(state)
    if argv[:1] == ['--launchctl']:
        rc, out, err = fake(['/bin/launchctl'] + argv[1:])
    else:
        rc, out, err = fake(['/sbin/pfctl'] + argv)
    fake.save(state)
    sys.stdout.write(out)
    sys.stderr.write(err)
    return rc


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
