"""Does weight copying pay? Dividends per unit stake of a weight copier against honest
validators, for reveal periods 0, 1, 2 tempos and Yuma 2 / Yuma 3 (+ liquid alpha).

  python experiments/weight_copying.py [--seeds 0 1 2] [--draws 16] [--rounds 100]

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

import time

import numpy as np

from _common import out_paths, save_figure, spread, write_json
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
  json_path, png_path = out_paths("weight_copying")
  write_json(json_path, out)
  plot(curves, png_path)


def plot(curves: dict, path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
  for ax, source in zip(axes, ("consensus", "validator0")):
    for key, c in curves.items():
      if key.startswith(source):
        _, y, R = key.split("/")
        ax.plot(np.arange(len(c)), c, label=f"{y} {R}",
                ls={"R0": "-", "R1": "--", "R2": ":"}[R],
                color={"yuma2": "C0", "yuma3": "C1", "yuma3+liquid": "C2"}[y])
    ax.axhline(1.0, color="k", lw=0.5)
    ax.set_title(f"copier of the {source}", fontsize=9)
    ax.set_xlabel("epoch")
  axes[0].set_ylabel("copier / honest dividends per unit stake")
  handles, labels = axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="center right", fontsize=7)
  save_figure(fig, path, rect=(0, 0, 0.86, 1))


if __name__ == "__main__":
  main()
