"""jaxhp against what a user would otherwise write or pick, on the same work in one run.

Usage (from the repository root)::

    python -m bench            # full run on this machine (CPU: ~10 minutes on 2 cores)
    python -m bench --quick    # tiny N, seconds: a smoke test of every competitor
    python -m bench --gpu      # bigger N, for a machine with an accelerator (JAX with
                               # CUDA installed; PyTorch runs on CUDA if its build has it)

Prints a table and writes ``bench/results/bench-<mode>-<time>.json``
(machine, versions, every measurement). See the README, "Benchmarks".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # ``python bench/run.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
FORCE_DEVICES = "--xla_force_host_platform_device_count"

MODES = {
    # quick: a smoke test. Shorter runs (bench/tasks.py, JAXHP_BENCH_QUICK), and every
    # job in the bench's own process except the memory run (which keeps its fresh
    # process, so that the worker path is exercised too).
    "quick": dict(ridge_n=[8, 32], mlp_n=[4], reps=dict(ridge=1, mlp=1), memory_n=256,
                  one_process=True, in_process=True, repeat_under=0.0,
                  sub=dict(ridge=dict(jax_step_loop=2, jax_scan_loop=2, sklearn=2, torch_loop=2,
                                    torch_func=64, optuna=4),
                         mlp=dict(jax_step_loop=1, jax_scan_loop=1, sklearn=1, torch_loop=1,
                                  torch_func=4)),
                  chunks=[], anchor=dict(ridge=32, mlp=4), big=32, small=8),
    "cpu": dict(ridge_n=[16, 256, 1024, 4096, 16384], mlp_n=[8, 64, 256],
                reps=dict(ridge={16: 5, 256: 5, 1024: 5, 4096: 3, 16384: 3},
                          mlp={8: 3, 64: 2, 256: 1}), memory_n=100_000,
                one_process=False, repeat_under=3.0,
                sub=dict(ridge=dict(jax_step_loop=16, jax_scan_loop=64, sklearn=64,
                                    torch_loop=8, torch_func=16384, optuna=128),
                         mlp=dict(jax_step_loop=4, jax_scan_loop=8, sklearn=16, torch_loop=4,
                                  torch_func=256)),
                chunks=[256, 512, 1024, 2048, 4096, 8192],
                anchor=dict(ridge=1024, mlp=256), big=16384, small=16),
    # On an accelerator: bigger N; the chunk sweep includes the CPU-tuned default (512)
    # and one chunk for everything, so the run shows which max_chunk the device wants.
    "gpu": dict(ridge_n=[1024, 16384, 65536, 262144], mlp_n=[256, 1024, 4096],
                reps=dict(ridge=3, mlp=2), memory_n=100_000, one_process=False,
                repeat_under=3.0,
                sub=dict(ridge=dict(jax_step_loop=16, jax_scan_loop=64, sklearn=64,
                                    torch_loop=8, torch_func=16384, optuna=128),
                         mlp=dict(jax_step_loop=4, jax_scan_loop=8, sklearn=16, torch_loop=4,
                                  torch_func=1024)),
                chunks=[512, 4096, 32768, 262144], anchor=dict(ridge=16384, mlp=1024),
                big=262144, small=1024),
}

NAMES = {
    "jax_step_loop": "JAX: loop of jitted step",
    "jax_scan_loop": "JAX: loop of jitted scan",
    "jax_vmap": "JAX: jit(vmap(scan)) by hand",
    "jax_vmap_2dev": "JAX: jit(vmap(scan)) by hand, 2 dev",
    "jax_vmap_val_only": "JAX: vmap by hand, no loss curve",
    "jaxhp": "jaxhp.sweep",
    "jaxhp_2dev": "jaxhp.sweep, 2 dev",
    "sklearn": "sklearn GridSearchCV",
    "torch_loop": "PyTorch loop",
    "torch_func": "PyTorch torch.func vmap",
    "optuna": "Optuna TPE + jitted run",
}


# ------------------------------------------------------------------ workers
def run_worker(jobs: list[dict], n_devices: int | None, in_process: bool = False
               ) -> list[dict]:
    """Runs jobs in a fresh Python process; ``n_devices`` forces that many CPU devices.

    ``in_process``: runs them here instead (quick mode), when this process already has
    the devices asked for.
    """
    if in_process:
        import jax

        if n_devices in (None, len(jax.local_devices())):
            from bench import worker

            return worker.run_jobs(jobs)
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(FORCE_DEVICES)]
    if n_devices:
        flags.append(f"{FORCE_DEVICES}={n_devices}")
    env["XLA_FLAGS"] = " ".join(flags)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as tmp:
        jp, op = Path(tmp) / "jobs.json", Path(tmp) / "out.json"
        jp.write_text(json.dumps(jobs))
        proc = subprocess.run([sys.executable, "-m", "bench.worker", str(jp), str(op)],
                              env=env, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0 or not op.exists():
            err = (proc.stderr or proc.stdout)[-2000:]
            return [dict(j, error=f"worker failed (rc={proc.returncode}): {err}") for j in jobs]
        return json.loads(op.read_text())["results"]


# --------------------------------------------------------------- main work
def _describe(label: str, r: dict, seconds: float | None = None) -> str:
    if "skipped" in r:
        return f"  skip {label}: {r['skipped']}"
    if "error" in r:
        return f"  FAILED {label}: {r['error']}"
    timed = f" ({r['n_timed']} timed)" if r.get("extrapolated") else ""
    took = f" [{seconds:.1f} s]" if seconds is not None else ""
    return (f"  {label}: {r['settings_per_s']:.4g} settings/s{timed}, best val "
            f"{r['best_val']:.4g}, best of {r.get('runs', 1)}{took}")


def _safe(label: str, fn, *args, repeat_under: float = 0.0, quiet: bool = False,
          **kwargs) -> dict:
    """Runs a competitor; repeats it (up to 3 runs, best kept) while a run is cheap."""
    from bench.common import Missing, PeakRSS

    t0, best = time.perf_counter(), None
    for _ in range(3):
        t1 = time.perf_counter()
        try:
            with PeakRSS() as mem:
                out = fn(*args, **kwargs)
            out.setdefault("peak_rss", mem.peak)
        except Missing as e:
            if not quiet:
                print(f"  skip {label}: {e}", flush=True)
            return {"skipped": str(e)}
        except Exception as e:  # noqa: BLE001 - one competitor failing must not stop the bench
            if not quiet:
                print(f"  FAILED {label}: {type(e).__name__}: {e}", flush=True)
            return {"error": f"{type(e).__name__}: {e}"}
        out["runs"] = (best or {}).get("runs", 0) + 1
        if best is None or out["settings_per_s"] > best["settings_per_s"]:
            best = dict(out, compile_s=best["compile_s"] if best else out["compile_s"])
        best["runs"] = out["runs"]
        if time.perf_counter() - t1 > repeat_under:
            break
    if not quiet:
        print(_describe(label, best, time.perf_counter() - t0), flush=True)
    return best


def _reps(cfg: dict, name: str, n: int) -> int:
    r = cfg["reps"][name]
    return r if isinstance(r, int) else r.get(n, 1)


def bench_task(name: str, cfg: dict, device_configs: list, torch_device: str) -> dict:
    from bench import tasks

    task = tasks.get(name)
    ns = cfg[f"{name}_n"]
    sub = cfg["sub"][name]
    out: dict = {"n": ns, "flops_per_setting": task.flops_per_setting, "metric": task.metric,
                 "mode": task.mode, "by_n": {str(n): {} for n in ns}}
    print(f"\n== {name}: {task.steps} steps, N = {ns}", flush=True)

    # 1. vmapped programs, timed round-robin in a fresh process per N and device setup
    #    (quick mode: one process for all N)
    for nd in device_configs:
        suffix = "" if nd in (None, 1) else f"_{nd}dev"
        comps = ["jaxhp", "vmap"]  # jaxhp first: its peak memory is not inflated by others
        if name == "ridge" and suffix == "":
            comps.append("vmap_val_only")
        jobs = [{"task": name, "kind": "compare", "n": n, "reps": _reps(cfg, name, n),
                 "competitors": comps} for n in ns]
        batches = [jobs] if cfg["one_process"] else [[j] for j in jobs]
        for batch in batches:
            t0 = time.perf_counter()
            for job, res in zip(batch, run_worker(batch, nd, cfg.get("in_process", False))):
                n = job["n"]
                for comp in comps:
                    key = {"vmap": "jax_vmap", "vmap_val_only": "jax_vmap_val_only",
                           "jaxhp": "jaxhp"}[comp] + suffix
                    c = res["by_competitor"][comp] if "by_competitor" in res else res
                    out["by_n"][str(n)][key] = c
                    msg = c.get("error") or (
                        f"{c['settings_per_s']:.4g} settings/s, compile {c['compile_s']:.2f} s,"
                        f" best val {c['best_val']:.4g}")
                    print(f"  N={n} {key}: {msg}", flush=True)
            print(f"  [worker N={[j['n'] for j in batch]} devices={nd or 'all'}: "
                  f"{time.perf_counter() - t0:.1f} s]", flush=True)

    # 2. per-setting competitors, timed once on a subset (cost per setting extrapolated),
    #    and torch.func ensembling at every N (its cost depends on N); each in a fresh
    #    process (quick mode: one process for all), so its peak memory is its own
    n_max = max(ns)
    jobs = [{"task": name, "kind": "competitor", "name": key, "n": n_max,
             "n_timed": sub[key], "torch_device": torch_device,
             "repeat_under": cfg["repeat_under"]}
            for key in ("jax_step_loop", "jax_scan_loop", "sklearn", "torch_loop", "optuna")
            if key in sub]
    jobs += [{"task": name, "kind": "competitor", "name": "torch_func", "n": n,
              "n_timed": sub["torch_func"], "torch_device": torch_device,
              "repeat_under": cfg["repeat_under"]} for n in ns]
    batches = [jobs] if cfg["one_process"] else [[j] for j in jobs]
    out["per_setting"] = {}
    for batch in batches:
        t0 = time.perf_counter()
        results = run_worker(batch, None, cfg.get("in_process", False))
        for job, res in zip(batch, results):
            res = {k: v for k, v in res.items() if k not in ("kind", "task", "name")}
            key = job["name"]
            label = key if key != "torch_func" else f"torch_func N={job['n']}"
            print(_describe(label, res, time.perf_counter() - t0 if len(batch) == 1 else None),
                  flush=True)
            if key == "torch_func":
                out["by_n"][str(job["n"])][key] = res
                continue
            out["per_setting"][key] = res
            for n in ns:
                if "settings_per_s" in res:
                    out["by_n"][str(n)][key] = dict(res, n=n, seconds=n / res["settings_per_s"],
                                                    extrapolated=res["n_timed"] < n)
                else:
                    out["by_n"][str(n)][key] = res
    return out


def run_competitor(job: dict) -> dict:
    """One per-setting or PyTorch competitor (called inside a worker process)."""
    from bench import jax_impls, optuna_impl, sklearn_impls, tasks, torch_impls

    task, n, k, dev = tasks.get(job["task"]), job["n"], job["n_timed"], job["torch_device"]
    fns = {
        "jax_step_loop": lambda: jax_impls.step_loop(task, n, k),
        "jax_scan_loop": lambda: jax_impls.scan_loop(task, n, k),
        "sklearn": lambda: sklearn_impls.grid_search(task, n, k),
        "torch_loop": lambda: torch_impls.loop(task, n, k, dev),
        "optuna": lambda: optuna_impl.tpe(task, n, k),
        "torch_func": lambda: torch_impls.func_ensemble(task, n, k, dev),
    }
    return _safe(job["name"], fns[job["name"]], repeat_under=job["repeat_under"], quiet=True)


def chunk_sweep(cfg: dict, nd) -> list[dict]:
    """jaxhp on the big ridge sweep at several ``max_chunk`` values (one process each)."""
    n, rows = cfg["big"], []
    for c in cfg["chunks"]:
        if c > n:
            continue
        res = run_worker([{"task": "ridge", "kind": "compare", "n": n, "reps": 1,
                           "competitors": ["jaxhp"], "kwargs": {"max_chunk": c}}], nd)[0]
        res = res["by_competitor"]["jaxhp"] if "by_competitor" in res else res
        res["max_chunk"] = c
        rows.append(res)
        msg = res.get("error") or (
            f"{res['settings_per_s']:.4g} settings/s (engine "
            f"{res['engine_settings_per_s']:.4g}), compile {res['compile_s']:.2f} s")
        print(f"  max_chunk={c}: {msg}", flush=True)
    return rows


# ------------------------------------------------------------------ report
def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k != "vals"}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def headline(by_n: dict) -> tuple[str | None, dict | None]:
    """The faster of jaxhp's device configurations (warm wall time)."""
    cands = [(k, v) for k, v in by_n.items() if k.startswith("jaxhp") and "settings_per_s" in v]
    if not cands:
        return None, None
    return max(cands, key=lambda kv: kv[1]["settings_per_s"])


