"""A cabal with 10-60 % of the stake inside the live market: its stake share over blocks,
with the 2020 regulariser (rho, kappa sweep) and without it (plain ranks, rho = 0).

  python experiments/market_collusion.py [--seeds 0 1 2] [--blocks 300]
  python experiments/market_collusion.py --plot-only   # re-draw the PNG from the JSON

Claim (market.md §6, bittensor.md §1.3): a cabal under 50 % of the stake loses stake share
over blocks, above 50 % it wins. The cabal (4 of 24 peers) serves noise and weights only
its own members; the honest peers' rows are what their valuations (fisher2020) learned in
a live market-small run, with each peer querying 6 random others (k_random, as shipped)
or every other peer (all); and with the 2020 code's rule for rows (shift the scores by
2 |min|: every neighbour keeps a positive weight, the cabal included) or with negative
scores clipped to 0 (an honest peer cuts a neighbour that hurts it, so the cabal is
disjoint from the honest peers, the setting of the paper's argument). The stake does not feed back into training, so each seed runs
the market once and the 2020 integer ledger is replayed over its recorded rows of W for
every initial cabal share and (rho, kappa) in one vmapped call per setting (the replay of
the run's own stake equals the run's ledger exactly; checked below). Writes
results/market_collusion.{json,png}.
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np

from _common import out_paths, plot_only, save_figure, spread, write_json

PEERS = '["honest:16", "noise:2", "lazy:2", "cabal:4"]'
SHARES = (0.1, 0.2, 0.3, 0.4, 0.45, 0.55, 0.6)
SETTINGS = {"plain ranks (rho 0)": (0.0, 0.5), "rho 10, kappa 0.5": (10.0, 0.5),
            "rho 30, kappa 0.5": (30.0, 0.5), "rho 10, kappa 0.4": (10.0, 0.4),
            "rho 10, kappa 0.6": (10.0, 0.6)}
UNITS = 10_000   # per peer, as jaxnet.market.run


def replay(W_TxNxN, stake_DxN, ledger_cfg):
  """The integer 2020 ledger over the recorded W from each of D initial stakes ->
  (units paid [D, T, N], minted [D, T])."""
  import jax
  from jaxnet.ledger.state import ledger_step_core

  def one(stake):
    st = init_ledger_traced(stake, ledger_cfg)
    _, recs = jax.lax.scan(lambda s, w: ledger_step_core(s, w, ledger_cfg), st, W_TxNxN)
    return recs.server_units, recs.minted

  return jax.jit(jax.vmap(one))(stake_DxN)


def init_ledger_traced(stake, cfg):
  """`init_ledger` for a traced stake vector (the 2020 mode uses no bonds or permits)."""
  from jaxnet.ledger import init_ledger
  template = init_ledger(np.ones(stake.shape[0]), None, cfg)
  return template._replace(stake=stake.astype(template.stake.dtype))


def main(argv=None):
  if plot_only(argv, "market_collusion", plot):
    return
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  ap.add_argument("--blocks", type=int, default=300)
  ap.add_argument("--topologies", nargs="+", default=["k_random", "all"])
  ap.add_argument("--row-rules", nargs="+", default=["shift", "clip"])
  args = ap.parse_args(argv)
  out = {"seeds": args.seeds, "blocks": args.blocks, "peers": PEERS, "shares": SHARES,
         "markets": {}}
  curves = {}
  for rule in args.row_rules:
    for topo in args.topologies:
      key = f"{topo}/{rule}"
      out["markets"][key], curves[key] = sweep(args, topo, rule)
  # the figure's curves (mean over seeds, per block), so that --plot-only can re-draw it
  out["curves"] = {k: {name: np.round(c, 4) for name, c in v.items()} for k, v in curves.items()}
  json_path, png_path = out_paths("market_collusion")
  write_json(json_path, out)
  plot(json.loads(json_path.read_text()), png_path)


def sweep(args, topo: str, rule: str):
  """Every (rho, kappa) setting and initial cabal share over the runs of one market."""
  import jax.numpy as jnp
  from _market import CONFIG, run_market
  from jaxnet.config import load_config
  from jaxnet.ledger import BitTensorConfig
  over = ["--market.peers", PEERS, "--market.topology", topo, "--market.row_rule", rule]
  base = load_config(CONFIG, over)
  out = {"settings": {}}
  runs = [run_market(f"market-collusion-{topo}-{rule}", s,
                     over + ["--market.blocks", str(args.blocks)]) for s in args.seeds]
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
    print(f"{topo:8s} {rule:5s} {name:22s} final cabal share " + " ".join(
        f"{x:.2f}->{finals[:, i].mean():.3f}" for i, x in enumerate(SHARES)))
  reg = out["settings"]["rho 10, kappa 0.5"]   # the paper's setting
  out["claim_below_half_loses"] = all(
      reg["loses_share"][i] for i, x in enumerate(SHARES) if x < 0.5)
  out["claim_above_half_wins"] = all(
      not reg["loses_share"][i] for i, x in enumerate(SHARES) if x > 0.5)
  out["seconds_markets"] = [r["seconds"] for r in runs]
  return out, curves


MARKETS = {"k_random": "6 random neighbours", "all": "all-to-all queries"}


def plot(out: dict, path):
  """The cabal's stake share over blocks (mean over seeds) from every initial share, per
  market and (rho, kappa) setting, from the JSON's `curves`."""
  if "curves" not in out:
    raise ValueError("this market_collusion JSON predates the saved curves (`curves`): re-run "
                     "experiments/market_collusion.py to draw its figure")
  from jaxnet import plotstyle as ps
  plt = ps.pyplot()
  curves, shares = out["curves"], out["shares"]
  markets = list(curves)
  names = list(curves[markets[0]])
  fig, axes = plt.subplots(len(markets), len(names), figsize=(3.3 * len(names), 3.1 * len(markets)),
                           sharey=True, squeeze=False)
  colours = ps.palette(len(shares))   # dashed from a majority on, where the cabal should win
  for r, market in enumerate(markets):
    topo, _, rule = market.partition("/")
    for ax, name in zip(axes[r], names):
      for i, x in enumerate(shares):
        ax.plot(curves[market][name][i], color=colours[i], ls="--" if x > 0.5 else "-",
                label=f"{x:.2f}")
      ps.label(ax, "block", "cabal stake share (fraction)",
               title=f"{MARKETS.get(topo, topo)}, {rule}\n{name}")
      ax.title.set_fontsize(8)
  handles, labels = axes[0][-1].get_legend_handles_labels()   # top to bottom, as drawn
  axes[0][-1].legend(handles[::-1], labels[::-1], loc="upper left", bbox_to_anchor=(1.01, 1.0),
                     borderaxespad=0.0, fontsize=7, title="cabal's initial\nstake share",
                     title_fontsize=7, frameon=False)
  ps.title(fig, f"A cabal of 4 peers serving noise in the market: its stake share over "
                f"{out['blocks']} blocks (mean over seeds {out['seeds']})\nshift: every score "
                "shifted by 2|min| as the 2020 code wrote its rows; clip: negative scores clipped "
                "to 0")
  fig.tight_layout()
  return save_figure(fig, path)


if __name__ == "__main__":
  main()
