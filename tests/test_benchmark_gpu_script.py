"""benchmarks/gpu.py runs only where a GPU is lent: checked end to end on the CPU here, so that device
time is never spent on a broken script."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


@pytest.mark.slow
def test_gpu_benchmark_runs_end_to_end_on_the_cpu():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--models", "cnn"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    row = next(line.split() for line in out.stdout.splitlines() if line.startswith("cnn "))
    # config, batch, train img/s vortex / plain / ratio, profile img/s vortex / plain / ratio, bf16, rho chg,
    # attack split, img/s, wall s
    assert len(row) == 13 and row[8] == "no" and row[9] == "-"
    assert all(float(v) > 0 for v in row[2:8] + row[10:])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the script would run")
def test_gpu_benchmark_without_a_gpu_says_so_in_one_line():
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1].startswith("gpu.py: --device cuda but torch.cuda.is_available()")