def check_results(task_name: str, res: dict) -> None:
    """Adds per-competitor checks: best validation value against jaxhp on the same settings."""
    import numpy as np

    for comps in res["by_n"].values():
        ref = comps.get("jaxhp") or comps.get("jaxhp_2dev")
        if not ref or "vals" not in ref:
            continue
        ref_vals = np.asarray(ref["vals"], np.float64)
        better = np.nanmin if res["mode"] == "min" else np.nanmax
        for key, c in comps.items():
            if "vals" not in c or key.startswith("jaxhp"):
                continue
            v = np.asarray(c["vals"], np.float64)
            k = min(len(v), len(ref_vals))
            if c.get("own_settings"):
                ref_best = float(better(ref_vals))  # Optuna chooses its own settings
            else:
                ref_best = float(better(ref_vals[:k])) if k else float("nan")
                both = np.isfinite(v[:k]) & np.isfinite(ref_vals[:k])
                if both.any():
                    diff = np.abs(v[:k] - ref_vals[:k])[both]
                    c["max_abs_diff_vs_jaxhp"] = float(np.max(diff))
            c["jaxhp_best_same_settings"] = ref_best
            tol = 0.05 * abs(ref_best) if res["mode"] == "min" else 0.03
            c["comparable"] = bool(abs(c["best_val"] - ref_best) <= tol) \
                if np.isfinite(c["best_val"]) else False


