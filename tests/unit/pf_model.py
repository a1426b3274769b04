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
  a stateful rule only matches TCP packets with `flags S/SA` unless it
  names flags (pf.conf(5) since OpenBSD 4.1; pfctl parse.y sets
  TH_SYN/TH_SYN|TH_ACK on a stateful rule without flags, whatever its
  proto); `flags any` matches every TCP packet (parse.y: FLAGS ANY is 0/0);
- a state matches packets of its connection: the same direction with the
  same addresses and ports, the other direction with them reversed. A
  floating state (the default) matches on every interface, an `(if-bound)`
  one only on the interface that made it (xnu bsd/net/pf.c pf_find_state:
  `s->kif == pfi_all || s->kif == kif`); a packet that matches a state
  passes without the rules being evaluated. TCP sequence windows and ICMP
  states are not modelled (ICMP decides by the rules here);
- `anchor "name"` evaluates that anchor's rules in place; a quick rule that
  matches inside it ends the whole evaluation (pf.conf(5) ANCHORS);
- `log` and `label` decide nothing: the first copies a packet to pflog0
  (xnu bsd/net/if_pflog.c pflog_packet), the second names the rule's
  counters, which count the packets of the rule that decided (xnu
  bsd/net/pf.c pf_test: `r->packets[dirndx]++` when the action is pass or
  the rule drops) and start from 0 whenever the rule is loaded;
- PF enabled or not, with xnu's references (Switch below), and the state
  table's flush (-F states, optionally for one interface: DIOCCLRSTATES
  compares psk_ifname with the state's kif) and kill (-k: DIOCKILLSTATES).
