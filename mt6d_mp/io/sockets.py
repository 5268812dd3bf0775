"""The raw sockets workers send with, and the ancillary data they need.

* Tunnel socket: ``AF_INET6/SOCK_RAW/IPPROTO_UDP``. We write the UDP header and payload; the
  kernel builds the IPv6 header, inserts the destination options given as ``IPV6_DSTOPTS``
  ancillary data, takes the source address and interface from ``IPV6_PKTINFO`` (RFC 3542 6.1)
  and fills the UDP checksum because ``IPV6_CHECKSUM`` is set to offset 6 (RFC 3542 3.1; Linux
  also turns a computed 0 into 0xffff for UDP). One socket serves every route and port: a UDP
  socket would need one bind per (address, port).
* Host socket: ``AF_INET6/SOCK_RAW/IPPROTO_RAW``, which implies ``IPV6_HDRINCL``: the restored
  inner packet goes out exactly as given, scatter/gathered from its pieces (thesis figure 3.8).

Raw sockets of a protocol receive a copy of every incoming packet of that protocol; the tunnel
socket never reads, so a classic BPF program that accepts nothing keeps its queue empty.
Packets sent on raw sockets traverse OUTPUT, not FORWARD; MT6D's rules live in INPUT.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import socket
import struct

IPV6_CHECKSUM = 7
IPV6_DSTOPTS = 59
IPV6_PKTINFO = 50
IPV6_HOPLIMIT = 52
IPV6_TCLASS = 67
IPV6_FLOWINFO_SEND = 33
SO_ATTACH_FILTER = 26
SO_SNDBUFFORCE = 32  # missing from Python 3.11's socket module
UDP_CHECKSUM_OFFSET = 6
SEND_BUFFER = 4 * 1024 * 1024

_PKTINFO = struct.Struct("@16sI")  # struct in6_pktinfo
_INT = struct.Struct("@i")

# Ancillary data for every hop limit and traffic class, built once (the outer hop limit copies
# the inner one, the outer traffic class the inner DSCP: see packet.outer_traffic_class).
HOPLIMIT_CMSG = tuple(
    (socket.IPPROTO_IPV6, IPV6_HOPLIMIT, _INT.pack(h)) for h in range(256)
)
TCLASS_CMSG = tuple(
    (socket.IPPROTO_IPV6, IPV6_TCLASS, _INT.pack(t)) for t in range(256)
)


def errno_name(number: int | None) -> str:
    """``errno`` as the lower-case name drop counters use (``emsgsize``), ``error`` if unknown."""
    return errno.errorcode.get(number or 0, "error").lower()


def pktinfo_cmsg(source16: bytes, ifindex: int) -> tuple[int, int, bytes]:
    return (socket.IPPROTO_IPV6, IPV6_PKTINFO, _PKTINFO.pack(source16, ifindex))


def dstopts_cmsg(dstopts: bytes) -> tuple[int, int, bytes]:
    return (socket.IPPROTO_IPV6, IPV6_DSTOPTS, dstopts)


class _SockFilter(ctypes.Structure):
    _fields_ = (("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32))


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter)))


_BPF_RET_K = 0x06
_REJECT_ALL = (_SockFilter * 1)(_SockFilter(_BPF_RET_K, 0, 0, 0))
_REJECT_PROG = _SockFprog(1, ctypes.cast(_REJECT_ALL, ctypes.POINTER(_SockFilter)))


def _reject_all_input(sock: socket.socket) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.setsockopt(sock.fileno(), socket.SOL_SOCKET, SO_ATTACH_FILTER,
                         ctypes.byref(_REJECT_PROG), ctypes.sizeof(_REJECT_PROG))
    if rc != 0:
        raise OSError(ctypes.get_errno(), "SO_ATTACH_FILTER failed")


def big_send_buffer(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SEND_BUFFER)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)


IPV6_FREEBIND = 78  # linux/in6.h: bind (and IPV6_PKTINFO) to an address no interface has


def tunnel_socket() -> socket.socket:
    """The raw UDP socket tunnel packets leave by, each from its route's hashed address
    (IPV6_PKTINFO): a local route's address, bound to no interface, hence IPV6_FREEBIND
    (docs/KERNEL.md, "Hashed addresses as local routes")."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_UDP)
    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_CHECKSUM, UDP_CHECKSUM_OFFSET)
    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
    _reject_all_input(sock)
    big_send_buffer(sock)
    return sock


