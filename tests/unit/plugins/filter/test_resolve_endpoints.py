import socket

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.vpnguard.killswitch.plugins.filter.resolve_endpoints import resolve_endpoints


@pytest.fixture
def names(monkeypatch):
    """A resolver of two names, so that the test asks no DNS server."""
    table = {'vpn.example.com': [(socket.AF_INET, '203.0.113.1'), (socket.AF_INET6, '2001:db8::1'),
                                 (socket.AF_INET, '203.0.113.1')]}

    def getaddrinfo(host, port, family=0, kind=0):
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, 'Name or service not known')
        return [(f, kind, 0, '', (a, 0)) for f, a in table[host] if family in (0, f)]
    monkeypatch.setattr(socket, 'getaddrinfo', getaddrinfo)


def test_a_name_becomes_one_endpoint_per_address_with_its_other_keys(names):
    given = [{'host': 'vpn.example.com', 'ports': [500, 4500]}, {'address': '198.51.100.7', 'port': 1194}]
    assert resolve_endpoints(given) == [{'address': '203.0.113.1', 'ports': [500, 4500]},
                                        {'address': '2001:db8::1', 'ports': [500, 4500]},
                                        {'address': '198.51.100.7', 'port': 1194}]
    assert resolve_endpoints(given[:1], family=4) == [{'address': '203.0.113.1', 'ports': [500, 4500]}]


@pytest.mark.parametrize('given, words', [
    ([{'host': 'nowhere.example'}], 'endpoints[0].host'),
    ([{'host': 'vpn.example.com', 'address': '203.0.113.1'}], 'exactly one'),
    ('vpn.example.com', 'list'),
])
def test_what_cannot_be_resolved_fails_naming_the_entry(names, given, words):
    with pytest.raises(AnsibleFilterError) as e:
        resolve_endpoints(given)
    assert words in str(e.value)
