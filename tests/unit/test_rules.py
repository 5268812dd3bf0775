"""The firewall layout of host mode (mt6d_mp/core/rules.py), as Firewall renders and orders it,
without a kernel: the transactions are recorded instead of committed. The gateway layout's
golden test runs against a kernel in tests/netns/test_firewall.py (so does host mode's)."""

from __future__ import annotations

import ipaddress
from typing import Any, ClassVar

import pytest

from mt6d_mp.core import rules as layout
from mt6d_mp.io import firewall

T = "-p ipv6-icmp -m icmp6 --icmpv6-type"
LOCAL, REMOTE, REMOTE2 = "fd00:a::1", "fd00:b::1", "fd00:c::1"


class FakeSets:
    """The kernel's IP sets as a dictionary (mt6d_mp.io.ipset.IpSets' methods the firewall uses)."""

    held: ClassVar[dict[str, set[Any]]] = {}

    def __enter__(self) -> FakeSets:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def create(self, name: str, kind: str) -> None:
        self.held[name] = set()

    def change(self, name: str, add: Any = (), remove: Any = ()) -> None:
        self.held[name] -= set(remove)
        self.held[name] |= set(add)


@pytest.fixture
def fw(monkeypatch: pytest.MonkeyPatch) -> tuple[firewall.Firewall, list[list[str]]]:
    """A host-mode Firewall whose transactions are recorded (their log lines), not applied."""
    done: list[list[str]] = []

    def record(ops: Any, what: str) -> None:
        done.append([op.describe for op in ops])

    monkeypatch.setattr(firewall, "_transaction", record)
    monkeypatch.setattr(firewall, "_cleanup_ops", lambda prefix: [])
    monkeypatch.setattr(firewall, "IpSets", FakeSets)
    FakeSets.held = {}
    f = firewall.Firewall()
    f.setup(9, "", "ext0", host_mode=True)
    return f, done


def stream(name: str, remote: str, queue: int) -> tuple[list[str], list[str]]:
    c = f'-m comment --comment "mt6d:stream:{name}"'
    inputs = [f"-A MT6D-INPUT -s {remote}/128 -d {LOCAL}/128 -i lo {c} -j RETURN",
              f"-A MT6D-INPUT -s {remote}/128 {c} -j MT6D-TRUE"]
    outputs = [f"-A MT6D-OUTPUT -s {LOCAL}/128 -d {remote}/128 {c} -j NFQUEUE --queue-num {queue}",
               f"-A MT6D-OUTPUT -d {remote}/128 {c} -j DROP",
               f"-A MT6D-OUTPUT -s {remote}/128 -d {LOCAL}/128 {c} -j RETURN",
               f"-A MT6D-OUTPUT -s {remote}/128 {c} -j DROP"]
    return inputs, outputs


def test_host_mode_layout(fw: tuple[firewall.Firewall, list[list[str]]]) -> None:
    f, done = fw
    assert f.add_stream("a-b", LOCAL, REMOTE, 2, "")
    assert f.add_stream("a-c", LOCAL, REMOTE2, 3, "")
    f.change_routes([("a-b", 7, "fd00:b::7b", "fd00:a::7a", 1000)])
    (b_in, b_out), (c_in, c_out) = stream("a-b", REMOTE, 2), stream("a-c", REMOTE2, 3)
    ic = '-m comment --comment "mt6d:icmp"'
    routes = [('-A MT6D-INPUT -i ext0 -p udp -m set --match-set mt6d-routes dst,dst,src '
               '-m comment --comment "mt6d:route" -j ACCEPT'),
              '-A MT6D-INPUT -m set --match-set mt6d-hashed dst -m comment --comment "mt6d:route" '
              '-j MT6D-GUARD']
    assert f.rules() == [
        "-N MT6D-GUARD", "-N MT6D-ICMP", "-N MT6D-INPUT", "-N MT6D-OUTPUT", "-N MT6D-TRUE",
        '-A INPUT -m comment --comment "mt6d:jump" -j MT6D-INPUT',
        # every packet the host sends, whatever its interface: the stream's may take any route
        '-A OUTPUT -m comment --comment "mt6d:jump" -j MT6D-OUTPUT',
        *(f'-A MT6D-GUARD {T} {t} -m comment --comment "mt6d:guard" -j RETURN'
          for t in (135, 136, 1, 2, 3, 4)),
        '-A MT6D-GUARD -m comment --comment "mt6d:guard" -j DROP',
        # no router advertisement or solicitation is the ICMP worker's: the host's own stack's
        f"-A MT6D-ICMP {T} 135 {ic} -j RETURN",
        f"-A MT6D-ICMP {T} 136 {ic} -j RETURN",
        *(f"-A MT6D-ICMP -i ext0 {T} {t} {ic} -j NFQUEUE --queue-num 9" for t in (1, 2, 3, 4)),
        f"-A MT6D-ICMP {ic} -j RETURN",
        # the streams' rules before neighbour discovery: nothing from a remote true address
        # arrives from outside, not even a neighbour solicitation
        '-A MT6D-INPUT -i ext0 -m frag -m comment --comment "mt6d:frag" -j DROP',
        # every stream's delivery rule before any stream's drop (see the test below)
        b_in[0], c_in[0], b_in[1], c_in[1],
        *(f'-A MT6D-INPUT {T} {t} -m comment --comment "mt6d:nd" -j MT6D-ICMP'
          for t in range(133, 138)),
        # the routes: members of two sets (the route added above is in them)
        *routes,
        f"-A MT6D-INPUT -p ipv6-icmp {ic} -j MT6D-ICMP",
        # the streams first: the host's echo replies and errors to the remote host are the
        # stream's, and the silence rules only see what leaves by the external interface
        *(rule for pair in zip(b_out, c_out, strict=True) for rule in pair),
        *(f'-A MT6D-OUTPUT -o ext0 {T} {t} -m comment --comment "mt6d:silent" -j DROP'
          for t in (1, 2, 3, 4, 129, 131, 132, 143)),
        '-A MT6D-TRUE -m comment --comment "mt6d:true" -j DROP',
    ]
    # The positions the transactions used agree with the rendering: the second stream's rule i
    # went in after the first stream's rule i (P-INPUT 3 and 5, after frag; P-OUTPUT 2, 4, 6, 8).
    assert [line.split(" rule=")[0] for line in done[2]] == [
        "action=add_rule chain=MT6D-INPUT position=3", "action=add_rule chain=MT6D-INPUT position=5",
        *(f"action=add_rule chain=MT6D-OUTPUT position={p}" for p in (2, 4, 6, 8))]
    # the route is set members, no rule
    a, b = ipaddress.IPv6Address("fd00:a::7a").packed, ipaddress.IPv6Address("fd00:b::7b").packed
    assert len(done) == 3 and FakeSets.held == {"mt6d-routes": {(a, 1000, b)}, "mt6d-hashed": {(a, 0, b"")}}
    assert f.remove_stream("a-b")
    assert [line.split(" rule=")[0] for line in done[3]] == [
        *["action=delete_rule chain=MT6D-INPUT"] * 2,
        *["action=delete_rule chain=MT6D-OUTPUT"] * 4]
    assert FakeSets.held == {"mt6d-routes": set(), "mt6d-hashed": set()}  # its routes went too