def evaluate_targets(results: dict, cfg: dict, quick: bool) -> dict:
    t: dict = {}
    peak = results["peak"]["matmul_gflops"]

    def rate(task, n, key):
        c = results[task]["by_n"].get(str(n), {}).get(key, {})
        return c.get("settings_per_s")

    def add(name, value, target, op, why=""):
        met = None if value is None else (value >= target if op == ">=" else value <= target)
        t[name] = {"value": value, "target": f"{op} {target}", "met": met, "note": why}

    a = cfg["anchor"]["ridge"]
    if "ridge" in results:
        hk, h = headline(results["ridge"]["by_n"][str(a)])
        hr = h["settings_per_s"] if h else None
        same = "jax_vmap" + ("_2dev" if hk and hk.endswith("_2dev") else "")
        like = rate("ridge", a, same)
        add("ridge_vs_hand_vmap", hr / like if hr and like else None, 0.9, ">=",
            f"{hk} / {same} at N={a} (same device configuration)")
        eng = h.get("engine_settings_per_s") if h else None
        add("ridge_engine_vs_hand_vmap", eng / like if eng and like else None, 0.9, ">=",
            f"{hk} compiled calls only (run_seconds, no Python around them) / {same}")
        for key, target in (("jax_step_loop", 100), ("sklearn", 60), ("torch_func", 15)):
            r = rate("ridge", a, key)
            add(f"ridge_vs_{key}", hr / r if hr and r else None, target, ">=",
                f"{hk} / {key} at N={a}")
        big, small = cfg["big"], cfg["small"]
        hb = headline(results["ridge"]["by_n"].get(str(big), {}))[1]
        add("ridge_big_keeps_rate", hb["settings_per_s"] / hr if hb and hr else None, 1.0, ">=",
            f"jaxhp settings/s at N={big} over N={a}")
        comp = []
        for n in (small, big):
            c = results["ridge"]["by_n"].get(str(n), {})
            k = headline(c)[0]
            comp.append(c.get(k, {}).get("compile_s") if k else None)
        add("ridge_compile_flat", comp[1] / comp[0] if all(comp) else None, 1.2, "<=",
            f"jaxhp compile seconds at N={big} over N={small}")
        mem = results.get("memory", {})
        add("ridge_memory_gib", mem.get("process_max_rss", 0) / 2 ** 30 if mem.get(
            "process_max_rss") else None, 2.0, "<=",
            f"peak RSS of a process sweeping N={cfg['memory_n']}, loss_every=0")
    if "mlp" in results:
        m = cfg["anchor"]["mlp"]
        hk, h = headline(results["mlp"]["by_n"][str(m)])
        hr = h["settings_per_s"] if h else None
        f = results["mlp"]["flops_per_setting"]
        add("mlp_peak_fraction", hr * f / 1e9 / peak if hr else None, 0.5, ">=",
            f"{hk} matmul GFLOP/s at N={m} over measured peak {peak:.0f}")
        for key, target in (("sklearn", 2.0), ("torch_func", 1.0)):
            r = rate("mlp", m, key)
            add(f"mlp_vs_{key}", hr / r if hr and r else None, target, ">=",
                f"{hk} / {key} at N={m}")
    if quick:
        for v in t.values():
            v["note"] += " (quick mode: tiny N, not meaningful)"
    return t


