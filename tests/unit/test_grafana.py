"""docs/grafana/mt6d.json queries only what the exporter (mt6d_mp/metrics.py) serves.

The exporter's families, their types and their labels are taken from ``render()`` of a status
reply that has every part (workers with drops and counters, streams with a route, a key and key
exchange events), so a renamed metric or label on either side fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mt6d_mp.metrics import render

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "docs" / "grafana" / "mt6d.json"
# Labels Prometheus adds to every scraped series (not the exporter's).
TARGET_LABELS = {"instance", "job"}

FULL_STATUS: dict[str, Any] = {
    "uptime": 12.5, "tunnel_mtu": 1452,
    "workers": [{"name": "a-b", "state": "running", "restarts": 1, "packets_out": 10, "packets_in": 9,
                 "bytes_out": 1000, "bytes_in": 900, "drops": {"replay": 2},
                 "counters": {"ptb_sent": 3}}],
    "streams": [{"name": "a-b", "active": {"epoch": 42}, "key_state": "keyed", "key_age": 3.0,
                 "keyx": {"rekeys": 1}}],
}


def exporter() -> dict[str, tuple[str, set[str]]]:
    """Family name -> (type, label names)."""
    families: dict[str, tuple[str, set[str]]] = {}
    for line in render(FULL_STATUS).splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            families[name] = (kind, set())
        elif not line.startswith("#"):
            m = re.match(r"(\w+)(?:\{(.*)\})? ", line)
            assert m, line
            families[m.group(1)][1].update(re.findall(r'(\w+)="', m.group(2) or ""))
    return families


def queries() -> list[tuple[str, str]]:
    """(expression, legend) of every panel target and template variable."""
    dash = json.loads(DASHBOARD.read_text())
    out = [(t["expr"], t.get("legendFormat", "")) for p in dash["panels"] for t in p.get("targets", [])]
    out += [(v["definition"], "") for v in dash["templating"]["list"] if v.get("type") == "query"]
    return out


def test_exporter_sample_has_every_family() -> None:
    # the sample must exercise every family the exporter can emit, or the checks below are weak
    source = (REPO / "mt6d_mp" / "metrics.py").read_text()
    assert set(exporter()) == set(re.findall(r'add\("(mt6d_\w+)"', source))


def test_dashboard_queries_only_exported_metrics_labels_and_types() -> None:
    families = exporter()
    seen: set[str] = set()
    for expr, legend in queries():
        names = set(re.findall(r"\bmt6d_\w+", expr))
        assert names, expr
        for name in names:
            assert name in families, f"{name} is not exported (query {expr!r})"
            kind = families[name][0]
            in_rate = re.search(rf"\b(rate|increase)\(\s*{name}\b", expr) is not None
            # counters only through rate()/increase(); gauges never
            assert in_rate == (kind == "counter"), f"{name} ({kind}) in {expr!r}"
        labels = set().union(*(families[n][1] for n in names)) | TARGET_LABELS
        used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
        for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            used |= {x.strip() for x in group.split(",") if x.strip()}
        used |= set(re.findall(r"(\w+)\s*=~?\s*\"", expr))
        assert used <= labels, f"labels {used - labels} not on {names} ({expr!r})"
        seen |= names
    # the dashboard shows every family the exporter serves
    assert seen == set(families)
