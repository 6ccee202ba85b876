"""Coverage: evaluating every peer every round against the reference's 4 per round.

  python experiments/coverage.py [--config configs/sim-small.yaml] [--rounds 40]
                                 [--seeds 0 1 2 3 4] [overrides]
  python experiments/coverage.py --plot-only   # re-draw the PNG from the JSON

Two runs of the same network (same peers, data and seeds): jaxnet's default
(`gauntlet.uids_per_window = 0`: every candidate, every round) and templar's sampling
(`uids_per_window = 4`, binning by ordinal, waiting counters; gauntlet.md §8). Measured:
the round from which every adversary stays at F <= 0, and how well the honest peers'
final ordinals rank their true contribution (honest peers plus `degraded` peers that
replace a graded fraction of their chunks with noise; Spearman correlation with 1 - fraction).
Every figure is given per seed (sim, init and page seeds together) and as mean and spread.
Writes results/coverage.{json,png}.
"""
from __future__ import annotations

import argparse

import numpy as np

from _common import (ROOT, first_round_all_zero, fresh_run_dir, out_paths, plot_only, run_sim,
                     save_figure, spread, write_json)

PEERS = '["honest:6", "degraded:4", "noise:1", "copier:1", "desync:1", "wrong_data:1", ' \
        '"free_rider:1", "malformed:1", "zeros:1", "replay:1", "late:1"]'


def one(args, overrides, uids_per_window: int, tag: str, seed: int):
  s = str(seed)
  extra = ["--train.out_dir", fresh_run_dir(f"coverage-{tag}-{seed}"), "--checkpoint.resume",
           "never", "--sim.peers", PEERS, "--gauntlet.uids_per_window", str(uids_per_window),
           "--sim.ledger_every", "0", "--sim.seed", s, "--train.seed", s, "--data.seed", s]
  if args.rounds:
    extra += ["--sim.rounds", str(args.rounds)]
  from scipy.stats import spearmanr
  from jaxnet.config import load_config
  cfg = load_config(args.config, extra + overrides)
  res = run_sim(cfg, f"uids_per_window={uids_per_window} seed {seed}")
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
  return {"uids_per_window": uids_per_window, "seed": seed, "seconds": res["seconds"],
          "rounds": len(hist),
          "round_all_adversaries_zero": first_round_all_zero(finals, adversary),
          "round_zero_per_adversary": per_uid,
          "round_all_but_wrong_data_zero": first_round_all_zero(finals, adversary & (beh != "wrong_data")),
          "spearman_ordinal_vs_truth": float(spearmanr(ordinal[graded], truth[graded]).statistic),
          "spearman_weight_vs_truth": float(spearmanr(weight[graded], truth[graded]).statistic),
          "evaluations_per_uid": evals.tolist(), "behaviours": beh.tolist(),
          "adversary_weight_final": float(weight[adversary].sum()),
          "finals_by_round": finals.tolist(), "ordinal_final": ordinal.tolist()}


def summary(runs: list[dict]) -> dict:
  """Mean and spread over seeds; a round that never came counts as the run's length."""
  never = lambda r, v: r["rounds"] if v is None else v
  adv = sorted({k.split(":", 1)[1] for r in runs for k in r["round_zero_per_adversary"]})
  per = {b: spread([never(r, v) for r in runs for k, v in r["round_zero_per_adversary"].items()
                    if k.split(":", 1)[1] == b]) for b in adv}
  return {"round_all_adversaries_zero": spread([never(r, r["round_all_adversaries_zero"])
                                                for r in runs]),
          "round_zero_per_behaviour": per,
          "spearman_ordinal_vs_truth": spread([r["spearman_ordinal_vs_truth"] for r in runs]),
          "spearman_weight_vs_truth": spread([r["spearman_weight_vs_truth"] for r in runs]),
          "adversary_weight_final": spread([r["adversary_weight_final"] for r in runs]),
          "evaluations_per_uid": spread([np.mean(r["evaluations_per_uid"]) for r in runs])}


def main(argv=None):
  if plot_only(argv, "coverage", plot):
    return
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--config", default=str(ROOT / "configs" / "sim-small.yaml"))
  ap.add_argument("--rounds", type=int, default=40)
  ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
  args, overrides = ap.parse_known_args(argv)
  every = [one(args, overrides, 0, "every", s) for s in args.seeds]
  sampled = [one(args, overrides, 4, "sampled4", s) for s in args.seeds]
  out = {"seeds": args.seeds, "overrides": overrides,
         "every_peer": summary(every), "reference_4_per_round": summary(sampled),
         "runs": {"every_peer": every, "reference_4_per_round": sampled}}
  json_path, png_path = out_paths("coverage")
  write_json(json_path, out)
  plot(out, png_path)
  for name in ("every_peer", "reference_4_per_round"):
    r = out[name]
    print(f"{name}: all adversaries at F<=0 from round {r['round_all_adversaries_zero']}, "
          f"Spearman(ordinal, truth) {r['spearman_ordinal_vs_truth']}, "
          f"per behaviour {({b: v['max'] for b, v in r['round_zero_per_behaviour'].items()})}")
  return out


def plot(out: dict, path):
  """Adversaries' positive F per round and the graded peers' final ordinals, every seed of
  both settings, from the JSON."""
  from jaxnet import plotstyle as ps
  plt = ps.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
  names = {"every_peer": "every peer every round\n(uids_per_window = 0)",
           "reference_4_per_round": "4 peers per round, the reference\n(uids_per_window = 4)"}
  colours = ps.colour_map(names)
  for (key, name), style in zip(names.items(), ("-", "--")):
    for i, res in enumerate(out["runs"][key]):
      beh = np.array(res["behaviours"])
      finals = np.array(res["finals_by_round"])
      adv = ~np.isin(beh, ["honest", "degraded"])
      label = name if i == 0 else None   # one legend entry per setting, not per seed
      axes[0].plot(np.arange(1, len(finals) + 1), np.maximum(finals[:, adv], 0).sum(1), style,
                   color=colours[key], alpha=0.7, label=label)
      graded = np.isin(beh, ["honest", "degraded"])
      axes[1].plot(np.arange(graded.sum()), np.array(res["ordinal_final"])[graded], style + "o",
                   color=colours[key], alpha=0.5, label=label)
  beh = np.array(out["runs"]["every_peer"][0]["behaviours"])
  graded = beh[np.isin(beh, ["honest", "degraded"])]
  n_honest = int((graded == "honest").sum())
  ps.label(axes[0], "round", "sum over adversaries of max(F, 0)\n(final score F, unitless)",
           title="adversaries' scores above zero, per round")
  ps.label(axes[1], f"graded peer (0-{n_honest - 1} honest, {n_honest}-{len(graded) - 1} "
           "degraded, more noise to the right)", "final ordinal rating (mu - 3 sigma)",
           title="how the final rating ranks the peers' true contribution", legend="")
  ps.title(fig, f"Coverage: evaluating every peer every round against the reference's 4 per "
                f"round (every line one seed; seeds {out['seeds']})")
  fig.tight_layout()
  return save_figure(fig, path)


if __name__ == "__main__":
  main()
