"""Validators that sample 4 peers per round against validators that evaluate every peer:
how often an honest miner is clipped by the kappa-median for lack of agreement, and the
honest miners' emission lost to it.

  python experiments/validator_disagreement.py [--seeds 0 1 2] [--draws 16]
  python experiments/validator_disagreement.py --plot-only   # re-draw the PNG from the JSON

Each seed records a live sim-tiny network with 6 validators that evaluate every peer and 4
that sample 4 per round (the paper-era reference, gauntlet.md §15.2), each with its own
randomness (`_validators.record`). The chain replays three stake populations: all stake
on the full validators, all on the sampled ones, and half each; reveal period 1, Yuma 2
and Yuma 3 + liquid alpha; stakes ~ N(1, 0.3^2) (`--draws` draws, vmapped with the seeds).
Per epoch and honest miner with weight (prerank > 0): clipped when the kappa-median cut
more than 5 % of the stake-weighted weight it was given. "Lost" is the part of the miners'
pool (half of what is minted after the owner's cut) that honest miners did not receive:
paid to other miners, or, in an epoch in which the median clipped every column to 0, paid
to the validators by stake (the chain's fallback). Writes results/validator_disagreement.{json,png}.
"""
from __future__ import annotations

import time

import numpy as np

from _common import out_paths, plot_only, save_figure, spread, write_json
from _validators import (FULL, SAMPLED, args_and_recordings, first_paid_epoch, replay,
                         stake_draws)
from jaxnet.ledger import LedgerConfig, YumaConfig
from jaxnet.sim import chain

CLIPPED = 0.05   # a miner is "clipped" when the median cut > 5 % of its stake-weighted weight
REVEAL = 1       # reveal period (chain default)
MINER_SPLIT = 0.5   # ledger.yuma.miner_split default


def measure(logs, honest: np.ndarray, groups: dict, skip: int) -> dict:
  pre = logs["prerank"][:, :, skip:].astype(np.float64)      # [S, D, T, N]
  cut = logs["clipped"][:, :, skip:].astype(np.float64)
  has = (pre > 0) & honest
  frac = np.where(has, cut / np.where(pre > 0, pre, 1), 0.0)
  clipped_rate = (frac > CLIPPED).sum((2, 3)) / np.maximum(has.sum((2, 3)), 1)   # [S, D]
  cut_share = (cut * honest).sum((2, 3)) / np.maximum((pre * honest).sum((2, 3)), 1e-12)
  mu = logs["miner_units"][:, :, skip:].astype(np.float64)
  # the miners' half of what is minted after the owner's cut (§2.1 step 12)
  pool = MINER_SPLIT * (logs["minted"] - logs["owner"])[:, :, skip:].astype(np.float64)
  honest_paid = (mu * honest).sum((2, 3)) / pool.sum(2)
  no_consensus = (mu.sum(-1) == 0).mean(2)   # epochs whose miner emission fell back to stake
  vt = logs["vtrust"][:, :, skip:]
  return {"clipped_rate": spread(clipped_rate.mean(1)),
          "honest_weight_cut": spread(cut_share.mean(1)),
          "honest_emission_lost": spread(1.0 - honest_paid.mean(1)),
          "epochs_without_miner_emission": spread(no_consensus.mean(1)),
          "honest_share_of_miner_emission": spread(
              ((mu * honest).sum((2, 3)) / np.maximum(mu.sum((2, 3)), 1)).mean(1)),
          **{f"vtrust_{g}": float(vt[..., members].mean()) if share > 0 else None
             for g, (members, share) in groups.items()}}


