"""A small model of PF, enough to run a rendered anchor against packets.

It parses pf.conf text on its own (macros, `const` tables and the rule
grammar the renderer may use) and refuses anything else, so that a renderer
that starts writing syntax the model does not know fails its tests instead
of being trusted blindly. Semantics follow pf.conf(5):

- rules are evaluated in order; the last matching rule decides, unless a
  matching rule is `quick`, which decides at once; no match passes;
- `on IF` matches the interface name exactly (xnu has no interface groups);
- a rule without `in`/`out` matches both directions; without `inet`/`inet6`
  both families; `user`/`group` only ever match TCP and UDP;
- `keep state` (the default for pass) creates a state on the final pass;
  a stateful TCP rule only matches `flags S/SA` unless it names flags; a
  packet that matches a state (either way, on any interface: states float
  by default) passes without the rules being evaluated.
"""

import ipaddress
import re
from collections import namedtuple

Packet = namedtuple('Packet', 'direction iface af proto src dst sport dport icmp_type uid gid flags')


def packet(direction='out', iface='en0', proto='tcp', src=None, dst='198.51.100.7', sport=40000, dport=443,
           icmp_type=None, uid=501, gid=20, flags='S'):
    dst = ipaddress.ip_address(dst)
    if src is None:
        src = ipaddress.ip_address('198.18.0.2' if dst.version == 4 else '2001:db8:1::2')
    return Packet(direction, iface, dst.version, proto, ipaddress.ip_address(src), dst, sport, dport,
                  icmp_type, uid, gid, flags if proto == 'tcp' else '')


class Unsupported(ValueError):
    pass


Rule = namedtuple('Rule', 'action direction quick ifaces af protos src sport dst dport icmp6 user group flags state text')


def _tokens(line):
    return re.findall(r'<[^>]+>|[{}]|[^\s{}]+', line)


class Ruleset:
    def __init__(self, text):
        self.macros, self.tables, self.rules = {}, {}, []
        for raw in text.splitlines():
            line = raw.split('#', 1)[0].strip()
            if not line:
                continue
            macro = re.match(r'^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"([^"]*)"$', line)
            if macro:
                self.macros[macro.group(1)] = macro.group(2)
                continue
            line = re.sub(r'\$([A-Za-z_][A-Za-z0-9_]*)', lambda m: self.macros[m.group(1)], line)
            table = re.match(r'^table <([^>]+)> const \{ ([^}]*) \}$', line)
            if table:
                self.tables[table.group(1)] = [ipaddress.ip_network(a) for a in table.group(2).split()]
                continue
            self.rules.append(self._rule(line))

    def _rule(self, line):
        tokens = _tokens(line)
        pos = [0]

        def peek():
            return tokens[pos[0]] if pos[0] < len(tokens) else None

        def take(expected=None):
            token = peek()
            if token is None or (expected is not None and token != expected):
                raise Unsupported('expected %r at %r in %r' % (expected, token, line))
            pos[0] += 1
            return token

        def items():
            if peek() == '{':
                take('{')
                out = []
                while peek() != '}':
                    out.append(take())
                take('}')
                return out
            return [take()]

        def host():
            token = peek()
            if token in (None, 'port') or token in KEYWORDS:
                return None
            values = items()
            if values == ['any']:
                return None
            out = []
            for v in values:
                if v.startswith('<'):
                    out.append(('table', v[1:-1]))
                else:
                    out.append(('net', ipaddress.ip_network(v)))
            return out

        def ports():
            if peek() != 'port':
                return None
            take('port')
            return [int(p) for p in items()]

        f = dict(action=None, direction=None, quick=False, ifaces=None, af=None, protos=None, src=None, sport=None,
                 dst=None, dport=None, icmp6=None, user=None, group=None, flags=None, state=None, text=line)
        f['action'] = take()
        if f['action'] not in ('pass', 'block'):
            raise Unsupported(line)
        if f['action'] == 'block' and peek() in ('drop', 'return'):
            take()
        while peek() is not None:
            token = take()
            if token in ('in', 'out'):
                f['direction'] = token
            elif token == 'quick':
                f['quick'] = True
            elif token == 'on':
                f['ifaces'] = items()
            elif token in ('inet', 'inet6'):
                f['af'] = 4 if token == 'inet' else 6
            elif token == 'proto':
                f['protos'] = items()
            elif token == 'all':
                pass
            elif token == 'from':
                f['src'], f['sport'] = host(), ports()
            elif token == 'to':
                f['dst'], f['dport'] = host(), ports()
            elif token == 'icmp6-type':
                f['icmp6'] = [int(t) for t in items()]
            elif token in ('user', 'group'):
                f[token] = int(take())
            elif token == 'flags':
                f['flags'] = take()
            elif token in ('keep', 'no'):
                take('state')
                f['state'] = token == 'keep'
            else:
                raise Unsupported('unknown token %r in %r' % (token, line))
        if f['state'] is None:
            f['state'] = f['action'] == 'pass'
        if f['state'] and f['flags'] is None and f['protos'] and 'tcp' in f['protos']:
            f['flags'] = 'S/SA'
        return Rule(**f)

    def _in(self, address, spec):
        if spec is None:
            return True
        for kind, value in spec:
            networks = self.tables[value] if kind == 'table' else [value]
            if any(n.version == address.version and address in n for n in networks):
                return True
        return False

    def matches(self, rule, p):
        if rule.direction and rule.direction != p.direction:
            return False
        if rule.ifaces is not None and p.iface not in rule.ifaces:
            return False
        if rule.af and rule.af != p.af:
            return False
        if rule.protos is not None and p.proto not in rule.protos:
            return False
        if not (self._in(p.src, rule.src) and self._in(p.dst, rule.dst)):
            return False
        for wanted, port in ((rule.sport, p.sport), (rule.dport, p.dport)):
            if wanted is not None and (p.proto not in ('tcp', 'udp') or port not in wanted):
                return False
        if rule.icmp6 is not None and (p.proto != 'icmp6' or p.icmp_type not in rule.icmp6):
            return False
        if rule.user is not None and (p.proto not in ('tcp', 'udp') or p.uid != rule.user):
            return False
        if rule.group is not None and (p.proto not in ('tcp', 'udp') or p.gid != rule.group):
            return False
        if rule.flags is not None and p.proto == 'tcp':
            want, mask = rule.flags.split('/')
            if set(f for f in p.flags if f in mask) != set(want):
                return False
        return True

    def decide(self, p):
        """The rule that decides p, or None when none matches (PF then passes)."""
        decided = None
        for rule in self.rules:
            if self.matches(rule, p):
                decided = rule
                if rule.quick:
                    break
        return decided


def _key(p):
    return (p.af, p.proto, p.src, p.sport, p.dst, p.dport)


def _reverse(p):
    return (p.af, p.proto, p.dst, p.dport, p.src, p.sport)


class Firewall:
    """A ruleset plus the state table, as PF runs it on a host."""

    def __init__(self, text):
        self.ruleset = Ruleset(text)
        self.states = set()

    def send(self, p):
        """True when PF lets p through."""
        if p.proto in ('tcp', 'udp') and (_key(p) in self.states or _reverse(p) in self.states):
            return True
        rule = self.ruleset.decide(p)
        if rule is None:
            return True
        if rule.action == 'pass' and rule.state and p.proto in ('tcp', 'udp'):
            self.states.add(_key(p))
        return rule.action == 'pass'

    def flush_states(self):
        self.states.clear()


KEYWORDS = {'port', 'icmp6-type', 'user', 'group', 'flags', 'keep', 'no', 'to', 'from', 'all'}