"""

import ipaddress
import random
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


Rule = namedtuple('Rule', ('action direction quick ifaces af protos src sport dst dport icmp6 user group flags state '
                           'if_bound log label text'))


def _tokens(line):
    return re.findall(r'<[^>]+>|"[^"]*"|[{}()]|[^\s{}()]+', line)


Anchor = namedtuple('Anchor', 'name text')
# Main-ruleset lines the model takes note of without filtering on them:
# Apple's stock pf.conf has them (scrub, NAT, redirection and dummynet anchors).
_OTHER_ANCHOR_RE = re.compile(r'^(scrub-anchor|nat-anchor|rdr-anchor|dummynet-anchor) "([^"]+)"$')
_LOAD_RE = re.compile(r'^load anchor "([^"]+)" from "([^"]+)"$')
_ANCHOR_RE = re.compile(r'^anchor "([^"]+)"(?: all)?$')


class Ruleset:
    def __init__(self, text):
        self.macros, self.tables, self.rules, self.loads, self.other_anchors = {}, {}, [], [], []
        for raw in text.splitlines():
            line = raw.split('#', 1)[0].strip()
            if not line:
                continue
            if _LOAD_RE.match(line):
                self.loads.append(_LOAD_RE.match(line).groups())
                continue
            if _OTHER_ANCHOR_RE.match(line):
                self.other_anchors.append(_OTHER_ANCHOR_RE.match(line).group(2))
                continue
            if _ANCHOR_RE.match(line):
                self.rules.append(Anchor(_ANCHOR_RE.match(line).group(1), 'anchor "%s" all' % _ANCHOR_RE.match(line).group(1)))
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
                 dst=None, dport=None, icmp6=None, user=None, group=None, flags=None, state=None, if_bound=False,
                 log=False, label=None, text=line)
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
            elif token == 'log':
                # Logging copies the packet to pflog0 (xnu bsd/net/if_pflog.c); it decides nothing.
                f['log'] = True
                if peek() == '(':
                    while take() != ')':
                        pass
            elif token == 'label':
                # A name the rule's counters are shown under (pfctl -s labels); it decides nothing.
                f['label'] = take().strip('"')
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
                f[token] = [int(t) for t in items()]
            elif token == 'flags':
                f['flags'] = take()
            elif token in ('keep', 'no'):
                take('state')
                f['state'] = token == 'keep'
                if token == 'keep' and peek() == '(':
                    take('(')
                    option = take()
                    if option not in ('if-bound', 'floating'):
                        raise Unsupported('state option %r in %r' % (option, line))
                    f['if_bound'] = option == 'if-bound'
                    take(')')
            else:
                raise Unsupported('unknown token %r in %r' % (token, line))
        if f['state'] is None:
            f['state'] = f['action'] == 'pass'
        if f['state'] and f['flags'] is None:
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
        if rule.user is not None and (p.proto not in ('tcp', 'udp') or p.uid not in rule.user):
            return False
        if rule.group is not None and (p.proto not in ('tcp', 'udp') or p.gid not in rule.group):
            return False
        if rule.flags not in (None, 'any') and p.proto == 'tcp':
            want, mask = rule.flags.split('/')
            if set(f for f in p.flags if f in mask) != set(want):
                return False
        return True

    def decide(self, p, anchors=None):
        """The rule that decides p, or None when none matches (PF then passes).

        anchors: name -> Ruleset, for the `anchor` rules of a main ruleset; an
        anchor the model does not know (another tool's) decides nothing.
        """
        decided, stop = self._walk(p, anchors or {})
        return decided

    def _walk(self, p, anchors):
        decided = None
        for rule in self.rules:
            if isinstance(rule, Anchor):
                inner = anchors.get(rule.name)
                if inner is None:
                    continue
                found, stop = inner._walk(p, anchors)
                if found is not None:
                    decided = found
                if stop:
                    return decided, True
                continue
            if self.matches(rule, p):
                decided = rule
                if rule.quick:
                    return decided, True
        return decided, False


State = namedtuple('State', 'direction key kif')


def _key(p):
    return (p.af, p.proto, p.src, p.sport, p.dst, p.dport)


def _reverse(p):
    return (p.af, p.proto, p.dst, p.dport, p.src, p.sport)


class StateTable:
    """PF's states: made by a stateful pass, matched before any rule."""

    def __init__(self):
        self.states = []

    def lookup(self, p):
        if p.proto not in ('tcp', 'udp'):
            return None
        for s in self.states:
            same = s.key == (_key(p) if p.direction == s.direction else _reverse(p))
            if same and (s.kif is None or s.kif == p.iface):
                return s
        return None

    def create(self, rule, p):
        if rule.action == 'pass' and rule.state and p.proto in ('tcp', 'udp'):
            self.states.append(State(p.direction, _key(p), p.iface if rule.if_bound else None))

    def flush(self, iface=None):
        """-F states; with -i, only the states bound to that interface (a floating state's kif is `all`)."""
        self.states = [s for s in self.states if iface is not None and s.kif != iface]

    def kill(self, src, dst=None):
        """-k src [-k dst]: states from src (to dst), by the addresses of the connection's first packet."""
        def inside(address, network):
            return network is None or (address.version == network.version and address in network)
        self.states = [s for s in self.states
                       if not (inside(s.key[2], src) and inside(s.key[4], dst))]

    def __len__(self):
        return len(self.states)


class Switch:
    """PF on or off, with xnu's enable references (bsd/net/pf_ioctl.c).

    -e (DIOCSTART): starts PF; when it already runs, takes a reference of its
    own only while every reference is a token. -E (DIOCSTARTREF): a new token
    and a reference, starting PF if needed. -d (DIOCSTOP): stops PF, drops
    every reference and invalidates every token. -X token (DIOCSTOPREF):
    EINVAL for a token it does not hold, else drops that reference, and PF
    stops with the last one. Both stops fail (ENOENT) when PF is not running.
    """

    def __init__(self):
        self.running, self.refcount, self.tokens = False, 0, set()

    def start(self):
        if self.running:
            if len(self.tokens) == self.refcount:
                self.refcount += 1
            return 'EEXIST'
        self.running, self.refcount = True, self.refcount + 1
        return None

    def start_ref(self):
        # xnu hashes the token's kernel address (VM_KERNEL_ADDRHASH): unpredictable, never reused
        # after a reboot in practice; a random number models that.
        token = str(random.randrange(10 ** 12, 10 ** 15))
        self.tokens.add(token)
        self.running, self.refcount = True, self.refcount + 1
        return token

    def stop(self):
        if not self.running:
            return 'ENOENT'
        self.running, self.refcount, self.tokens = False, 0, set()
        return None

    def stop_ref(self, token):
        if not self.running:
            return 'ENOENT'
        if token not in self.tokens:
            return 'EINVAL'
        self.tokens.discard(token)
        self.refcount -= 1
        if self.refcount == 0:
            self.running = False
        return None


class Firewall:
    """A ruleset plus the state table, as PF runs it on a host."""

    def __init__(self, text):
        self.ruleset = Ruleset(text)
        self.table = StateTable()

    @property
    def states(self):
        return self.table.states

    def send(self, p):
        """True when PF lets p through."""
        if self.table.lookup(p):
            return True
        rule = self.ruleset.decide(p)
        if rule is None:
            return True
        self.table.create(rule, p)
        return rule.action == 'pass'

    def flush_states(self):
        self.table.flush()


KEYWORDS = {'port', 'icmp6-type', 'user', 'group', 'flags', 'keep', 'no', 'to', 'from', 'all', 'label'}
