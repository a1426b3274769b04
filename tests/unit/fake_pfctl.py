"""A stand-in for /sbin/pfctl: the commands pf_killswitch runs, against an in-memory PF.

Rule text is parsed with the PF model, so a load of text the model refuses
fails as pfctl would. The listing pfctl prints is the loaded rule lines,
normalised (comments and macros gone), which is all the module compares.
"""

import re

from pf_model import Ruleset

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
        self.main = ''           # the main ruleset's anchor references
        self.enabled = enabled
        self.tokens = set()
        self.calls = []
        self.states_flushed = 0
        self.fail_on = None

    root = None

    def host_path(self, path):
        """Where the test keeps the host's path."""
        if self.root and path.startswith('/etc/') and not path.startswith(str(self.root)):
            return str(self.root) + path
        return path

    def _load_anchor(self, name, text):
        if name != OURS:  # others' syntax is theirs; the model knows ours
            self.anchors[name] = ([line for line in text.splitlines() if line.strip()], {})
            return
        ruleset = Ruleset(text)  # raises on what pfctl would refuse
        rules = [r.text.replace('$tunnels', '') for r in ruleset.rules]
        self.anchors[name] = (rules, dict((k, [str(a) for a in v]) for k, v in ruleset.tables.items()))

    def _load_conf(self, text, check):
        anchors = re.findall(r'^anchor "([^"]+)"', text, re.MULTILINE)
        loads = re.findall(r'^load anchor "([^"]+)" from "([^"]+)"', text, re.MULTILINE)
        for name, path in loads:
            content = '' if path == '/dev/null' else open(self.host_path(path)).read()
            if not check:
                self._load_anchor(name, content)
            elif name == OURS:
                Ruleset(content)
        if not check:
            self.main = ''.join('anchor "%s" all\n' % a for a in anchors)

    def __call__(self, argv):
        """run_command's (rc, out, err) for argv."""
        self.calls.append(list(argv))
        if argv[0] != '/sbin/pfctl':
            return 127, '', 'not pfctl'
        if self.fail_on and self.fail_on in argv:
            return 1, '', 'pfctl: simulated failure'
        args = argv[1:]
        check = '-n' in args
        args = [a for a in args if a != '-n']
        anchor = args[args.index('-a') + 1] if '-a' in args else None
        try:
            if '-f' in args:
                text = open(args[args.index('-f') + 1]).read()
                if anchor:
                    if check and anchor == OURS:
                        Ruleset(text)
                    elif check:
                        pass
                    else:
                        self._load_anchor(anchor, text)
                else:
                    self._load_conf(text, check)
                if '-E' in args and not check:
                    return self._enable()
                return 0, '', ''
        except Exception as e:  # what the model refuses, pfctl refuses
            return 1, '', 'syntax error: %s' % e
        if args == ['-E']:
            return self._enable()
        if args[:1] == ['-X']:
            if args[1] not in self.tokens:
                return 1, '', 'pfctl: invalid token'
            self.tokens.discard(args[1])
            self.enabled = bool(self.tokens)
            return 0, '', 'pf disabled\n' if not self.enabled else ''
        if args == ['-s', 'info']:
            return 0, 'Status: %s for 0 days 00:00:01           Debug: Urgent\n' % (
                'Enabled' if self.enabled else 'Disabled'), ''
        if args == ['-F', 'states']:
            self.states_flushed += 1
            return 0, '', ''
        if anchor and args[-2:] == ['-s', 'rules']:
            return 0, ''.join(r + '\n' for r in self.anchors.get(anchor, ([], {}))[0]), ''
        if anchor and args[-2:] == ['-s', 'Tables']:
            return 0, ''.join('   %s\n' % t for t in sorted(self.anchors.get(anchor, ([], {}))[1])), ''
        if anchor and '-T' in args:
            table = args[args.index('-t') + 1]
            return 0, ''.join('   %s\n' % a for a in self.anchors[anchor][1][table]), ''
        if anchor and args[-2:] == ['-F', 'all']:
            self.anchors.pop(anchor, None)
            return 0, '', ''
        if args == ['-s', 'rules']:
            return 0, self.main, ''
        return 1, '', 'fake pfctl does not know %r' % argv

    def _enable(self):
        token = str(10000000 + len(self.calls))
        self.tokens.add(token)
        self.enabled = True
        return 0, '', 'pf enabled\nToken : %s\n' % token
