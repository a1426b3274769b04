# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vpnguard maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The platform-neutral kill switch policy.

Every backend (nftables, PF, Windows Firewall) renders from a Policy, and a
Policy only exists once the whole input has been validated, so nothing a user
wrote reaches a firewall command line unchecked. Errors name the setting.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import re
from collections import namedtuple

# What the kernel accepts as an interface name (IFNAMSIZ is 16 with the NUL),
# narrowed to characters that need no quoting anywhere we render them.
IFNAME_MAX = 15
_IFNAME_RE = re.compile(r'^[A-Za-z0-9_.-]+\*?$')
_CGROUP_PART_RE = re.compile(r'^[A-Za-z0-9_.@:-]+$')
# An absolute Windows path (drive or %VARIABLE% root) as Windows Firewall's
# Program condition takes it; quotes, wildcards and control characters would
# need quoting in PowerShell and mean nothing to the firewall.
# Windows names adapters for people ("WireGuard Tunnel", "Ethernet 5"); the
# alias reaches PowerShell as a parameter value, never as script text.
_WINDOWS_ALIAS_RE = re.compile(r'^[A-Za-z0-9_.()#-](?:[A-Za-z0-9 _.()#-]*[A-Za-z0-9_.()#-])?\*?$')
WINDOWS_ALIAS_MAX = 64
_PROGRAM_RE = re.compile(r'^(?:[A-Za-z]:|%[A-Za-z_][A-Za-z0-9_()]*%)(?:\\[^\\/:*?"<>|\x00-\x1f]+)+$')
PROGRAM_MAX = 259  # MAX_PATH without the terminating NUL

PROTOCOLS = ('udp', 'tcp')
# DNS and DNS over TLS: every platform keeps these ports to the tunnel's resolvers.
DNS_PORTS = (53, 853)
EXCEPTION_SELECTORS = ('uid', 'gid', 'cgroup', 'program')
# What each firewall can select a socket by; platform.system() names the keys.
PLATFORM_SELECTORS = {
    'Linux': ('uid', 'gid', 'cgroup'),
    'Darwin': ('uid', 'gid'),        # PF `user` and `group`
    'Windows': ('program',),         # Windows Firewall's Program condition
}
ID_MAX = 2 ** 32 - 2  # (uid_t)-1 means "no user" to the kernel
FWMARK_MAX = 2 ** 32 - 1

# wg-quick's default fwmark; WireGuard sets it on its own encrypted packets.
DEFAULT_TUNNEL_FWMARK = 51820

LAN_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    '10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16',  # RFC 1918
    '169.254.0.0/16',                                 # IPv4 link-local
    '224.0.0.0/4',                                    # IPv4 multicast
    'fc00::/7', 'fe80::/10', 'ff00::/8',              # ULA, link-local, multicast
))

# One server address, port and protocol. uids and mark say whose packets may
# use it (Linux): sockets of those users besides root, packets with that mark
# (None: the policy's tunnel_fwmark). A server on several ports or protocols
# is several Endpoints, so every renderer takes them one by one. ESP (route-
# based kernel IPsec, Linux) has no port: port is None.
Endpoint = namedtuple('Endpoint', 'address port protocol uids mark')
Endpoint.__new__.__defaults__ = ((), None)
# Keys an endpoint may have; port/ports and protocol/protocols are one or a list.
ENDPOINT_KEYS = ('address', 'port', 'ports', 'protocol', 'protocols', 'uid', 'mark', 'unit')
ENDPOINT_OWNER_KEYS = ('ports', 'protocols', 'uid', 'mark')  # not (yet) rendered by PF and Windows
# ESP of route-based kernel IPsec (IP protocol 50): the server's address and
# the SA's output mark say which ESP packets are the tunnel's; it has no port.
ESP = 'esp'
# IKE starts on udp/500 and moves to udp/4500 only once NAT is detected (RFC 7296 2.23).
IKE_PORT, IKE_NAT_T_PORT = 500, 4500
Management = namedtuple('Management', 'network port protocol')
BypassException = namedtuple('BypassException', 'selector value')


