"""Does the market pay for value? Spearman correlation between each peer's cumulative
emission and its true marginal value, for each valuation method, and the loss with
neighbours against alone.

  python experiments/market_value.py [--seeds 0 1 2] [--blocks 300]

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

from _common import out_paths, save_figure, spread, write_json
from _market import run_market, spearman

PEERS = '["honest:16", "noise:2", "lazy:2", "copier:2"]'
VALUATIONS = ("fisher2020", "obd", "loo", "shapley2022")


def main(argv=None):
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
      if s == args.seeds[0]:
        examples[v] = (r["value"], share, beh)
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
  json_path, png_path = out_paths("market_value")
  write_json(json_path, out)
  plot(examples, png_path, args.seeds[0])


def plot(examples: dict, path, seed: int) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(examples), figsize=(5 * len(examples), 4), sharey=True)
  for ax, (v, (value, share, beh)) in zip(np.atleast_1d(axes), examples.items()):
    for c in sorted(set(beh)):
      sel = beh == c
      ax.scatter(value[sel], share[sel], label=c, s=18)
    ax.set_title(f"{v} (seed {seed}): Spearman {spearman(share, value):.2f}", fontsize=9)
    ax.set_xlabel("true marginal value (leave-one-out, summed)")
  np.atleast_1d(axes)[0].set_ylabel("share of emission")
  np.atleast_1d(axes)[0].legend(fontsize=7)
  save_figure(fig, path)


if __name__ == "__main__":
  main()