SIOCGIFMTU = 0x8921  # linux/sockios.h


def interface_mtu(ifindex: int) -> int:
    """The MTU of interface ``ifindex`` in this process's namespace (SIOCGIFMTU)."""
    name = socket.if_indextoname(ifindex)
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        ifreq = fcntl.ioctl(sock.fileno(), SIOCGIFMTU, struct.pack("16si", name.encode(), 0))
    mtu: int = struct.unpack_from("16xi", ifreq)[0]
    return mtu


def host_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
    big_send_buffer(sock)
    return sock


def sockaddr(
    address16: bytes, scope_id: int = 0, flow_label: int = 0
) -> tuple[str, int, int, int]:
    """A sendmsg address for a raw socket (the port must be 0 or the socket's protocol)."""
    return (socket.inet_ntop(socket.AF_INET6, address16), 0, flow_label, scope_id)


IPV6_FLOWLABEL_MGR = 32
_FLOWLABEL_REQ = struct.Struct("!16sI")  # struct in6_flowlabel_req: flr_dst, flr_label, then:
_FLOWLABEL_REST = struct.Struct("=BBHHHI")  # action, share, flags, expires, linger, pad
IPV6_FL_A_GET, IPV6_FL_A_PUT = 0, 1
IPV6_FL_S_ANY = 255
IPV6_FL_F_CREATE = 1


def lease_flow_label(sock: socket.socket, destination16: bytes, label: int) -> None:
    """Take a flow label lease, which Linux requires before a socket may send a non-zero label
    (net/ipv6/ip6_flowlabel.c), and make the socket take labels from sendmsg's address."""
    req = _FLOWLABEL_REQ.pack(destination16, label) + _FLOWLABEL_REST.pack(
        IPV6_FL_A_GET, IPV6_FL_S_ANY, IPV6_FL_F_CREATE, 0, 0, 0)
    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FLOWLABEL_MGR, req)
    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FLOWINFO_SEND, 1)


def release_flow_label(sock: socket.socket, label: int) -> None:
    req = _FLOWLABEL_REQ.pack(bytes(16), label) + _FLOWLABEL_REST.pack(
        IPV6_FL_A_PUT, 0, 0, 0, 0, 0)
    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FLOWLABEL_MGR, req)


ETH_P_IPV6_INT = 0x86DD
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_ALLMULTI = 2
PACKET_IGNORE_OUTGOING = 23
SO_ATTACH_FILTER = 26
# Classic BPF, run on the IPv6 packet (a SOCK_DGRAM packet socket): ICMPv6 (next header 58 at
# offset 6) of type 135 (offset 40, no extension header): a neighbour solicitation.
_NS_FILTER = [
    (0x30, 0, 0, 6),  # ldb [6]
    (0x15, 0, 3, 58),  # jeq #58, else reject
    (0x30, 0, 0, 40),  # ldb [40]
    (0x15, 0, 1, 135),  # jeq #135, else reject
    (0x06, 0, 0, 0xFFFF),  # ret: accept
    (0x06, 0, 0, 0),  # ret: reject
]


