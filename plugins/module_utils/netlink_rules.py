# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vpnguard maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Policy routing rules, links and XFRM policies over netlink, with the standard library alone.

The routing guard needs three requests (dump, add, delete rules) and a dozen
attributes; the module also reads every interface's group (a link dump) and
the kernel's IPsec policies (an XFRM policy dump). A netlink library would
cost each run more to import than the whole module takes to work (fleets run
it on every audit), and be one more package to install on every host; so
would running ip(8), twice, on every apply.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import socket
import struct

NETLINK_ROUTE, NETLINK_XFRM = 0, 6
RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x300
ADD_FLAGS = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL  # what must not be there yet
DELETE_FLAGS = NLM_F_REQUEST | NLM_F_ACK

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

# linux/rtnetlink.h: routes
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_MULTIPATH = 9
RTA_TABLE = 15
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253

# linux/if_link.h
IFLA_IFNAME = 3
IFLA_GROUP = 27
IFLA_EXT_MASK = 29
RTEXT_FILTER_SKIP_STATS = 1 << 3  # a link dump without counters is a fraction of the size

# linux/xfrm.h
XFRM_MSG_NEWPOLICY, XFRM_MSG_GETPOLICY = 19, 21
XFRMA_TMPL = 5
XFRMA_MARK = 21
XFRMA_IF_ID = 31
XFRM_POLICY_IN, XFRM_POLICY_OUT, XFRM_POLICY_FWD = 0, 1, 2
XFRM_POLICY_ALLOW = 0

NLMSGHDR = struct.Struct('=IHHII')       # length, type, flags, sequence, port
FIB_RULE_HDR = struct.Struct('=BBBBBBBBI')  # family, dst_len, src_len, tos, table, res1, res2, action, flags
RTMSG = struct.Struct('=BBBBBBBBI')      # family, dst_len, src_len, tos, table, protocol, scope, type, flags
RTATTR = struct.Struct('=HH')            # length, type
U32 = struct.Struct('=I')
PORT_RANGE = struct.Struct('=HH')        # first, last
IFINFOMSG = struct.Struct('=BxHiII')     # family, type, index, flags, change
# struct xfrm_userpolicy_info: the selector (addresses, ports, family, prefix
# lengths, protocol, ifindex, user), lifetimes, priority, index, dir, action.
XFRM_SELECTOR = struct.Struct('=16s16sHHHHHBBB3xiI')
XFRM_USERPOLICY_INFO = struct.Struct('=%ds64s32sIIBBBB4x' % XFRM_SELECTOR.size)
XFRM_USERPOLICY_ID = struct.Struct('=%dsIB3x' % XFRM_SELECTOR.size)


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


class NetlinkSocket:
    """A netlink socket of one family that sends requests and reads their replies."""

    def __init__(self, family):
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, family)
        self._sock.bind((0, 0))
        self._sequence = 0

    def close(self):
        self._sock.close()

    def _send(self, kind, flags, body):
        self._sequence += 1
        self._sock.send(NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, flags, self._sequence, 0) + body)
        return self._sequence

    def _acknowledged(self, kind, flags, body):
        """Send a request that changes something and wait for the kernel's acknowledgement (or raise)."""
        for _reply in self._replies(self._send(kind, flags, body)):
            pass

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


