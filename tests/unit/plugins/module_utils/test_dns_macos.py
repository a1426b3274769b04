"""The macOS resolver: the exact scutil input, and reading scutil's output back."""

import ipaddress

from ansible_collections.vpnguard.killswitch.plugins.module_utils import dns_macos

SERVERS = [ipaddress.ip_address('192.0.2.1'), ipaddress.ip_address('2001:db8:ff::1')]


def test_the_scutil_input_that_sets_the_tunnel_resolvers_first():
    assert dns_macos.set_script(dns_macos.desired(SERVERS)) == (
        'd.init\n'
        'd.add SearchOrder # 1\n'
        'd.add ServerAddresses * 192.0.2.1 2001:db8:ff::1\n'
        'd.add SupplementalMatchDomains * ""\n'
        'set State:/Network/Service/vpnguard-killswitch/DNS\n'
        'quit\n')


def test_the_scutil_input_that_removes_it():
    assert dns_macos.remove_script() == 'remove State:/Network/Service/vpnguard-killswitch/DNS\nquit\n'
    assert dns_macos.show_script() == 'show State:/Network/Service/vpnguard-killswitch/DNS\nquit\n'


SHOWN = '''<dictionary> {
  SearchOrder : 1
  ServerAddresses : <array> {
    0 : 192.0.2.1
    1 : 2001:db8:ff::1
  }
  SupplementalMatchDomains : <array> {
    0 :
  }
}
'''


def test_what_scutil_shows_reads_back_as_what_was_set():
    assert dns_macos.parse_show(SHOWN) == dns_macos.desired(SERVERS)
    assert dns_macos.parse_show('  No such key\n') is None
    assert dns_macos.parse_show('') is None


def test_a_previous_dictionary_is_put_back_as_it_was():
    previous = {'ServerAddresses': ['198.51.100.53'], 'DomainName': 'corp.example', 'SearchOrder': '200'}
    script = dns_macos.set_script(previous)
    assert script == ('d.init\nd.add DomainName corp.example\nd.add SearchOrder # 200\n'
                      'd.add ServerAddresses * 198.51.100.53\n'
                      'set State:/Network/Service/vpnguard-killswitch/DNS\nquit\n')


def test_the_boot_daemon_runs_the_boot_script_at_boot_and_every_interval():
    plist = dns_macos.boot_plist()
    assert ('<array>\n\t\t<string>/bin/sh</string>\n\t\t<string>/etc/vpnguard-killswitch/dns.sh</string>\n'
            '\t</array>') in plist
    assert '<key>RunAtLoad</key>\n\t<true/>' in plist
    assert '<key>StartInterval</key>\n\t<integer>30</integer>' in plist


def test_issue12_point5_every_service_gets_the_tunnel_resolvers_and_keeps_the_rest():
    keys = dns_macos.parse_list('  subKey [0] = State:/Network/Service/A1/DNS\n'
                                '  subKey [1] = State:/Network/Service/vpnguard-killswitch/DNS\n'
                                '  subKey [2] = State:/Network/Service/B2/DNS\n')
    assert keys == ['State:/Network/Service/A1/DNS', 'State:/Network/Service/B2/DNS']
    assert dns_macos.override_script(keys[:1], SERVERS) == (
        'get State:/Network/Service/A1/DNS\n'
        'd.add ServerAddresses * 192.0.2.1 2001:db8:ff::1\n'
        'set State:/Network/Service/A1/DNS\n'
        'quit\n')


SCUTIL_DNS = """DNS configuration

resolver #1
  search domain[0] : example.net
  nameserver[0] : 198.51.100.53
  if_index : 6 (en0)
  flags    : Request A records
  reach    : 0x00020002 (Reachable,Directly Reachable Address)

resolver #2
  nameserver[0] : 192.0.2.1
  order    : 1
"""


def test_issue12_point5_the_audit_reads_which_resolver_macos_orders_first():
    assert dns_macos.parse_dns(SCUTIL_DNS) == ['198.51.100.53']
    assert dns_macos.parse_dns('') == []
    assert dns_macos.parse_resolv_conf('#\n# macOS Notice\nnameserver 198.51.100.53\nnameserver 2001:db8::53\n') == [
        '198.51.100.53', '2001:db8::53']
