"""Validators that sample 4 peers per round against validators that evaluate every peer:
how often an honest miner is clipped by the kappa-median for lack of agreement, and the
honest miners' emission lost to it.

  python experiments/validator_disagreement.py [--seeds 0 1 2] [--draws 16]

Each seed records a live sim-tiny network with 6 validators that evaluate every peer and 4
that sample 4 per round (the paper-era reference, gauntlet.md §15.2), each with its own
randomness (`_validators.record`). The chain replays three stake populations: all stake
on the full validators, all on the sampled ones, and half each; reveal period 1, Yuma 2
and Yuma 3 + liquid alpha; stakes ~ N(1, 0.3^2) (`--draws` draws, vmapped with the seeds).
Per epoch and honest miner with weight (prerank > 0): clipped when the kappa-median cut
more than 5 % of the stake-weighted weight it was given. "Lost" is the honest miners'
share of miner emission without clipping (prerank) minus with it (rank): what clipping
moved from honest miners to others. Writes results/validator_disagreement.{json,png}.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from _common import out_paths, spread, write_json
from _validators import FULL, SAMPLED, record, replay, stake_draws
from jaxnet.ledger import LedgerConfig, YumaConfig
from jaxnet.sim import chain

CLIPPED = 0.05   # a miner is "clipped" when the median cut > 5 % of its stake-weighted weight
SKIP = 1         # epoch 0 pays by stake (nothing revealed yet at reveal period 1)


def measure(logs, honest: np.ndarray) -> dict:
  pre = logs["prerank"][:, :, SKIP:].astype(np.float64)      # [S, D, T, N]
  cut = logs["clipped"][:, :, SKIP:].astype(np.float64)
  has = (pre > 0) & honest
  frac = np.where(has, cut / np.where(pre > 0, pre, 1), 0.0)
  clipped_rate = (frac > CLIPPED).sum((2, 3)) / np.maximum(has.sum((2, 3)), 1)   # [S, D]
  cut_share = (cut * honest).sum((2, 3)) / np.maximum((pre * honest).sum((2, 3)), 1e-12)
  rank = pre - cut
  share_pre = (pre * honest).sum(-1) / np.maximum(pre.sum(-1), 1e-12)      # [S, D, T]
  share_rank = (rank * honest).sum(-1) / np.maximum(rank.sum(-1), 1e-12)
  mu = logs["miner_units"][:, :, SKIP:].astype(np.float64)
  honest_emission = (mu * honest).sum((2, 3)) / np.maximum(mu.sum((2, 3)), 1)
  return {"clipped_rate": spread(clipped_rate.mean(1)),
          "honest_weight_cut": spread(cut_share.mean(1)),
          "honest_emission_lost": spread((share_pre - share_rank).mean((1, 2))),
          "honest_emission_share": spread(honest_emission.mean(1)),
          "vtrust_full": float(logs["vtrust"][:, :, SKIP:, :FULL].mean()),
          "vtrust_sampled": float(logs["vtrust"][:, :, SKIP:, FULL:].mean())}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  ap.add_argument("--draws", type=int, default=16)
  args = ap.parse_args(argv)
  recs = [record(s) for s in args.seeds]
  rows = np.stack([r["rows"] for r in recs])
  present = np.stack([r["present"] for r in recs])
  honest = np.array([b == "honest" for b in recs[0]["behaviours"]])
  V = FULL + SAMPLED
  full, sampled = list(range(FULL)), list(range(FULL, V))
  kinds = tuple([("honest", 0)] * FULL + [("sampled", 4)] * SAMPLED)
  populations = {"every_peer": [(full, 1.0)], "sampled_4": [(sampled, 1.0)],
                 "half_each": [(full, 0.5), (sampled, 0.5)]}
  rng = np.random.default_rng(0)
  out = {"seeds": args.seeds, "draws": args.draws, "clipped_threshold": CLIPPED,
         "epochs": int(rows.shape[1]), "skip_epochs": SKIP, "results": {}}
  t0 = time.perf_counter()
  for yname, y in (("yuma2", YumaConfig()), ("yuma3+liquid", YumaConfig(yuma3=True,
                                                                        liquid_alpha=True))):
    spec = chain.ChainSpec(kinds=kinds, coalition=(), boost=1.0, square=False,
                           ledger=LedgerConfig(yuma=y, reveal_period=1))
    for pname, groups in populations.items():
      stakes = stake_draws(rng, args.draws, groups, V)
      m = measure(replay(spec, stakes, rows, present), honest)
      out["results"][f"{yname}/{pname}"] = m
      print(f"{yname:13s} {pname:10s} honest miners clipped {m['clipped_rate']['mean']:.3f} of "
            f"miner-epochs, weight cut {m['honest_weight_cut']['mean']:.3f}, emission lost "
            f"{m['honest_emission_lost']['mean']:+.4f}, honest share "
            f"{m['honest_emission_share']['mean']:.3f}; vtrust full {m['vtrust_full']:.3f} "
            f"sampled {m['vtrust_sampled']:.3f}")
  out["seconds_replay"] = time.perf_counter() - t0
  json_path, png_path = out_paths("validator_disagreement")
  write_json(json_path, out)
  plot(out, png_path)


def plot(out: dict, path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  keys = list(out["results"])
  fig, axes = plt.subplots(1, 3, figsize=(13, 4))
  for ax, metric, label in zip(axes, ("clipped_rate", "honest_weight_cut",
                                      "honest_emission_share"),
                               ("honest miner-epochs clipped > 5 %", "honest weight cut",
                                "honest share of miner emission")):
    m = [out["results"][k][metric]["mean"] for k in keys]
    lo = [out["results"][k][metric]["min"] for k in keys]
    hi = [out["results"][k][metric]["max"] for k in keys]
    ax.bar(range(len(keys)), m, yerr=[np.subtract(m, lo), np.subtract(hi, m)], capsize=3,
           color=["C0", "C1", "C2"] * 2)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([k.replace("/", "\n") for k in keys], fontsize=6)
    ax.set_title(label, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
