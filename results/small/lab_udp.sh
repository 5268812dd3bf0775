#!/bin/bash
# The small-packet lab measurement of results/PROFILE.md: a routed lab from the tree
# TREE (default: this repository), iperf3 UDP at full offered rate (-b 0) with 200- and
# 1200-byte datagrams, RUNS runs of SECS seconds each, then one TCP run; for each UDP run the
# received rate and each stream worker's CPU per delivered packet (from /proc).
# Usage, as root, one measurement at a time: results/small/lab_udp.sh [RUNS] [SECS]
# (e.g. TREE=/tmp/base results/small/lab_udp.sh 3 5 for a tree made with git archive).
set -u
RUNS=${1:-3}; SECS=${2:-5}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
TREE=${TREE:-$HERE}
P=${PREFIX:-w16}
cd "$TREE"
export PYTHONPATH=$TREE
WORK=$(mktemp -d)
SRV=""
cleanup() { [ -n "$SRV" ] && kill "$SRV" 2>/dev/null; "$HERE/.venv/bin/mt6d-lab" down --prefix "$P" -q >/dev/null 2>&1; rm -rf "$WORK"; }
trap cleanup EXIT
"$HERE/.venv/bin/mt6d-lab" up --prefix "$P" --topology routed --rotation-time 2 -q >/dev/null 2>&1 || { echo "lab up failed"; exit 1; }
ip netns exec "$P-hb" iperf3 -s -B 2001:db8:b::b1 >/dev/null 2>&1 & SRV=$!
sleep 1
wpid() { for p in $(ip netns pids "$1"); do grep -q "workers.stream" "/proc/$p/cmdline" 2>/dev/null && echo "$p"; done; }
A=$(wpid "$P-ga"); B=$(wpid "$P-gb")
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
ip netns exec "$P-ha" ping -c 3 -i 0.2 2001:db8:b::b1 >/dev/null
for L in 200 1200; do for _ in $(seq "$RUNS"); do
  a1=$(cpu "$A"); b1=$(cpu "$B")
  ip netns exec "$P-ha" iperf3 -c 2001:db8:b::b1 -u -b 0 -l "$L" -t "$SECS" -J > "$WORK/j.json" 2>/dev/null
  a2=$(cpu "$A"); b2=$(cpu "$B")
  python3 - "$WORK/j.json" "$L" "$a1" "$a2" "$b1" "$b2" "$SECS" <<'PY'
import json, sys
path = sys.argv[1]
length, a1, a2, b1, b2, secs = map(int, sys.argv[2:])
end = json.load(open(path))["end"]
r, s = end["sum_received"], end["sum_sent"]
n = int(r["bytes"]) // length
print(f"udp{length} recv {n / r['seconds'] / 1e3:.1f} kpps {n * length * 8 / r['seconds'] / 1e6:.0f} Mbit/s "
      f"sent {s['packets'] / s['seconds'] / 1e3:.1f} kpps; A {(a2 - a1) / secs:.0f}% "
      f"{1e4 * (a2 - a1) / n:.1f} us/pkt, B {(b2 - b1) / secs:.0f}% {1e4 * (b2 - b1) / n:.1f} us/pkt")
PY
done; done
ip netns exec "$P-ha" iperf3 -c 2001:db8:b::b1 -t "$SECS" -J > "$WORK/j.json" 2>/dev/null
python3 -c "import json,sys; e=json.load(open(sys.argv[1]))['end']; print(f\"tcp {e['sum_received']['bits_per_second']/1e9:.2f} Gbit/s\")" "$WORK/j.json"
