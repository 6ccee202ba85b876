"""Does weight copying pay? Dividends per unit stake of a weight copier against honest
validators, for reveal periods 0, 1, 2 tempos and Yuma 2 / Yuma 3 (+ liquid alpha).

  python experiments/weight_copying.py [--seeds 0 1 2] [--draws 16] [--rounds 100]
  python experiments/weight_copying.py --plot-only   # re-draw the PNG from the JSON

Intended property (bittensor.md §3 item 4): copying does not pay once commit-reveal delays
what a copier can see. Each seed records a live sim-tiny Gauntlet network with 10
validators (`_validators.record`, 50 epochs of 2 rounds); the chain replays it with the 5
first full validators honest and a sixth copying (the stake-weighted consensus of the
revealed rows, or validator 0's revealed row), 10 % of the stake, the honest 90 % drawn
~ N(1, 0.3^2) per validator (`--draws` draws, vmapped with the seeds in one call per
variant). The ratio is the copier's dividends per unit stake over the honest validators'
(> 1: copying pays), summed from the first epoch at which every variant has revealed the
honest validators' first non-empty rows (before it, emission falls back to stake for all).
Writes results/weight_copying.{json,png}.
"""
from __future__ import annotations

import json
import time

import numpy as np

from _common import out_paths, plot_only, save_figure, spread, write_json
from _validators import args_and_recordings, first_paid_epoch, replay, stake_draws
from jaxnet.ledger import LedgerConfig, YumaConfig
from jaxnet.sim import chain

HONEST, COPIER, COPIER_SHARE = [0, 1, 2, 3, 4], 5, 0.1
MAX_R = 2
YUMAS = {"yuma2": YumaConfig(), "yuma3": YumaConfig(yuma3=True),
         "yuma3+liquid": YumaConfig(yuma3=True, liquid_alpha=True)}


def ratio(logs, skip: int) -> np.ndarray:
  """[S, D] copier dividends per unit stake / honest ones, summed over epochs >= skip."""
  units = logs["validator_units"][:, :, skip:].sum(2).astype(np.float64)   # [S, D, V]
  stake = logs["stake_units"][:, :, 0].astype(np.float64)                    # initial stake
  per = units / stake
  return per[..., COPIER] / (units[..., HONEST].sum(-1) / stake[..., HONEST].sum(-1))


def main(argv=None):
  if plot_only(argv, "weight_copying", plot):
    return
  args, rows, present, _ = args_and_recordings(__doc__, argv, rounds=100)
  V = COPIER + 1
  rows = rows[:, :, :V]
  stakes = stake_draws(np.random.default_rng(0), args.draws,
                       [(HONEST, 1 - COPIER_SHARE), ([COPIER], COPIER_SHARE)], V)
  start = first_paid_epoch(rows, HONEST, MAX_R)
  out = {"seeds": args.seeds, "draws": args.draws, "rounds": args.rounds, "epochs": int(rows.shape[1]),
         "copier_share": COPIER_SHARE, "first_epoch_measured": start, "variants": {}}
  curves = {}
  t0 = time.perf_counter()
  for source, arg in (("consensus", -1), ("validator0", 0)):
    kinds = tuple([("honest", 0)] * len(HONEST) + [("copier", arg)])
    for yname, y in YUMAS.items():
      for R in (0, 1, 2):
        spec = chain.ChainSpec(kinds=kinds, coalition=(), boost=1.0, square=False,
                               ledger=LedgerConfig(yuma=y, reveal_period=R))
        logs = replay(spec, stakes, rows, present)
        r_SxD = ratio(logs, start)
        per_seed = r_SxD.mean(1)
        key = f"{source}/{yname}/R{R}"
        out["variants"][key] = {
            "source": source, "yuma": yname, "reveal_period": R,
            "ratio": spread(per_seed), "ratio_per_seed": per_seed.tolist(),
            "ratio_draw_min": float(r_SxD.min()), "ratio_draw_max": float(r_SxD.max()),
            "copier_pays": bool(per_seed.mean() > 1.0),
            "copier_vtrust_mean": float(logs["vtrust"][..., start:, COPIER].mean()),
            "honest_vtrust_mean": float(logs["vtrust"][..., start:, :COPIER].mean())}
        units = logs["validator_units"].astype(np.float64)
        stake0 = logs["stake_units"][:, :, :1].astype(np.float64)
        per_ep = units / stake0   # [S, D, T, V]
        by_epoch = per_ep[..., COPIER] / np.maximum(per_ep[..., HONEST].mean(-1), 1e-12)
        curves[key] = by_epoch.mean((0, 1))
        # the last epoch: how far the late start has worn off (bonds are an EMA)
        out["variants"][key]["ratio_last_epoch"] = spread(by_epoch[:, :, -1].mean(1))
        print(f"{key:28s} copier/honest dividends per stake {per_seed.mean():.3f} "
              f"(seeds {np.round(per_seed, 3).tolist()}), last epoch "
              f"{out['variants'][key]['ratio_last_epoch']['mean']:.3f}")
  out["seconds_replay"] = time.perf_counter() - t0
  out["property_holds"] = {
      y: {f"R{R}": not out["variants"][f"consensus/{y}/R{R}"]["copier_pays"] for R in (0, 1, 2)}
      for y in YUMAS}
  # the figure's curves (mean over seeds and draws, per epoch), for --plot-only
  out["ratio_by_epoch"] = {k: np.round(c, 5) for k, c in curves.items()}
  json_path, png_path = out_paths("weight_copying")
  write_json(json_path, out)
  plot(json.loads(json_path.read_text()), png_path)


def plot(out: dict, path):
  """The copier's dividends per unit stake over the honest validators', per epoch, for every
  Yuma version and reveal period, from the JSON's `ratio_by_epoch`."""
  if "ratio_by_epoch" not in out:
    raise ValueError("this weight_copying JSON predates the saved per-epoch ratios "
                     "(`ratio_by_epoch`): re-run experiments/weight_copying.py to draw its figure")
  from jaxnet import plotstyle as ps
  plt = ps.pyplot()
  curves = out["ratio_by_epoch"]
  # a hue per Yuma version, darker to lighter with the reveal period: nine distinct colours
  shades = plt.get_cmap("tab20c").colors
  hue = {"yuma2": 0, "yuma3": 4, "yuma3+liquid": 8}
  names = {"yuma2": "Yuma 2", "yuma3": "Yuma 3", "yuma3+liquid": "Yuma 3 + liquid alpha"}
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), sharey=True)
  for ax, (source, what) in zip(axes, (("consensus", "a copier of the stake-weighted consensus"),
                                       ("validator0", "a copier of validator 0's row"))):
    for key, c in curves.items():
      if key.startswith(source + "/"):
        _, y, R = key.split("/")
        ax.plot(np.arange(len(c)), c, label=f"{names.get(y, y)}, reveal {R[1:]} tempo(s)",
                ls={"R0": "-", "R1": "--", "R2": ":"}[R], lw=1.6, color=shades[hue[y] + int(R[1:])])
    ax.axhline(1.0, color="k", lw=0.5, label="copying pays as much as honest work")
    ps.label(ax, "epoch (one tempo of 2 rounds)", "copier / honest dividends per unit stake\n"
             "(ratio; mean over seeds and stake draws)", title=what)
    ax.tick_params(labelleft=True)
  ps.legend_outside(axes[-1])
  ps.title(fig, f"Does weight copying pay? A copier with {out['copier_share']:.0%} of the stake "
                f"against honest validators, by reveal period (commit-reveal delay)")
  fig.tight_layout()
  return save_figure(fig, path)


if __name__ == "__main__":
  main()
