"""benchmarks/accelerator.py on a CPU: the same code as on a GPU, on tiny shapes (issue 15)."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


# slow (32 s, CI time): the benchmark's pieces stay in CI through their own tests (LossScore,
# the train step, the codec, the copy detector, Yuma); this runs the script end to end
@pytest.mark.slow
def test_accelerator_benchmark_runs_every_section_on_cpu(tmp_path, capsys):
  import accelerator
  out = tmp_path / "acc.json"
  res = accelerator.main(["--out", str(out), "--torch-peers", "0", "--reps", "1"])
  printed = capsys.readouterr().out
  assert printed.startswith("device: cpu"), printed[:200]
  assert res["size"] == "tiny" and not res["errors"], res["errors"]
  assert set(res["sections"]) == set(accelerator.SECTIONS)
  saved = json.loads(out.read_text())   # what was written is what was returned
  assert saved["sections"].keys() == res["sections"].keys()
  for row in res["sections"]["lossscore"]["rows"]:
    assert row["finite_exact"] and row["finite_first_order"]
    # exact: 3 forwards per peer and the shared one; first order: 2 per peer and a backward
    assert row["model_flop_exact"] / row["model_flop_first_order"] == (3 * row["P"] + 1) / (2 * row["P"] + 3)
  assert res["sections"]["copies"]["flags_ok"]
  for v in (res["sections"]["ceilings"]["matmul_tflops"], res["sections"]["train"]["tokens_per_s"],
            res["sections"]["compress"]["jax"]["compress_decode_gbs"],
            res["sections"]["yuma"]["jax_ms"]):
    assert np.isfinite(v) and v > 0
  assert "LossScore tiny P=8" in printed and "Yuma epoch 16x64" in printed