def policy_argument_spec(selectors, endpoint_owners=False):
    """The argument_spec options every kill switch module shares, with the exception selectors its OS has.

    endpoint_owners: the endpoints also take several ports and protocols and
    name whose packets may use them (nft_killswitch).
    """
    entry = dict(type='list', elements='dict', default=[])
    endpoint = dict(
        address=dict(type='str', required=True),
        port=dict(type='int', required=not endpoint_owners),
        protocol=dict(type='str', default='udp', choices=['udp', 'tcp']),
    )
    if endpoint_owners:
        endpoint.update(
            ports=dict(type='list', elements='int'),
            protocols=dict(type='list', elements='str', choices=['udp', 'tcp', ESP]),
            uid=dict(type='list', elements='int'),
            mark=dict(type='int'),
            unit=dict(type='str'),
        )
        endpoint['protocol'] = dict(type='str', choices=['udp', 'tcp', ESP])
    return dict(
        state=dict(type='str', default='present', choices=['present', 'absent']),
        tunnel_interfaces=dict(type='list', elements='str', default=[]),
        endpoints=dict(entry, options=endpoint),
        dns_servers=dict(type='list', elements='str', default=[]),
        doh_servers=dict(type='list', elements='str', default=[]),
        allow_lan=dict(type='bool', default=False),
        management=dict(entry, options=dict(
            cidr=dict(type='str', required=True),
            port=dict(type='int', required=True),
            protocol=dict(type='str', default='tcp', choices=['udp', 'tcp']),
        )),
        exceptions=dict(entry, options=selectors,
                        mutually_exclusive=[list(selectors)], required_one_of=[list(selectors)]),
    )


class PolicyError(ValueError):
    """Invalid input; `setting` names the offending option, e.g. endpoints[0].port."""

    def __init__(self, setting, message):
        self.setting = setting
        super(PolicyError, self).__init__('%s: %s' % (setting, message))


class Policy(namedtuple('Policy', [
        'tunnel_interfaces', 'endpoints', 'dns_servers', 'allow_lan',
        'management', 'exceptions', 'tunnel_fwmark', 'restrict_endpoints_to_tunnel', 'doh_servers'])):
    """A validated kill switch policy. Build it with parse_policy()."""

    __slots__ = ()

    def endpoints_of(self, version):
        return [e for e in self.endpoints if e.address.version == version]

    def dns_of(self, version):
        return [a for a in self.dns_servers if a.version == version]

    def doh_of(self, version):
        return [a for a in self.doh_servers if a.version == version]

    def management_of(self, version):
        return [m for m in self.management if m.network.version == version]

    def exceptions_by(self, selector):
        return [e.value for e in self.exceptions if e.selector == selector]


POLICY_KEYS = ('tunnel_interfaces', 'endpoints', 'dns_servers', 'allow_lan', 'management',
               'exceptions', 'tunnel_fwmark', 'restrict_endpoints_to_tunnel', 'doh_servers')


