"""Every experiment's figure follows the shared style (issue 16 item 5) and is drawn from its
saved JSON alone: each series its own colour, every axis labelled, a title. No simulation
runs: the plot functions read results/<name>.json."""
import importlib.util
import json
import shutil
import sys
from pathlib import Path

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
             "validator_disagreement": "validator_disagreement",
             "market_collusion": "market_collusion", "market_value": "market_value",
             "weight_copying": "weight_copying"}
# what these three draw (per-block, per-peer and per-epoch curves) came into their JSON
# with the restyle: an older JSON is refused by name, not drawn wrong
LATER_KEYS = {"market_collusion": "curves", "market_value": "examples",
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


@pytest.mark.parametrize("name", sorted(LATER_KEYS))
def test_a_json_without_the_curves_is_refused_by_name(name, tmp_path):
  out = {k: v for k, v in saved(name).items() if k != LATER_KEYS[name]}
  with pytest.raises(ValueError, match=LATER_KEYS[name]):
    experiment(name).plot(out, tmp_path / "old.png")


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