def solicitation_socket(ifindex: int) -> socket.socket:
    """A packet socket that reads the neighbour solicitations arriving on ``ifindex``, also
    those to solicited-node groups no address of ours joined (the IP layer drops them), with
    the interface set to take all multicast while the socket is open (a NIC's filter would
    otherwise drop them first). Non-blocking; never sends."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IPV6_INT))
    try:
        program = b"".join(struct.pack("HBBI", *ins) for ins in _NS_FILTER)
        buf = ctypes.create_string_buffer(program)
        fprog = struct.pack("HL", len(_NS_FILTER), ctypes.addressof(buf))
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        with contextlib.suppress(OSError):  # older kernels: our own frames are read too
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP,
                        struct.pack("iHH8s", ifindex, PACKET_MR_ALLMULTI, 0, b""))
        # A peer of a thousand streams solicits a thousand new addresses at once each rotation;
        # the default buffer holds a few hundred frames, and a solicitation dropped here leaves
        # the peer's neighbour entry FAILED and its packets dropped until it asks again.
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SOLICITATION_BUFFER)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOLICITATION_BUFFER)
        sock.bind((socket.if_indextoname(ifindex), ETH_P_IPV6_INT))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def join_group(group16: bytes, ifindex: int) -> socket.socket:
    """A socket that holds membership of an IPv6 multicast group on one interface.

    Membership is the interface's, not the protocol's: while the socket is open the kernel
    accepts every packet to the group there (for example ICMPv6 to ff02::2). The socket itself
    is never read.
    """
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                        group16 + struct.pack("@I", ifindex))
    except OSError:
        sock.close()
        raise
    return sock


# --- a route's UDP socket (the stream worker receives on it, and sends messages' chunks) ---------
SO_RCVBUFFORCE = 33  # missing from Python 3.11's socket module
# A route socket's receive buffer by default (the kernel doubles it for its bookkeeping); set by
# ``[tunnel] receive_buffer_kb``. Under a bulk TCP transfer the tunnel's standing queue is here,
# in the receiving gateway's socket, and whatever shares the stream waits behind it: with 4 MB
# a ping during iperf3 TCP waited about 10 ms and TCP lost nothing; with 256 KB the ping waited
# about 5 ms, and TCP lost datagrams there, retransmitted, and ran a tenth slower
# (docs/KERNEL.md, "Where the tunnel's queue stands"; results/small/queue.md).
RECEIVE_BUFFER = 4 * 1024 * 1024
# The ICMP worker's solicitation socket: a peer of a thousand streams solicits a thousand new
# addresses at once each rotation (docs/KERNEL.md, "Hashed addresses as local routes").
SOLICITATION_BUFFER = 4 * 1024 * 1024
IPV6_DONTFRAG = 62
IPV6_MTU = 24  # getsockopt on a connected socket: the path MTU the kernel knows
SOL_UDP = 17
UDP_SEGMENT = 103  # linux/udp.h: send one buffer as datagrams of this size (UDP GSO)
# Plain ints: the socket module's constants are enums, and enum arithmetic per packet showed up
# as 3 % of a busy worker's time.
TRUNCATED = int(socket.MSG_TRUNC | socket.MSG_CTRUNC)
LEVEL_IPV6 = int(socket.IPPROTO_IPV6)
DSTOPTS = int(socket.IPV6_DSTOPTS)
# The kernel's receive time of each datagram, as ancillary data (struct timespec: two 64-bit
# fields on these machines); missing from Python 3.11's socket module. The route sockets ask
# for it: how long a chunk waited is what the queue management reads (mt6d_mp.core.aqm).
SO_TIMESTAMPNS = 35
LEVEL_SOCKET = int(socket.SOL_SOCKET)
TIMESTAMP = struct.Struct("=qq")
_U16 = struct.Struct("=H")


def route_socket(local16: bytes, port: int, remote16: bytes, remote_port: int,
                 receive_buffer: int = RECEIVE_BUFFER, timestamps: bool = False) -> socket.socket:
    """A non-blocking UDP socket bound to a route's hashed address and port, connected to the
    peer's: only the peer's datagrams are queued on it, the kernel hands over their destination
    options header (RFC 3542 section 4), and with ``timestamps`` their receive time
    (SO_TIMESTAMPNS), and keeps the path MTU toward the peer (IPV6_MTU)."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVDSTOPTS, 1)
        if timestamps:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, receive_buffer)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        big_send_buffer(sock)  # chunks of messages go out on this socket too
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_DONTFRAG, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)  # a local route's address
        sock.bind((sockaddr(local16)[0], port))
        sock.connect((sockaddr(remote16)[0], remote_port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def path_mtu(sock: socket.socket) -> int:
    """The path MTU the kernel knows toward a connected socket's peer, or 0 if it cannot say."""
    try:
        return int(sock.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU))
    except OSError:
        return 0


def fresh_path_mtu(remote16: bytes, port: int) -> int:
    """The path MTU the kernel knows toward ``remote16`` now, by a route lookup of its own: a
    throwaway UDP socket connected there (connecting sends nothing). A route socket's own
    reading can be older: it keeps the route it looked up when it connected, and the kernel's
    later news about the path (a Packet Too Big about a chunk) goes to a new route that socket
    does not look at until it sends again. 0 if it cannot say."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.connect((sockaddr(remote16)[0], port))
            return int(sock.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU))
    except OSError:
        return 0


def set_message_options(sock: socket.socket, dstopts: bytes, hop_limit: int, tclass: int) -> None:
    """Options, hop limit and traffic class of the datagrams a route socket sends next, as socket
    options rather than ancillary data: with IPv6 ancillary data the kernel treats a connected
    socket as unconnected and keeps no route for it, and IPV6_MTU needs that route."""
    sock.setsockopt(socket.IPPROTO_IPV6, DSTOPTS, dstopts)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, hop_limit)
    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TCLASS, tclass)


def udp_gso_cmsg(segment: int) -> tuple[int, int, bytes]:
    """Ancillary data that makes one sendmsg go out as datagrams of ``segment`` bytes."""
    return (SOL_UDP, UDP_SEGMENT, _U16.pack(segment))


# --- the packet socket to the host (frames with a virtio-net header) -----------------------------
SOL_PACKET = 263
PACKET_VNET_HDR = 15
SIOCGIFHWADDR = 0x8927
# struct virtio_net_hdr (linux/virtio_net.h), little endian on a packet socket on x86: flags,
# gso_type, hdr_len, gso_size, csum_start, csum_offset.
VNET_HDR = struct.Struct("<BBHHHH")
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_TCPV6 = 4
ETH_HLEN = 14
ETH_P_IPV6 = b"\x86\xdd"
CSUM_START = ETH_HLEN + 40  # where the TCP or UDP header starts in the frame (no extension headers)
TCP_CSUM_OFF, UDP_CSUM_OFF = 16, 6  # the checksum field in the transport header
# The virtio-net header of a single packet: a checksum to complete (CHECKSUM_PARTIAL, as a NIC
# driver hands it over), or nothing to do.
VNET_CSUM_TCP = VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, CSUM_START, TCP_CSUM_OFF)
VNET_CSUM_UDP = VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, CSUM_START, UDP_CSUM_OFF)
VNET_PLAIN = VNET_HDR.pack(0, 0, 0, 0, 0, 0)


def vnet_tcp_gso(tcp_header_len: int, mss: int) -> bytes:
    """The virtio-net header of a TCP super-packet: the kernel cuts it into ``mss`` segments
    (if the link needs it) and completes their checksums."""
    return VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV6,
                         CSUM_START + tcp_header_len, mss, CSUM_START, TCP_CSUM_OFF)


def link_socket(ifindex: int) -> tuple[socket.socket, bytes]:
    """A packet socket on interface ``ifindex`` that takes a virtio-net header before each frame
    and reads nothing (protocol 0), and the interface's MAC address."""
    name = socket.if_indextoname(ifindex)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        sock.bind((name, 0))
        ifreq = fcntl.ioctl(sock.fileno(), SIOCGIFHWADDR, struct.pack("256s", name.encode()))
    except OSError:
        sock.close()
        raise
    return sock, ifreq[18:24]
