"""Fair shares among equals: how evenly identical honest peers are paid over a run (issue 12).

  python experiments/fairness.py [--config configs/sim-small.yaml] [--rounds 40]
                                 [--seeds 0 1 2 3 4] [--variants NAME ...] [--name fairness]
                                 [overrides]
  python experiments/fairness.py --plot-only [fairness-config]   # re-draw a PNG from its JSON

An all-honest network (`--peers`, default 10 identical honest peers) runs under each
variant of the validator; the measure is the coefficient of variation (std / mean) of the
cumulative weight of the honest peers over the run, and the range min/mean .. max/mean.
No deployed system measures this: with identical work, any spread is the mechanism's
noise. The variants change one design choice at a time from the config's validator
(sim-small: the hardened preset, which pays F = mu x BMA+ x sync with linear weights once
the own-page evidence is significant):
  * `config`: the validator as configured;
  * `p=2.2`: the paper's power normalisation F^2.2 (§12);
  * `ordinal`: the paper's conservative ordinal mu - 3 sigma instead of mu (§11.4);
  * `ordinal,p=2.2`: both, i.e. the paper's payout behind the evidence gate;
  * `beta=25`: a rating that assumes more performance noise (smaller moves per match);
  * `4/round`: templar's sampling of 4 peers per round instead of every peer (§8);
  * `paper`: the paper's rules (no evidence gate, reference gather, no copy detection).
Writes results/fairness.{json,png}; the README quotes the mean and spread over seeds.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from _common import ROOT, fresh_run_dir, out_paths, plot_only, run_sim, save_figure, spread, write_json

VARIANTS = {
  "config": [],
  "p=2.2": ["--gauntlet.power", "2.2"],
  "ordinal": ["--gauntlet.score_statistic", "ordinal"],
  "ordinal,p=2.2": ["--gauntlet.score_statistic", "ordinal", "--gauntlet.power", "2.2"],
  "beta=25": ["--gauntlet.rating.beta", "25.0"],
  "4/round": ["--gauntlet.uids_per_window", "4"],
  "paper": ["--gauntlet.preset", "paper", "--gauntlet.overlap_detection", "false"],
}


def dispersion(hist: list[dict], beh: list[str]) -> dict:
  """CV and range of the honest peers' cumulative weight, and when each was first paid."""
  W = np.array([r["report"]["weight"] for r in hist])            # [R, N]
  honest = np.array([b == "honest" for b in beh])
  cum = W[:, honest].sum(0)
  mean = cum.mean()
  paid = W[:, honest] > 0
  first = [int(np.argmax(p)) if p.any() else None for p in paid.T]
  return {"cv": float(cum.std() / mean) if mean > 0 else None,
          "min_over_mean": float(cum.min() / mean) if mean > 0 else None,
          "max_over_mean": float(cum.max() / mean) if mean > 0 else None,
          "honest_total": float(cum.sum() / len(hist)), "first_paid_round": first,
          "cumulative": cum.tolist()}


def main(argv=None):
  if plot_only(argv, "fairness", plot):
    return
  from jaxnet.config import load_config
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--config", default=str(ROOT / "configs" / "sim-small.yaml"))
  ap.add_argument("--rounds", type=int, default=40)
  ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
  ap.add_argument("--peers", default='["honest:10"]')
  ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
  ap.add_argument("--name", default="fairness", help="results/<name>.{json,png}")
  args, overrides = ap.parse_known_args(argv)
  out = {"rounds": args.rounds, "seeds": args.seeds, "peers": args.peers,
         "overrides": overrides, "variants": {}}
  for name in args.variants:
    runs = []
    for seed in args.seeds:
      extra = ["--checkpoint.resume", "never", "--sim.rounds", str(args.rounds),
               "--sim.peers", args.peers, "--sim.ledger_every", "0",
               "--sim.seed", str(seed), "--train.seed", str(seed), "--data.seed", str(seed),
               "--train.out_dir", fresh_run_dir(f"fairness-{name.replace('/', '-')}-{seed}")]
      cfg = load_config(args.config, extra + overrides + VARIANTS[name])
      res = run_sim(cfg, f"{name} seed {seed}")
      runs.append(dict(dispersion(res["history"], res["network"].behaviours), seed=seed))
    cvs = [r["cv"] for r in runs if r["cv"] is not None]
    out["variants"][name] = {"overrides": VARIANTS[name], "cv": spread(cvs),
                             "min_over_mean": spread([r["min_over_mean"] for r in runs
                                                      if r["min_over_mean"] is not None]),
                             "max_over_mean": spread([r["max_over_mean"] for r in runs
                                                      if r["max_over_mean"] is not None]),
                             "runs": runs}
    v = out["variants"][name]
    print(f"{name}: CV {v['cv']['mean']:.3f} (min {v['cv']['min']:.3f}, max {v['cv']['max']:.3f})"
          f", range {v['min_over_mean']['mean']:.2f}x..{v['max_over_mean']['mean']:.2f}x")
  json_path, png_path = out_paths(args.name)
  write_json(json_path, out)
  plot(out, png_path)
  return out


def plot(out: dict, png_path):
  """Every seed's CV per validator variant and their mean, from the JSON."""
  from jaxnet import plotstyle as ps
  plt = ps.pyplot()
  names = list(out["variants"])
  fig, ax = plt.subplots(figsize=(max(4.5, 1.2 * len(names) + 2.5), 3.8))
  c = ps.palette(3)
  for i, name in enumerate(names):
    cvs = [r["cv"] for r in out["variants"][name]["runs"] if r["cv"] is not None]
    first = i == 0   # one legend entry for the dots and one for the bars
    ax.scatter([i] * len(cvs), cvs, color=c[0], alpha=0.7, s=22,
               label="one seed" if first else None)
    ax.plot([i - 0.25, i + 0.25], [np.mean(cvs)] * 2, color="k", lw=2,
            label="mean over seeds" if first else None)
  ax.axhline(0.3, color=c[1], ls="--", lw=1, label="target 0.3")
  ax.set_xticks(range(len(names)), names)
  ax.set_xlim(-0.6, len(names) - 0.4)
  ps.label(ax, "validator variant", "CV of cumulative weight\n(std / mean, identical honest peers)",
           legend="")
  peers = ", ".join(f"{x.partition(':')[2] or 1} {x.partition(':')[0]}"
                    for x in json.loads(out["peers"]))
  ps.title(fig, f"Fair shares among equals: spread of pay among {peers} peers\n"
                f"({out['rounds']} rounds, seeds {out['seeds']})")
  return save_figure(fig, png_path)


if __name__ == "__main__":
  main()
