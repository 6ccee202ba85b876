"""Noise, lazy, copier and cabal peers in the live market: their share of the emission and
their earnings per peer against an honest peer's; and every peer's loss with neighbours
against alone.

  python experiments/market_adversaries.py [--seeds 0 1 2] [--blocks 300]
  python experiments/market_adversaries.py --plot-only   # re-draw the PNG from the JSON

market-small as shipped (16 honest peers of graded data quality, 2 of each adversary, 6
random neighbours, fisher2020 valuation, the 2020 ledger). None of the adversaries runs an
encoder for its neighbours (a copier serves its victim's), so any emission they earn is an
infinite return on compute; the figure that matters is their earnings per peer relative to
an honest peer's (1 = paid like an honest peer). Writes results/market_adversaries.{json,png}.
"""
from __future__ import annotations

import argparse

import numpy as np

from _common import out_paths, plot_only, save_figure, spread, write_json


def main(argv=None):
  if plot_only(argv, "market_adversaries", plot):
    return
  from _market import run_market   # JAX and the market only when something runs
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  ap.add_argument("--blocks", type=int, default=300)
  args = ap.parse_args(argv)
  per = []
  for s in args.seeds:
    r = run_market("market-adversaries", s, ["--market.blocks", str(args.blocks)])
    beh = np.array(r["behaviours"])
    honest = beh == "honest"
    share = r["paid"] / r["paid"].sum()
    stake = np.asarray(r["hist"][-1]["stake"], np.float64)
    stake0 = np.asarray(r["hist"][0]["stake"], np.float64)
    per_honest = share[honest].mean()
    per.append({"seed": s,
                "emission_share": {c: float(share[beh == c].sum()) for c in sorted(set(beh))},
                "earnings_vs_honest": {c: float(share[beh == c].mean() / per_honest)
                                       for c in sorted(set(beh))},
                "stake_share_change": {c: float(stake[beh == c].sum() / stake.sum()
                                                - stake0[beh == c].sum() / stake0.sum())
                                       for c in sorted(set(beh))},
                "better_with_neighbours": float((r["loss"] < r["loss_alone"])[honest].mean()),
                "loss": float(r["loss"][honest].mean()),
                "loss_alone": float(r["loss_alone"][honest].mean()),
                "seconds": r["seconds"]})
    print(f"seed {s}: earnings per peer vs honest",
          {c: round(v, 3) for c, v in per[-1]["earnings_vs_honest"].items()},
          f"loss {per[-1]['loss']:.3f} vs alone {per[-1]['loss_alone']:.3f}")
  classes = list(per[0]["emission_share"])
  out = {"seeds": args.seeds, "blocks": args.blocks,
         "emission_share": {c: spread(p["emission_share"][c] for p in per) for c in classes},
         "earnings_vs_honest": {c: spread(p["earnings_vs_honest"][c] for p in per)
                                for c in classes},
         "stake_share_change": {c: spread(p["stake_share_change"][c] for p in per)
                                for c in classes},
         "honest_better_with_neighbours": spread(p["better_with_neighbours"] for p in per),
         "loss_with_neighbours": spread(p["loss"] for p in per),
         "loss_alone": spread(p["loss_alone"] for p in per), "per_seed": per}
  json_path, png_path = out_paths("market_adversaries")
  write_json(json_path, out)
  plot(out, png_path)


def plot(out: dict, path):
  """Each class's emission per peer against an honest peer's, from the JSON."""
  from jaxnet import plotstyle as ps
  plt = ps.pyplot()
  classes = list(out["earnings_vs_honest"])
  colours = ps.class_colours(classes, "market")
  fig, ax = plt.subplots(figsize=(7, 4))
  for i, c in enumerate(classes):
    e = out["earnings_vs_honest"][c]
    ax.bar(i, e["mean"], yerr=[[e["mean"] - e["min"]], [e["max"] - e["mean"]]], capsize=3,
           color=colours[c], label=c)
  ax.axhline(1.0, color="k", lw=0.8, ls="--", label="an honest peer's pay")
  ax.set_xticks(range(len(classes)), classes)
  ps.label(ax, "peer class", "emission per peer / an honest peer's\n(ratio; mean, min-max over seeds)",
           legend="")
  ps.title(fig, f"Market adversaries: what each class earns per peer against an honest peer\n"
                f"(market-small, {len(out['seeds'])} seeds, {out['blocks']} blocks)")
  return save_figure(fig, path)


if __name__ == "__main__":
  main()