class RuleSocket(NetlinkSocket):
    """An rtnetlink socket that dumps, adds and deletes policy routing rules, and dumps links."""

    def __init__(self):
        NetlinkSocket.__init__(self, NETLINK_ROUTE)

    def links(self):
        """{index: (name, group)} of every interface, from one link dump."""
        request = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attribute(
            IFLA_EXT_MASK, U32.pack(RTEXT_FILTER_SKIP_STATS))
        links = {}
        for kind, body in self._replies(self._send(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, request)):
            attributes = _parse_attributes(body[IFINFOMSG.size:]) if kind == RTM_NEWLINK else {}
            if IFLA_IFNAME in attributes:
                name = attributes[IFLA_IFNAME].split(b'\0', 1)[0].decode('utf-8', 'replace')
                group = U32.unpack(attributes[IFLA_GROUP][:4])[0] if IFLA_GROUP in attributes else 0
                links[IFINFOMSG.unpack_from(body)[2]] = (name, group)
        return links

    def link_groups(self):
        """{name: group} of every interface, as `ip -o -N link show` lists them."""
        return dict(self.links().values())

    def routes(self, family, tables):
        """{table: its unicast routes} for each of tables, from one dump, as dicts (dst, dst_len, gateway, oif,
        metric, protocol, multipath)."""
        sequence = self._send(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0))
        routes = dict((table, []) for table in tables)
        for kind, body in self._replies(sequence):
            if kind != RTM_NEWROUTE:
                continue
            _family, dst_len, _src_len, _tos, header_table, protocol, _scope, kind_, _flags = RTMSG.unpack_from(body)
            attributes = _parse_attributes(body[RTMSG.size:])
            route_table = U32.unpack(attributes[RTA_TABLE][:4])[0] if RTA_TABLE in attributes else header_table
            if route_table not in routes or kind_ != RTN_UNICAST:
                continue
            dst, gateway = attributes.get(RTA_DST), attributes.get(RTA_GATEWAY)
            routes[route_table].append(dict(
                dst=socket.inet_ntop(family, dst) if dst else None, dst_len=dst_len,
                gateway=socket.inet_ntop(family, gateway) if gateway else None,
                oif=U32.unpack(attributes[RTA_OIF][:4])[0] if RTA_OIF in attributes else 0,
                metric=U32.unpack(attributes[RTA_PRIORITY][:4])[0] if RTA_PRIORITY in attributes else 0,
                protocol=protocol, multipath=RTA_MULTIPATH in attributes))
        return routes

    def _default_route(self, kind, flags, family, table, protocol, oif, gateway=None):
        scope = RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK
        header = RTMSG.pack(family, 0, 0, 0, table if table < 256 else 0, protocol, scope, RTN_UNICAST, 0)
        attributes = [_attribute(RTA_TABLE, U32.pack(table)), _attribute(RTA_OIF, U32.pack(oif))]
        if gateway:
            attributes.append(_attribute(RTA_GATEWAY, socket.inet_pton(family, gateway)))
        self._acknowledged(kind, flags, header + b''.join(attributes))

    def add_default_route(self, **route):
        """Add a default route (family, table, protocol, oif, gateway) that must not be there yet."""
        self._default_route(RTM_NEWROUTE, ADD_FLAGS, **route)

    def delete_default_route(self, **route):
        self._default_route(RTM_DELROUTE, DELETE_FLAGS, **route)

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
        self._acknowledged(kind, flags, header + b''.join(attributes))

    def add(self, **rule):
        self._request(RTM_NEWRULE, ADD_FLAGS, **rule)

    def delete(self, **rule):
        self._request(RTM_DELRULE, DELETE_FLAGS, **rule)


def _prefix(family, raw, length):
    address = socket.inet_ntop(family, raw[:4] if family == socket.AF_INET else raw)
    return '%s/%d' % (address, length)


def _parse_policy(body):
    info = XFRM_USERPOLICY_INFO.unpack_from(body)
    (daddr, saddr, _dport, _dport_mask, _sport, _sport_mask, family, prefixlen_d, prefixlen_s, proto,
     _ifindex, _user) = XFRM_SELECTOR.unpack(info[0])
    _sel, _lft, _curlft, priority, index, direction, action, _flags, _share = info
    attributes = _parse_attributes(body[XFRM_USERPOLICY_INFO.size:])
    if_id = U32.unpack(attributes[XFRMA_IF_ID][:4])[0] if XFRMA_IF_ID in attributes else 0
    known = family in (socket.AF_INET, socket.AF_INET6)
    return dict(
        src=_prefix(family, saddr, prefixlen_s) if known else None,
        dst=_prefix(family, daddr, prefixlen_d) if known else None,
        proto=proto, priority=priority, index=index, dir=direction, action=action,
        # Packets only take a policy through a template: one without is a bypass or a block.
        templates=XFRMA_TMPL in attributes, if_id=if_id, marked=XFRMA_MARK in attributes)


class XfrmSocket(NetlinkSocket):
    """A NETLINK_XFRM socket that dumps the kernel's IPsec policies."""

    def __init__(self):
        NetlinkSocket.__init__(self, NETLINK_XFRM)

    def policies(self):
        """Every XFRM policy of the namespace as dicts (src, dst, dir, action, templates, if_id...).

        Sockets' own policies (an IKE daemon's bypass) are not in the dump:
        the kernel's policy walk skips them.
        """
        request = XFRM_USERPOLICY_ID.pack(b'\0' * XFRM_SELECTOR.size, 0, 0)
        return [_parse_policy(body)
                for kind, body in self._replies(self._send(XFRM_MSG_GETPOLICY, NLM_F_REQUEST | NLM_F_DUMP, request))
                if kind == XFRM_MSG_NEWPOLICY]
