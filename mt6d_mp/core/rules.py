"""MT6D's firewall as data: every rule the gateway installs, built by pure functions.

mt6d_mp.io.firewall puts these rules into the kernel (python-iptables) and keeps track of their
positions; this module decides what they are, so that the layout can be read, and tested, in one
place without a kernel. Every rule carries ``-m comment --comment "prefix:OWNER"``.

Layout (``prefix`` is ``tag_prefix``, ``P`` is ``prefix.upper()``, INT and EXT the interfaces)::

    INPUT       position 1: -j P-INPUT                                       "prefix:jump"
    OUTPUT      position 1: -o EXT -j P-OUTPUT                               "prefix:jump"
    P-INPUT     -i EXT -m frag -j DROP                                       "prefix:frag"
                -p ipv6-icmp --icmpv6-type 133..137 -j P-ICMP (five rules)   "prefix:nd"
                the routes, as members of two IP sets (a rotation changes members, not rules)
                  -i EXT -p udp -m set --match-set prefix-routes dst,dst,src -j ACCEPT
                  -m set --match-set prefix-hashed dst -j P-GUARD              "prefix:route"
                per stream, its queue rule                            "prefix:stream:NAME"
                  -s local_true -d remote_true -i INT -m mac --mac-source HOST_MAC -j NFQUEUE
                then per stream, its true-address guard (after every queue rule: streams
                that share a remote host share this rule's match)     "prefix:stream:NAME"
                  -d remote_true -j P-TRUE
                last:         -p ipv6-icmp -j P-ICMP                             "prefix:icmp"
    P-TRUE      RETURN neighbour solicitations/advertisements from INT; DROP the rest: a true
                address bound here answers nobody (Linux would answer it on every interface).
    P-GUARD     RETURN neighbour discovery (135, 136) and ICMPv6 errors (1-4); DROP the rest:
                a hashed address answers nobody but its peer's tunnel packets.
    prefix-routes  hash:ip,port,ip: per route (local_hashed, udp:PORT, remote_hashed)
    prefix-hashed  hash:ip: per route local_hashed
    P-ICMP      RETURN neighbour solicitation/advertisement (135, 136), then NFQUEUE router
                advertisements (134) from the external interface, router solicitations (133) from
                the internal one and errors (1-4) from the external one; RETURN everything else.
    P-OUTPUT    DROP ICMPv6 errors, echo replies and MLD reports               "prefix:silent"
                two rules per stream: -s local_true -j DROP, -s remote_true -j DROP
                                                                       "prefix:stream:NAME"

So nothing the gateway itself sends leaves on the external interface from a true address, and
the gateway never answers a stranger there: no errors, no echo replies, no MLD report that names
a hashed address's solicited-node group before the address is used (docs/SECURITY.md).

Host mode (MT6D on the protected host itself, README "Host mode"; ``LO`` is the loopback
interface, ``local`` the host's own true address, ``remote`` the peer host's)::

    INPUT       position 1: -j P-INPUT                                       "prefix:jump"
    OUTPUT      position 1: -j P-OUTPUT (every packet, whatever its interface) "prefix:jump"
    P-INPUT     -i EXT -m frag -j DROP                                       "prefix:frag"
                per stream, before neighbour discovery                "prefix:stream:NAME"
                  -s remote_true -d local_true -i LO -j RETURN   (the worker's delivery)
                then per stream (after every delivery rule: streams that share a remote host
                share this rule's match)                              "prefix:stream:NAME"
                  -s remote_true -j P-TRUE                       (from anywhere else)
                neighbour discovery, the route rules, the ICMP jump: as in gateway mode
    P-TRUE      DROP: nothing from a remote true address arrives from outside.
    P-GUARD     as in gateway mode.
    P-ICMP      RETURN neighbour solicitation/advertisement, NFQUEUE errors (1-4) from the
                external interface, RETURN everything else (the host's own stack takes its
                router advertisements; it sends its own solicitations).
    P-OUTPUT    first, four rules per stream, each kind for every stream before the next
                kind (as in P-INPUT)                                  "prefix:stream:NAME"
                  -s local_true -d remote_true -j NFQUEUE        (the stream, no bypass)
                  -d remote_true -j DROP                         (from any other source)
                  -s remote_true -d local_true -j RETURN         (the worker's delivery, via LO)
                  -s remote_true -j DROP
                then -o EXT: DROP ICMPv6 errors, echo replies and MLD reports  "prefix:silent"

The host's true address stays an ordinary address of the host (its unprotected traffic uses it);
what must never leave is a packet of a protected stream with a true address: every packet
between the two true addresses is queued in OUTPUT before any other rule sees it (the host's own
echo replies and errors to the remote host too, which the silence rules would otherwise drop),
and nothing else may go to, or come from, the remote true address (docs/SECURITY.md).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import NamedTuple

from mt6d_mp.core.icmp import (
    ICMP6_ECHO_REPLY,
    ICMP6_ERROR_TYPES,
    MLD2_REPORT,
    MLD_DONE,
    MLD_REPORT,
    ND_NEIGHBOR_ADVERT,
    ND_NEIGHBOR_SOLICIT,
    ND_ROUTER_ADVERT,
    ND_ROUTER_SOLICIT,
)
from mt6d_mp.core.packet import IPPROTO_ICMPV6, IPPROTO_UDP, ND_FIRST, ND_LAST
from mt6d_mp.errors import SystemSetupError

HOOK_CHAIN = "INPUT"
OUTPUT_HOOK = "OUTPUT"
LOOPBACK = "lo"  # host mode: the worker delivers the remote host's packets to the local stack here
HOOKS = (HOOK_CHAIN, OUTPUT_HOOK)
ICMP6_ERRORS = tuple(sorted(ICMP6_ERROR_TYPES))  # 1-4, in the order the rules list them
ND_TYPES = tuple(range(ND_FIRST, ND_LAST + 1))
# What the gateway never sends on the external link: errors (about anything: an error is an answer
# to a stranger, and its source would be a hashed or true address), echo replies (to ff02::1 the
# kernel answers from every global address of the interface) and MLD reports, which name the
# solicited-node group, so the low 24 bits, of each address when it is bound, a rotation before
# it is used (docs/KERNEL.md).
SILENT_TYPES = (*ICMP6_ERRORS, ICMP6_ECHO_REPLY, MLD_REPORT, MLD_DONE, MLD2_REPORT)

_PROTO_NAMES = {IPPROTO_UDP: "udp", IPPROTO_ICMPV6: "ipv6-icmp"}

_PREFIX_RE = re.compile(r"[a-z][a-z0-9]{0,7}\Z")
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,100}\Z")
# IFNAMSIZ is 16 including the NUL; ip(8) refuses '/', ':' and whitespace.
_IFNAME_RE = re.compile(r"[^/:\s]{1,15}\Z")
IFNAMSIZ = 16

AddressLike = str | bytes | ipaddress.IPv6Address


class FirewallInputError(SystemSetupError, ValueError):
    """An argument was invalid; raised before anything in the system is touched."""


# --------------------------------------------------------------------------------------------
# Rules as data


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule of the subset MT6D uses, able to render itself as an ``ip6tables -S`` line."""

    chain: str
    comment: str
    target: str  # "NFQUEUE", "RETURN" or a chain name
    src: str | None = None  # "addr/128"
    dst: str | None = None
    in_if: str | None = None
    out_if: str | None = None
    proto: int | None = None
    icmp6_type: int | None = None
    queue: int | None = None
    dport: int | None = None  # -m udp --dport
    mac_source: str | None = None  # -m mac --mac-source: the Ethernet source of the frame
    fragment: bool = False  # -m frag: the packet carries a fragment header (any id)
    match_set: tuple[str, str] | None = None  # -m set --match-set NAME FLAGS

    def text(self) -> str:
        """The rule exactly as ``ip6tables-legacy -S`` prints it."""
        parts = ["-A", self.chain]
        if self.src:
            parts += ["-s", self.src]
        if self.dst:
            parts += ["-d", self.dst]
        if self.in_if:
            parts += ["-i", self.in_if]
        if self.out_if:
            parts += ["-o", self.out_if]
        if self.proto is not None:
            parts += ["-p", _PROTO_NAMES.get(self.proto, str(self.proto))]
        if self.fragment:
            parts += ["-m", "frag"]
        if self.icmp6_type is not None:
            parts += ["-m", "icmp6", "--icmpv6-type", str(self.icmp6_type)]
        if self.dport is not None:
            parts += ["-m", "udp", "--dport", str(self.dport)]
        if self.mac_source is not None:
            parts += ["-m", "mac", "--mac-source", self.mac_source]
        if self.match_set is not None:
            parts += ["-m", "set", "--match-set", *self.match_set]
        parts += ["-m", "comment", "--comment", f'"{self.comment}"', "-j", self.target]
        if self.queue is not None:
            parts += ["--queue-num", str(self.queue)]
        return " ".join(parts)


