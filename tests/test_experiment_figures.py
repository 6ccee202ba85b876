"""Every experiment's figure follows the shared style (issue 16 item 5) and is drawn from its
saved JSON alone: each series its own colour, every axis labelled, a title. No simulation
runs: the plot functions read results/<name>.json."""
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxnet import plotstyle as ps

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "experiments"
RESULTS = ROOT / "results"
# the scripts import their helpers (_common, _market, _validators) as top-level modules;
# appended, not prepended, so that no script shadows an installed package (coverage)
if str(EXPERIMENTS) not in sys.path:
  sys.path.append(str(EXPERIMENTS))

# results/<json> -> the script that draws it
FROM_JSON = {"collusion_sweep": "collusion_sweep", "convergence": "convergence",
             "coverage": "coverage", "fairness-config": "fairness", "incentives": "incentives",
             "incentives-sparseloco": "incentives", "market_adversaries": "market_adversaries",
             "monte_carlo": "monte_carlo", "schemes": "schemes",
             "validator_collusion": "validator_collusion",
             "validator_disagreement": "validator_disagreement"}
# figures whose saved JSON predates what they draw (per-block or per-peer curves, now
# written by the scripts): checked on that JSON plus synthetic curves of the same shape
NEEDS_RERUN = {"market_collusion": "curves", "market_value": "examples",
               "weight_copying": "ratio_by_epoch"}


def experiment(script: str):
  """experiments/<script>.py as module `experiment_<script>` (experiments/ is no package)."""
  name = f"experiment_{script}"
  if name not in sys.modules:
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{script}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
  return sys.modules[name]


def saved(name: str) -> dict:
  path = RESULTS / f"{name}.json"
  if not path.exists():
    pytest.skip(f"no {path}")
  return json.loads(path.read_text())


def check(fig, png: Path):
  try:
    assert png.stat().st_size > 0
    assert ps.problems(fig) == []
  finally:
    ps.pyplot().close(fig)


@pytest.mark.parametrize("name", sorted(FROM_JSON))
def test_figure_from_saved_json_follows_the_style(name, tmp_path):
  png = tmp_path / f"{name}.png"
  check(experiment(FROM_JSON[name]).plot(saved(name), png), png)


def _synthetic(name: str, out: dict) -> dict:
  """`out` plus what main() now saves for the figure, in its shape, with made-up values."""
  rng = np.random.default_rng(0)
  out = dict(out)
  if name == "market_collusion":   # 30 blocks, not 300: the style does not depend on it
    out["curves"] = {m: {s: rng.uniform(0, 1, (len(out["shares"]), 30)).tolist()
                         for s in v["settings"]} for m, v in out["markets"].items()}
  elif name == "market_value":
    beh = ["honest"] * 16 + ["noise"] * 2 + ["lazy"] * 2 + ["copier"] * 2
    out["examples"] = {v: {"value": rng.normal(100, 80, len(beh)).tolist(),
                           "share": rng.dirichlet(np.ones(len(beh))).tolist(), "behaviours": beh}
                       for v in out["valuations"]}
  else:
    out["ratio_by_epoch"] = {k: rng.uniform(0, 1.5, out["epochs"]).tolist()
                             for k in out["variants"]}
  return out


@pytest.mark.parametrize("name", sorted(NEEDS_RERUN))
def test_figure_that_needs_a_rerun_follows_the_style(name, tmp_path):
  mod, out = experiment(name), saved(name)
  if NEEDS_RERUN[name] not in out:   # an old JSON: --plot-only says what is missing
    with pytest.raises(ValueError, match=NEEDS_RERUN[name]):
      mod.plot(out, tmp_path / "old.png")
    out = _synthetic(name, out)
  png = tmp_path / f"{name}.png"
  check(mod.plot(out, png), png)


def test_plot_only_redraws_from_the_json_and_runs_nothing(tmp_path, monkeypatch):
  import _common
  monkeypatch.setattr(_common, "RESULTS", tmp_path)
  for name in ("fairness-config", "validator_collusion"):
    saved(name)
    shutil.copy(RESULTS / f"{name}.json", tmp_path)
  experiment("fairness").main(["--plot-only", "fairness-config"])
  experiment("validator_collusion").main(["--plot-only"])   # default: its own name
  assert (tmp_path / "fairness-config.png").stat().st_size > 0
  assert (tmp_path / "validator_collusion.png").stat().st_size > 0


def test_problems_sees_errorbar_and_bar_series():
  """Errorbar and bar series keep their labels on containers: two in one colour are caught."""
  plt = ps.pyplot()
  fig, ax = plt.subplots()
  ax.errorbar([0, 1], [0, 1], yerr=[0.1, 0.1], color="C0", label="a")
  ax.errorbar([0, 1], [1, 0], yerr=[0.1, 0.1], color="C0", label="b")
  ax.bar([0], [1], color="C1", label="c")
  ax.bar([1], [1], color="C1", label="d")
  ax.set(xlabel="x", ylabel="y", title="t")
  assert any("2 series share a colour" in p for p in ps.problems(fig))
  plt.close(fig)


def test_write_json_puts_number_lists_on_one_line(tmp_path):
  import _common
  data = {"curve": [0.5, -1e-07, float("inf"), None, 3], "names": ["a, [1]", "b"],
          "rows": [[1, 2], [3, 4]]}
  path = tmp_path / "x.json"
  _common.write_json(path, data)
  text = path.read_text()
  assert '"curve": [0.5, -1e-07, Infinity, null, 3]' in text
  assert json.loads(text) == json.loads(json.dumps(data))
