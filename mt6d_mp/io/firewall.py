"""MT6D's firewall state in the kernel: its own chains in the ip6tables *legacy* filter table.

This is the only module that imports ``iptc`` (python-iptables). What the rules are is decided in
mt6d_mp/core/rules.py (the layout is drawn there); this module puts them into the kernel, keeps
their positions, reads them back and removes them. The flow: ``to_iptc`` and ``_read_rule``
translate a rule each way; a transaction applies operations to a fresh snapshot of the table and
commits it whole, under the xtables lock, retried on EAGAIN; ``cleanup`` removes an earlier run's
state by owner tag; :class:`Firewall` is one supervisor's chains, in order. About 650 lines in
one module on purpose: the iptc calls stay in one file (tests/unit/test_layering.py).

python-iptables drives libip6tc, which reads and replaces the whole legacy table through
``IP6T_SO_GET_ENTRIES`` / ``IP6T_SO_SET_REPLACE`` socket options; ``ip6tables-legacy -S`` shows
the result, while Debian 12's ``ip6tables`` (the nft variant) shows nothing of it.

Every rule carries ``-m comment --comment "prefix:OWNER"`` naming its owner, so that leftovers of
a killed run can be found and removed by owner, never by guesswork (the wg-quick idea).

Fail closed, on purpose: no rule uses ``--queue-bypass``. When no process is bound to a queue the
kernel drops the packets queued to it (``nf_queue()`` finds no listener and, without
``NFQ_FLAG_BYPASS``, the verdict is NF_DROP). A dead worker therefore stops its traffic instead of
letting true addresses leak onto the wire unhidden. Tunnel packets are received on UDP sockets
bound per route; while no such socket exists the kernel's Port Unreachable is dropped by
``P-OUTPUT``, so a dead worker's peer gets no answer.

Every change is a transaction: refresh the table (a fresh snapshot), apply the operations to the
snapshot, ``commit()`` the whole table at once. The kernel refuses the replacement with EAGAIN when
the table changed since the snapshot (``__do_replace()`` in net/ipv6/netfilter/ip6_tables.c compares
rule counts); python-iptables reports it as "can't commit: Resource temporarily unavailable"
(ldx/python-iptables#121, #293). We then take a new snapshot and apply the operations again, a few
times. While a transaction runs we also hold the xtables lock file that ``ip6tables-legacy`` takes,
so that the two do not race in the first place.

The table handle belongs to the network namespace of the calling process *at refresh time*
(libip6tc opens its socket in ``iptc_init()``); since every transaction refreshes first, a
``Firewall`` follows the namespace of the process using it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import ipaddress
import logging
import os
import struct
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mt6d_mp.core import rules as layout
from mt6d_mp.core.packet import IPPROTO_ICMPV6, IPPROTO_UDP
from mt6d_mp.core.rules import (
    _PROTO_NAMES,
    HOOKS,
    IFNAMSIZ,
    AddressLike,
    FirewallInputError,
    Rule,
)
from mt6d_mp.errors import SystemSetupError
from mt6d_mp.io.ipset import IpSets, Member

__all__ = ["Firewall", "FirewallInputError", "Rule", "cleanup", "installed", "leftovers", "to_iptc"]


def _import_iptc() -> Any:
    """Import python-iptables without dragging setuptools in.

    iptc.util does ``from distutils.sysconfig import get_python_lib``. In a virtual environment
    with setuptools, setuptools' ``_distutils_hack`` answers that import by importing setuptools
    and pkg_resources: 16 MB of private memory and 90 ms for every supervisor (measured with
    /proc/self/smaps_rollup and ``python -X importtime``). With the hack's finder set aside for
    this one import, Python 3.11 takes its own small distutils; on Python 3.12+, which has none,
    iptc falls back to sysconfig by itself.
    """
    hacks = [f for f in sys.meta_path if type(f).__module__ == "_distutils_hack"]
    for finder in hacks:
        sys.meta_path.remove(finder)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # stdlib distutils, 3.11
            import iptc as module
    finally:
        sys.meta_path[0:0] = hacks
    return module


if TYPE_CHECKING:
    import iptc
else:
    iptc = _import_iptc()

log = logging.getLogger(__name__)

TABLE = "filter"

COMMIT_ATTEMPTS = 5
COMMIT_BACKOFF_S = 0.02
LOCK_TIMEOUT_S = 5.0
# The lock file iptables-legacy uses (xshared.c); iptables >= 1.8.5 honours the same variable.
XTABLES_LOCKFILE = os.environ.get("XTABLES_LOCKFILE", "/run/xtables.lock")

# python-iptables' spelling of protocols when reading rules back.
_IPTC_PROTO = {
    "ip": None,
    "all": None,
    "udp": IPPROTO_UDP,
    "icmpv6": IPPROTO_ICMPV6,
    "ipv6-icmp": IPPROTO_ICMPV6,
}


# --------------------------------------------------------------------------------------------
# Rules into and out of python-iptables


def to_iptc(self: Rule) -> iptc.Rule6:
    """The rule as python-iptables builds it (interface masks mended, see _iface_mask)."""
    rule = iptc.Rule6()
    if self.src:
        rule.src = self.src
    if self.dst:
        rule.dst = self.dst
    if self.in_if:
        rule.in_interface = self.in_if
        rule.entry.ipv6.iniface_mask = _iface_mask(self.in_if)
    if self.out_if:
        rule.out_interface = self.out_if
        rule.entry.ipv6.outiface_mask = _iface_mask(self.out_if)
    if self.proto is not None:
        # python-iptables knows few protocol names ("ipv6-icmp" is not one); numbers work.
        rule.protocol = str(self.proto)
    if self.fragment:
        rule.create_match("frag")  # its init sets the id range to all: any fragment header
    if self.icmp6_type is not None:
        match = rule.create_match("icmp6")
        match.icmpv6_type = str(self.icmp6_type)
    if self.dport is not None:
        rule.create_match("udp").dport = str(self.dport)
    if self.mac_source is not None:
        rule.create_match("mac").mac_source = self.mac_source
    if self.match_set is not None:
        rule.create_match("set").match_set = list(self.match_set)
    rule.create_match("comment").comment = self.comment
    target = rule.create_target(self.target)
    if self.queue is not None:
        target.queue_num = str(self.queue)
    return rule


def _iface_mask(name: str) -> bytes:
    """The interface mask ip6tables itself writes: 0xff over the name and its NUL.

    python-iptables 1.2.0's Rule6 writes 0x01 bytes instead (ldx/python-iptables#244, open), so
    the kernel compares only the lowest bit of each character: its ``-i int0`` also matched
    ``ext0``, and a rule meant for the internal link took packets from outside
    (docs/KERNEL.md). Its IPv4 Rule writes 0xff.
    """
    n = len(name) + 1
    return b"\xff" * n + b"\x00" * (IFNAMSIZ - n)


def _read_rule(chain: str, rule: iptc.Rule6) -> str:
    """Render a rule read from the kernel in ``ip6tables -S`` syntax (the subset MT6D uses)."""
    parts = ["-A", chain]
    if rule.src and rule.src != "::/0":
        parts += ["-s", rule.src]
    if rule.dst and rule.dst != "::/0":
        parts += ["-d", rule.dst]
    if rule.in_interface:
        parts += ["-i", rule.in_interface]
    if rule.out_interface:
        parts += ["-o", rule.out_interface]
    proto = _IPTC_PROTO.get(rule.protocol, rule.protocol)
    if proto is not None:
        parts += ["-p", _PROTO_NAMES.get(proto, str(proto)) if isinstance(proto, int) else proto]
    for match in rule.matches:
        if match.name == "icmp6":
            parts += ["-m", "icmp6", "--icmpv6-type", str(match.icmpv6_type)]
        elif match.name == "udp" and match.dport:
            parts += ["-m", "udp", "--dport", str(match.dport)]
        elif match.name == "mac":
            parts += ["-m", "mac", "--mac-source", str(match.mac_source).lower()]
        elif match.name == "set":
            parts += ["-m", "set", "--match-set", *match.get_all_parameters().get("match-set", [])]
        elif match.name == "comment":
            parts += ["-m", "comment", "--comment", f'"{match.comment}"']
        else:
            parts += ["-m", str(match.name)]
    name = rule.target.name if rule.target is not None else ""
    if name:
        parts += ["-j", name]
        if name == "NFQUEUE":
            parts += ["--queue-num", str(rule.target.queue_num)]
    return " ".join(parts)


def _comment_of(rule: iptc.Rule6) -> str | None:
    for match in rule.matches:
        if match.name == "comment":
            return str(match.comment)
    return None


# struct xt_entry_match's header (linux/netfilter/x_tables.h): match_size, name[29], revision;
# the match's own data follows (the comment match's: char comment[256]).
_MATCH_HEADER = struct.Struct("=H29sB")


def _rule_summaries(table: iptc.Table6, chain: str) -> Iterator[tuple[str | None, str, int]]:
    """``(comment, target name, packets)`` of every rule of ``chain``, read from libip6tc's
    entries (struct ip6t_entry and its matches) as they are.

    python-iptables' ``Chain.rules`` builds a Rule with Match and Target objects for every
    rule and asks each match to print itself: some 2.5 ms a rule, so 10 s for the 4000 rules
    of a thousand streams, while the status that asked held up the supervisor's loop."""
    entry_size = ctypes.sizeof(iptc.ip6tc.ip6t_entry)
    entry = table.first_rule(chain)
    while entry:
        raw = ctypes.string_at(ctypes.addressof(entry), int(entry.next_offset))
        comment, at, end = None, entry_size, int(entry.target_offset)
        while at + _MATCH_HEADER.size <= end:
            size, name, _revision = _MATCH_HEADER.unpack_from(raw, at)
            if size < _MATCH_HEADER.size:
                break
            if name.split(b"\0", 1)[0] == b"comment":
                data = raw[at + _MATCH_HEADER.size:at + size]
                comment = data.split(b"\0", 1)[0].decode(errors="replace")
            at += size
        target = table.get_target(entry)
        yield comment, (target or b"").decode(), int(entry.counters.pcnt)
        entry = table.next_rule(entry)