# --------------------------------------------------------------------------------------------
# Validation (before anything is touched)


def host(addr: AddressLike, what: str) -> str:
    try:
        ip = addr if isinstance(addr, ipaddress.IPv6Address) else ipaddress.IPv6Address(addr)
    except (ipaddress.AddressValueError, ValueError, TypeError) as exc:
        raise FirewallInputError(f"{what}: not an IPv6 address: {addr!r}") from exc
    return f"{ip.compressed}/128"


def queue_number(queue: int, what: str = "queue") -> int:
    if isinstance(queue, bool) or not isinstance(queue, int) or not 0 <= queue <= 65535:
        raise FirewallInputError(f"{what}: expected a queue number 0..65535, got {queue!r}")
    return queue


def port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise FirewallInputError(f"port: expected 1..65535, got {port!r}")
    return port


def name(name: str, what: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise FirewallInputError(f"{what}: expected 1-100 of [A-Za-z0-9._-], got {name!r}")
    return name


def ifname(name: str, what: str) -> str:
    if not isinstance(name, str) or not _IFNAME_RE.match(name):
        raise FirewallInputError(f"{what}: not an interface name: {name!r}")
    return name


_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z")


def mac(mac: str) -> str:
    text = mac.lower() if isinstance(mac, str) else ""
    if not _MAC_RE.match(text):
        raise FirewallInputError(f"local_mac: expected aa:bb:cc:dd:ee:ff, got {mac!r}")
    return text


def prefix(tag_prefix: str) -> str:
    if not isinstance(tag_prefix, str) or not _PREFIX_RE.match(tag_prefix):
        raise FirewallInputError(f"tag_prefix: expected [a-z][a-z0-9]{{0,7}}, got {tag_prefix!r}")
    return tag_prefix




# --------------------------------------------------------------------------------------------
# The layout


class Chains(NamedTuple):
    input: str
    icmp: str
    guard: str
    true: str
    output: str


def chain_names(tag_prefix: str) -> Chains:
    upper = tag_prefix.upper()
    return Chains(*(f"{upper}-{n}" for n in ("INPUT", "ICMP", "GUARD", "TRUE", "OUTPUT")))


class Sets(NamedTuple):
    """The two IP sets the route rules match (mt6d_mp.io.ipset)."""

    routes: str  # hash:ip,port,ip: (local hashed, UDP port, remote hashed) of every route
    hashed: str  # hash:ip: every route's local hashed address


def set_names(tag_prefix: str) -> Sets:
    return Sets(f"{tag_prefix}-routes", f"{tag_prefix}-hashed")


class FixedRules(NamedTuple):
    """What setup installs and no later change touches."""

    jumps: list[Rule]  # INPUT -> P-INPUT, OUTPUT -o EXT -> P-OUTPUT
    head: list[Rule]  # the first rules of P-INPUT: fragments, neighbour discovery
    icmp_jump: Rule  # the last rule of P-INPUT
    chains: dict[str, list[Rule]]  # the whole of P-ICMP, P-GUARD and P-TRUE; P-OUTPUT's fixed rules
    # Where the streams' rules go: before head[input_streams_at] in P-INPUT (after the whole head
    # in gateway mode, after the fragment rule in host mode), and before the fixed rule
    # output_streams_at of P-OUTPUT (after the silence rules; before them in host mode).
    input_streams_at: int = 0
    output_streams_at: int = 0


def fixed_rules(tag_prefix: str, icmp_queue: int, internal_if: str, external_if: str,
                host_mode: bool = False) -> FixedRules:
    """The rules of :data:`Chains` that do not depend on streams or routes (see the layout)."""
    if host_mode:
        return _host_fixed_rules(tag_prefix, icmp_queue, external_if)
    c = chain_names(tag_prefix)
    icmp6 = IPPROTO_ICMPV6

    def tag(kind: str) -> str:
        return f"{tag_prefix}:{kind}"

    def queue_from(ifname_: str, itype: int) -> Rule:
        return Rule(c.icmp, tag("icmp"), "NFQUEUE", in_if=ifname_, proto=icmp6, icmp6_type=itype,
                    queue=icmp_queue)

    icmp_rules = [
        Rule(c.icmp, tag("icmp"), "RETURN", proto=icmp6, icmp6_type=ND_NEIGHBOR_SOLICIT),
        Rule(c.icmp, tag("icmp"), "RETURN", proto=icmp6, icmp6_type=ND_NEIGHBOR_ADVERT),
        queue_from(external_if, ND_ROUTER_ADVERT),
        queue_from(internal_if, ND_ROUTER_SOLICIT),
        *(queue_from(external_if, t) for t in ICMP6_ERRORS),
        Rule(c.icmp, tag("icmp"), "RETURN"),  # explicit: all other ICMPv6 passes untouched
    ]
    # Our hashed addresses answer nothing but the tunnel (WireGuard's silence rule): after each
    # route's accept rule, everything else to its local hashed address jumps here and is dropped,
    # except neighbour discovery (the peer and routers must resolve the address) and ICMPv6
    # errors (they go on to the ICMP chain and worker). Without this the kernel would answer a
    # stranger's TCP SYN with a RST, UDP with port unreachable, and echo requests.
    guard_rules = [
        *(Rule(c.guard, tag("guard"), "RETURN", proto=icmp6, icmp6_type=t)
          for t in (ND_NEIGHBOR_SOLICIT, ND_NEIGHBOR_ADVERT, *ICMP6_ERRORS)),
        Rule(c.guard, tag("guard"), "DROP"),
    ]
    # A remote host's true address is bound on the internal interface only so that the local
    # host's packets to it are local (the stream rule queues them). Linux is a weak host: it
    # would answer for that address on any interface, and route the answer out of whatever
    # interface the route says. So whatever reaches the address without being the stream's
    # (from outside, or from inside with another source or MAC) is dropped here, except the
    # local host's neighbour discovery for it.
    true_rules = [
        *(Rule(c.true, tag("true"), "RETURN", in_if=internal_if, proto=icmp6, icmp6_type=t)
          for t in (ND_NEIGHBOR_SOLICIT, ND_NEIGHBOR_ADVERT)),
        Rule(c.true, tag("true"), "DROP"),
    ]
    # Tunnel packets are never fragmented (PROTOCOL.md 1.5). Fragments from outside are dropped
    # before they reach a socket, so that no reassembly state is ever built for a stranger; this
    # works because none of our rules loads the kernel's IPv6 defragmentation (no -m socket, no
    # conntrack: docs/KERNEL.md). And neighbour discovery never enters a stream: it goes to the
    # ICMP chain before the stream rules can queue a unicast one.
    head = [Rule(c.input, tag("frag"), "DROP", in_if=external_if, fragment=True)]
    head += [Rule(c.input, tag("nd"), c.icmp, proto=icmp6, icmp6_type=t) for t in ND_TYPES]
    # The routes: the peer's tunnel packets are accepted, anything else to a hashed address
    # goes to the guard. Each route is a member of two sets, not a rule: a rotation changes
    # members (mt6d_mp.io.ipset), and the table is committed only when streams come or go.
    # Before the streams' rules: a tunnel packet meets two rules, however many streams.
    sets = set_names(tag_prefix)
    head += [Rule(c.input, tag("route"), "ACCEPT", in_if=external_if, proto=IPPROTO_UDP,
                  match_set=(sets.routes, "dst,dst,src")),
             Rule(c.input, tag("route"), c.guard, match_set=(sets.hashed, "dst"))]
    silent = [Rule(c.output, tag("silent"), "DROP", proto=icmp6, icmp6_type=t)
              for t in SILENT_TYPES]
    jumps = [
        Rule(HOOK_CHAIN, tag("jump"), c.input),
        Rule(OUTPUT_HOOK, tag("jump"), c.output, out_if=external_if),
    ]
    return FixedRules(jumps, head, Rule(c.input, tag("icmp"), c.icmp, proto=icmp6),
                      {c.icmp: icmp_rules, c.guard: guard_rules, c.true: true_rules,
                       c.output: silent}, len(head), len(silent))


def _host_fixed_rules(tag_prefix: str, icmp_queue: int, external_if: str) -> FixedRules:
    """Host mode's fixed rules (the second drawing of the layout above)."""
    gateway = fixed_rules(tag_prefix, icmp_queue, LOOPBACK, external_if)
    c = chain_names(tag_prefix)
    icmp6 = IPPROTO_ICMPV6

    def tag(kind: str) -> str:
        return f"{tag_prefix}:{kind}"

    # The host takes its own router advertisements and sends its own solicitations: only the
    # errors about tunnel packets are the ICMP worker's.
    icmp_rules = [r for r in gateway.chains[c.icmp]
                  if r.icmp6_type not in (ND_ROUTER_ADVERT, ND_ROUTER_SOLICIT)]
    # The host's own true address is an ordinary address here: the silence rules keep the host
    # quiet on the external link, as a gateway is (a hashed address would otherwise answer an
    # echo to ff02::1, and the MLD reports would name the next addresses' groups); they match
    # only there, and come after the streams' rules, which take the host's echo replies and
    # errors to the remote host into the tunnel first.
    silent = [Rule(c.output, tag("silent"), "DROP", out_if=external_if, proto=icmp6, icmp6_type=t)
              for t in SILENT_TYPES]
    jumps = [Rule(HOOK_CHAIN, tag("jump"), c.input), Rule(OUTPUT_HOOK, tag("jump"), c.output)]
    return FixedRules(jumps, gateway.head, gateway.icmp_jump,
                      {c.icmp: icmp_rules, c.guard: gateway.chains[c.guard],
                       c.true: [Rule(c.true, tag("true"), "DROP")], c.output: silent},
                      input_streams_at=1, output_streams_at=0)


def stream_rules(
    tag_prefix: str, stream: str, local: AddressLike, remote: AddressLike, queue: int,
    local_mac: str, internal_if: str,
) -> tuple[tuple[Rule, Rule], tuple[Rule, Rule]]:
    """A stream's two rules in P-INPUT (its queue rule, its true-address guard) and two in
    P-OUTPUT (neither true address leaves as a source); every argument validated first."""
    c = chain_names(tag_prefix)
    tag = f"{tag_prefix}:stream:{name(stream, 'stream')}"
    src, dst = host(local, "local"), host(remote, "remote")
    inputs = (
        Rule(c.input, tag, "NFQUEUE", src=src, dst=dst, in_if=internal_if,
             queue=queue_number(queue), mac_source=mac(local_mac)),
        Rule(c.input, tag, c.true, dst=dst),
    )
    return inputs, (Rule(c.output, tag, "DROP", src=src), Rule(c.output, tag, "DROP", src=dst))


def host_stream_rules(
    tag_prefix: str, stream: str, local: AddressLike, remote: AddressLike, queue: int,
) -> tuple[tuple[Rule, Rule], tuple[Rule, Rule, Rule, Rule]]:
    """Host mode: a stream's two rules in P-INPUT and four in P-OUTPUT (see the layout)."""
    c = chain_names(tag_prefix)
    tag = f"{tag_prefix}:stream:{name(stream, 'stream')}"
    src, dst = host(local, "local"), host(remote, "remote")
    inputs = (
        Rule(c.input, tag, "RETURN", src=dst, dst=src, in_if=LOOPBACK),
        Rule(c.input, tag, c.true, src=dst),
    )
    outputs = (
        Rule(c.output, tag, "NFQUEUE", src=src, dst=dst, queue=queue_number(queue)),
        Rule(c.output, tag, "DROP", dst=dst),
        Rule(c.output, tag, "RETURN", src=dst, dst=src),
        Rule(c.output, tag, "DROP", src=dst),
    )
    return inputs, outputs


def route_members(
    stream: str, epoch: int, remote_hashed: AddressLike, local_hashed: AddressLike,
    udp_port: int, phase: int = 0,
) -> tuple[tuple[bytes, int, bytes], bytes]:
    """A route as members of the two sets (every argument validated first): ``(local hashed,
    port, remote hashed)`` of the routes set, which the accept rule matches as ``dst,dst,src``
    (the peer's tunnel packets, UDP, from outside), and ``local hashed`` of the hashed set,
    whose rule sends everything else to the address to the guard."""
    name(stream, "stream")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise FirewallInputError(f"epoch: expected an integer >= 0, got {epoch!r}")
    if isinstance(phase, bool) or not isinstance(phase, int) or not 0 <= phase <= 255:
        raise FirewallInputError(f"phase: expected an integer 0..255, got {phase!r}")
    remote, local = packed(remote_hashed, "remote_hashed"), packed(local_hashed, "local_hashed")
    return (local, port(udp_port), remote), local


def packed(addr: AddressLike, what: str) -> bytes:
    """The 16 bytes of an IPv6 address (as :func:`host` validates it; bytes of the right length
    are taken as they are: a rotation of a thousand streams gives thousands)."""
    if isinstance(addr, bytes) and len(addr) == 16:
        return addr
    return ipaddress.IPv6Address(host(addr, what).split("/")[0]).packed
