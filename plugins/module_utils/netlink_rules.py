# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vpnguard maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Policy routing rules over rtnetlink, with the standard library alone.

The routing guard needs three requests (dump, add, delete rules) and a dozen
attributes. A netlink library would cost each run more to import than the
whole module takes to work (fleets run it on every audit), and be one more
package to install on every host.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import socket
import struct

NETLINK_ROUTE = 0
RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x300

# linux/fib_rules.h
FRA_DST = 1
FRA_PRIORITY = 6
FRA_FWMARK = 10
FRA_SUPPRESS_IFGROUP = 13
FRA_SUPPRESS_PREFIXLEN = 14
FRA_TABLE = 15
FRA_FWMASK = 16
FRA_PROTOCOL = 21
FRA_IP_PROTO = 22
FRA_SPORT_RANGE = 23
FRA_DPORT_RANGE = 24

NLMSGHDR = struct.Struct('=IHHII')       # length, type, flags, sequence, port
FIB_RULE_HDR = struct.Struct('=BBBBBBBBI')  # family, dst_len, src_len, tos, table, res1, res2, action, flags
RTATTR = struct.Struct('=HH')            # length, type
U32 = struct.Struct('=I')
PORT_RANGE = struct.Struct('=HH')        # first, last


def _align(length):
    return (length + 3) & ~3


def _attribute(kind, payload):
    return RTATTR.pack(RTATTR.size + len(payload), kind) + payload + b'\0' * (_align(len(payload)) - len(payload))


def _parse_attributes(data):
    attributes = {}
    offset = 0
    while offset + RTATTR.size <= len(data):
        length, kind = RTATTR.unpack_from(data, offset)
        if length < RTATTR.size:
            break
        attributes[kind & 0x3fff] = data[offset + RTATTR.size:offset + length]
        offset += _align(length)
    return attributes


def _parse_rule(family, body):
    _family, dst_len, _src_len, _tos, table, _r1, _r2, action, _flags = FIB_RULE_HDR.unpack_from(body)
    attributes = _parse_attributes(body[FIB_RULE_HDR.size:])

    def u32(kind, default):
        return U32.unpack(attributes[kind][:4])[0] if kind in attributes else default

    def port_range(kind):
        return PORT_RANGE.unpack(attributes[kind][:PORT_RANGE.size]) if kind in attributes else None

    dst = attributes.get(FRA_DST)
    return dict(
        action=action, dst_len=dst_len,
        dst=socket.inet_ntop(family, dst) if dst else None,
        priority=u32(FRA_PRIORITY, 0),
        table=u32(FRA_TABLE, table),
        fwmark=u32(FRA_FWMARK, 0),
        suppress_prefixlen=u32(FRA_SUPPRESS_PREFIXLEN, 0xffffffff),
        suppress_ifgroup=u32(FRA_SUPPRESS_IFGROUP, 0xffffffff),
        protocol=attributes[FRA_PROTOCOL][0] if FRA_PROTOCOL in attributes else 0,
        ip_proto=attributes[FRA_IP_PROTO][0] if FRA_IP_PROTO in attributes else 0,
        sport=port_range(FRA_SPORT_RANGE),
        dport=port_range(FRA_DPORT_RANGE),
    )


class RuleSocket:
    """An rtnetlink socket that dumps, adds and deletes policy routing rules."""

    def __init__(self):
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self._sock.bind((0, 0))
        self._sequence = 0

    def close(self):
        self._sock.close()

    def _send(self, kind, flags, body):
        self._sequence += 1
        self._sock.send(NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, flags, self._sequence, 0) + body)
        return self._sequence

    def _replies(self, sequence):
        """Yield (type, body) of each reply to sequence until the request is done; raise on an error."""
        while True:
            data = self._sock.recv(1 << 20)
            offset = 0
            while offset + NLMSGHDR.size <= len(data):
                length, kind, _flags, seq, _port = NLMSGHDR.unpack_from(data, offset)
                if length < NLMSGHDR.size:
                    raise OSError(errno.EPROTO, 'malformed netlink reply')
                body = data[offset + NLMSGHDR.size:offset + length]
                offset += _align(length)
                if seq != sequence:
                    continue
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from('=i', body)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    return  # the acknowledgement
                yield kind, body

    def rules(self, family):
        """Every policy rule of an address family (socket.AF_INET or AF_INET6), as dicts."""
        sequence = self._send(RTM_GETRULE, NLM_F_REQUEST | NLM_F_DUMP, FIB_RULE_HDR.pack(family, 0, 0, 0, 0, 0, 0, 0, 0))
        return [_parse_rule(family, body) for kind, body in self._replies(sequence) if kind == RTM_NEWRULE]

    def _request(self, kind, flags, family, action, priority, protocol, table=None, dst=None, dst_len=0,
                 fwmark=None, suppress_prefixlen=None, ip_proto=None, sport=None, dport=None,
                 suppress_ifgroup=None):
        # Add and delete both name every attribute the rule has: the kernel
        # deletes the first rule that matches what the request names.
        attributes = [_attribute(FRA_PRIORITY, U32.pack(priority)), _attribute(FRA_PROTOCOL, bytes([protocol]))]
        if table is not None:
            attributes.append(_attribute(FRA_TABLE, U32.pack(table)))
        if dst:
            attributes.append(_attribute(FRA_DST, socket.inet_pton(family, dst)))
        if ip_proto is not None:
            attributes.append(_attribute(FRA_IP_PROTO, bytes([ip_proto])))
        for attribute, port_range in ((FRA_SPORT_RANGE, sport), (FRA_DPORT_RANGE, dport)):
            if port_range is not None:
                attributes.append(_attribute(attribute, PORT_RANGE.pack(*port_range)))
        if fwmark is not None:
            attributes += [_attribute(FRA_FWMARK, U32.pack(fwmark)), _attribute(FRA_FWMASK, U32.pack(0xffffffff))]
        if suppress_prefixlen is not None:
            attributes.append(_attribute(FRA_SUPPRESS_PREFIXLEN, U32.pack(suppress_prefixlen)))
        if suppress_ifgroup is not None:
            attributes.append(_attribute(FRA_SUPPRESS_IFGROUP, U32.pack(suppress_ifgroup)))
        header = FIB_RULE_HDR.pack(family, dst_len if dst else 0, 0, 0, table if table is not None and table < 256 else 0,
                                   0, 0, action, 0)
        for _reply in self._replies(self._send(kind, flags, header + b''.join(attributes))):
            pass

    def add(self, **rule):
        self._request(RTM_NEWRULE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, **rule)

    def delete(self, **rule):
        self._request(RTM_DELRULE, NLM_F_REQUEST | NLM_F_ACK, **rule)
