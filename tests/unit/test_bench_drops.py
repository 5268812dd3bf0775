"""The benchmark's drop accounting: which counters it reads and how it reports them."""

from __future__ import annotations

from collections import Counter

from mt6d_mp.bench import drops_between, drops_cell, kernel_drops

# /proc/net/snmp6 (an excerpt) followed by /proc/net/netfilter/nfnetlink_queue, as `cat` gives them.
PROC = """Ip6InReceives                   	1200
Ip6InDiscards                   	3
Ip6OutDiscards                  	0
Udp6InDatagrams                 	5000
Udp6InErrors                    	24
Udp6RcvbufErrors                	24
Udp6SndbufErrors                	0
Icmp6InErrors                   	0
    1  25725     0 2  4016     0     0        0  1
    2  25724     0 2 65531     7     2   520867  1
"""


def test_kernel_drops_reads_the_drop_counters_and_both_queue_columns() -> None:
    found = kernel_drops("host-b", PROC)
    assert found == Counter({
        "host-b Ip6InDiscards": 3, "host-b Ip6OutDiscards": 0, "host-b Udp6InErrors": 24,
        "host-b Udp6RcvbufErrors": 24, "host-b Udp6SndbufErrors": 0, "host-b Icmp6InErrors": 0,
        "host-b nfqueue_dropped": 9,  # queue_dropped 7 + user_dropped 2 of queue 2
    })  # fmt: skip
    assert "host-b Ip6InReceives" not in found and "host-b Udp6InDatagrams" not in found


# /proc/net/dev of a gateway (an excerpt), as the third file of the same `cat`.
DEV = (  # spacing narrowed; the kernel pads the columns to fixed widths
    "Inter-|   Receive                                                |  Transmit\n"
    " face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo colls"
    " carrier compressed\n"
    "    lo:       0     0 0 0 0 0 0 0       0     0 0   0 0 0 0 0\n"
    "  ext0: 9100412 61203 0 2 0 0 0 0 8812340 60110 0  17 0 0 0 0\n"
    "  tun0:  500000  4000 0 0 0 0 0 0  600000  4500 0 311 0 0 0 0\n"
)


def test_kernel_drops_reads_each_interfaces_receive_and_transmit_drops() -> None:
    found = kernel_drops("gateway-a", PROC + DEV)
    assert found["gateway-a ext0 rx_dropped"] == 2 and found["gateway-a ext0 tx_dropped"] == 17
    assert found["gateway-a tun0 tx_dropped"] == 311 and found["gateway-a lo rx_dropped"] == 0
    assert found["gateway-a nfqueue_dropped"] == 9 and found["gateway-a Udp6RcvbufErrors"] == 24
    # The header lines and the byte and packet columns are not counters of drops.
    assert not [k for k in found if "face" in k or "Inter" in k or "bytes" in k]
    assert len([k for k in found if " ext0 " in k]) == 2


def test_only_counters_that_grew_are_reported() -> None:
    before = Counter({"a x": 5, "b y": 1})
    after = Counter({"a x": 5, "b y": 4, "c z": 2})
    assert drops_between(before, after) == {"b y": 3, "c z": 2}


def test_the_table_cell_sums_every_loss_test_and_says_none_or_unknown() -> None:
    path = {
        "ping": {"drops": {}},
        "flood": [{"drops": {"gateway-b host-b-host-a drop_replay": 1}}, {"drops": {}}],
        "udp": {"runs": [{"drops": {"host-b Udp6RcvbufErrors": 24}},
                         {"drops": {"gateway-b host-b-host-a drop_replay": 2}}]},
    }
    assert drops_cell(path) == "gateway-b host-b-host-a drop_replay 3, host-b Udp6RcvbufErrors 24"
    path["flood"] = [{"drops": {}}]
    path["udp"] = {"runs": [{"drops": {}}]}
    assert drops_cell(path) == "none"
    path["ping"] = {"drops": None}  # a reading failed: unknown, not "none"
    assert drops_cell(path) == "-"
