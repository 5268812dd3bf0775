"""Root tests of mt6d_mp.io.netlink in namespaces of their own.

``Netlink(netns=NAME)`` opens its rtnetlink socket inside the test's namespace, so the test
process itself never changes the root namespace's addresses, neighbours or routes.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from mt6d_mp.errors import SystemSetupError
from mt6d_mp.io.netlink import PROTO_MT6D, Netlink, NetlinkInputError
from tests import nsutil

pytestmark = pytest.mark.netns


@pytest.fixture
def pair(netns_factory: Callable[[str], str]) -> tuple[str, str]:
    a, b = netns_factory("a"), netns_factory("b")
    nsutil.veth(a, "va", b, "vb")
    return a, b


@pytest.fixture
def nl(pair: tuple[str, str]) -> Iterator[Netlink]:
    with Netlink(netns=pair[0]) as handle:
        yield handle


def pings(ns: str, dst: str) -> bool:
    argv = ["ip", "netns", "exec", ns, "ping", "-6", "-n", "-q", "-c", "1", "-W", "1", dst]
    return subprocess.run(argv, capture_output=True).returncode == 0


def ip6(ns: str, *argv: str) -> str:
    return nsutil.run_in(ns, ["ip", "-6", *argv])


def test_link_facts(pair: tuple[str, str], nl: Netlink) -> None:
    a, _ = pair
    out = nsutil.run_in(a, ["ip", "-o", "link", "show", "dev", "va"])
    mac = out.split("link/ether ")[1].split()[0]
    assert nl.mac("va") == bytes.fromhex(mac.replace(":", ""))
    assert nl.mtu("va") == 1500
    assert nl.ifindex("va") == int(out.split(":")[0])
    with pytest.raises(SystemSetupError, match="no interface"):
        nl.ifindex("nosuchif")
    # DAD is off in the namespace (set before the veth was made): link-local is usable at once.
    lla = nl.link_local("va")
    assert lla is not None and ipaddress.IPv6Address(lla).is_link_local
    assert str(ipaddress.IPv6Address(lla)) in ip6(a, "addr", "show", "dev", "va")


def test_add_remove_address_nodad_noprefixroute(
    pair: tuple[str, str], nl: Netlink, caplog: pytest.LogCaptureFixture
) -> None:
    a, _ = pair
    # The namespace has DAD off for new interfaces; turn it back on for this one, so that
    # only the address's own NODAD flag can keep it from being tentative.
    nsutil.sysctl_in(a, "net.ipv6.conf.all.accept_dad", "1")
    nsutil.sysctl_in(a, "net.ipv6.conf.va.accept_dad", "1")
    caplog.set_level(logging.INFO, logger="mt6d_mp.io.netlink")

    assert nl.add_address("va", "fd00:1::a", 64) is True
    assert nl.add_address("va", ipaddress.IPv6Address("fd00:1::a").packed, 64) is False  # EEXIST
    shown = ip6(a, "addr", "show", "dev", "va")
    line = next(ln for ln in shown.splitlines() if "fd00:1::a/64" in ln)
    assert "tentative" not in line
    assert "nodad" in line and "noprefixroute" in line
    assert "fd00:1::/64" not in ip6(a, "route", "show")  # no prefix route
    nl.wait_address_usable("fd00:1::a", timeout=0.5)
    # Control: the same interface without NODAD does hold an address tentative.
    ip6(a, "addr", "add", "fd00:1::99/128", "dev", "va")
    assert "tentative" in next(
        ln for ln in ip6(a, "addr", "show", "dev", "va").splitlines() if "fd00:1::99/128" in ln
    )
    with pytest.raises(SystemSetupError, match="still tentative"):
        nl.wait_address_usable("fd00:1::99", timeout=0.1)
    ip6(a, "addr", "del", "fd00:1::99/128", "dev", "va")

    # Usable at once: bind() works (a tentative address fails with EADDRNOTAVAIL).
    def bind() -> bool:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("fd00:1::a", 0))
        return True

    assert nsutil.call_in(a, bind) is True

    ours = [a for _, a in nl.owned_addresses()]
    assert [str(x) for x in ours] == ["fd00:1::a/64"]
    assert ours[0].proto == PROTO_MT6D and not ours[0].tentative
    assert [str(x) for x in nl.addresses("va") if not ipaddress.IPv6Address(x.address).is_link_local] == [
        "fd00:1::a/64"
    ]

    assert nl.remove_address("va", "fd00:1::a", 64) is True
    assert nl.remove_address("va", "fd00:1::a", 64) is False
    assert "fd00:1::a" not in ip6(a, "addr", "show", "dev", "va")
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs[0] == ("action=add_address dev=va address=fd00:1::a/64 flags=nodad,noprefixroute proto=109")
    assert "action=remove_address dev=va address=fd00:1::a/64" in msgs


def test_neighbour_permanent(pair: tuple[str, str], nl: Netlink) -> None:
    a, _ = pair
    nl.add_neighbour("va", "fd00:1::b", b"\x02\x00\x00\x00\x00\x0b")
    nl.add_neighbour("va", "fd00:1::b", "02:00:00:00:00:0c")  # replace, still permanent
    shown = ip6(a, "neigh", "show", "dev", "va")
    assert "fd00:1::b lladdr 02:00:00:00:00:0c PERMANENT" in shown
    assert nl.remove_neighbour("va", "fd00:1::b") is True
    assert nl.remove_neighbour("va", "fd00:1::b") is False
    assert "fd00:1::b" not in ip6(a, "neigh", "show", "dev", "va")


def test_host_route_reaches_peer(pair: tuple[str, str], nl: Netlink) -> None:
    a, b = pair
    # Both sides hold a /64 address without a prefix route: nothing is reachable until the
    # /128 host route says where the peer is.
    nl.add_address("va", "fd00:1::a", 64)
    with Netlink(netns=b) as peer:
        peer.add_address("vb", "fd00:1::b", 64)
        peer.add_host_route("vb", "fd00:1::a")
    assert "fd00:1::b" not in ip6(a, "route", "show")
    assert not pings(a, "fd00:1::b")  # no route: "Network unreachable"

    nl.add_host_route("va", "fd00:1::b")
    nl.add_host_route("va", "fd00:1::b")  # replace: idempotent
    assert "fd00:1::b dev va proto 109 metric 1024" in ip6(a, "route", "show")
    assert nl.owned_routes() == [("va", ipaddress.IPv6Address("fd00:1::b").packed, 128)]
    assert pings(a, "fd00:1::b")

    assert nl.remove_host_route("va", "fd00:1::b") is True
    assert nl.remove_host_route("va", "fd00:1::b") is False
    assert "fd00:1::b" not in ip6(a, "route", "show")
    assert nl.owned_routes() == []


def test_bad_inputs(nl: Netlink) -> None:
    for call in (
        lambda: nl.add_address("va", "10.0.0.1"),
        lambda: nl.add_address("va", b"\x00" * 4),
        lambda: nl.add_address("va", "fd00::1", 129),
        lambda: nl.add_neighbour("va", "fd00::1", b"\x00" * 5),
        lambda: nl.add_neighbour("va", "fd00::1", "zz:00:00:00:00:00"),
        lambda: nl.add_host_route("va", "not an address"),
    ):
        with pytest.raises(NetlinkInputError):
            call()


def test_cost_per_address(nl: Netlink) -> None:
    n = 200
    addrs = [f"fd00:2::{i + 1:x}" for i in range(n)]
    t0 = time.perf_counter()
    for addr in addrs:
        nl.add_address("va", addr)
    t1 = time.perf_counter()
    for addr in addrs:
        nl.add_host_route("va", addr)
    t2 = time.perf_counter()
    for addr in addrs:
        nl.remove_host_route("va", addr)
    t3 = time.perf_counter()
    for addr in addrs:
        nl.remove_address("va", addr)
    t4 = time.perf_counter()
    got = {
        "add_address_ms": (t1 - t0) * 1000 / n,
        "add_route_ms": (t2 - t1) * 1000 / n,
        "remove_route_ms": (t3 - t2) * 1000 / n,
        "remove_address_ms": (t4 - t3) * 1000 / n,
    }
    print("netlink timing (200 each):", {k: round(v, 3) for k, v in got.items()})
    assert nl.owned_addresses() == [] and nl.owned_routes() == []


def test_kernel_refusals_carry_the_kernels_reason(pair: tuple[str, str], nl: Netlink) -> None:
    a, _ = pair
    nsutil.run_in(a, ["ip", "link", "add", "vdown", "type", "veth", "peer", "name", "vdown2"])  # down
    with pytest.raises(SystemSetupError, match=r"route fd00:1::c/128 via vdown: .*not up"):
        nl.add_host_route("vdown", "fd00:1::c")
    assert nl.owned_routes() == []
    with pytest.raises(SystemSetupError, match="cannot open rtnetlink"):
        Netlink(netns="mt6d-no-such-namespace")
    with pytest.raises(NetlinkInputError, match="netns"):
        Netlink(netns="../x")


def test_a_stale_reply_is_skipped(nl: Netlink) -> None:
    """A reply to an earlier request that was never read (an interrupted call) is not taken
    for the answer to the next one."""
    from mt6d_mp.io.netlink import NLM_F_DUMP, NLM_F_REQUEST, RTM_GETLINK, linkmsg

    stale = linkmsg()
    stale["header"] = {"type": RTM_GETLINK, "flags": NLM_F_REQUEST | NLM_F_DUMP,
                       "sequence_number": 0xDEAD, "pid": 0}
    stale.encode()
    nl._rtnl.sock.send(stale.data)
    assert nl.mtu("va") == 1500
    assert nl.add_address("va", "fd00:1::d") is True
    assert [str(x) for _, x in nl.owned_addresses()] == ["fd00:1::d/128"]


SUPERVISOR_LIKE = """
import sys
from mt6d_mp.io.netlink import Netlink
assert "pyroute2" not in sys.modules, "the package __init__ stayed loaded"
assert "asyncio" not in sys.modules and "pyroute2.iproute" not in sys.modules
with Netlink() as nl:  # as the supervisor opens it: in its own namespace
    nl.mtu("va"); nl.mac("va"); nl.link_local("va")
    assert nl.add_address("va", "2001:db8:9::1")
    nl.wait_address_usable("2001:db8:9::1")
    nl.add_neighbour("va", "2001:db8:9::2", "02:00:00:00:00:02")
    nl.add_host_route("va", "2001:db8:9::3")
    assert nl.owned_addresses() and nl.owned_routes()
    assert nl.remove_host_route("va", "2001:db8:9::3")
    assert nl.remove_neighbour("va", "2001:db8:9::2")
    assert nl.remove_address("va", "2001:db8:9::1")
