"""The main job: ``jaxhp demo`` (``python -m jaxhp`` in a real process once; the
argument checks in-process through :func:`jaxhp.cli.main`)."""

import subprocess
import sys

import pytest

import jaxhp.cli


@pytest.mark.slow
def test_demo_runs_the_seed_workflow_end_to_end():
    out = subprocess.run([sys.executable, "-m", "jaxhp", "demo", "--settings", "64",
                          "--seeds", "2", "--steps", "100"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    assert "64 settings x 2 seeds = 128 models, 1 compiled program(s)" in out
    assert "jaxhp.sweep" in out and "sklearn RidgeCV" in out
    row = next(line for line in out.splitlines() if line.startswith("jaxhp.sweep"))
    val, test = (float(x) for x in row.split()[-5:-3])
    assert 0.2 < val < 1.0 and 0.2 < test < 1.0  # standardised MSE: far below 1 (= mean)


def test_demo_rejects_unknown_task(capsys):
    with pytest.raises(SystemExit) as exit_:
        jaxhp.cli.main(["demo", "--task", "mnist"])
    assert exit_.value.code == 2 and "invalid choice: 'mnist'" in capsys.readouterr().err
