"""Incentives: weight share per behaviour class over rounds, and each attacker's return on
its compute against an honest peer's (gauntlet.md §16, §17.3 b-c).

  python experiments/incentives.py [--config configs/sim-small.yaml] [--rounds 40] [overrides]

Target (issue 7): honest peers hold > 95 % of the weight at the end; every adversary
class < 1 % in total. Writes results/incentives.{json,png}.
"""
from __future__ import annotations

import argparse

import numpy as np

from _common import ROOT, fresh_run_dir, compute_units, out_paths, run_sim, write_json
from jaxnet.config import load_config


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--config", default=str(ROOT / "configs" / "sim-small.yaml"))
  ap.add_argument("--rounds", type=int, default=None)
  ap.add_argument("--from-run", default=None, help="re-analyse a finished run directory")
  args, overrides = ap.parse_known_args(argv)
  extra = ["--train.out_dir", fresh_run_dir("incentives") if not args.from_run else str(ROOT / "runs" / "exp-incentives-reread"), "--checkpoint.resume", "never"]
  if args.rounds:
    extra += ["--sim.rounds", str(args.rounds)]
  cfg = load_config(args.config, extra + overrides)
  if args.from_run:
    import json
    from pathlib import Path
    from jaxnet.report import load_metrics
    hist = load_metrics(Path(args.from_run))
    beh = json.loads((Path(args.from_run) / "behaviours.json").read_text())
    res = {"seconds": None}
  else:
    res = run_sim(cfg, "incentives")
    beh = res["network"].behaviours
    hist = res["history"]
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
  out = {"rounds": len(hist), "seconds": res["seconds"], "final_share": final,
         "share_by_round": {c: share[c].tolist() for c in classes},
         "roi_vs_honest": roi, "cumulative_weight": {c: float(earned[np.array([b == c for b in beh])].sum()) for c in classes},
         "target_honest_gt_95": final["honest"] > 0.95,
         "target_each_adversary_lt_1": all(final[c] < 0.01 for c in adversaries),
         "val_loss": [r["val_loss"] for r in hist]}
  json_path, png_path = out_paths("incentives")
  write_json(json_path, out)
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  rounds = np.arange(1, len(hist) + 1)
  axes[0].stackplot(rounds, *[share[c] for c in classes], labels=classes)
  axes[0].set_xlabel("round")
  axes[0].set_ylabel("weight share")
  axes[0].legend(fontsize=7, loc="lower left")
  names = [c for c in classes if c != "honest"]
  vals = [min(roi[c], 2.0) if np.isfinite(roi[c]) else 2.0 for c in names]
  axes[1].barh(names, vals)
  axes[1].axvline(1.0, color="k", ls="--", lw=1, label="honest peer")
  axes[1].set_xlabel("return on compute vs honest (capped at 2)")
  axes[1].legend()
  fig.tight_layout()
  fig.savefig(png_path, dpi=110)
  print(f"wrote {png_path}")
  print("final weight share:", {c: round(v, 4) for c, v in final.items()})
  print("return on compute vs honest:", {c: (round(v, 3) if np.isfinite(v) else v) for c, v in roi.items()})
  return out


if __name__ == "__main__":
  main()
