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


def test_the_boot_daemon_feeds_the_script_to_scutil_without_a_shell():
    plist = dns_macos.boot_plist()
    assert '<array>\n\t\t<string>/usr/sbin/scutil</string>\n\t</array>' in plist
    assert '<key>StandardInPath</key>\n\t<string>/etc/vpnguard-killswitch/dns.scutil</string>' in plist
    assert '<key>RunAtLoad</key>\n\t<true/>' in plist
