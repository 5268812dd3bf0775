"""The plan of the host-mode topologies: MT6D on a protected host itself (README, "Host mode").

Two topologies, both routed, so that the ends sit on different links and a router's ICMPv6
errors can be tested (``P`` is the lab's prefix)::

    host-gateway:  P-ha (MT6D) --eth0|ga-- P-rt --gb|ext0-- P-gb --int0|eth0-- P-hb
    host-host:     P-ha (MT6D) --eth0|ga-- P-rt --gb|eth0-- P-hb (MT6D)

A host-mode host has its true address on its one interface (``eth0``), a default route via the
router and MT6D's files in its own directory (``/run/mt6d-lab/P/ha``), as a gateway has in the
other topologies; host B behind gateway B is built as in the routed topology. One host per
end, so one stream. :func:`make_host_plan` is called by plan.make_plan, whose parts it uses.
"""

from __future__ import annotations

import hashlib

from mt6d_mp.lab import plan as p

HOST_TOPOLOGIES = ("host-gateway", "host-host")


def host_sides(topology: str) -> tuple[str, ...]:
    """The sides whose host runs MT6D itself."""
    return {"host-gateway": ("a",), "host-host": ("a", "b")}.get(topology, ())


def make_host_plan(shape: p.Shape) -> p.NetworkPlan:
    """Everything :meth:`Lab.up` creates for a host-mode topology, in the order it creates it."""
    plan = p.NetworkPlan()
    pp = hashlib.sha256(shape.prefix.encode()).digest()[0]
    mt6d_sides = host_sides(shape.topology)
    rt, gb = p.ns_name(shape.prefix, "router"), p.ns_name(shape.prefix, "gateway-b")
    router_port = {"a": ("ga", p._mac(pp, p._ROLE_ROUTER, 0, 0x1A)),
                   "b": ("gb", p._mac(pp, p._ROLE_ROUTER, 0, 0x1B))}
    for side, net, role_byte in (("a", p.SITE_A_NET, p._ROLE_HOST["a"]),
                                 ("b", p.SITE_B_NET, p._ROLE_HOST["b"])):
        port, port_mac = (router_port[side] if side in mt6d_sides
                          else ("int0", p._mac(pp, p._ROLE_GW["b"], 0, 1)))
        role = f"host-{side}"
        plan.hosts.append(p.Host(ns=p.ns_name(shape.prefix, role), role=role, side=side,
                                 index=1, address=f"{net}{side}1", mac=p._mac(pp, role_byte, 1, 0),
                                 port=port, port_mac=port_mac))
    ha, hb = plan.side("a")[0], plan.side("b")[0]
    with_gateway = "b" not in mt6d_sides
    plan.namespaces = [(ha.ns, ha.role), (rt, "router")]
    plan.namespaces += [(gb, "gateway-b")] if with_gateway else []
    plan.namespaces.append((hb.ns, hb.role))
    if shape.mt6d:
        plan.mt6d_hosts = {h.ns for h in plan.hosts if h.side in mt6d_sides}
    # sysctls: hosts as in the other topologies (a host-mode host forwards nothing either), the
    # router routes, gateway B as a gateway
    ra = "1" if shape.host_accept_ra else "0"
    host_sys = [*p._DAD, f"net.ipv6.conf.all.accept_ra={ra}",
                f"net.ipv6.conf.default.accept_ra={ra}"]
    for h in plan.hosts:
        plan.sysctls[h.ns] = list(host_sys)
        if h.side in mt6d_sides:
            plan.sysctls[h.ns] += ["net.ipv6.conf.all.forwarding=0",
                                   "net.ipv6.conf.default.forwarding=0"]
    plan.sysctls[rt] = [*p._DAD, *p._forwarding(True)]
    if with_gateway:
        plan.sysctls[gb] = [*p._DAD, *p._forwarding(not shape.mt6d)]
        if not shape.mt6d:
            plan.sysctls[gb] += ["net.ipv6.conf.all.proxy_ndp=1",
                                 "net.ipv6.conf.default.proxy_ndp=1"]
    # links: each host to its router port or gateway; gateway B to the router (router_mtu)
    for h in plan.hosts:
        mtu = shape.router_mtu if h.port == "gb" else 1500  # the router's link toward B
        plan.veths.append(p.Veth(h.ns, "eth0", h.mac, gb if h.port == "int0" else rt, h.port,
                                 h.port_mac, mtu=mtu))
    if with_gateway:
        plan.veths.append(p.Veth(gb, "ext0", p._mac(pp, p._ROLE_GW["b"], 0, 2), rt, "gb",
                                 router_port["b"][1], mtu=shape.router_mtu))
    # addresses and routes
    for h in plan.hosts:
        plan.addresses.append((h.ns, "eth0", f"{h.address}/64"))
    plan.addresses += [(rt, "ga", f"{p.ROUTER_A}/64"), (rt, "gb", f"{p.ROUTER_B}/64")]
    plan.routes.append((ha.ns, ["-6", "route", "add", "default", "via", p.ROUTER_A, "dev", "eth0"]))
    if with_gateway:
        plan.addresses.append((gb, "int0", f"{p.GATEWAY_LL}/64"))
        plan.routes.append((gb, ["-6", "route", "add", f"{p.SITE_B_NET}/64", "dev", "ext0"]))
        plan.routes.append((gb, ["-6", "route", "add", "default", "via", p.ROUTER_B, "dev",
                                 "ext0"]))
        plan.routes.append((hb.ns, ["-6", "route", "add", "default", "via", p.GATEWAY_LL, "dev",
                                    "eth0"]))
        if not shape.mt6d:  # the baseline: gateway B routes, and answers for host B outside
            plan.routes.append((gb, ["-6", "route", "add", f"{hb.address}/128", "dev", "int0"]))
            plan.proxies.append((gb, "ext0", hb.address))
    else:
        plan.routes.append((hb.ns, ["-6", "route", "add", "default", "via", p.ROUTER_B, "dev",
                                    "eth0"]))
    return plan
