"""A coalition of validators with 10-60 % of the stake boosting its own miners inside the
live Gauntlet network: the coalition miners' emission share against its stake share.

  python experiments/validator_collusion.py [--seeds 0 1 2] [--draws 16]
  python experiments/validator_collusion.py --plot-only   # re-draw the PNG from the JSON

Claim (bittensor.md §3 items 1 and 3): below kappa (about 0.5) of the stake a coalition's
weight on its own miners is clipped to the honest median, so they earn next to nothing;
above it the coalition sets the median. Each seed records a live sim-tiny network with 10
validators (`_validators.record`); the chain replays it with the 6 full validators honest
and the 4 others colluding: each puts all its weight on the coalition's miners (the noise
and free-rider uids, which train nothing), reveal period 1 (the chain default). Stakes
~ N(1, 0.3^2) per validator, rescaled to the swept coalition share (`--draws` draws,
vmapped with the seeds in one call per Yuma version). Unlike `collusion_sweep.py`, the
honest rows are the Gauntlet validators' own weights from a training network, not made up.
Writes results/validator_collusion.{json,png}.
"""
from __future__ import annotations

import time

import numpy as np

from _common import out_paths, plot_only, save_figure, spread, write_json
from _validators import (FULL, SAMPLED, args_and_recordings, first_paid_epoch, replay,
                         stake_draws)
from jaxnet.ledger import LedgerConfig, YumaConfig
from jaxnet.sim import chain

SHARES = (0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6)
COALITION_MINERS = ("noise", "free_rider")
REVEAL = 1   # reveal period (chain default)


def main(argv=None):
  if plot_only(argv, "validator_collusion", plot):
    return
  args, rows, present, beh = args_and_recordings(__doc__, argv, rounds=40)
  miners = tuple(u for u, b in enumerate(beh) if b in COALITION_MINERS)
  V = FULL + SAMPLED
  honest, coal = list(range(FULL)), list(range(FULL, V))
  kinds = tuple([("honest", 0)] * FULL + [("colluding", 0)] * SAMPLED)
  start = first_paid_epoch(rows, honest, REVEAL)
  rng = np.random.default_rng(0)
  out = {"seeds": args.seeds, "draws": args.draws, "rounds": args.rounds, "shares": SHARES,
         "coalition_miners": miners, "coalition_miner_behaviours": COALITION_MINERS,
         "epochs": int(rows.shape[1]), "first_epoch_measured": start, "yuma": {}}
  t0 = time.perf_counter()
  for yname, y in (("yuma2", YumaConfig()), ("yuma3+liquid", YumaConfig(yuma3=True,
                                                                        liquid_alpha=True))):
    spec = chain.ChainSpec(kinds=kinds, coalition=miners, boost=1.0, square=False,
                           ledger=LedgerConfig(yuma=y, reveal_period=REVEAL))
    res = []
    for x in SHARES:
      stakes = stake_draws(rng, args.draws, [(honest, 1 - x), (coal, x)], V)
      logs = replay(spec, stakes, rows, present)
      mu = logs["miner_units"][:, :, start:].astype(np.float64)     # [S, D, T, N]
      vu = logs["validator_units"][:, :, start:].astype(np.float64)
      miner_share = mu[..., list(miners)].sum((-1, -2)) / np.maximum(mu.sum((-1, -2)), 1)
      total = (mu[..., list(miners)].sum((-1, -2)) + vu[..., coal].sum((-1, -2))) / np.maximum(
          mu.sum((-1, -2)) + vu.sum((-1, -2)), 1)
      last = mu[:, :, -1][..., list(miners)].sum(-1) / np.maximum(mu[:, :, -1].sum(-1), 1)
      res.append({"stake_share": x, "miner_share": spread(miner_share.mean(1)),
                  "miner_share_last_epoch": spread(last.mean(1)),
                  "coalition_total_share": spread(total.mean(1)),
                  "miner_share_draw_max": float(miner_share.max())})
      print(f"{yname:13s} coalition stake {x:.2f}: its miners get "
            f"{miner_share.mean():.4f} of miner emission (last epoch {last.mean():.4f}); "
            f"coalition total {total.mean():.4f}")
    out["yuma"][yname] = res
  out["seconds_replay"] = time.perf_counter() - t0
  below = [r for y in out["yuma"].values() for r in y if r["stake_share"] < 0.5]
  out["claim_below_half_earns_less_than_stake"] = all(
      r["miner_share"]["max"] < r["stake_share"] for r in below)
  json_path, png_path = out_paths("validator_collusion")
  write_json(json_path, out)
  plot(out, png_path)


def plot(out: dict, path):
  """The coalition's share of emission against its stake share, both Yuma versions, from
  the JSON."""
  from jaxnet import plotstyle as ps
  plt = ps.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), sharey=True)
  names = {"yuma2": "Yuma 2", "yuma3+liquid": "Yuma 3 + liquid alpha"}
  metrics = {"miner_share": "its miners' share of miner emission",
             "coalition_total_share": "the coalition's share of all emission\n(its miners and "
                                      "its validators' dividends)"}
  colours = ps.colour_map(out["yuma"])
  for ax, (key, what) in zip(axes, metrics.items()):
    for yi, (yname, res) in enumerate(out["yuma"].items()):
      x = [r["stake_share"] for r in res]
      m = [r[key]["mean"] for r in res]
      lo = [r[key]["min"] for r in res]
      hi = [r[key]["max"] for r in res]
      # the Yuma versions agree: the first is drawn wide and pale under the second
      style = {"lw": 4, "alpha": 0.45, "ms": 10} if yi == 0 else {"lw": 1.3, "ms": 5}
      ax.errorbar(x, m, yerr=[np.subtract(m, lo), np.subtract(hi, m)], marker=".",
                  color=colours[yname], capsize=2, label=names.get(yname, yname), **style)
    ax.plot([0, 0.65], [0, 0.65], color="k", lw=0.6, label="share = stake share")
    ax.axvline(0.5, color="grey", lw=0.6, ls=":", label="half the stake")
    ps.label(ax, "coalition stake share (fraction of validator stake)",
             "emission share (fraction; mean, min-max over seeds)", title=what)
    ax.tick_params(labelleft=True)
  ps.legend_outside(axes[-1])
  ps.title(fig, f"Colluding validators boosting their own miners in a live network: what the "
                f"coalition earns (reveal period {REVEAL}, {len(out['seeds'])} seeds x "
                f"{out['draws']} stake draws)")
  fig.tight_layout()
  return save_figure(fig, path)


if __name__ == "__main__":
  main()
