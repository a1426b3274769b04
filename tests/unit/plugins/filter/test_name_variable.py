"""Errors name the variable the user set through the role, not the module's option."""

import pytest

from ansible.errors import AnsibleFilterError

from ansible_collections.vpnguard.killswitch.plugins.filter.name_variable import name_variable
from ansible_collections.vpnguard.killswitch.plugins.filter.validate_policy import validate_policy

VARIABLES = {'dns_servers': 'killswitch_dns_servers', 'servers': 'killswitch_dns_servers',
             'endpoints': 'killswitch_endpoints', 'persist': 'killswitch_persist',
             'tunnel_interfaces': 'killswitch_tunnel_interfaces'}


def test_the_offending_setting_is_named_by_its_variable_and_the_rest_is_kept():
    message = "Invalid kill switch policy, nothing was changed: dns_servers[0]: '192.0.2.1; rm -rf /' is not an IPv4 or IPv6 address"
    assert name_variable(message, 'dns_servers[0]', VARIABLES) == (
        "Invalid kill switch policy, nothing was changed: killswitch_dns_servers[0]: "
        "'192.0.2.1; rm -rf /' is not an IPv4 or IPv6 address")


def test_advice_names_the_variable_too_but_prose_is_left_alone():
    message = ('persist: laying the kill switch at boot needs systemd; the DNS servers stay. '
               'Set persist to false to enforce the kill switch without boot persistence.')
    assert name_variable(message, 'persist', VARIABLES) == (
        'killswitch_persist: laying the kill switch at boot needs systemd; the DNS servers stay. '
        'Set killswitch_persist to false to enforce the kill switch without boot persistence.')
    assert name_variable('servers: at least one resolver is required', 'servers', VARIABLES) == \
        'killswitch_dns_servers: at least one resolver is required'


def test_an_unknown_setting_or_none_leaves_the_message_as_it_was():
    assert name_variable('mode: use auto or scutil', 'mode', VARIABLES) == 'mode: use auto or scutil'
    assert name_variable("argument 'persist' is of type str", '', VARIABLES) == "argument 'killswitch_persist' is of type str"


def test_the_controller_validation_names_the_variable_when_given_the_map():
    policy = {'tunnel_interfaces': ['wg0'], 'endpoints': [], 'dns_servers': ['192.0.2.1; rm -rf /']}
    with pytest.raises(AnsibleFilterError, match=r"killswitch_dns_servers\[0\]: '192.0.2.1; rm -rf /'"):
        validate_policy(policy, 'Linux', VARIABLES)
    with pytest.raises(AnsibleFilterError, match=r"no host was changed: dns_servers\[0\]"):
        validate_policy(policy, 'Linux')
    with pytest.raises(AnsibleFilterError, match=r"killswitch_tunnel_interfaces: at least one"):
        validate_policy(dict(policy, tunnel_interfaces=[]), 'Linux', VARIABLES)
