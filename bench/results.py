"""One row per measured figure, the printed table, and the JSON file."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Row:
    scenario: str
    server: str
    cpu_us: float | None = None  # server CPU per session (µs)
    rate: float | None = None  # sessions (or messages) per second
    p50_ms: float | None = None
    p99_ms: float | None = None
    ratio: float | None = None  # vs the uvloop floor (CPU, or what `measured` says)
    measured: str = ""  # the figure a target is about, when it is not one of the above
    target: str = ""
    verdict: str = ""  # PASS / MISS / "" (no target)
    extra: dict[str, Any] = field(default_factory=dict)


def verdict(ok: bool | None) -> str:
    if ok is None:
        return ""
    return "PASS" if ok else "MISS"


def median(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(values) if values else float("nan")


def _num(value: float | None, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt)


COLUMNS = ("scenario", "server", "CPU µs/sess", "sess/s", "p50 ms", "p99 ms", "×floor",
           "measured", "target", "result")


def table(rows: list[Row]) -> str:
    cells = [COLUMNS]
    for r in rows:
        cells.append((
            r.scenario, r.server, _num(r.cpu_us, ".1f"), _num(r.rate, ",.0f"),
            _num(r.p50_ms, ".2f"), _num(r.p99_ms, ".2f"), _num(r.ratio, ".2f"), r.measured,
            r.target, r.verdict,
        ))
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    right = {2, 3, 4, 5, 6}
    out = []
    for n, c in enumerate(cells):
        out.append("  ".join(
            c[i].rjust(widths[i]) if i in right else c[i].ljust(widths[i])
            for i in range(len(COLUMNS))
        ).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "hostname": platform.node(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
    }


def write_json(path: Path, rows: list[Row], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        **meta,
        "rows": [asdict(r) for r in rows],
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(path)
