"""Does the market pay for value? Spearman correlation between each peer's cumulative
emission and its true marginal value, for each valuation method, and the loss with
neighbours against alone.

  python experiments/market_value.py [--seeds 0 1 2] [--blocks 300]
  python experiments/market_value.py --plot-only   # re-draw the PNG from the JSON

market.md §6: "the market pays contributors who create information-theoretic value". A
peer's true marginal value is the exact leave-one-out loss increase its embeddings spare
the peers that query it, summed over blocks (jaxnet.market.block). Each valuation
(fisher2020, the 2020 code's score; obd, its textbook form; loo, the exact leave-one-out;
shapley2022, the 2022 successor)
runs market-small without the cabal (16 honest peers of graded data quality, 2 noise,
2 lazy, 2 copiers; 6 random neighbours each) on every seed. Writes
results/market_value.{json,png}.
"""
from __future__ import annotations

import argparse

import numpy as np

import json

from _common import out_paths, plot_only, save_figure, spread, write_json
from _market import spearman

PEERS = '["honest:16", "noise:2", "lazy:2", "copier:2"]'
VALUATIONS = ("fisher2020", "obd", "loo", "shapley2022")


def main(argv=None):
  if plot_only(argv, "market_value", plot):
    return
  from _market import run_market   # JAX and the market only when something runs
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  ap.add_argument("--blocks", type=int, default=300)
  args = ap.parse_args(argv)
  out = {"seeds": args.seeds, "blocks": args.blocks, "peers": PEERS, "valuations": {}}
  examples = {}
  for v in VALUATIONS:
    per = []
    for s in args.seeds:
      r = run_market(f"market-value-{v}", s, ["--market.valuation", v, "--market.peers", PEERS,
                                              "--market.blocks", str(args.blocks)])
      beh = np.array(r["behaviours"])
      honest = beh == "honest"
      share = r["paid"] / r["paid"].sum()
      per.append({"seed": s, "spearman_all": spearman(r["paid"], r["value"]),
                  "spearman_honest": spearman(r["paid"][honest], r["value"][honest]),
                  "share_by_class": {c: float(share[beh == c].sum()) for c in sorted(set(beh))},
                  "better_with_neighbours": float((r["loss"] < r["loss_alone"])[honest].mean()),
                  "loss": float(r["loss"][honest].mean()),
                  "loss_alone": float(r["loss_alone"][honest].mean()),
                  "seconds": r["seconds"]})
      if s == args.seeds[0]:   # the figure's scatter: every peer of the first seed
        examples[v] = {"value": r["value"], "share": share, "behaviours": beh.tolist()}
      print(f"{v} seed {s}: Spearman(emission, value) all {per[-1]['spearman_all']:.3f}, honest "
            f"{per[-1]['spearman_honest']:.3f}; loss {per[-1]['loss']:.3f} vs alone "
            f"{per[-1]['loss_alone']:.3f}")
    out["valuations"][v] = {
        "spearman_all": spread(p["spearman_all"] for p in per),
        "spearman_honest": spread(p["spearman_honest"] for p in per),
        "honest_better_with_neighbours": spread(p["better_with_neighbours"] for p in per),
        "loss_with_neighbours": spread(p["loss"] for p in per),
        "loss_alone": spread(p["loss_alone"] for p in per),
        "share_by_class": {c: spread(p["share_by_class"][c] for p in per)
                           for c in per[0]["share_by_class"]},
        "per_seed": per}
  out["examples"] = examples
  json_path, png_path = out_paths("market_value")
  write_json(json_path, out)
  plot(json.loads(json_path.read_text()), png_path)


def plot(out: dict, path):
  """Emission share against true marginal value, every peer of the first seed, one panel per
  valuation, from the JSON's `examples`."""
  if "examples" not in out:
    raise ValueError("this market_value JSON predates the saved per-peer values (`examples`): "
                     "re-run experiments/market_value.py to draw its figure")
  from jaxnet import plotstyle as ps
  plt = ps.pyplot()
  examples, seed = out["examples"], out["seeds"][0]
  classes = sorted({b for e in examples.values() for b in e["behaviours"]},
                   key=lambda c: (c != "honest", c))
  colours = ps.class_colours(classes, "market")
  fig, axes = plt.subplots(1, len(examples), figsize=(4.2 * len(examples), 4), sharey=True,
                           squeeze=False)
  for ax, (v, e) in zip(axes[0], examples.items()):
    value, share, beh = np.asarray(e["value"]), np.asarray(e["share"]), np.asarray(e["behaviours"])
    for c in classes:
      sel = beh == c
      ax.scatter(value[sel], share[sel], label=c, s=18, color=colours[c])
    ps.label(ax, "true marginal value (nats: leave-one-out loss\nincrease it spares its queriers, summed)",
             "share of emission (fraction)",
             title=f"{v}: Spearman {spearman(share, value):.2f}")
    ax.tick_params(labelleft=True)
  ps.legend_outside(axes[0][-1], title="peer class")
  ps.title(fig, f"Does the market pay for value? Each peer's emission share against its true "
                f"marginal value, per valuation (seed {seed}, {out['blocks']} blocks)")
  fig.tight_layout()
  return save_figure(fig, path)


if __name__ == "__main__":
  main()
