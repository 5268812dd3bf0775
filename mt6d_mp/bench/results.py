"""Reading and cleaning the results dictionary of a run (bench.json's shape).

Flow: the runner summarises repeated measurements with :func:`stats`; the report, the charts
and the targets look values up with :func:`dig` and :func:`flood_of`; :func:`clean` makes the
whole dictionary JSON-safe before it is written.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def stats(values: Sequence[float | None]) -> dict[str, float | int] | None:
    """Median, min, max and count of the finite values; None when there are none."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return None
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def clean(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean(v) for v in obj]
    return obj


def dig(d: Any, *keys: Any) -> Any:
    for k in keys:
        if d is None:
            return None
        if isinstance(d, dict):
            d = d.get(k)
        elif isinstance(d, list) and isinstance(k, int) and -len(d) <= k < len(d):
            d = d[k]
        else:
            return None
    return d


def flood_of(p: dict[str, Any] | None, n: int) -> dict[str, Any] | None:
    for f in dig(p, "flood") or []:
        if f["count"] == n:
            r: dict[str, Any] = f
            return r
    return None


def rekey_errors(results: dict[str, Any]) -> list[str]:
    """The failures of the rekey section, each named by its part."""
    rk = results.get("rekey") or {}
    out = [f"mt6d rekey: {e}" for e in dig(rk, "mt6d", "errors") or []]
    for path in ("openvpn", "wireguard-go"):
        e = dig(rk, path, "error")
        if e:
            out.append(f"{path} handshake: {e}")
    return out


def write_report(data: dict[str, Any], out: Path, stem: str,
                 draw: Callable[[dict[str, Any], Path], list[str]],
                 render: Callable[[dict[str, Any], list[str]], str],
                 progress: Callable[[str], None]) -> None:
    """``STEM.json`` (JSON-safe), the charts ``draw`` makes (none without matplotlib) and
    ``STEM.md`` from ``render``, in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    safe = clean(data)
    (out / f"{stem}.json").write_text(json.dumps(safe, indent=2, allow_nan=False) + "\n")
    try:
        written = draw(safe, out)
    except ImportError:
        progress("matplotlib is not installed (pip install -e '.[bench]'): no charts")
        written = []
    (out / f"{stem}.md").write_text(render(safe, written))
    progress(f"wrote {out / (stem + '.json')}, {out / (stem + '.md')}"
             + "".join(f", {w}" for w in written))