# --------------------------------------------------------------------------------------------
# Transactions


@dataclass(frozen=True, slots=True)
class _Op:
    """One change to the table: how to log it, and how to apply it to a fresh snapshot."""

    describe: str  # key=value fields for the log line
    apply: Callable[[iptc.Table6], None]


def _table() -> iptc.Table6:
    # Table6 objects are per-process singletons; autocommit off so that a transaction is one commit.
    return iptc.Table6(iptc.Table6.FILTER, autocommit=False)


@contextlib.contextmanager
def _xtables_lock() -> Iterator[None]:
    """Hold the lock ``ip6tables-legacy`` holds while it replaces a table (flock on the file)."""
    try:
        fd = os.open(XTABLES_LOCKFILE, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError:
        # No lock file possible (read-only /run): we still have the EAGAIN retry.
        yield
        return
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SystemSetupError(
                        f"firewall: {XTABLES_LOCKFILE} held by another process for "
                        f"{LOCK_TIMEOUT_S}s"
                    ) from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _is_eagain(exc: iptc.IPTCError) -> bool:
    return os.strerror(errno.EAGAIN) in str(exc)


def _transaction(ops: Sequence[_Op], what: str) -> None:
    """Apply ``ops`` to a fresh snapshot of the filter table and commit them as one replacement.

    One INFO line per operation is logged before the commit that makes it real; a retry after
    EAGAIN applies the same operations to a newer snapshot and logs one WARNING.
    """
    if not ops:
        return
    for op in ops:
        log.info("%s", op.describe)
    table = _table()
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        with _xtables_lock():
            try:
                # refresh() with autocommit off frees the old handle without committing: any
                # half-applied operations of an earlier failed transaction are discarded here.
                table.refresh()
                for op in ops:
                    op.apply(table)
                table.commit()
                return
            except iptc.IPTCError as exc:
                if not _is_eagain(exc) or attempt == COMMIT_ATTEMPTS:
                    with contextlib.suppress(iptc.IPTCError):
                        table.refresh()  # drop the pending changes
                    raise SystemSetupError(f"firewall: {what} failed: {exc}") from exc
                log.warning(
                    "action=retry_commit what=%s attempt=%d reason=EAGAIN", what, attempt + 1
                )
        time.sleep(COMMIT_BACKOFF_S * attempt)


def _op_new_chain(name: str) -> _Op:
    def apply(table: iptc.Table6) -> None:
        table.create_chain(name)

    return _Op(f"action=new_chain chain={name}", apply)


def _op_flush_chain(name: str) -> _Op:
    return _Op(f"action=flush_chain chain={name}", lambda t: t.flush_entries(name))


def _op_delete_chain(name: str) -> _Op:
    return _Op(f"action=delete_chain chain={name}", lambda t: t.delete_chain(name))


def _op_insert(rule: Rule, position: int) -> _Op:
    def apply(table: iptc.Table6) -> None:
        iptc.Chain(table, rule.chain).insert_rule(to_iptc(rule), position)

    return _Op(
        f'action=add_rule chain={rule.chain} position={position + 1} rule="{rule.text()}"', apply
    )


def _op_append(rule: Rule) -> _Op:
    def apply(table: iptc.Table6) -> None:
        iptc.Chain(table, rule.chain).append_rule(to_iptc(rule))

    return _Op(f'action=add_rule chain={rule.chain} rule="{rule.text()}"', apply)


def _op_delete(rule: Rule) -> _Op:
    def apply(table: iptc.Table6) -> None:
        # libip6tc finds the rule by comparing the whole entry (matches and target included).
        iptc.Chain(table, rule.chain).delete_rule(to_iptc(rule))

    return _Op(f'action=delete_rule chain={rule.chain} rule="{rule.text()}"', apply)


# --------------------------------------------------------------------------------------------
# Leftovers of earlier runs


def _is_our_jump(rule: iptc.Rule6, tag_prefix: str) -> bool:
    """A rule in a hook chain is ours if its comment names our prefix or it jumps to one of our
    chains."""
    comment = _comment_of(rule) or ""
    target = rule.target.name if rule.target is not None else ""
    return comment.startswith(f"{tag_prefix}:") or target.startswith(f"{tag_prefix.upper()}-")


def _our_chains(table: iptc.Table6, tag_prefix: str) -> list[str]:
    upper = f"{tag_prefix.upper()}-"
    return sorted(c.name for c in table.chains if c.name.startswith(upper))


def installed(tag_prefix: str = "mt6d") -> list[str]:
    """What the kernel holds of ``tag_prefix``'s state, in ``ip6tables -S`` syntax.

    The ``-N`` lines of our chains, our jump rules in INPUT, then the rules of our chains; this is
    the subset of ``ip6tables-legacy -S`` that mentions us, in the same order.
    """
    layout.prefix(tag_prefix)
    table = _table()
    with _xtables_lock():
        table.refresh()
    chains = _our_chains(table, tag_prefix)
    lines = [f"-N {name}" for name in chains]
    lines += [
        _read_rule(hook, r)
        for hook in HOOKS
        for r in iptc.Chain(table, hook).rules
        if _is_our_jump(r, tag_prefix)
    ]
    for name in chains:
        lines += [_read_rule(name, r) for r in iptc.Chain(table, name).rules]
    return lines


def leftovers(tag_prefix: str = "mt6d") -> list[str]:
    """State marked as ``tag_prefix``'s in the kernel (as :func:`installed`; empty if clean)."""
    return installed(tag_prefix)


def _cleanup_ops(tag_prefix: str) -> list[_Op]:
    """Operations removing every jump and chain of ``tag_prefix`` (computed on a fresh snapshot).

    The operations themselves look again at the snapshot they are applied to, so that a retry
    after EAGAIN removes what is there then.
    """
    table = _table()
    with _xtables_lock():
        table.refresh()
    chains = _our_chains(table, tag_prefix)
    ops: list[_Op] = []
    for hook in HOOKS:
        jumps = [r for r in iptc.Chain(table, hook).rules if _is_our_jump(r, tag_prefix)]
        if not jumps:
            continue

        def delete_jumps(t: iptc.Table6, hook: str = hook) -> None:
            chain = iptc.Chain(t, hook)
            for rule in chain.rules:
                if _is_our_jump(rule, tag_prefix):
                    chain.delete_rule(rule)

        texts = "; ".join(_read_rule(hook, r) for r in jumps)
        ops.append(_Op(f'action=delete_leftover_rules chain={hook} rules="{texts}"', delete_jumps))
    # Flush all first: one of our chains may jump to another, and a referenced chain cannot go.
    ops += [_op_flush_chain(name) for name in chains]
    ops += [_op_delete_chain(name) for name in chains]
    return ops


def cleanup(tag_prefix: str = "mt6d") -> list[str]:
    """Remove every jump rule and chain marked as ``tag_prefix``'s; return what was removed."""
    layout.prefix(tag_prefix)
    found = installed(tag_prefix)
    _transaction(_cleanup_ops(tag_prefix), "cleanup")
    _destroy_sets(tag_prefix)  # once no rule of ours uses them
    return found


def _destroy_sets(tag_prefix: str) -> None:
    with IpSets() as sets:
        present = sets.names()
        for name in layout.set_names(tag_prefix):
            if name in present:
                log.info("action=destroy_set name=%s", name)
                sets.destroy(name)


def _grouped(streams: Iterable[tuple[Rule, ...]]) -> list[str]:
    """The streams' rules as their chain holds them: rule 0 of every stream, then rule 1 of
    every stream, ... (see Firewall.add_stream)."""
    rows = list(streams)
    return [rules[i].text() for i in range(max((len(r) for r in rows), default=0))
            for rules in rows]


# --------------------------------------------------------------------------------------------
# The firewall of one supervisor


class Firewall:
    """MT6D's chains, rules and the jumps to them, owned by one supervisor.

    Nothing touches the kernel before :meth:`setup`. Positions in ``P-INPUT`` are computed from
    what this object added (it owns the chain): the fixed head (fragment and neighbour-discovery
    rules), then each stream's queue rule and then each stream's true-address guard, both in the
    order the streams were added, then each route's two rules in the order they were added, then
    the ICMP jump. ``P-OUTPUT`` holds the fixed
    silence rules, then each stream's two source rules. Removing a rule never reorders the others.
    In host mode the streams' rules come right after the fragment rule in ``P-INPUT`` and first
    in ``P-OUTPUT`` (``FixedRules.input_streams_at``/``output_streams_at``), four each there,
    ordered as in ``P-INPUT``: every stream's first rule, then every stream's second, and so on.
    """

    def __init__(self, tag_prefix: str = "mt6d") -> None:
        self.tag_prefix = layout.prefix(tag_prefix)
        self.chains = layout.chain_names(tag_prefix)
        self.internal_if = self.external_if = ""
        self.host_mode = False
        self._fixed: layout.FixedRules | None = None
        self._streams: dict[str, tuple[Rule, ...]] = {}  # P-INPUT: queue rule, true-address guard
        self._silenced: dict[str, tuple[Rule, ...]] = {}  # P-OUTPUT: its two true sources
        self.sets = layout.set_names(tag_prefix)
        # (stream, epoch, phase) -> the route's members of the two sets (mt6d_mp.core.rules)
        self._routes: dict[tuple[str, int, int], tuple[Member, Member]] = {}
        self._hashed_users: Counter[Member] = Counter()  # routes per member of the hashed set

    # -- lifecycle

    @property
    def active(self) -> bool:
        return self._fixed is not None

    def setup(self, icmp_queue: int, internal_if: str, external_if: str,
              host_mode: bool = False) -> None:
        """Remove what an earlier run left, then install the chains, the fixed rules and the jumps.

        Both happen in one commit: there is no moment with neither the old nor the new state.
        In host mode (the layout's second drawing) there is no internal interface: pass "".
        """
        layout.queue_number(icmp_queue, "icmp_queue")
        layout.ifname(external_if, "external_if")
        if host_mode:
            if internal_if:
                raise FirewallInputError("host mode has no internal interface")
        else:
            layout.ifname(internal_if, "internal_if")
            if internal_if == external_if:
                raise FirewallInputError("internal_if and external_if must differ")
        if self.active:
            raise SystemSetupError("firewall: setup() called twice; call teardown() first")
        fixed = layout.fixed_rules(self.tag_prefix, icmp_queue, internal_if, external_if,
                                   host_mode)
        c = self.chains
        # The sets the route rules match exist before the rules (an earlier run's are emptied).
        with IpSets() as sets:
            sets.create(self.sets.routes, "hash:ip,port,ip")
            sets.create(self.sets.hashed, "hash:ip")
        ops = _cleanup_ops(self.tag_prefix)
        ops += [_op_new_chain(name) for name in (c.icmp, c.guard, c.true, c.input, c.output)]
        ops += [_op_append(r) for name in (c.icmp, c.guard, c.true) for r in fixed.chains[name]]
        ops += [_op_append(r) for r in (*fixed.head, fixed.icmp_jump, *fixed.chains[c.output])]
        ops += [_op_insert(j, 0) for j in fixed.jumps]
        _transaction(ops, "setup")
        self.internal_if, self.external_if = internal_if, external_if
        self.host_mode = host_mode
        self._fixed = fixed
        self._forget()

    def _forget(self) -> None:
        self._streams.clear()
        self._silenced.clear()
        self._routes.clear()
        self._hashed_users.clear()

    def teardown(self) -> None:
        """Remove exactly what :meth:`setup` and later calls added: the jumps, then the chains."""
        if self._fixed is None:
            return
        ops = [_op_delete(j) for j in self._fixed.jumps]
        ops += [_op_flush_chain(name) for name in self.chains]
        ops += [_op_delete_chain(name) for name in self.chains]
        _transaction(ops, "teardown")
        _destroy_sets(self.tag_prefix)
        self._fixed = None
        self._forget()

    def __enter__(self) -> Firewall:
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def _require_active(self) -> layout.FixedRules:
        if self._fixed is None:
            raise SystemSetupError("firewall: not set up")
        return self._fixed

    # -- streams

    def add_stream(
        self, name: str, local: AddressLike, remote: AddressLike, queue: int, local_mac: str
    ) -> bool:
        """Queue packets from ``local`` (a true address) to ``remote`` to ``queue``, but only
        those that arrive on the internal interface from the local host's MAC ``local_mac``
        (``aa:bb:cc:dd:ee:ff``): nothing from outside, or from another machine inside, enters
        the tunnel. Anything else to ``remote`` goes to the true-address guard, and neither true
        address may be the source of a packet leaving on the external interface.

        In host mode (set up so) the stream's packets are taken from OUTPUT instead, and
        ``local_mac`` is not used: see the layout in mt6d_mp/core/rules.py.

        Returns False (and changes nothing) if the same stream is already there; a different
        stream under the same name is an error.
        """
        return self.add_streams([(name, local, remote, queue, local_mac)]) > 0

    def add_streams(
        self, streams: Sequence[tuple[str, AddressLike, AddressLike, int, str]]
    ) -> int:
        """:meth:`add_stream` for many streams in ONE commit (a start with a thousand streams
        would otherwise commit the growing table a thousand times); how many were new. Every
        argument is checked before anything changes."""
        fixed = self._require_active()
        ops: list[_Op] = []
        added: dict[str, tuple[tuple[Rule, ...], tuple[Rule, ...]]] = {}
        n, silenced_n = len(self._streams), len(self._silenced)
        for name, local, remote, queue, local_mac in streams:
            inputs: tuple[Rule, ...]
            silenced: tuple[Rule, ...]
            if self.host_mode:
                inputs, silenced = layout.host_stream_rules(self.tag_prefix, name, local, remote,
                                                            queue)
            else:
                inputs, silenced = layout.stream_rules(self.tag_prefix, name, local, remote,
                                                      queue, local_mac, self.internal_if)
            old = self._streams.get(name) or added.get(name, ((), ()))[0] or None
            if old == inputs:
                continue
            if old is not None:
                raise SystemSetupError(f"firewall: stream {name} exists with another rule")
            # Rule i of every stream before rule i + 1 of any (in P-INPUT, and in host mode's
            # P-OUTPUT): streams of two local hosts with one remote host (a site with several
            # hosts talking to one host of a peer; a host with two addresses) share the remote
            # host's rules, "-d remote -j P-TRUE" (host mode: "-s remote -j P-TRUE", "-d remote
            # -j DROP", "-s remote -j DROP"), which would drop the second stream's packets
            # before its own queue or delivery rule if the first stream's came first.
            ops += [_op_insert(r, fixed.input_streams_at + i * (n + 1) + n)
                    for i, r in enumerate(inputs)]
            if self.host_mode:
                ops += [_op_insert(r, fixed.output_streams_at + i * (n + 1) + n)
                        for i, r in enumerate(silenced)]
            else:  # two drops each: their order does not matter, a stream's stay together
                out_position = fixed.output_streams_at + 2 * silenced_n
                ops += [_op_insert(silenced[0], out_position),
                        _op_insert(silenced[1], out_position + 1)]
                silenced_n += 1
            n += 1
            added[name] = (inputs, silenced)
        if not added:
            return 0
        _transaction(ops, f"add_stream {next(iter(added))}" if len(added) == 1
                     else f"add_streams count={len(added)}")
        for name, (inputs, silenced) in added.items():
            self._streams[name] = inputs
            self._silenced[name] = silenced
        return len(added)

    def remove_stream(self, name: str) -> bool:
        """Remove the stream's routes (set members), then its rules, in one commit."""
        layout.name(name, "stream")
        self._require_active()
        if name not in self._streams:
            return False
        self.change_routes(remove=[key for key in self._routes if key[0] == name])
        ops = [_op_delete(r) for r in (*self._streams[name], *self._silenced[name])]
        _transaction(ops, f"remove_stream {name}")
        del self._streams[name]
        del self._silenced[name]
        return True

    # -- routes

    def change_routes(
        self,
        add: Sequence[tuple[str, int, AddressLike, AddressLike, int]
                      | tuple[str, int, AddressLike, AddressLike, int, int]] = (),
        remove: Sequence[tuple[str, int] | tuple[str, int, int]] = (),
    ) -> int:
        """Add and remove routes; return how many routes changed.

        A route is a member of two sets (mt6d_mp.core.rules): the routes set, whose rule ACCEPTs
        UDP from the peer's hashed address to ours on the route's port, from the external
        interface, and the hashed set, whose rule sends everything else to the local hashed
        address to the guard. With no worker bound to the port the kernel would answer Port
        Unreachable, which the silence rules of ``P-OUTPUT`` drop, so restarts stay silent.
        (The route rule matched ``-m socket`` once; that match loads the kernel's IPv6
        defragmentation, which reassembled forged fragments before any rule could see them.)

        A rotation changes every stream's routes at once: the removals, then the additions, go
        in batches of set members (mt6d_mp.io.ipset), and the table is not committed at all.
        Every argument is checked before anything changes.
        """
        self._require_active()
        new: dict[tuple[str, int, int], tuple[Member, Member]] = {}
        for item in add:
            stream, epoch, remote_hashed, local_hashed, port = item[:5]
            phase = item[5] if len(item) > 5 else 0
            (local, lport, remote), hashed = layout.route_members(
                stream, epoch, remote_hashed, local_hashed, port, phase)
            members = (Member(local, lport, remote), Member(hashed))
            if stream not in self._streams:
                raise SystemSetupError(f"firewall: route for unknown stream {stream}")
            key = (stream, epoch, phase)
            old = self._routes.get(key)
            if old == members:
                continue
            if old is not None:
                raise SystemSetupError(f"firewall: route {stream}:{epoch}p{phase} exists with "
                                       "other addresses")
            new[key] = members
        gone: dict[tuple[str, int, int], None] = {}  # ordered, and a rotation removes thousands
        for r in remove:
            layout.name(r[0], "stream")
            key = (r[0], r[1], r[2] if len(r) > 2 else 0)
            if key in self._routes:
                gone[key] = None
        if not new and not gone:
            return 0
        # A hashed address leaves its set only when no remaining route has it.
        users = Counter(self._routes[k][1] for k in gone)
        users.subtract(m[1] for m in new.values())
        unused = {h for h, n in users.items() if self._hashed_users[h] - n <= 0}
        with IpSets() as sets:
            sets.change(self.sets.routes, remove=[self._routes[k][0] for k in gone])
            sets.change(self.sets.hashed, remove=unused)
            sets.change(self.sets.hashed, add=[m[1] for m in new.values()])
            sets.change(self.sets.routes, add=[m[0] for m in new.values()])
        log.debug("action=change_routes add=%d remove=%d", len(new), len(gone))
        for key in gone:
            member = self._routes.pop(key)[1]
            self._hashed_users[member] -= 1
            if self._hashed_users[member] <= 0:
                del self._hashed_users[member]
        for key, members in new.items():
            self._routes[key] = members
            self._hashed_users[members[1]] += 1
        return len(new) + len(gone)

    def members(self) -> dict[str, set[Member]]:
        """What the two sets should hold, by set name."""
        return {self.sets.routes: {m[0] for m in self._routes.values()},
                self.sets.hashed: {m[1] for m in self._routes.values()}}

    def routes(self) -> list[tuple[str, int, int]]:
        """(stream, epoch, phase) of every route with rules."""
        return list(self._routes)

    def streams(self) -> list[str]:
        return list(self._streams)

    # -- inspection

    def rules(self) -> list[str]:
        """What this object installed, as ``ip6tables-legacy -S`` prints it (our lines only)."""
        fixed = self._fixed
        if fixed is None:
            return []
        lines = [f"-N {n}" for n in sorted(self.chains)] + [j.text() for j in fixed.jumps]
        by_chain = {chain: [r.text() for r in chain_rules] for chain, chain_rules in fixed.chains.items()}
        at, out_at = fixed.input_streams_at, fixed.output_streams_at
        head = [r.text() for r in fixed.head]
        by_chain[self.chains.input] = (
            head[:at]
            + _grouped(self._streams.values())
            + head[at:]
            + [fixed.icmp_jump.text()]
        )
        out = by_chain[self.chains.output]
        by_chain[self.chains.output] = (
            out[:out_at]
            + (_grouped(self._silenced.values()) if self.host_mode
               else [r.text() for rules in self._silenced.values() for r in rules])
            + out[out_at:])
        for chain in sorted(by_chain):
            lines += by_chain[chain]
        return lines

    def drop_counts(self) -> dict[str, int]:
        """Packets the kernel dropped by our rules, by kind, from the rules' counters:
        ``fragment`` (from outside), ``true_address`` (to a remote host's address, not the
        stream's), ``hashed_address`` (to a hashed address, not the peer's tunnel packets),
        ``silenced`` (errors, echo replies, MLD the gateway would have sent outside) and
        ``true_source`` (anything leaving outside from a true address; in host mode anything
        to or from the remote true address that is not the stream's)."""
        if not self.active:
            return {}
        kinds = {
            (self.chains.input, "frag"): "fragment",
            (self.chains.true, "true"): "true_address",
            (self.chains.guard, "guard"): "hashed_address",
            (self.chains.output, "silent"): "silenced",
            (self.chains.output, "stream"): "true_source",
        }
        counts = dict.fromkeys(kinds.values(), 0)
        table = _table()
        with _xtables_lock():
            table.refresh()
        for chain in {c for c, _ in kinds}:
            for comment, target, packets in _rule_summaries(table, chain):
                parts = (comment or "").split(":")
                kind = kinds.get((chain, parts[1] if len(parts) > 1 else ""))
                if kind is not None and target == "DROP":
                    counts[kind] += packets
        return counts

    def verify(self) -> list[str]:
        """Differences between :meth:`rules` (and :meth:`members`) and the kernel; empty when
        they agree."""
        want, have = self.rules(), installed(self.tag_prefix)
        diff: list[str] = []
        if want != have:
            diff = [f"-{line}" for line in want if line not in have] + [
                f"+{line}" for line in have if line not in want
            ] or ["order differs"]
        if self.active:
            with IpSets() as sets:
                for name, members in self.members().items():
                    there = sets.members(name)
                    diff += [f"-{name} {_member_text(m)}" for m in members - there]
                    diff += [f"+{name} {_member_text(m)}" for m in there - members]
        return diff


def _member_text(m: Member) -> str:
    ip = ipaddress.IPv6Address(m.ip)
    return f"{ip},udp:{m.port},{ipaddress.IPv6Address(m.ip2)}" if m.ip2 else str(ip)