def test_host_mode_setup_refuses_an_internal_interface(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(firewall, "_transaction", lambda ops, what: None)
    monkeypatch.setattr(firewall, "IpSets", FakeSets)
    monkeypatch.setattr(firewall, "_cleanup_ops", lambda prefix: [])
    with pytest.raises(layout.FirewallInputError, match="host mode has no internal interface"):
        firewall.Firewall().setup(9, "int0", "ext0", host_mode=True)
    with pytest.raises(layout.FirewallInputError, match="not an interface name"):
        firewall.Firewall().setup(9, "", "ext0")  # a gateway needs one


def test_gateway_layout_unchanged_by_the_positions() -> None:
    fixed = layout.fixed_rules("mt6d", 9, "int0", "ext0")
    assert fixed.input_streams_at == len(fixed.head) == 8  # frag, five ND, two route-set rules
    assert fixed.output_streams_at == len(fixed.chains["MT6D-OUTPUT"]) == 8
    assert fixed.jumps[1].out_if == "ext0"


def test_two_addresses_of_the_host_with_one_remote_host(
    fw: tuple[firewall.Firewall, list[list[str]]],
) -> None:
    """Two streams share the remote host's drops ("-s remote -j P-TRUE", "-d remote -j DROP",
    "-s remote -j DROP"): every stream's queue and delivery rule comes before any of them, or
    the first stream's drop would take the second stream's packets."""
    f, _ = fw
    other = "fd00:a::2"
    f.add_stream("a1-b", LOCAL, REMOTE, 2, "")
    f.add_stream("a2-b", other, REMOTE, 3, "")
    rules = f.rules()

    def at(chain: str, src: str | None, dst: str | None, target: str) -> list[int]:
        return [i for i, line in enumerate(rules) if line.startswith(f"-A {chain} ")
                and (src is None or f"-s {src}/128 " in line)
                and (dst is None or f"-d {dst}/128 " in line) and line.endswith(target)]

    queues = at("MT6D-OUTPUT", None, REMOTE, "--queue-num 2") + at("MT6D-OUTPUT", None, REMOTE,
                                                                     "--queue-num 3")
    to_remote = at("MT6D-OUTPUT", None, REMOTE, "-j DROP")
    from_remote = at("MT6D-OUTPUT", REMOTE, None, "-j DROP")
    returns = at("MT6D-OUTPUT", REMOTE, None, "-j RETURN")
    assert len(queues) == len(returns) == len(to_remote) == len(from_remote) == 2
    assert max(queues) < min(to_remote) and max(returns) < min(from_remote)
    deliveries = at("MT6D-INPUT", REMOTE, None, "-j RETURN")
    guards = at("MT6D-INPUT", REMOTE, None, "-j MT6D-TRUE")
    assert len(deliveries) == 2 and max(deliveries) < min(guards)
