"""Smoke test of bench/: ``python -m bench --quick`` runs end to end and writes its JSON.

Benchmarks assert no times; this only keeps the scripts from rotting. The subprocess
inherits the test run's cheap compile flags (tests/conftest.py): its figures mean nothing
here, and they cut this test from 76 to 56 s on 2 loaded cores. A
competitor whose package is missing (torch, optuna, scikit-learn) must skip
with a printed note, not fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _run_bench(out: Path, *extra: str) -> tuple[dict, str]:
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--no-2dev",
                           "--tasks", "ridge", "--out", str(out), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    print(proc.stdout)  # shown by pytest -s, or on failure
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(out.glob("bench-quick-*.json"))
    assert len(files) == 1 and (out / "latest-quick.json").exists()
    return json.loads(files[0].read_text()), proc.stdout


@pytest.mark.slow
def test_quick_bench_writes_every_section(tmp_path):
    res, stdout = _run_bench(tmp_path)
    assert res["mode"] == "quick"
    for key in ("cores", "cpu_model", "versions", "devices", "memory_bytes"):
        assert key in res["machine"]
    assert res["machine"]["versions"]["jax"]
    assert res["peak"]["matmul_gflops"] > 0 and res["peak"]["copy_gbs"] > 0
    for task in ("ridge",):  # the MLP task runs the same code on other data (25 s more)
        assert res[task]["flops_per_setting"] > 0
        for n, comps in res[task]["by_n"].items():
            for key in ("jaxhp", "jax_vmap", "jax_step_loop", "jax_scan_loop", "sklearn",
                        "torch_loop", "torch_func"):
                c = comps[key]
                assert "error" not in c, (task, n, key, c)
                if "skipped" not in c:
                    assert c["settings_per_s"] > 0 and c["compile_s"] >= 0
                    assert "best_val" in c and "vals" not in c  # per-setting values stripped
            assert comps["jaxhp"]["n_devices"] == 1
    ridge = res["ridge"]["by_n"]
    for comps in ridge.values():
        assert comps["jaxhp"]["best_val"] < 1.0  # standardised MSE: better than the mean
    assert "optuna" in next(iter(ridge.values()))
    assert res["memory"]["process_max_rss"] > 0
    for name in ("ridge_vs_hand_vmap", "ridge_vs_jax_step_loop", "ridge_compile_flat",
                 "ridge_memory_gib"):
        assert set(res["targets"][name]) == {"value", "target", "met", "note"}
    assert "Targets:" in stdout and "ridge: settings/s by N" in stdout


def test_missing_packages_skip_with_a_note(capsys, monkeypatch):
    from bench import common, run

    monkeypatch.setattr(common, "HIDDEN", {"torch"})
    with pytest.raises(common.Missing, match="torch"):
        common.optional("torch")

    def needs_torch():
        common.optional("torch")

    assert "skipped" in run._safe("torch_loop", needs_torch)
    assert "skip torch_loop" in capsys.readouterr().out


def test_the_bench_ridge_diverges_through_its_loss():
    """README (Health): 124 of the bench's 1,024 ridge settings diverge, each through its
    loss first, so the sweep's loss-checked program is their outcome: none runs twice."""
    import jax

    import jaxhp
    from bench import tasks

    task = tasks.get("ridge")
    assert task.steps == 500
    r = jaxhp.sweep(task.model, task.space(1024), task.split, key=jax.random.key(0),
                    base=task.base, progress=False, loss_every=0)
    assert int((r.diverged_at >= 0).any(axis=1).sum()) == 124
    assert sum(g.rechecked for g in r.groups) == 0 and r.compile_count == 1
