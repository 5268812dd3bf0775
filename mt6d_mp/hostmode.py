"""Host mode's system changes: what the supervisor adds for a stream when MT6D runs on the
protected host itself (README, "Host mode").

In gateway mode the supervisor binds the remote host's true address on the internal interface,
so that the local host's packets to it are local to the gateway (supervisor.py, ``add_stream``).
A host-mode machine *is* the local host: its packets to the remote host are its own, and the
firewall takes them from OUTPUT (mt6d_mp/core/rules.py, the host-mode drawing). What it needs
per stream instead:

- the local host's true address must be one of this machine's addresses, and the remote
  host's must not be (else the profile is another machine's: a clear error before anything of
  the stream is set up);
- a /128 route to the remote host's true address out of the external interface, with the
  local host's address as its preferred source and the tunnel MTU as its MTU. The packets never
  take it (OUTPUT queues every one of them before neighbour discovery could), but the kernel
  needs a route to send at all: with it the remote host is reachable whatever the host's other
  routes say, the host's sockets pick the true address that the stream rule matches, and its
  TCP sizes segments for the tunnel from the first one (no Packet Too Big round first). The
  route carries MT6D's netlink protocol, so a later start removes it if this run is killed.
  Two streams with one remote host (two addresses of this machine) share it, with the source
  of the one added last; it goes with the last of them (the supervisor counts its users).

The host's MAC in the hash is the ethers file's, as the peer has it (the peer can know it from
its configuration only): it is not read from the interface, whose MAC may change (a randomised
Wi-Fi MAC, a new NIC) without the peer knowing. A difference is logged.
"""

from __future__ import annotations

import logging

from mt6d_mp.core.addressing import mac_text
from mt6d_mp.core.config import Config, StreamConfig
from mt6d_mp.errors import SystemSetupError
from mt6d_mp.io.netlink import Netlink

log = logging.getLogger("mt6d.supervisor")

LOOPBACK = "lo"  # where the stream worker delivers the remote host's packets (rules.LOOPBACK)


def add_stream_system(nl: Netlink, config: Config, s: StreamConfig, tunnel_mtu: int) -> None:
    """Check that the local host is this machine; route the remote host (see the module)."""
    where = nl.interface_of(s.local.address)
    if where is None:
        raise SystemSetupError(
            f"host mode: stream {s.name}: the local host {s.local.name} ({s.local.address}, "
            f"{s.source}) is not an address of this machine; in host mode every profile's local "
            "host is this machine (add the address, or fix the profile)")
    if nl.interface_of(s.remote.address) is not None:
        raise SystemSetupError(
            f"host mode: stream {s.name}: the remote host {s.remote.name} ({s.remote.address}, "
            f"{s.source}) is an address of this machine; the remote host is the peer's")
    own = nl.mac(config.external)
    if own != s.local.mac:
        log.info("event=host_mac_differs stream=%s ethers=%s %s=%s note=the hash uses the "
                 "ethers file's MAC, as the peer does", s.name, mac_text(s.local.mac),
                 config.external, mac_text(own))
    if config.routes:
        nl.add_host_route(config.external, s.remote.address.packed, mtu=tunnel_mtu,
                          source=s.local.address.packed)


def remove_stream_system(nl: Netlink, config: Config, s: StreamConfig) -> None:
    """Undo :func:`add_stream_system` (idempotent)."""
    if config.routes:
        nl.remove_host_route(config.external, s.remote.address.packed)
