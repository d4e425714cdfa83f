"""What every benchmark shares: interleaved timing, peak memory, the machine, and the report format."""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import os
import platform
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any, Literal

import torch

# -- timing ---------------------------------------------------------------------------------------------

def interleaved(variants: dict[str, Callable[[], Any]], *, warmup: int = 1, repeats: int = 5,
                budget_s: float | None = None) -> dict[str, list[float]]:
    """Seconds per call of each variant: ``warmup`` untimed calls each, then ``repeats`` rounds.

    Each round calls every variant once, the starting variant rotating from round to round, so that load from
    other processes on a shared machine falls on all variants alike and compares as a ratio. With
    ``budget_s``, rounds stop once the timed rounds have taken that long (at least 3 rounds, or ``repeats``
    if fewer), so that a busy machine cannot stretch a run without bound.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    for r in range(repeats):
        if budget_s is not None and r >= min(3, repeats) and time.perf_counter() - start > budget_s:
            break
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def ratio(times: dict[str, list[float]], slow: str, fast: str) -> float:
    """Median over rounds of ``slow / fast`` times measured in the same round (robust to drifting load)."""
    return median([a / b for a, b in zip(times[slow], times[fast])])


# -- memory ---------------------------------------------------------------------------------------------

def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak() -> int | None:
    """Return freed memory to the OS and reset the peak (VmHWM) to the current RSS; the RSS, or None."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # 5: reset the peak resident set size (Linux >= 4.0)
        return _status_bytes("VmRSS")
    except (OSError, KeyError):
        return None


def peak_rss_growth(fn: Callable[[], Any]) -> int | None:
    """Bytes by which the process' peak resident memory rose above its resident memory while ``fn`` ran.

    CPU tensors are plain ``malloc`` memory, invisible to tracemalloc and to torch's CUDA counters, so this reads
    the kernel's own peak (VmHWM) after resetting it. Call after a warm-up, so that one-time allocations (thread
    pools, kernel caches) are not counted. None where /proc does not allow it (not Linux, or no permission).
    """
    before = _reset_peak()
    if before is None:
        return None
    fn()
    return max(0, _status_bytes("VmHWM") - before)


# -- the machine ----------------------------------------------------------------------------------------

def cpu_model() -> str:
    if shutil.which("lscpu"):
        try:
            out = subprocess.run(["lscpu"], check=False, capture_output=True, text=True, timeout=10).stdout
            for line in out.splitlines():
                if line.startswith("Model name:"):
                    return line.split(":", 1)[1].strip()
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
              "amx_tile", "amx_bf16", "neon", "asimd", "sve")


def simd_flags() -> str:
    """The vector-instruction flags of :data:`SIMD_FLAGS` the kernel reports for this CPU (/proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    have = set(line.split(":", 1)[1].split())
                    return " ".join(x for x in SIMD_FLAGS if x in have) or "none of " + " ".join(SIMD_FLAGS)
    except OSError:
        pass
    return "unknown"


def busy_warning(info: dict[str, Any]) -> str | None:
    """A warning when other processes keep the cores busy (timings then stretch, worst with several threads)."""
    load = info.get("load_average_1min")
    if load is not None and load > 0.5 * (info.get("usable_cores") or 1):
        return (f"the machine is busy (load average {load} on {info.get('usable_cores')} cores): with several "
                f"threads every parallel op waits for a descheduled thread; prefer a quiet machine, or compare "
                f"runs made with --threads 1")
    return None


def machine_info() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {
        "cpu": cpu_model(),
        "cpu_flags": simd_flags(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        with open("/proc/loadavg") as f:
            info["load_average_1min"] = float(f.read().split()[0])
    except OSError:
        pass
    return info


# -- reports --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Bar:
    """One target a benchmark is judged by: ``measured op target`` holds or not (None: not measured here)."""

    name: str
    measured: float | None
    op: Literal[">=", "<="]
    target: float
    unit: str = "x"
    judged: bool = True  # False for --tiny runs: toy sizes say nothing about the bars

    @property
    def holds(self) -> bool | None:
        if self.measured is None or not self.judged:
            return None
        return self.measured >= self.target if self.op == ">=" else self.measured <= self.target

    def line(self) -> str:
        verdict = {True: "holds", False: "DOES NOT HOLD", None: "not measured"}[self.holds]
        if not self.judged:
            verdict = "not judged (tiny sizes)"
        value = "-" if self.measured is None else _fmt_unit(self.measured, self.unit)
        return f"{self.name}: {value} (bar {self.op} {_fmt_unit(self.target, self.unit)}): {verdict}"


def _fmt_unit(v: float, unit: str) -> str:
    if unit == "%":
        return f"{100 * v:.2f}%"
    if unit == "x":
        return f"{v:.2f}x"
    return f"{v:,.0f} {unit}"


@dataclasses.dataclass
class Column:
    key: str
    header: str
    fmt: str = "{}"

    def cell(self, row: dict) -> str:
        v = row.get(self.key)
        if v is None:
            return "-"
        return self.fmt.format(v) if not isinstance(v, str) else v


@dataclasses.dataclass
class Table:
    title: str
    columns: list[Column]
    rows: list[dict] = dataclasses.field(default_factory=list)

    def markdown(self) -> str:
        head = "| " + " | ".join(c.header for c in self.columns) + " |"
        rule = "|" + "|".join("---" for _ in self.columns) + "|"
        body = ["| " + " | ".join(c.cell(r) for c in self.columns) + " |" for r in self.rows]
        return "\n".join([f"**{self.title}**", "", head, rule, *body])


@dataclasses.dataclass
class Report:
    name: str
    tables: list[Table] = dataclasses.field(default_factory=list)
    bars: list[Bar] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    skipped: str | None = None
    seconds: float = 0.0
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    raw: dict[str, Any] = dataclasses.field(default_factory=dict)  # raw timings (seconds), for the JSON only

    def markdown(self) -> str:
        out = [f"### {self.name}", ""]
        if self.skipped:
            out += [f"skipped: {self.skipped}", ""]
        for t in self.tables:
            out += [t.markdown(), ""]
        for b in self.bars:
            out.append(f"- {b.line()}")
        if self.bars:
            out.append("")
        for n in self.notes:
            out.append(f"- {n}")
        out.append(f"\n({self.seconds:.0f} s)")
        return "\n".join(out)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "skipped": self.skipped, "seconds": round(self.seconds, 2), "params": self.params,
            "tables": [{"title": t.title, "rows": t.rows} for t in self.tables],
            "bars": [{"name": b.name, "measured": b.measured, "op": b.op, "target": b.target, "unit": b.unit,
                      "holds": b.holds} for b in self.bars],
            "notes": self.notes, "raw": self.raw,
        }
