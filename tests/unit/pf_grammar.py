"""A checker of pf.conf text as macOS's pfctl reads it, written for this collection's renders.

Apple's pfctl source is not published with network_cmds any more, so the
grammar is taken from pf.conf(5) of the OpenBSD 4.x era that xnu's PF comes
from (xnu bsd/net/pf_ioctl.c carries `$OpenBSD: pf_ioctl.c,v 1.175`), from
OpenBSD's pfctl parse.y of that era (rule_consistent / filter_consistent and
the keyword table) and from what xnu itself can hold (bsd/net/pfvar.h):

- actions the kernel knows: PF_PASS, PF_DROP, PF_SCRUB, PF_NAT, PF_RDR,
  PF_BINAT, PF_DUMMYNET, PF_NAT64 and their negations; no `match`, no
  `divert-to`, no `nat-to`/`rdr-to` (OpenBSD 4.4 to 4.7 additions);
- PF_TABLE_NAME_SIZE 32 and PF_ANCHOR_NAME_SIZE 64 (with the NUL), IFNAMSIZ 16;
- PFRULE_IFBOUND: `keep state (if-bound)` / `(floating)`.

Statement order in a ruleset (pf.conf(5) "STATEMENT ORDER", enforced while
`set require-order` is yes, its default then): options, normalization,
queueing, translation, filtering; Apple's stock /etc/pf.conf puts
dummynet-anchor between translation and filtering. Macros, tables and
`load anchor` may appear anywhere.

It is stricter than pfctl in two ways, both on purpose: a table a rule
names must be defined in the same file (pfctl would create it empty, so the
rule would never match), and only the option and filter keywords the
collection can render are known; anything else is refused, so a renderer
that starts writing new syntax fails here first.
"""

import ipaddress
import re

IFNAME_MAX = 15          # IFNAMSIZ 16 with the NUL
TABLE_NAME_MAX = 31      # PF_TABLE_NAME_SIZE 32 with the NUL
ANCHOR_NAME_MAX = 63     # PF_ANCHOR_NAME_SIZE 64, per path component
TCP_FLAGS = set('FSRPAUEW')
STATE_OPTIONS = {'if-bound', 'floating', 'no-sync'}
UNSUPPORTED = {'match', 'divert-to', 'divert-reply', 'divert-packet', 'nat-to', 'rdr-to', 'binat-to',
               'received-on', 'rtable', 'set-tos', 'prio', 'pflow', 'sloppy', 'once'}
ORDER = {'option': 0, 'normalization': 1, 'queueing': 2, 'translation': 3, 'dummynet': 4, 'filter': 5}
_NAME_RE = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*$')
_IFNAME_RE = re.compile(r'^[A-Za-z][A-Za-z0-9_.-]*$')
_TOKEN_RE = re.compile(r'"[^"\n]*"|<[^>\s]*>|[{}(),!=]|[^\s{}(),!="<]+')


class GrammarError(ValueError):
    def __init__(self, line, message):
        super(GrammarError, self).__init__('line %d: %s' % (line, message))


def _statements(text):
    """(line number, text) per statement: comments gone, backslash continuations joined."""
    out, pending, start = [], '', None
    for number, raw in enumerate(text.splitlines(), 1):
        # A # inside quotes is text; outside, it starts a comment.
        line = re.sub(r'^((?:[^"#]|"[^"]*")*)#.*$', r'\1', raw)
        if start is None:
            start = number
        if line.rstrip().endswith('\\'):
            pending += line.rstrip()[:-1] + ' '
            continue
        pending += line
        if pending.strip():
            out.append((start, pending.strip()))
        pending, start = '', None
    if pending.strip():
        raise GrammarError(start, 'the file ends inside a continued line')
    return out


