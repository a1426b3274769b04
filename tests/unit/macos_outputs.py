"""What macOS commands print, as the probe and the counters read it: synthesised in the format of their source.

- `ifconfig -a`: network_cmds ifconfig.tproj/ifconfig.c status() prints "%s: " then
  printb("flags", ...) as flags=HEX<NAMES> and " mtu %d"; af_inet.c "\\tinet %s" with
  " --> %s" on a point-to-point link and " netmask 0x%lx"; af_inet6.c "\\tinet6 %s" (a
  link-local address with %IF), " prefixlen %d " and words such as "autoconf ",
  "tentative ".
- `netstat -rn`: network_cmds netstat.tproj/route.c: "Routing tables", pr_family()'s
  "\\nInternet:" / "\\nInternet6:", pr_rthdr()'s "Destination Gateway Flags Netif Expire"
  header, then a row per route (flag I is RTF_IFSCOPE; 0.0.0.0/1 prints as 0/1).
- `pfctl -a ANCHOR -s labels`: pfctl_show_rules(PFCTL_SHOW_LABELS): per labelled rule
  "%s " then seven %llu: evaluations, packets, bytes, packets in, bytes in, packets out,
  bytes out. A policy rule with a list is several PF rules, each with its own line.
"""

IFCONFIG_A = '''\
lo0: flags=8049<UP,LOOPBACK,RUNNING,MULTICAST> mtu 16384
\toptions=1203<RXCSUM,TXCSUM,TXSTATUS,SW_TIMESTAMP>
\tinet 127.0.0.1 netmask 0xff000000
\tinet6 ::1 prefixlen 128
\tinet6 fe80::1%lo0 prefixlen 64 scopeid 0x1
\tnd6 options=201<PERFORMNUD,DAD>
gif0: flags=8010<POINTOPOINT,MULTICAST> mtu 1280
stf0: flags=0<> mtu 1280
en0: flags=8863<UP,BROADCAST,SMART,RUNNING,SIMPLEX,MULTICAST> mtu 1500
\toptions=6460<TSO4,TSO6,CHANNEL_IO,PARTIAL_CSUM,ZEROINVERT_CSUM>
\tether 3c:22:fb:00:00:01
\tinet6 fe80::1c8a:1d2f:1111:2222%en0 prefixlen 64 secured scopeid 0xb
\tinet 198.18.0.2 netmask 0xffffff00 broadcast 198.18.0.255
\tinet6 2001:db8:1::2 prefixlen 64 autoconf secured
\tinet6 2001:db8:1::99 prefixlen 64 tentative autoconf
\tnd6 options=201<PERFORMNUD,DAD>
\tmedia: autoselect
\tstatus: active
en1: flags=8822<BROADCAST,SMART,SIMPLEX,MULTICAST> mtu 1500
\tether 3c:22:fb:00:00:02
\tstatus: inactive
awdl0: flags=8863<UP,BROADCAST,SMART,RUNNING,SIMPLEX,MULTICAST> mtu 1500
\tether 0e:4a:00:00:00:03
\tinet6 fe80::c4a:ff:fe00:3%awdl0 prefixlen 64 scopeid 0xd
\tstatus: active
pflog0: flags=0<> mtu 33172
utun4: flags=8051<UP,POINTOPOINT,RUNNING,MULTICAST> mtu 1420
\tinet 10.8.0.2 --> 10.8.0.2 netmask 0xff000000
\tinet6 fe80::4%utun4 prefixlen 64 scopeid 0x12
\tnd6 options=201<PERFORMNUD,DAD>
'''

NETSTAT_RN = '''\
Routing tables

Internet:
Destination        Gateway            Flags               Netif Expire
0/1                10.8.0.1           UGSc                utun4
default            198.18.0.1         UGScg                 en0
default            198.18.0.1         UGScIg                en0
10.8.0.1           10.8.0.2           UH                  utun4
127                127.0.0.1          UCS                   lo0
127.0.0.1          127.0.0.1          UH                    lo0
128.0/1            10.8.0.1           UGSc                utun4
198.18.0/24        link#11            UCS                   en0      !

Internet6:
Destination                             Gateway                                 Flags               Netif Expire
default                                 fe80::1%en0                             UGcg                  en0
::1                                     ::1                                     UHL                   lo0
2001:db8:1::/64                         link#11                                 UC                    en0
fe80::%lo0/64                           fe80::1%lo0                             UcI                   lo0
'''

NETSTAT_RN_TUNNEL_ONLY = '''\
Routing tables

Internet:
Destination        Gateway            Flags               Netif Expire
default            10.8.0.1           UGSc                utun4
10.8.0.1           10.8.0.2           UH                  utun4

Internet6:
Destination                             Gateway                                 Flags               Netif Expire
::1                                     ::1                                     UHL                   lo0
'''

# `pfctl -a com.vpnguard.killswitch -s labels` on a Mac whose anchor has two DNS rules (udp, tcp) for one label.
PFCTL_LABELS = '''\
refused_dns_resolver 840 0 0 0 0 0 0
refused_dns_resolver 840 0 0 0 0 0 0
refused_dns_outside 812 3 180 0 0 3 180
refused_dns_outside 809 1 60 0 0 1 60
refused_out_v4 420 12 720 0 0 12 720
refused_out_v6 97 2 152 0 0 2 152
refused_in_v4 25 25 1500 25 1500 0 0
refused_in_v6 0 0 0 0 0 0 0
exception_uid_501 408 7 4200 0 0 7 4200
'''

# What pfctl prints when a flag it does not know of the kernel is set, on stderr; never a label line.
PFCTL_STDERR = 'No ALTQ support in kernel\nALTQ related functions disabled\n'