def parse_policy(raw, system=None):
    """Validate raw (a dict as a module or role receives it) and return a Policy.

    Raises PolicyError on the first invalid setting; nothing is partially accepted.
    With system (platform.system()'s name for the target host), also refuse what
    that host's firewall cannot express, and take Windows adapter aliases there.
    """
    if not isinstance(raw, dict):
        raise PolicyError('policy', 'must be a mapping, got %s' % type(raw).__name__)
    _reject_unknown_keys('policy', raw, POLICY_KEYS)
    interface = _windows_alias if system == 'Windows' else _interface
    interfaces = [interface('tunnel_interfaces[%d]' % i, v)
                  for i, v in enumerate(_list('tunnel_interfaces', raw.get('tunnel_interfaces')))]
    if not interfaces:
        raise PolicyError('tunnel_interfaces', 'at least one tunnel interface is required')
    endpoints = [e for i, v in enumerate(_list('endpoints', raw.get('endpoints')))
                 for e in _endpoints('endpoints[%d]' % i, v)]
    if system not in (None, 'Linux'):
        for i, v in enumerate(_list('endpoints', raw.get('endpoints'))):
            if str(v.get('protocol')).lower() == ESP:
                raise PolicyError('endpoints[%d].protocol' % i, 'esp (route-based kernel IPsec) is taken on Linux '
                                  'only; on %s give the IKE ports (udp 500 and 4500)' % system)
            for key in ENDPOINT_OWNER_KEYS:
                if isinstance(v, dict) and v.get(key) is not None:
                    raise PolicyError('endpoints[%d].%s' % (i, key), '%s is taken on Linux only; on %s give one '
                                      'endpoint per port and protocol (address, port, protocol)' % (key, system))
    dns_servers = parse_addresses('dns_servers', raw.get('dns_servers'))
    doh_servers = parse_addresses('doh_servers', raw.get('doh_servers'))
    management = [_management('management[%d]' % i, v)
                  for i, v in enumerate(_list('management', raw.get('management')))]
    exceptions = [_exception('exceptions[%d]' % i, v)
                  for i, v in enumerate(_list('exceptions', raw.get('exceptions')))]
    fwmark = raw.get('tunnel_fwmark')
    fwmark = DEFAULT_TUNNEL_FWMARK if fwmark is None else _integer('tunnel_fwmark', fwmark, 1, FWMARK_MAX)
    restrict = raw.get('restrict_endpoints_to_tunnel')
    if restrict is not None and not _boolean('restrict_endpoints_to_tunnel', restrict):
        for i, v in enumerate(_list('endpoints', raw.get('endpoints'))):
            for key in ('uid', 'mark'):
                if v.get(key) is not None:
                    raise PolicyError('endpoints[%d].%s' % (i, key), 'names who may use the endpoint, but '
                                      'restrict_endpoints_to_tunnel is false, which lets every process use it; '
                                      'set restrict_endpoints_to_tunnel to true or remove %s' % key)
    policy = Policy(
        tunnel_interfaces=tuple(_unique(interfaces)),
        endpoints=tuple(_unique(endpoints)),
        dns_servers=tuple(dns_servers),
        doh_servers=tuple(doh_servers),
        allow_lan=_boolean('allow_lan', raw.get('allow_lan', False)),
        management=tuple(_unique(management)),
        exceptions=tuple(_unique(exceptions)),
        tunnel_fwmark=fwmark,
        restrict_endpoints_to_tunnel=_boolean(
            'restrict_endpoints_to_tunnel', True if restrict is None else restrict),
    )
    return policy if system is None else check_platform(policy, system)


def parse_addresses(setting, values):
    """A validated list of unicast host addresses, e.g. resolvers; errors name setting[i]."""
    return _unique([_host_address('%s[%d]' % (setting, i), v) for i, v in enumerate(_list(setting, values))])


def _unique(items):
    seen = set()
    return [i for i in items if not (i in seen or seen.add(i))]


def _reject_unknown_keys(setting, raw, known):
    unknown = sorted(str(k) for k in raw if k not in known)
    if unknown:
        raise PolicyError(setting, 'unknown key(s) %s; known keys are %s'
                          % (', '.join(unknown), ', '.join(known)))


def _list(setting, value):
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise PolicyError(setting, 'must be a list, got %s' % type(value).__name__)
    return value


def _boolean(setting, value):
    # "true"/"false" as text is how `-e name=true` on the command line arrives;
    # anything looser (yes, 1, on) is more likely a mistake than a choice.
    if isinstance(value, str) and value.lower() in ('true', 'false'):
        return value.lower() == 'true'
    if not isinstance(value, bool):
        raise PolicyError(setting, 'must be a boolean (true/false), got %r' % (value,))
    return value


def _integer(setting, value, low, high):
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(setting, 'must be an integer, got %r' % (value,))
    if not low <= value <= high:
        raise PolicyError(setting, 'must be between %d and %d, got %d' % (low, high, value))
    return value


def _text(setting, value):
    if not isinstance(value, str):
        raise PolicyError(setting, 'must be a string, got %r' % (value,))
    return value


def _interface(setting, value):
    name = _text(setting, value)
    if not name:
        raise PolicyError(setting, 'interface name is empty')
    if len(name) > IFNAME_MAX:
        raise PolicyError(setting, 'interface name %r is longer than %d characters' % (name, IFNAME_MAX))
    if not _IFNAME_RE.match(name):
        raise PolicyError(setting, 'interface name %r may only hold letters, digits, "_", "." and "-", '
                                   'with one optional trailing "*" wildcard' % name)
    if name.rstrip('*') in ('', '.', '..'):
        # A bare "*" would match every interface and turn the kill switch off.
        raise PolicyError(setting, 'interface name %r does not name an interface' % name)
    return name