class Checker:
    """check(text, main=True) raises GrammarError on the first thing pfctl (or this stricter reading) refuses."""

    def __init__(self, text, main=True):
        self.main, self.macros, self.tables, self.stage = main, {}, set(), 0
        self.statements = _statements(text)

    def check(self):
        for number, statement in self.statements:
            self.line = number
            self._statement(statement)
        return True

    def fail(self, message):
        raise GrammarError(self.line, message)

    # statements -------------------------------------------------------------

    def _statement(self, text):
        macro = re.match(r'^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"([^"]*)"$', text)
        if macro:
            self.macros[macro.group(1)] = macro.group(2)
            return
        text = re.sub(r'\$([A-Za-z_][A-Za-z0-9_]*)', self._expand, text)
        tokens = _TOKEN_RE.findall(text)
        if ''.join(tokens) != re.sub(r'\s+', '', text):
            self.fail('unexpected character in %r' % text)
        self.tokens, self.pos = tokens, 0
        head = self.peek()
        if head in UNSUPPORTED:
            self.fail('%r is not in xnu\'s PF (no such rule action or option there)' % head)
        if head == 'table':
            return self._table()
        if head == 'load':
            return self._load()
        if head == 'set':
            return self._option()
        if head in ('scrub-anchor', 'scrub'):
            self._order('normalization')
            return self._anchor_rule() if head == 'scrub-anchor' else self.fail('scrub rules are not rendered')
        if head in ('nat-anchor', 'rdr-anchor', 'binat-anchor'):
            self._order('translation')
            return self._anchor_rule()
        if head == 'dummynet-anchor':
            self._order('dummynet')
            return self._anchor_rule()
        if head == 'anchor':
            self._order('filter')
            return self._anchor_rule()
        if head in ('pass', 'block'):
            self._order('filter')
            return self._filter_rule()
        self.fail('unknown statement %r' % head)

    def _expand(self, match):
        if match.group(1) not in self.macros:
            self.fail('macro %r is not defined' % match.group(1))
        return self.macros[match.group(1)]

    def _order(self, kind):
        if ORDER[kind] < self.stage:
            self.fail('rules must be in order: options, normalization, queueing, translation, filtering; '
                      'a %s statement follows a later one' % kind)
        self.stage = ORDER[kind]

    # tokens -----------------------------------------------------------------

    def peek(self, offset=0):
        index = self.pos + offset
        return self.tokens[index] if index < len(self.tokens) else None

    def take(self, expected=None):
        token = self.peek()
        if token is None:
            self.fail('unexpected end of statement%s' % (', expected %r' % expected if expected else ''))
        if expected is not None and token != expected:
            self.fail('expected %r, found %r' % (expected, token))
        self.pos += 1
        return token

    def done(self):
        if self.peek() is not None:
            self.fail('unexpected %r' % self.peek())

    def items(self, item):
        """One item, or a { list } of them (commas optional)."""
        if self.peek() != '{':
            return [item()]
        self.take('{')
        out = []
        while self.peek() != '}':
            if self.peek() is None:
                self.fail('unclosed {')
            if self.peek() == ',':
                self.take()
                continue
            out.append(item())
        self.take('}')
        if not out:
            self.fail('empty list')
        return out

    def enclosed(self, opening, closing):
        """The tokens between opening and closing, commas dropped."""
        self.take(opening)
        out = []
        while self.peek() != closing:
            if self.peek() is None:
                self.fail('unclosed %s' % opening)
            token = self.take()
            if token != ',':
                out.append(token)
        self.take(closing)
        return out

    def number(self, low, high, what):
        token = self.take()
        if not re.match(r'^\d+$', token) or not low <= int(token) <= high:
            self.fail('%s must be a number from %d to %d, found %r' % (what, low, high, token))
        return int(token)

    def quoted(self):
        token = self.take()
        if not (token.startswith('"') and token.endswith('"') and len(token) >= 2):
            self.fail('expected a quoted string, found %r' % token)
        return token[1:-1]

    # parts --------------------------------------------------------------------

    def _table(self):
        self.take('table')
        name = self.take()
        if not re.match(r'^<[A-Za-z0-9_]+>$', name):
            self.fail('bad table name %r' % name)
        if len(name) - 2 > TABLE_NAME_MAX:
            self.fail('table name %r is longer than %d characters (PF_TABLE_NAME_SIZE)' % (name, TABLE_NAME_MAX))
        while self.peek() in ('const', 'persist', 'counters'):
            self.take()
        if self.peek() == '{':
            for token in self.enclosed('{', '}'):
                if token != '!':
                    self._address(token)
        elif self.peek() == 'file':
            self.take()
            self.quoted()
        self.done()
        self.tables.add(name[1:-1])

    def _load(self):
        self.take('load')
        self.take('anchor')
        if not self.main:
            self.fail('load anchor belongs in the main ruleset')
        self._anchor_name(self.quoted())
        self.take('from')
        self.quoted()
        self.done()

    def _option(self):
        self._order('option')
        self.take('set')
        option = self.take()
        if option == 'skip':
            self.take('on')
            self.items(self._ifname)
        elif option == 'block-policy':
            self._one_of('drop', 'return')
        elif option == 'state-policy':
            self._one_of('if-bound', 'floating')
        elif option == 'require-order':
            self._one_of('yes', 'no')
        else:
            self.fail('option %r is not one this checker knows' % option)
        self.done()

    def _one_of(self, *choices):
        token = self.take()
        if token not in choices:
            self.fail('expected one of %s, found %r' % (', '.join(choices), token))
        return token

    def _anchor_name(self, name):
        parts = name.rstrip('*').rstrip('/').split('/') if name.endswith('/*') else name.split('/')
        if not name or name.startswith('/') or any(not p or len(p) > ANCHOR_NAME_MAX for p in parts):
            self.fail('bad anchor name %r' % name)
        if any(p.startswith('_') for p in parts):
            self.fail('anchor names starting with "_" are reserved (pf.conf(5))')

    def _anchor_rule(self):
        self.take()
        self._anchor_name(self.quoted())
        rule = self._rule_body(action='anchor')
        self.done()
        return rule

    def _ifname(self):
        token = self.take()
        name = token[1:] if token.startswith('!') else token
        if token == '!':
            name = self.take()
        if len(name) > IFNAME_MAX or not _IFNAME_RE.match(name):
            self.fail('bad interface name %r (at most %d characters)' % (name, IFNAME_MAX))
        return name

    def _address(self, token):
        if token.startswith('<'):
            if token[1:-1] not in self.tables:
                self.fail('table %s is not defined in this file' % token)
            return None
        try:
            return ipaddress.ip_network(token, strict=False).version
        except ValueError:
            self.fail('%r is not an address or network' % token)

    def _host(self):
        token = self.take()
        if token == '!':
            token = self.take()
        if token in ('any', 'self', 'no-route'):
            return None
        return self._address(token)

    def _ports(self):
        self.take('port')

        def port():
            return self.number(0, 65535, 'port')
        return self.items(port)

    def _endpoint(self, rule):
        """from/to: hosts, then an optional port."""
        if self.peek() not in ('port', None) and self.peek() not in FILTER_OPTIONS:
            for version in self.items(self._host):
                if version:
                    rule['families'].add(version)
        if self.peek() == 'port':
            self._ports()
            rule['ports'] = True

    def _rule_body(self, action):
        rule = dict(action=action, protos=None, af=None, families=set(), ports=False, user=False, flags=None,
                    icmp=None, state=None)
        if self.peek() in ('in', 'out'):
            self.take()
        if self.peek() == 'log':
            self.take()
        if self.peek() == 'quick':
            self.take()
        if self.peek() == 'on':
            self.take()
            self.items(self._ifname)
        if self.peek() in ('inet', 'inet6'):
            rule['af'] = 4 if self.take() == 'inet' else 6
        if self.peek() == 'proto':
            self.take()
            rule['protos'] = self.items(lambda: self._one_of('tcp', 'udp', 'icmp', 'icmp6'))
        if self.peek() == 'all':
            self.take()
        else:
            if self.peek() == 'from':
                self.take()
                self._endpoint(rule)
            if self.peek() == 'to':
                self.take()
                self._endpoint(rule)
        if action != 'anchor':
            self._filter_options(rule)
        self._consistent(rule)
        return rule

    def _filter_rule(self):
        action = self.take()
        if action == 'block' and self.peek() in ('drop', 'return', 'return-rst'):
            self.take()
        self._rule_body(action)
        self.done()

    def _filter_options(self, rule):
        while self.peek() is not None:
            option = self.take()
            if option in UNSUPPORTED:
                self.fail('%r is not in xnu\'s PF' % option)
            if option in ('user', 'group'):
                self.items(lambda: self.number(0, 2 ** 32 - 2, option))
                rule['user'] = True
            elif option == 'flags':
                rule['flags'] = self._flags()
            elif option in ('icmp-type', 'icmp6-type'):
                rule['icmp'] = option
                self.items(lambda: self.number(0, 255, option))
            elif option in ('keep', 'modulate', 'synproxy'):
                self.take('state')
                rule['state'] = 'keep'
                if self.peek() == '(':
                    for token in self.enclosed('(', ')'):
                        if token not in STATE_OPTIONS:
                            self.fail('unknown state option %r' % token)
            elif option == 'no':
                self.take('state')
                rule['state'] = 'no'
            elif option == 'label':
                self.quoted()
            else:
                self.fail('unknown or misplaced keyword %r' % option)

    def _flags(self):
        if self.peek() == 'any':
            self.take()
            return 'any'
        token = self.take()
        match = re.match(r'^([A-Z]*)/([A-Z]+)$', token)
        if not match or not set(match.group(1) + match.group(2)) <= TCP_FLAGS:
            self.fail('bad flags %r' % token)
        if not set(match.group(1)) <= set(match.group(2)):
            self.fail('flags %r: a flag that must be set is outside the mask' % token)
        return token

    def _consistent(self, rule):
        """What pfctl's rule_consistent()/filter_consistent() refuse, as pf.conf(5) states it."""
        protos = set(rule['protos'] or [])
        if rule['ports'] and not (protos and protos <= {'tcp', 'udp'}):
            self.fail('port only applies to tcp/udp')
        if rule['user'] and not (protos and protos <= {'tcp', 'udp'}):
            self.fail('user/group only applies to tcp/udp')
        if rule['flags'] not in (None, 'any') and protos != {'tcp'}:
            self.fail('flags only apply to tcp')
        if rule['icmp'] == 'icmp6-type' and (protos != {'icmp6'} or rule['af'] == 4):
            self.fail('icmp6-type only applies to proto icmp6 with inet6')
        if rule['icmp'] == 'icmp-type' and (protos != {'icmp'} or rule['af'] == 6):
            self.fail('icmp-type only applies to proto icmp with inet')
        if 'icmp6' in protos and rule['af'] == 4 or 'icmp' in protos and rule['af'] == 6:
            self.fail('protocol and address family do not match')
        if rule['af'] and rule['families'] and rule['af'] not in rule['families']:
            self.fail('no address with matching address family found')
        if rule['action'] == 'block' and rule['state'] == 'keep':
            self.fail('keep state on block rules doesn\'t make sense')


FILTER_OPTIONS = {'user', 'group', 'flags', 'icmp-type', 'icmp6-type', 'keep', 'modulate', 'synproxy', 'no',
                  'label'}


def check(text, main=True):
    """True, or GrammarError naming the line: main for a main ruleset (pfctl -f), False for an anchor (-a)."""
    return Checker(text, main).check()
