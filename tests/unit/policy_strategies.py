"""Hypothesis strategies for raw policies, shared by the property tests of every backend."""

import ipaddress

from hypothesis import strategies as st

from ansible_collections.vpnguard.killswitch.plugins.module_utils.policy import DNS_PORTS, IKE_NAT_T_PORT

ports = st.integers(1, 65535)
# The policy refuses endpoints on DNS ports, and udp/4500 without IKE's 500 (see policy._endpoints).
endpoint_ports = ports.filter(lambda p: p not in DNS_PORTS and p != IKE_NAT_T_PORT)
protocols = st.sampled_from(['udp', 'tcp'])
v4 = st.ip_addresses(v=4).filter(lambda a: not (a.is_unspecified or a.is_multicast)).map(str)
v6 = st.ip_addresses(v=6).filter(lambda a: not (a.is_unspecified or a.is_multicast)).map(str)


def networks(addresses, prefixes):
    return st.builds(lambda a, p: str(ipaddress.ip_network('%s/%d' % (a, p), strict=False)), addresses, prefixes)


def policies(tunnel_interfaces, exceptions, management_networks, resolvers_max=2, **extra):
    """Raw policies as a user writes them; extra adds platform options (restrict_endpoints_to_tunnel)."""
    return st.fixed_dictionaries(dict({
        'tunnel_interfaces': tunnel_interfaces,
        'endpoints': st.lists(st.fixed_dictionaries({'address': v4 | v6, 'port': endpoint_ports, 'protocol': protocols}),
                              max_size=3),
        'dns_servers': st.lists(v4 | v6, max_size=resolvers_max),
        'doh_servers': st.lists(v4 | v6, max_size=resolvers_max),
        'allow_lan': st.booleans(),
        'management': st.lists(st.fixed_dictionaries({'cidr': management_networks, 'port': ports, 'protocol': protocols}),
                               max_size=2),
        'exceptions': st.lists(st.sampled_from(exceptions), max_size=2),
    }, **extra))