def _windows_alias(setting, value):
    name = _text(setting, value)
    if len(name) > WINDOWS_ALIAS_MAX:
        raise PolicyError(setting, 'interface alias %r is longer than %d characters' % (name, WINDOWS_ALIAS_MAX))
    if not _WINDOWS_ALIAS_RE.match(name) or not name.rstrip('*').strip('.'):
        raise PolicyError(setting, 'interface alias %r may only hold letters, digits, spaces and "_.()#-", '
                                   'not at either end, with one optional trailing "*" wildcard' % name)
    return name


def _host_address(setting, value):
    text = _text(setting, value)
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise PolicyError(setting, '%r is not an IPv4 or IPv6 address' % text)
    if address.is_unspecified or address.is_multicast:
        raise PolicyError(setting, '%s is not a unicast host address' % address)
    return address


def _network(setting, value):
    text = _text(setting, value)
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        raise PolicyError(setting, '%r is not a valid IPv4 or IPv6 network (%s)' % (text, e))


def _port(setting, value):
    return _integer(setting, value, 1, 65535)


def _protocol(setting, value):
    protocol = _text(setting, value).lower()
    if protocol not in PROTOCOLS:
        raise PolicyError(setting, 'must be one of %s, got %r' % (', '.join(PROTOCOLS), value))
    return protocol


def _mapping(setting, value, known):
    if not isinstance(value, dict):
        raise PolicyError(setting, 'must be a mapping, got %s' % type(value).__name__)
    _reject_unknown_keys(setting, value, known)
    missing = [k for k in known if k not in value or value[k] is None]
    return missing


def _service(setting, value, key, parse_address, default_protocol):
    """An address (or network) with a port and protocol, as endpoints and management have."""
    missing = _mapping(setting, value, (key, 'port', 'protocol'))
    if key in missing or 'port' in missing:
        raise PolicyError(setting, 'needs %s and port' % key)
    return (parse_address('%s.%s' % (setting, key), value[key]),
            _port(setting + '.port', value['port']),
            _protocol(setting + '.protocol', value.get('protocol') or default_protocol))


def _one_or_list(setting, value, one, many, parse):
    """A setting given as one value (key one) or a list (key many), never both; errors name each item."""
    if value.get(one) is not None and value.get(many) is not None:
        raise PolicyError(setting, 'give %s or %s, not both' % (one, many))
    if value.get(many) is None:
        return [parse('%s.%s' % (setting, one), value[one])] if value.get(one) is not None else []
    items = _list('%s.%s' % (setting, many), value[many])
    if not items:
        raise PolicyError('%s.%s' % (setting, many), 'must not be empty')
    return _unique([parse('%s.%s[%d]' % (setting, many, i), v) for i, v in enumerate(items)])


def _endpoint_protocol(setting, value):
    protocol = _text(setting, value).lower()
    if protocol not in PROTOCOLS + (ESP,):
        raise PolicyError(setting, 'must be one of %s, got %r' % (', '.join(PROTOCOLS + (ESP,)), value))
    return protocol


