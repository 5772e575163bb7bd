"""Helpers shared by the bench scripts: timing, memory, machine info, optional imports."""

from __future__ import annotations

import importlib
import os
import platform
import resource
import subprocess
import time
from collections.abc import Callable
from typing import Any

# Names listed here behave as if not installed (``--without torch,optuna``):
# the same code path as a missing package, so the smoke test can exercise it.
HIDDEN: set[str] = set(filter(None, os.environ.get("JAXHP_BENCH_WITHOUT", "").split(",")))


class Missing(Exception):
    """An optional competitor's package is not installed (or hidden)."""


def optional(name: str):
    """Imports an optional package, or raises :class:`Missing` with an install hint."""
    if name.split(".")[0] in HIDDEN:
        raise Missing(f"{name} hidden by --without")
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise Missing(f"{name} not installed (pip install -e '.[bench]')") from e


def best_of(fn: Callable[[], Any], reps: int) -> tuple[float, Any]:
    """The smallest wall time of ``reps`` calls of ``fn`` (which must block), and its output."""
    best, out = float("inf"), None
    for _ in range(max(1, reps)):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def rss_bytes() -> int:
    """Resident memory of this process now."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - not Linux
        return 0


def max_rss_bytes() -> int:
    """Peak resident memory of this process so far.

    Read from ``VmHWM`` (the high-water mark of this process's own memory map):
    ``getrusage``'s ``ru_maxrss`` would also count the parent's memory, which a
    child started by ``fork``/``vfork`` + ``exec`` inherits in that counter.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kb) * (1 if platform.system() == "Darwin" else 1024)


_MONITOR = r"""
import os, select, sys, time
pid, every = int(sys.argv[1]), float(sys.argv[2])
page = os.sysconf("SC_PAGE_SIZE")
def rss(p):
    try:
        with open(f"/proc/{p}/statm") as f:
            return int(f.read().split()[1]) * page
    except OSError:
        return 0
def children(p):
    out = []
    try:
        for t in os.listdir(f"/proc/{p}/task"):
            with open(f"/proc/{p}/task/{t}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out
kids, peak, last = [], 0, 0.0
while True:
    now = time.monotonic()
    if now - last > 0.2:  # re-list the process tree now and then
        todo, kids = children(pid), []
        while todo:
            c = todo.pop()
            if c != os.getpid():  # not this monitor
                kids.append(c)
            todo += children(c)
        last = now
    peak = max(peak, rss(pid) + sum(rss(c) for c in kids))
    if select.select([sys.stdin], [], [], every)[0]:
        break
print(peak, flush=True)
"""


class PeakRSS:
    """The peak resident memory of this process and its children while active.

    A separate monitor process samples ``/proc`` (every 5 ms), so the
    measured code's threads never contend with the sampler for the GIL.
    """

    def __init__(self, every: float = 0.005):
        self.every, self.peak = every, 0

    def __enter__(self):
        import sys

        self._proc = subprocess.Popen(
            [sys.executable, "-S", "-c", _MONITOR, str(os.getpid()), str(self.every)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc):
        try:
            out, _ = self._proc.communicate("stop\n", timeout=30)
            self.peak = max(int(out.strip() or 0), rss_bytes())
        except (subprocess.SubprocessError, ValueError):
            self._proc.kill()
            self.peak = rss_bytes()
        return False


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 - not installed
        return None


def _git_commit() -> str | None:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=10)
        return (out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, memory, accelerator and package versions of this machine."""
    import jax

    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):  # pragma: no cover
        mem = None
    devs = jax.devices()
    return {
        "cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_bytes": mem,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax_backend": jax.default_backend(),
        "devices": [f"{d.platform}:{d.device_kind}" for d in devs],
        "n_devices": len(devs),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "git_commit": _git_commit(),
        "versions": {n: _version(n) for n in ("jax", "jaxlib", "optax", "numpy", "jaxhp",
                                               "scikit-learn", "torch", "optuna", "psutil")},
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def write_json(path: str, obj: Any) -> None:
    """Writes ``obj`` as JSON to ``path`` atomically (a temporary file, then a rename)."""
    import json

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=float)
    os.replace(tmp, path)


def fmt_rate(x: float | None) -> str:
    if x is None or x != x:
        return "-"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 1:
        return f"{x:.1f}"
    return f"{x:.3f}"


def fmt(x: Any, spec: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "-"
    return format(x, spec)


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(c.rjust(w) if i else c.ljust(w)
                        for i, (c, w) in enumerate(zip(r, widths))))
