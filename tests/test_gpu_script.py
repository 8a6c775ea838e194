"""benchmarks/gpu/run.sh in CI's smoke form: every part at toy size on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_script_runs_every_part_on_the_cpu(mini_glue, tmp_path):
    env = {**os.environ, "MANYTASK_GLUE_DIR": str(mini_glue), "PY": os.environ.get("PYTHON", "python")}
    import sys

    env["PY"] = sys.executable
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu" / "run.sh"), "--device", "cpu", "--dry-run",
                           "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "gpu.json").read_text())
    assert summary["dry_run"] and summary["device"] == "cpu" and summary["device_name"]
    parts = summary["parts"]
    assert {"gpu_tests", "train_fp32", "hf_ratio_fp32", "resume_on_cpu", "serve", "autocast_dtypes"} <= set(parts)
    assert all(p["ok"] for p in parts.values()), {k: p.get("error") for k, p in parts.items()}
    assert parts["autocast_dtypes"]["fp32"]["layer_output_dtypes"] == ["torch.float32"]
