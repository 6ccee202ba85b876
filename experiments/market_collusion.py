"""A cabal with 10-60 % of the stake inside the live market: its stake share over blocks,
with the 2020 regulariser (rho, kappa sweep) and without it (plain ranks, rho = 0).

  python experiments/market_collusion.py [--seeds 0 1 2] [--blocks 300]

Claim (market.md §6, bittensor.md §1.3): a cabal under 50 % of the stake loses stake share
over blocks, above 50 % it wins. The cabal (4 of 24 peers) serves noise and weights only
its own members; the honest peers' rows are what their valuations (fisher2020) learned in
a live market-small run. The stake does not feed back into training, so each seed runs
the market once and the 2020 integer ledger is replayed over its recorded rows of W for
every initial cabal share and (rho, kappa) in one vmapped call per setting (the replay of
the run's own stake equals the run's ledger exactly; checked below). Writes
results/market_collusion.{json,png}.
"""
from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from _common import out_paths, spread, write_json
from _market import CONFIG, run_market
from jaxnet.config import load_config
from jaxnet.ledger import BitTensorConfig, init_ledger
from jaxnet.ledger.state import ledger_step_core

PEERS = '["honest:16", "noise:2", "lazy:2", "cabal:4"]'
SHARES = (0.1, 0.2, 0.3, 0.4, 0.45, 0.55, 0.6)
SETTINGS = {"plain ranks (rho 0)": (0.0, 0.5), "rho 10, kappa 0.5": (10.0, 0.5),
            "rho 30, kappa 0.5": (30.0, 0.5), "rho 10, kappa 0.4": (10.0, 0.4),
            "rho 10, kappa 0.6": (10.0, 0.6)}
UNITS = 10_000   # per peer, as jaxnet.market.run


def replay(W_TxNxN, stake_DxN, ledger_cfg):
  """The integer 2020 ledger over the recorded W from each of D initial stakes ->
  (units paid [D, T, N], minted [D, T])."""
  def one(stake):
    st = init_ledger_traced(stake, ledger_cfg)
    _, recs = jax.lax.scan(lambda s, w: ledger_step_core(s, w, ledger_cfg), st, W_TxNxN)
    return recs.server_units, recs.minted

  return jax.jit(jax.vmap(one))(stake_DxN)


def init_ledger_traced(stake, cfg):
  """`init_ledger` for a traced stake vector (the 2020 mode uses no bonds or permits)."""
  template = init_ledger(np.ones(stake.shape[0]), None, cfg)
  return template._replace(stake=stake.astype(template.stake.dtype))


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  ap.add_argument("--blocks", type=int, default=300)
  args = ap.parse_args(argv)
  base = load_config(CONFIG, ["--market.peers", PEERS])
  out = {"seeds": args.seeds, "blocks": args.blocks, "peers": PEERS, "shares": SHARES,
         "settings": {}}
  runs = [run_market("market-collusion", s, ["--market.peers", PEERS,
                                             "--market.blocks", str(args.blocks)])
          for s in args.seeds]
  beh = np.array(runs[0]["behaviours"])
  cabal = beh == "cabal"
  n = len(beh)
  # the replay of a run's own initial stake is the run's ledger, unit for unit
  own = np.full(n, float(UNITS))
  paid, _ = replay(jnp.asarray(runs[0]["W"]), jnp.asarray(own[None]), base.ledger)
  live = np.asarray([r["ledger"]["paid"] for r in runs[0]["hist"]])
  assert np.array_equal(np.asarray(paid[0]), live), "the replay must equal the live ledger"
  stakes = []
  for x in SHARES:
    s = np.full(n, float(UNITS))
    total = s.sum()
    s[cabal] = x * total / cabal.sum()
    s[~cabal] = (1 - x) * total / (~cabal).sum()
    stakes.append(np.round(s))
  stakes = jnp.asarray(np.stack(stakes))
  curves = {}
  for name, (rho, kappa) in SETTINGS.items():
    lcfg = dataclasses.replace(base.ledger, bittensor=BitTensorConfig(
        rho=rho, kappa=kappa, tau=base.ledger.bittensor.tau))
    finals, traj = [], []
    for r in runs:
      paid, minted = replay(jnp.asarray(r["W"]), stakes, lcfg)
      stake_T = np.asarray(stakes)[:, None, :] + np.cumsum(np.asarray(paid), axis=1)  # [D, T, N]
      share_T = stake_T[..., cabal].sum(-1) / stake_T.sum(-1)                      # [D, T]
      finals.append(share_T[:, -1])
      traj.append(share_T)
    finals = np.stack(finals)   # [S, D]
    out["settings"][name] = {
        "rho": rho, "kappa": kappa,
        "final_share": [spread(finals[:, i]) for i in range(len(SHARES))],
        "loses_share": [bool((finals[:, i] < x).all()) for i, x in enumerate(SHARES)]}
    curves[name] = np.mean(traj, axis=0)
    print(f"{name:22s} final cabal share " + " ".join(
        f"{x:.2f}->{finals[:, i].mean():.3f}" for i, x in enumerate(SHARES)))
  reg = out["settings"]["rho 10, kappa 0.5"]
  out["claim_below_half_loses"] = all(
      reg["loses_share"][i] for i, x in enumerate(SHARES) if x < 0.5)
  out["claim_above_half_wins"] = all(
      not reg["loses_share"][i] for i, x in enumerate(SHARES) if x > 0.5)
  out["seconds_markets"] = [r["seconds"] for r in runs]
  json_path, png_path = out_paths("market_collusion")
  write_json(json_path, out)
  plot(curves, png_path)


def plot(curves: dict, path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.6), sharey=True)
  for ax, (name, share_DxT) in zip(axes, curves.items()):
    for i, x in enumerate(SHARES):
      ax.plot(share_DxT[i], color=plt.cm.coolwarm(i / (len(SHARES) - 1)), label=f"{x:.2f}")
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("block")
  axes[0].set_ylabel("cabal stake share (mean over seeds)")
  axes[-1].legend(fontsize=6, title="start", title_fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
