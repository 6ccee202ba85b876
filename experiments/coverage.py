"""Coverage: evaluating every peer every round against the reference's 4 per round.

  python experiments/coverage.py [--config configs/sim-small.yaml] [--rounds 40] [overrides]

Two runs of the same network (same peers, data and seeds): jaxnet's default
(`gauntlet.uids_per_window = 0`: every candidate, every round) and templar's sampling
(`uids_per_window = 4`, binning by ordinal, waiting counters; gauntlet.md §8). Measured:
the round from which every adversary stays at F <= 0, and how well the honest peers'
final ordinals rank their true contribution (honest peers plus `degraded` peers that
replace a graded fraction of their chunks with noise; Spearman correlation with 1 - fraction).
Writes results/coverage.{json,png}.
"""
from __future__ import annotations

import argparse

import numpy as np
from scipy.stats import spearmanr

from _common import ROOT, fresh_run_dir, first_round_all_zero, out_paths, run_sim, write_json
from jaxnet.config import load_config

PEERS = '["honest:6", "degraded:4", "noise:1", "copier:1", "desync:1", "wrong_data:1", ' \
        '"free_rider:1", "malformed:1", "zeros:1", "replay:1", "late:1"]'


def one(args, overrides, uids_per_window: int, tag: str):
  extra = ["--train.out_dir", fresh_run_dir(f"coverage-{tag}"), "--checkpoint.resume", "never",
           "--sim.peers", PEERS, "--gauntlet.uids_per_window", str(uids_per_window),
           "--sim.ledger_every", "0"]
  if args.rounds:
    extra += ["--sim.rounds", str(args.rounds)]
  cfg = load_config(args.config, extra + overrides)
  res = run_sim(cfg, f"uids_per_window={uids_per_window}")
  beh = np.array(res["network"].behaviours)
  hist = res["history"]
  finals = np.array([r["report"]["final"] for r in hist])
  ordinal = np.array(hist[-1]["report"]["ordinal"])
  weight = np.array(hist[-1]["report"]["weight"])
  adversary = ~np.isin(beh, ["honest", "degraded"])
  graded = np.isin(beh, ["honest", "degraded"])
  truth = 1.0 - np.array(cfg.sim.degraded_fraction())
  evals = np.array([r["report"]["scored"] for r in hist]).sum(0)
  per_uid = {f"{u}:{beh[u]}": first_round_all_zero(finals, np.arange(len(beh)) == u)
             for u in np.flatnonzero(adversary)}
  return {"uids_per_window": uids_per_window, "seconds": res["seconds"], "rounds": len(hist),
          "round_all_adversaries_zero": first_round_all_zero(finals, adversary),
          "round_zero_per_adversary": per_uid,
          "round_all_but_wrong_data_zero": first_round_all_zero(finals, adversary & (beh != "wrong_data")),
          "spearman_ordinal_vs_truth": float(spearmanr(ordinal[graded], truth[graded]).statistic),
          "spearman_weight_vs_truth": float(spearmanr(weight[graded], truth[graded]).statistic),
          "evaluations_per_uid": evals.tolist(), "behaviours": beh.tolist(),
          "adversary_weight_final": float(weight[adversary].sum()),
          "finals_by_round": finals.tolist(), "ordinal_final": ordinal.tolist()}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--config", default=str(ROOT / "configs" / "sim-small.yaml"))
  ap.add_argument("--rounds", type=int, default=40)
  args, overrides = ap.parse_known_args(argv)
  every = one(args, overrides, 0, "every")
  sampled = one(args, overrides, 4, "sampled4")
  out = {"every_peer": every, "reference_4_per_round": sampled}
  json_path, png_path = out_paths("coverage")
  write_json(json_path, out)
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for res, style in ((every, "-"), (sampled, "--")):
    beh = np.array(res["behaviours"])
    finals = np.array(res["finals_by_round"])
    adv = ~np.isin(beh, ["honest", "degraded"])
    axes[0].plot(np.arange(1, len(finals) + 1), np.maximum(finals[:, adv], 0).sum(1), style,
                 label=f"uids_per_window={res['uids_per_window']}")
    graded = np.isin(beh, ["honest", "degraded"])
    axes[1].plot(np.arange(graded.sum()), np.array(res["ordinal_final"])[graded], style + "o",
                 label=f"uids_per_window={res['uids_per_window']}")
  axes[0].set_xlabel("round")
  axes[0].set_ylabel("sum of adversaries' positive F")
  axes[0].legend()
  axes[1].set_xlabel("honest ... increasingly degraded peers")
  axes[1].set_ylabel("final ordinal")
  axes[1].legend()
  fig.tight_layout()
  fig.savefig(png_path, dpi=110)
  print(f"wrote {png_path}")
  for name, r in out.items():
    print(f"{name}: all adversaries at F<=0 from round {r['round_all_adversaries_zero']} "
          f"(all but wrong_data from round {r['round_all_but_wrong_data_zero']}), "
          f"per adversary {r['round_zero_per_adversary']}, "
          f"Spearman(ordinal, truth) {r['spearman_ordinal_vs_truth']:.3f}, "
          f"evaluations per uid {np.mean(r['evaluations_per_uid']):.1f}")
  return out


if __name__ == "__main__":
  main()