print("full package loaded:", "pyroute2" in sys.modules or "pyroute2.ndb" in sys.modules)
assert "asyncio" not in sys.modules, "something on the way loaded asyncio"
import pyroute2  # a later plain import still gets the whole package
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
import mt6d_mp.io.netlink as m
assert ifaddrmsg is m.ifaddrmsg and hasattr(pyroute2, "IPRoute")
print("ok")
"""


def test_supervisor_uses_pyroute2s_messages_without_the_whole_package(pair: tuple[str, str]) -> None:
    """Netlink works in full while pyroute2's package __init__ (all of pyroute2) and its asyncio
    socket layer never load."""
    out = nsutil.run_in(pair[0], [sys.executable, "-c", SUPERVISOR_LIKE])
    assert out.split() == ["full", "package", "loaded:", "False", "ok"]


def test_address_batches(pair: tuple[str, str], nl: Netlink) -> None:
    """Hundreds of addresses in batches (more than one datagram's worth): each one added with
    the single-address flags, those already there counted as not new, then all removed; a
    refusal other than "already there" names the address."""
    a, _ = pair
    addrs = [ipaddress.IPv6Address(f"2001:db8:77::{i:x}").packed for i in range(1, 301)]
    assert nl.add_address("va", addrs[0])
    assert nl.add_addresses("va", addrs) == len(addrs) - 1  # the first was there already
    listed = ip6(a, "addr", "show", "dev", "va")
    for raw in (addrs[0], addrs[150], addrs[-1]):
        line = next(x for x in listed.splitlines() if str(ipaddress.IPv6Address(raw)) + "/128" in x)
        assert "nodad" in line and "noprefixroute" in line and "deprecated" in line, line
    owned = {x.address for ifname, x in nl.owned_addresses() if ifname == "va"}
    assert set(addrs) <= owned
    assert nl.remove_addresses("va", [*addrs, ipaddress.IPv6Address("2001:db8:77::ffff").packed]) == 300
    assert "2001:db8:77::" not in ip6(a, "addr", "show", "dev", "va")
    assert nl.add_addresses("va", []) == nl.remove_addresses("va", []) == 0
    with pytest.raises(SystemSetupError, match="ff02::1"):
        nl.add_addresses("va", [ipaddress.IPv6Address("ff02::1").packed])  # multicast: refused


def test_a_batch_reports_each_refusal_and_applies_the_rest(pair: tuple[str, str],
                                                           nl: Netlink) -> None:
    """Only a batch's last message asks for an ack (docs/KERNEL.md, "Netlink batches"): a
    refusal in the middle, or of the last message, is still reported for that message alone."""
    addrs = [ipaddress.IPv6Address(f"2001:db8:79::{i:x}").packed for i in range(1, 601)]
    assert nl.add_local_routes([addrs[300], addrs[599]]) == 2
    assert nl.add_local_routes(addrs) == 598  # 300 (mid-datagram) and the very last are there
    assert set(nl.owned_local_routes()) == set(addrs)
    gone = [addrs[0], ipaddress.IPv6Address("2001:db8:79::ffff").packed, *addrs[1:256],
            ipaddress.IPv6Address("2001:db8:79::fffe").packed]  # 257 messages, last refused
    assert nl.remove_local_routes(gone) == 256
    assert set(nl.owned_local_routes()) == set(addrs[256:])
    assert nl.remove_local_routes(addrs) == 600 - 256
    assert nl.owned_local_routes() == []


RECEIVE_BUFFERS = """
import socket
from mt6d_mp.io import sockets
a, b = (bytes.fromhex("20010db8007a0000000000000000000" + x) for x in "12")
for kb in (256, 4096):
    s = sockets.route_socket(a, 4000 + kb, b, 5000, kb * 1024)
    print(kb, s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    s.close()
"""


def test_route_sockets_take_the_configured_receive_buffer(pair: tuple[str, str]) -> None:
    """``[tunnel] receive_buffer_kb`` reaches the route socket (the kernel reports twice what
    was set: its bookkeeping is counted in the buffer; docs/KERNEL.md, "Where the tunnel's
    queue stands")."""
    a, _ = pair
    nsutil.run_in(a, ["ip", "-6", "addr", "add", "2001:db8:7a::ffff/64", "dev", "va", "nodad"])
    out = nsutil.run_in(a, [sys.executable, "-c", RECEIVE_BUFFERS])
    assert out.split() == ["256", str(2 * 256 * 1024), "4096", str(2 * 4096 * 1024)], out


TIMESTAMPS = """
import socket, sys, time
from mt6d_mp.io import sockets
from workers.inbound import ANC_BUFFER
a = bytes.fromhex("20010db8007a000000000000000000ff")
rx = sockets.route_socket(a, 4001, a, 4002, timestamps=True)
tx = sockets.route_socket(a, 4002, a, 4001)
plain = sockets.route_socket(a, 4003, a, 4002)
before = time.time()
tx.send(b"x")
tx.sendto(b"y", (str(sockets.sockaddr(a)[0]), 4003))
time.sleep(0.2)
for s in (rx, plain):
    data, anc, flags, src = s.recvmsg(100, ANC_BUFFER)
    after = time.time()
    stamps = [v for level, kind, v in anc if (level, kind) == (sockets.LEVEL_SOCKET, sockets.SO_TIMESTAMPNS)]
    if stamps:
        sec, nsec = sockets.TIMESTAMP.unpack_from(stamps[0])
        print(data.decode(), "stamped", "between" if before <= sec + nsec * 1e-9 <= after else "outside")
    else:
        print(data.decode(), "unstamped")
"""


def test_route_sockets_with_queue_management_get_receive_times(pair: tuple[str, str]) -> None:
    """A route socket made for queue management (``timestamps``) gets each datagram's receive
    time from the kernel as ancillary data that the inbound path's buffer has room for, on the
    same clock as time.time() (between a reading before the send and one after the read); one
    made without gets none."""
    a, _ = pair
    nsutil.run_in(a, ["ip", "-6", "addr", "add", "2001:db8:7a::ff/64", "dev", "va", "nodad"])
    out = nsutil.run_in(a, [sys.executable, "-c", TIMESTAMPS])
    assert out.split() == ["x", "stamped", "between", "y", "unstamped"], out


BIND_AND_READ = """
import socket, sys
from mt6d_mp.io.sockets import IPV6_FREEBIND
addr = sys.argv[1]
plain = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
try:
    plain.bind((addr, 4000))
    print("plain bound")
except OSError as e:
    print("plain refused", e.errno)
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
s.bind((addr, 4000))
s.settimeout(5)
print("ready", flush=True)
print(s.recvfrom(100)[0].decode())
"""


def test_hashed_addresses_as_local_routes(pair: tuple[str, str], nl: Netlink) -> None:
    """Local routes (docs/KERNEL.md, "Hashed addresses as local routes"): hundreds in batches,
    owned by protocol 109, none an address of any interface; a socket binds one only with
    IPV6_FREEBIND, and a datagram to it from the other namespace arrives once the other side
    knows where it is (here a static neighbour entry: the ICMP worker answers solicitations in
    a gateway); all removed again."""
    a, b = pair
    addrs = [ipaddress.IPv6Address(f"2001:db8:78::{i:x}").packed for i in range(1, 301)]
    assert nl.add_local_routes(addrs) == 300
    assert nl.add_local_routes(addrs[:3]) == 0  # already there: not new, no error
    assert set(nl.owned_local_routes()) == set(addrs)
    assert "2001:db8:78::" not in ip6(a, "addr", "show")
    assert "local 2001:db8:78::1 dev lo proto 109" in ip6(a, "route", "show", "table", "local")
    nsutil.run_in(a, ["ip", "-6", "addr", "add", "2001:db8:78::ffff/64", "dev", "va", "nodad"])
    nsutil.run_in(b, ["ip", "-6", "addr", "add", "2001:db8:78::fffe/64", "dev", "vb", "nodad"])
    mac = nsutil.run_in(a, ["ip", "-o", "link", "show", "dev", "va"]).split("link/ether ")[1].split()[0]
    nsutil.run_in(b, ["ip", "-6", "neigh", "replace", "2001:db8:78::7", "lladdr", mac, "dev", "vb"])
    reader = subprocess.Popen(["ip", "netns", "exec", a, sys.executable, "-c", BIND_AND_READ,
                               "2001:db8:78::7"], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout is not None
        assert reader.stdout.readline().strip() == f"plain refused {99}"  # EADDRNOTAVAIL
        assert reader.stdout.readline().strip() == "ready"
        nsutil.run_in(b, [sys.executable, "-c", "import socket; socket.socket(socket.AF_INET6, "
                          "socket.SOCK_DGRAM).sendto(b'hello', ('2001:db8:78::7', 4000))"])
        assert reader.communicate(timeout=10)[0].strip() == "hello"
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert nl.remove_local_routes([*addrs, ipaddress.IPv6Address("2001:db8:78::fffd").packed]) == 300
    assert nl.owned_local_routes() == []


def test_pinned_neighbours_resolve_and_stay_outside_the_table_limit(
    pair: tuple[str, str], nl: Netlink
) -> None:
    """Pinned neighbour entries (docs/KERNEL.md, "Hashed addresses as local routes"): more of
    them than the machine's whole neighbour table may hold (``gc_thresh3``) are all accepted,
    so they are outside its limit; they carry protocol 109; one asked to resolve learns the
    peer's MAC by a real solicitation and answer and stays pinned; all removed again."""
    a, b = pair
    with open("/proc/sys/net/ipv6/neigh/default/gc_thresh3") as f:
        limit = int(f.read())
    count = min(limit + 64, 5000)  # past the limit: ordinary entries would be refused there
    nsutil.run_in(a, ["ip", "-6", "addr", "add", "2001:db8:79::ffff/64", "dev", "va", "nodad"])
    nsutil.run_in(b, ["ip", "-6", "addr", "add", "2001:db8:79::1/64", "dev", "vb", "nodad"])
    addrs = [ipaddress.IPv6Address(f"2001:db8:79::{i + 1:x}").packed for i in range(count)]
    try:
        assert nl.pin_neighbours("va", addrs) == count
        assert nl.pin_neighbours("va", addrs[:2]) == 0  # already there: not new, no error
        assert sorted(nl.owned_neighbours()) == sorted(("va", x) for x in addrs)
        shown = ip6(a, "-d", "neigh", "show", "2001:db8:79::2", "nud", "all")
        assert "extern_learn" in shown and "proto 109" in shown
        nl.resolve_neighbours("va", addrs[:1])  # 2001:db8:79::1 is host b's
        mac = nsutil.run_in(b, ["ip", "-o", "link", "show", "dev", "vb"]).split("link/ether ")[1].split()[0]
        deadline = time.monotonic() + 5
        while mac not in (shown := ip6(a, "neigh", "show", "2001:db8:79::1")):
            assert time.monotonic() < deadline, f"not resolved: {shown!r}"
            time.sleep(0.05)
        assert "extern_learn" in shown
        assert pings(a, "2001:db8:79::1")
    finally:
        removed = nl.unpin_neighbours("va", addrs)
    assert removed == count
    assert nl.resolve_neighbours("va", addrs[:1]) == 0  # its route went: not made again
    assert nl.owned_neighbours() == []