def main(argv=None):
  if plot_only(argv, "validator_disagreement", plot):
    return
  args, rows, present, beh = args_and_recordings(__doc__, argv, rounds=40)
  honest = np.array([b == "honest" for b in beh])
  V = FULL + SAMPLED
  full, sampled = list(range(FULL)), list(range(FULL, V))
  kinds = tuple([("honest", 0)] * FULL + [("sampled", 4)] * SAMPLED)
  populations = {"every_peer": [(full, 1.0)], "sampled_4": [(sampled, 1.0)],
                 "half_each": [(full, 0.5), (sampled, 0.5)]}
  start = first_paid_epoch(rows, full, REVEAL)   # the warm-up is not disagreement
  rng = np.random.default_rng(0)
  out = {"seeds": args.seeds, "draws": args.draws, "rounds": args.rounds, "clipped_threshold": CLIPPED,
         "epochs": int(rows.shape[1]), "first_epoch_measured": start, "results": {}}
  t0 = time.perf_counter()
  for yname, y in (("yuma2", YumaConfig()), ("yuma3+liquid", YumaConfig(yuma3=True,
                                                                        liquid_alpha=True))):
    spec = chain.ChainSpec(kinds=kinds, coalition=(), boost=1.0, square=False,
                           ledger=LedgerConfig(yuma=y, reveal_period=REVEAL))
    for pname, groups in populations.items():
      stakes = stake_draws(rng, args.draws, groups, V)
      shares = {"full": (full, sum(sh for g, sh in groups if g is full)),
                "sampled": (sampled, sum(sh for g, sh in groups if g is sampled))}
      m = measure(replay(spec, stakes, rows, present), honest, shares, start)
      out["results"][f"{yname}/{pname}"] = m
      print(f"{yname:13s} {pname:10s} honest miners clipped {m['clipped_rate']['mean']:.3f} of "
            f"miner-epochs, weight cut {m['honest_weight_cut']['mean']:.3f}, emission lost "
            f"{m['honest_emission_lost']['mean']:.4f} (epochs without consensus "
            f"{m['epochs_without_miner_emission']['mean']:.3f}); vtrust full "
            f"{m['vtrust_full']} sampled {m['vtrust_sampled']}")
  out["seconds_replay"] = time.perf_counter() - t0
  json_path, png_path = out_paths("validator_disagreement")
  write_json(json_path, out)
  plot(out, png_path)


POPULATIONS = {"every_peer": "all stake on validators evaluating every peer",
               "sampled_4": "all stake on validators sampling 4 per round",
               "half_each": "half the stake on each"}
YUMA_NAMES = {"yuma2": "Yuma 2", "yuma3+liquid": "Yuma 3 +\nliquid alpha"}


def plot(out: dict, path):
  """Three measures per stake population, grouped by Yuma version, from the JSON."""
  from jaxnet import plotstyle as ps
  plt = ps.pyplot()
  res = out["results"]
  yumas = list(dict.fromkeys(k.split("/")[0] for k in res))
  pops = list(dict.fromkeys(k.split("/")[1] for k in res))
  colours = ps.colour_map(pops)
  width = 0.8 / len(pops)
  fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
  for ax, metric, (what, unit) in zip(axes, ("clipped_rate", "honest_weight_cut",
                                             "honest_emission_lost"),
                                      ((f"honest miner-epochs clipped by > "
                                        f"{out['clipped_threshold']:.0%}", "fraction of honest "
                                        "miner-epochs"),
                                       ("honest weight cut by the kappa-median", "fraction of "
                                        "the honest miners' weight"),
                                       ("honest miners' emission lost", "fraction of the "
                                        "miners' pool"))):
    for j, pop in enumerate(pops):
      e = [res[f"{y}/{pop}"][metric] for y in yumas]
      m = [x["mean"] for x in e]
      err = [np.subtract(m, [x["min"] for x in e]), np.subtract([x["max"] for x in e], m)]
      ax.bar(np.arange(len(yumas)) + (j - (len(pops) - 1) / 2) * width, m, width, yerr=err,
             capsize=3, color=colours[pop], label=POPULATIONS.get(pop, pop))
    ax.set_xticks(range(len(yumas)), [YUMA_NAMES.get(y, y) for y in yumas])
    ps.label(ax, "Yuma version", unit + "\n(mean, min-max over seeds)", title=what)
  ps.legend_outside(axes[-1], title="stake population")
  ps.title(fig, f"Validators that sample 4 peers per round against validators that evaluate "
                f"every peer: honest miners clipped by the kappa-median\n(reveal period "
                f"{REVEAL}, {len(out['seeds'])} seeds x {out['draws']} stake draws)")
  fig.tight_layout()
  return save_figure(fig, path)


if __name__ == "__main__":
  main()
