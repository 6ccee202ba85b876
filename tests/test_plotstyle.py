"""Every figure jaxnet draws follows one style (issue 16 item 5): each series its own colour,
every axis labelled, a title; built here from synthetic run records (no simulation)."""
import numpy as np
import pytest

from jaxnet import plotstyle as ps
from jaxnet import report
from jaxnet.market import report as market_report

BEHAVIOURS = ["honest"] * 6 + ["noise", "copier", "desync", "wrong_data", "free_rider",
                               "malformed", "copier_first", "partial_copier", "stale_copier",
                               "scaled_copier"]


def _sim_records(n_rounds: int = 5, n: int = 16, v: int = 3) -> list[dict]:
  rng = np.random.default_rng(0)
  recs = []
  for w in range(n_rounds):
    weights = rng.dirichlet(np.ones(n))
    recs.append({"round": w, "val_loss": 5.0 - 0.1 * w,
                 "weight_by_class": {b: float(weights[[x == b for x in BEHAVIOURS]].sum())
                                     for b in sorted(set(BEHAVIOURS))},
                 "report": {"bma": rng.uniform(-1, 1, n).tolist(),
                            "ordinal": rng.normal(0, 5, n).tolist(), "weight": weights.tolist()},
                 "ledger": {"epoch": w, "stake_units": [4, 2, 1][:v], "validator_units":
                            rng.integers(0, 9, v).tolist(), "miner_units": rng.integers(0, 9, n).tolist()}})
  return recs


def _check(fig):
  try:
    assert ps.problems(fig) == []
  finally:
    ps.pyplot().close(fig)


@pytest.mark.parametrize("n", [1, 7, 10, 11, 16, 20, 21, 40, 41, 256])
def test_palette_colours_are_distinct(n):
  cols = ps.palette(n)
  assert len(cols) == n and len({tuple(np.round(c, 3)) for c in cols}) == n


def test_run_figures_follow_the_style():
  figs = report.run_figures(_sim_records(), BEHAVIOURS)
  assert set(figs) == {"loss.png", "weights.png", "scores.png"}
  for fig in figs.values():
    _check(fig)


def test_uid_0_and_uid_10_no_longer_share_a_colour():
  """matplotlib's 10-colour cycle drew '0 honest' and '10 free_rider' in the same blue."""
  fig = report.run_figures(_sim_records(), BEHAVIOURS)["scores.png"]
  lines = {ln.get_label(): ln.get_color() for ln in fig.axes[1].get_lines()}
  assert lines["0 honest"] != lines["10 free_rider"]
  ps.pyplot().close(fig)


def test_chain_and_market_figures_follow_the_style():
  _check(report.chain_figure(_sim_records(), BEHAVIOURS, ["honest", "sampled:4", "copier:consensus"]))
  rng = np.random.default_rng(1)
  labels = ["honest"] * 5 + ["noise", "cabal", "cabal"]
  recs = [{"block": b, "stake": rng.uniform(1, 2, 8).tolist(), "W": rng.dirichlet(np.ones(8), 8).tolist(),
           "value": rng.normal(0, 1, 8).tolist(), "ledger": {"paid": rng.integers(0, 9, 8).tolist()}}
          for b in range(4)]
  _check(market_report.figure(recs, labels))


def test_problems_finds_what_breaks_the_style():
  plt = ps.pyplot()
  fig, ax = plt.subplots()
  ax.plot([0, 1], [0, 1], color="C0", label="a")
  ax.plot([0, 1], [1, 0], color="C0", label="b")
  got = ps.problems(fig)
  assert "no title" in got and any("no x label" in p for p in got)
  assert any("share a colour" in p for p in got)
  plt.close(fig)