def _endpoints(setting, value):
    """The Endpoints of one server entry: one per port and protocol, with who may use them.

    ESP has no port: an entry with protocols [udp, esp] and ports [500, 4500]
    is IKE on both ports and one ESP endpoint. Its uids are for the IKE
    daemon's sockets; the ESP packets are told by their mark, since the kernel
    sends them on the socket of the application whose packet was encrypted.
    """
    _mapping(setting, value, ENDPOINT_KEYS)
    if value.get('address') is None:
        raise PolicyError(setting, 'needs address and port (or ports)')
    address = _host_address(setting + '.address', value['address'])
    protocols = _one_or_list(setting, value, 'protocol', 'protocols', _endpoint_protocol) or ['udp']
    ported = [p for p in protocols if p != ESP]
    if ported and value.get('port') is None and value.get('ports') is None:
        raise PolicyError(setting, 'needs address and port (or ports)')
    if not ported and (value.get('port') is not None or value.get('ports') is not None):
        raise PolicyError(setting + ('.port' if value.get('ports') is None else '.ports'),
                          'esp has no ports; give the IKE ports in the same entry with protocols: [udp, esp]')
    ports = _one_or_list(setting, value, 'port', 'ports', _port)
    for i, port in enumerate(ports):
        if port in DNS_PORTS:
            # Silently unreachable otherwise: the tunnel would never come up.
            raise PolicyError(setting + ('.port' if value.get('ports') is None else '.ports[%d]' % i),
                              '%d is a DNS port, which the kill switch keeps to the '
                              "tunnel's resolvers, so a VPN server on it could not be reached; "
                              "use another of the server's ports" % port)
    if 'udp' in protocols and IKE_NAT_T_PORT in ports and IKE_PORT not in ports:
        raise PolicyError(setting + ('.port' if value.get('ports') is None else '.ports'),
                          'udp/4500 alone cannot work for IKE: the first IKE message goes to udp/500 and only '
                          'moves to 4500 once NAT is detected; give ports: [500, 4500]')
    if value.get('unit') is not None:
        raise PolicyError(setting + '.unit', "a systemd unit's cgroup is matched by the id nftables reads "
                          'when the rules are loaded, and a restarted unit gets a new cgroup, so its VPN client '
                          "could not reconnect; name the unit's user (uid, as its User= runs it) or the mark "
                          'its client puts on the tunnel packets (mark) instead')
    uids = () if value.get('uid') is None else _uid_list(setting + '.uid', value['uid'])
    mark = value.get('mark')
    mark = None if mark is None else _integer(setting + '.mark', mark, 1, FWMARK_MAX)
    return ([Endpoint(address, port, protocol, uids, mark) for port in ports for protocol in ported]
            + [Endpoint(address, None, ESP, (), mark) for protocol in protocols if protocol == ESP])


def _uid_list(setting, value):
    """uid as one number or a list: the users the VPN client runs as once it dropped root."""
    if not isinstance(value, (list, tuple)):
        return (_integer(setting, value, 0, ID_MAX),)
    if not value:
        raise PolicyError(setting, 'must not be empty')
    return tuple(_unique([_integer('%s[%d]' % (setting, i), v, 0, ID_MAX) for i, v in enumerate(value)]))


def _management(setting, value):
    return Management(*_service(setting, value, 'cidr', _network, 'tcp'))


def _exception(setting, value):
    _mapping(setting, value, EXCEPTION_SELECTORS)
    given = [k for k in EXCEPTION_SELECTORS if value.get(k) is not None]
    if len(given) != 1:
        raise PolicyError(setting, 'needs exactly one of %s' % ', '.join(EXCEPTION_SELECTORS))
    selector = given[0]
    if selector == 'cgroup':
        return BypassException('cgroup', _cgroup_path(setting + '.cgroup', value['cgroup']))
    if selector == 'program':
        return BypassException('program', _program_path(setting + '.program', value['program']))
    return BypassException(selector, _integer('%s.%s' % (setting, selector), value[selector], 0, ID_MAX))


def _cgroup_path(setting, value):
    parts = [p for p in _text(setting, value).split('/') if p]
    if not parts:
        raise PolicyError(setting, 'cgroup path is empty')
    for part in parts:
        if part in ('.', '..') or not _CGROUP_PART_RE.match(part):
            raise PolicyError(setting, 'cgroup path %r has an invalid component %r' % (value, part))
    return '/'.join(parts)


def _program_path(setting, value):
    path = _text(setting, value)
    if len(path) > PROGRAM_MAX:
        raise PolicyError(setting, 'program path is longer than %d characters' % PROGRAM_MAX)
    if not _PROGRAM_RE.match(path) or any(part in ('.', '..') for part in path.split('\\')):
        raise PolicyError(setting, 'program %r must be an absolute Windows path such as '
                                   'C:\\Program Files\\App\\app.exe or %%ProgramFiles%%\\App\\app.exe' % path)
    return path


def parse_program(setting, value):
    """A validated Windows program path, as exceptions take it; errors name setting."""
    return _program_path(setting, value)


def check_platform(policy, system):
    """Refuse exceptions that system's firewall cannot select by, naming the setting.

    system is platform.system()'s name for the host: Linux, Darwin or Windows.
    """
    supported = PLATFORM_SELECTORS[system]
    for i, exception in enumerate(policy.exceptions):
        if exception.selector not in supported:
            raise PolicyError('exceptions[%d].%s' % (i, exception.selector),
                              '%s exceptions are not available on %s; use %s'
                              % (exception.selector, system, ' or '.join(supported)))
    return policy


def is_lan(address):
    return any(address.version == n.version and address in n for n in LAN_NETWORKS)