def print_report(results: dict, cfg: dict) -> None:
    from bench.common import fmt, fmt_rate, print_table

    peak = results["peak"]["matmul_gflops"]
    m = results["machine"]
    print(f"\nMachine: {m['cores']} cores, {m['cpu_model']}; devices {m['devices']}; "
          f"matmul peak {peak:.0f} GFLOP/s, copy {results['peak']['copy_gbs']:.1f} GB/s")
    for task in ("ridge", "mlp"):
        if task not in results:
            continue
        res, a = results[task], cfg["anchor"][task]
        ns = res["n"]
        keys = [k for k in NAMES if any(k in res["by_n"][str(n)] for n in ns)]
        hk, h = headline(res["by_n"][str(a)])
        print(f"\n{task}: settings/s by N; details at N={a} (speed-up = {NAMES.get(hk, hk)}"
              f" / row; %peak of {peak:.0f} GFLOP/s; * = extrapolated from a subset)")
        head = ["competitor"] + [f"N={n}" for n in ns] + [
            "jaxhp x", "compile s", "%peak", "peak MB", f"best val {res['metric']}", "check"]
        rows = []
        for k in keys:
            row = [NAMES[k]]
            for n in ns:
                c = res["by_n"][str(n)].get(k, {})
                s = fmt_rate(c.get("settings_per_s"))
                row.append(s + ("*" if c.get("extrapolated") else ""))
            c = res["by_n"][str(a)].get(k, {})
            r = c.get("settings_per_s")
            sp = h["settings_per_s"] / r if h and r else None
            pct = 100 * r * res["flops_per_setting"] / 1e9 / peak if r else None
            mem = c.get("peak_rss")
            chk = c.get("comparable")
            ref = c.get("jaxhp_best_same_settings")
            best = fmt(c.get("best_val"), ".4g") + (f" ({fmt(ref, '.4g')})" if ref else "")
            row += [fmt(sp, ".3g") if k != hk else "1", fmt(c.get("compile_s"), ".2f"),
                    fmt(pct, ".2g"), fmt(mem / 2 ** 20 if mem else None, ".0f"), best,
                    "-" if chk is None else ("ok" if chk else "CHECK")]
            if "skipped" in c or "error" in c:
                row[-1] = "skipped" if "skipped" in c else "error"
            rows.append(row)
        print_table(head, rows)
        comp = {k: [fmt(res["by_n"][str(n)].get(k, {}).get("compile_s"), ".2f") for n in ns]
                for k in ("jax_vmap", "jaxhp", "jaxhp_2dev")}
        print("compile s by N: " + "; ".join(f"{NAMES[k]} {comp[k]}" for k in comp))
        eng = [fmt_rate(res["by_n"][str(n)].get(hk or "jaxhp", {}).get("engine_settings_per_s"))
               for n in ns]
        print(f"{NAMES.get(hk, hk)} engine only (run_seconds, no Python around it): {eng}")
    if results.get("memory"):
        mm = results["memory"]
        if "error" in mm:
            print(f"\nmemory run failed: {mm['error']}")
        else:
            print(f"\nridge N={mm['n']:,} (loss_every=0, {mm['n_devices']} dev): "
                  f"{mm['settings_per_s']:,.0f} settings/s incl. compile, peak RSS "
                  f"{mm['process_max_rss'] / 2 ** 30:.2f} GiB, chunk {mm['chunk_size']} x "
                  f"{mm['n_chunks']}")
    if results.get("chunks"):
        print(f"\njaxhp ridge N={cfg['big']} by max_chunk: " + ", ".join(
            f"{r['max_chunk']}: {fmt_rate(r.get('settings_per_s'))}"
            f" (engine {fmt_rate(r.get('engine_settings_per_s'))})" for r in results["chunks"]))
    print("\nTargets:")
    for k, v in results["targets"].items():
        met = {True: "MET", False: "not met", None: "n/a"}[v["met"]]
        print(f"  {k:26s} {fmt(v['value'], '.3g'):>8s} (target {v['target']}): {met}  "
              f"[{v['note']}]")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny N: a smoke run in seconds")
    ap.add_argument("--gpu", action="store_true",
                    help="bigger N for a machine with an accelerator (records the device)")
    ap.add_argument("--tasks", default="ridge,mlp", help="comma list: ridge,mlp")
    ap.add_argument("--without", default="",
                    help="comma list of optional packages to treat as missing (torch,optuna,"
                         "sklearn): their competitors skip as if not installed")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"),
                    help="directory for the JSON results")
    ap.add_argument("--no-2dev", action="store_true",
                    help="skip the runs sharded over 2 forced CPU devices")
    args = ap.parse_args(argv)
    if args.quick and args.gpu:
        ap.error("--quick and --gpu exclude each other")
    if args.without:
        os.environ["JAXHP_BENCH_WITHOUT"] = args.without
        from bench import common

        common.HIDDEN.update(filter(None, args.without.split(",")))
    mode = "quick" if args.quick else ("gpu" if args.gpu else "cpu")
    if args.quick:  # shorter runs (bench/tasks.py), here and in the worker processes
        os.environ["JAXHP_BENCH_QUICK"] = "1"
    cfg = MODES[mode]
    t_start = time.perf_counter()

    import jax

    from bench import peak
    from bench.common import machine_info

    machine = machine_info()
    on_cpu = jax.default_backend() == "cpu"
    if args.gpu and on_cpu:
        print("note: --gpu on a machine whose JAX backend is the CPU", flush=True)
    # On a CPU, compare one device with the population sharded over one device per core.
    device_configs = [1] if not on_cpu else [1, 2]
    if args.no_2dev or not on_cpu:
        device_configs = [None] if not on_cpu else [1]
    torch_device = "cpu"
    if not on_cpu:
        try:
            import torch

            torch_device = "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            pass
    print(f"jaxhp bench, mode {mode}: {machine['cores']} cores, {machine['cpu_model']}, "
          f"JAX {machine['versions']['jax']} on {machine['devices']}", flush=True)
    print("measuring machine peak ...", flush=True)
    results: dict = {"mode": mode, "machine": machine, "device_configs": device_configs,
                     "torch_device": torch_device, "config": cfg}
    results["peak"] = peak.measure(quick=args.quick, gpu=not on_cpu)
    print(f"  matmul {results['peak']['matmul_gflops']:.0f} GFLOP/s, copy "
          f"{results['peak']['copy_gbs']:.1f} GB/s", flush=True)
    for task in [t for t in args.tasks.split(",") if t]:
        results[task] = bench_task(task, cfg, device_configs, torch_device)
        check_results(task, results[task])
    if "ridge" in results:
        nd = device_configs[-1]
        print(f"\n== ridge N={cfg['memory_n']:,}, loss_every=0: peak memory "
              f"(fresh process, devices={nd or 'all'})", flush=True)
        results["memory"] = run_worker([{"task": "ridge", "kind": "jaxhp_memory",
                                         "n": cfg["memory_n"],
                                         "kwargs": {"loss_every": 0}}], nd)[0]
        if cfg["chunks"]:
            print(f"\n== ridge N={cfg['big']}: jaxhp by max_chunk (devices={nd or 'all'})",
                  flush=True)
            results["chunks"] = chunk_sweep(cfg, nd)
    if not args.quick:  # the machine is shared: keep the higher of two measurements
        again = peak.measure(gpu=not on_cpu)
        results["peak_start"], results["peak_end"] = results["peak"], again
        results["peak"] = max(results["peak"], again, key=lambda p: p["matmul_gflops"])
        print(f"machine peak again: matmul {again['matmul_gflops']:.0f} GFLOP/s (kept "
              f"{results['peak']['matmul_gflops']:.0f})", flush=True)
    results["machine"]["load_average_end"] = list(os.getloadavg())
    results["targets"] = evaluate_targets(results, cfg, args.quick)
    results["total_seconds"] = time.perf_counter() - t_start
    print_report(results, cfg)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"bench-{mode}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_strip(results), indent=1, default=str))
    tmp.replace(path)
    (out_dir / f"latest-{mode}.json").write_text(path.read_text())
    print(f"\nwrote {path} ({results['total_seconds']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
