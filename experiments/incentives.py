"""Incentives: weight share per behaviour class over rounds, and each attacker's return on
its compute against an honest peer's (gauntlet.md §16, §17.3 b-c), under any scheme.

  python experiments/incentives.py [--config configs/sim-small.yaml] [--rounds 40]
                                   [--seeds 0] [overrides, e.g. --scheme sparseloco]
  python experiments/incentives.py --plot-only [incentives-sparseloco]   # PNG from its JSON

With several `--seeds` (sim, init and page seeds together) the JSON holds every seed's
figures and their mean and spread; the figure shows the first seed's shares and the mean
return on compute with its min-max range. Target (issue 7): honest peers hold > 95 % of the
weight at the end; every adversary class < 1 % in total. Writes
results/incentives.{json,png} (DeMo), results/incentives-<scheme>.{json,png} otherwise.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from _common import (ROOT, compute_units, fresh_run_dir, out_paths, plot_only, run_sim,
                     save_figure, spread, write_json)


def analyse(hist: list[dict], beh: list[str], cfg) -> dict:
  """Shares, return on compute and targets of one run."""
  W = np.array([r["report"]["weight"] for r in hist])            # [R, N]
  classes = sorted(set(beh))
  share = {c: W[:, np.array([b == c for b in beh])].sum(1) for c in classes}
  units = compute_units(beh, cfg.sim.sybil_uids_per_operator)
  earned = W.sum(0)                                              # cumulative weight per uid
  honest = np.array([b == "honest" for b in beh])
  honest_roi = earned[honest].mean() / units[honest].mean() / len(hist)
  roi = {}
  for c in classes:
    sel = np.array([b == c for b in beh])
    spent = units[sel].sum() * len(hist)
    got = earned[sel].sum()
    # return per unit of compute relative to an honest peer's; inf when an attacker earns
    # without computing, 0 when it earns nothing
    roi[c] = float("inf") if spent == 0 and got > 0 else (0.0 if got == 0 else float(got / spent / honest_roi))
  final = {c: float(share[c][-1]) for c in classes}
  adversaries = [c for c in classes if c != "honest"]
  # a sybil operator computes once and uploads it under several uids: its first uid is a
  # genuine computation (paid like an honest peer, since it is one); the others are copies
  from jaxnet.sim.adversaries import operator_of
  group = cfg.sim.sybil_uids_per_operator
  operators = np.array([b == "sybil" and operator_of(u, beh, group) == u
                        for u, b in enumerate(beh)])
  copies = np.array([b == "sybil" for b in beh]) & ~operators
  return {"rounds": len(hist), "final_share": final,
          "sybil_copies_final_share": float(W[-1, copies].sum()),
          "honest_and_sybil_operators_final_share": float(W[-1, honest | operators].sum()),
          "honest_cv_cumulative": float(earned[honest].std() / earned[honest].mean())
          if earned[honest].mean() > 0 else None,
          "share_by_round": {c: share[c].tolist() for c in classes},
          "roi_vs_honest": roi,
          "cumulative_weight": {c: float(earned[np.array([b == c for b in beh])].sum()) for c in classes},
          "target_honest_gt_95": final["honest"] > 0.95,
          "target_each_adversary_lt_1": all(final[c] < 0.01 for c in adversaries),
          "val_loss": [r["val_loss"] for r in hist]}


def main(argv=None):
  if plot_only(argv, "incentives", plot):
    return
  from jaxnet.config import load_config
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--config", default=str(ROOT / "configs" / "sim-small.yaml"))
  ap.add_argument("--rounds", type=int, default=None)
  ap.add_argument("--seeds", type=int, nargs="+", default=[0])
  ap.add_argument("--from-run", nargs="+", default=None,
                  help="re-analyse finished run directories (one per seed, in --seeds order)")
  args, overrides = ap.parse_known_args(argv)
  name = "incentives"
  runs = []
  if args.from_run and len(args.from_run) != len(args.seeds):
    ap.error(f"--from-run needs one directory per seed ({len(args.seeds)})")
  for i, seed in enumerate(args.seeds):
    extra = ["--checkpoint.resume", "never"]
    if args.rounds:
      extra += ["--sim.rounds", str(args.rounds)]
    if len(args.seeds) > 1:
      extra += ["--sim.seed", str(seed), "--train.seed", str(seed), "--data.seed", str(seed)]
    cfg = load_config(args.config, extra + overrides)
    name = "incentives" if cfg.scheme == "demo" else f"incentives-{cfg.scheme}"
    if args.from_run:
      from jaxnet.report import load_metrics
      hist = load_metrics(Path(args.from_run[i]))
      beh = json.loads((Path(args.from_run[i]) / "behaviours.json").read_text())
      seconds = None
    else:
      out_dir = fresh_run_dir(f"{name}-{seed}" if len(args.seeds) > 1 else name)
      cfg = load_config(args.config, extra + overrides + ["--train.out_dir", out_dir])
      res = run_sim(cfg, f"{name} seed {seed}")
      beh, hist, seconds = res["network"].behaviours, res["history"], res["seconds"]
    runs.append(dict(analyse(hist, beh, cfg), seed=seed, seconds=seconds))
  classes = sorted(runs[0]["final_share"])
  out = dict(runs[0]) if len(runs) == 1 else {
      "rounds": runs[0]["rounds"], "seeds": args.seeds,
      "final_share": {c: spread([r["final_share"][c] for r in runs]) for c in classes},
      "roi_vs_honest": {c: spread([r["roi_vs_honest"][c] for r in runs]) for c in classes},
      "target_honest_gt_95_all_seeds": all(r["target_honest_gt_95"] for r in runs),
      "sybil_copies_final_share": spread([r["sybil_copies_final_share"] for r in runs]),
      "honest_and_sybil_operators_final_share": spread(
          [r["honest_and_sybil_operators_final_share"] for r in runs]),
      "honest_cv_cumulative": spread([r["honest_cv_cumulative"] for r in runs
                                      if r["honest_cv_cumulative"] is not None]),
      "target_each_adversary_lt_1_all_seeds": all(r["target_each_adversary_lt_1"] for r in runs),
      "runs": runs}
  out.update(scheme=cfg.scheme, overrides=overrides)
  json_path, png_path = out_paths(name)
  write_json(json_path, out)
  plot(out, png_path)
  for r in runs:
    print(f"seed {r['seed']}: final weight share", {c: round(v, 4) for c, v in r["final_share"].items()})
    print("  return on compute vs honest:",
          {c: (round(v, 3) if np.isfinite(v) else v) for c, v in r["roi_vs_honest"].items()})
  return out


def plot(out: dict, png_path):
  """The first seed's weight share per class over rounds and every class's return on
  compute (mean, min-max over seeds), from the JSON."""
  from jaxnet import plotstyle as ps
  plt = ps.pyplot()
  runs = out.get("runs", [out])   # a one-seed JSON is that run's analysis itself
  # honest at the bottom of the stack, the adversaries above it in alphabetical order
  classes = sorted(runs[0]["final_share"], key=lambda c: (c != "honest", c))
  colours = ps.class_colours(classes)
  fig, axes = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [1.25, 1]})
  first = runs[0]
  rounds = np.arange(1, first["rounds"] + 1)
  axes[0].stackplot(rounds, *[first["share_by_round"][c] for c in classes], labels=classes,
                    colors=[colours[c] for c in classes])
  ps.label(axes[0], "round", "weight share (fraction; classes sum to 1)",
           title=f"weight by behaviour class, seed {first['seed']}")
  handles, labels = axes[0].get_legend_handles_labels()   # top to bottom, as stacked
  axes[0].legend(handles[::-1], labels[::-1], loc="upper left", bbox_to_anchor=(1.01, 1.0),
                 borderaxespad=0.0, fontsize=7, title="class", title_fontsize=7, frameon=False)
  names = [c for c in classes if c != "honest"][::-1]   # alphabetical from the top
  cap = lambda v: min(v, 2.0) if np.isfinite(v) else 2.0
  vals = np.array([[cap(r["roi_vs_honest"][c]) for r in runs] for c in names])   # [C, S]
  mean = vals.mean(1)
  err = np.stack([mean - vals.min(1), vals.max(1) - mean])
  axes[1].barh(names, mean, xerr=err if len(runs) > 1 else None,
               color=[colours[c] for c in names])
  axes[1].axvline(1.0, color="k", ls="--", lw=1, label="an honest peer")
  axes[1].set_xlim(0, max(1.3, float(np.max(mean + err[1])) * 1.05))
  ps.label(axes[1], "return on compute / an honest peer's (ratio, capped at 2)", "behaviour class",
           title=f"mean over {len(runs)} seed(s); bars: min-max", legend="")
  ps.title(fig, f"Incentives under {out['scheme']}: who earns the weight, and what an attack "
                "returns per unit of compute")
  fig.tight_layout()
  return save_figure(fig, png_path)


if __name__ == "__main__":
  main()
