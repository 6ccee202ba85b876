"""Coalition stake sweep, 10%..60%, under Yuma Consensus and the 2020 mechanism.

Claim (spec §1.3, §3 items 1 and 3): a coalition that weights only its own miners earns
less than its stake share while its stake is below kappa (about 0.5) and takes over above
it. Yuma: 64 validators x 256 miners, the coalition holds 16 validators and 64 miners;
honest validators score honest miners by quality with noise and give the coalition's miners
nothing; stake per validator ~ N(1, 0.3^2) clamped, rescaled to the swept share. 2020: 64
peers in two disjoint blocks (the paper's cabal setting, §1.3). All scenarios (stake shares
x seeds) run in one vmapped call per mechanism.

  python experiments/collusion_sweep.py [--out results/collusion_sweep.json]
  python experiments/collusion_sweep.py --plot-only   # re-draw the PNG from the JSON
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from _common import out_paths, plot_only, save_figure
from jaxnet.ledger import BitTensorConfig, YumaConfig, run, run_2020

V, M, V_C, M_C = 64, 256, 16, 64  # validators, miners; coalition validators and miners


def scenarios(shares, seeds):
  """Weights and stakes for every (share, seed) pair, stacked on a leading axis."""
  Ws, Ss = [], []
  for x in shares:
    for seed in range(seeds):
      rng = np.random.default_rng(seed)
      q = rng.lognormal(0, 0.5, M - M_C)
      W = np.zeros((V, M), np.float32)
      W[: V - V_C, : M - M_C] = q * rng.uniform(0.8, 1.2, (V - V_C, M - M_C))
      W[V - V_C:, M - M_C:] = 1.0
      s = np.clip(rng.normal(1.0, 0.3, V), 0.05, None)
      s[: V - V_C] *= (1 - x) / s[: V - V_C].sum()
      s[V - V_C:] *= x / s[V - V_C:].sum()
      Ws.append(W)
      Ss.append(s.astype(np.float32))
  return jnp.asarray(np.stack(Ws)), jnp.asarray(np.stack(Ss))


def yuma_sweep(shares, seeds, epochs, params):
  W, S = scenarios(shares, seeds)

  def one(w, s):
    _, _, outs = run(w, s, params, epochs=epochs)
    coal = outs.server_emission[:, M - M_C:].sum(1) + outs.validator_emission[:, V - V_C:].sum(1)
    return coal / (outs.server_emission.sum(1) + outs.validator_emission.sum(1))

  share_TxB = jax.jit(jax.vmap(one))(W, S)  # [scenarios, epochs]
  return np.asarray(share_TxB).reshape(len(shares), seeds, epochs)


def sweep_2020(shares, blocks, params):
  n, n_c = 64, 16
  W = np.zeros((n, n), np.float32)
  W[: n - n_c, : n - n_c] = 1.0 / (n - n_c)
  W[n - n_c:, n - n_c:] = 1.0 / n_c
  S = np.stack([np.concatenate([np.full(n - n_c, (1 - x) / (n - n_c)), np.full(n_c, x / n_c)])
                for x in shares]).astype(np.float32)

  def one(s):
    _, outs, S_T = run_2020(W, s, params, epochs=blocks)
    return outs.incentive[0, n - n_c:].sum(), S_T[-1, n - n_c:].sum() / S_T[-1].sum()

  first, final = jax.jit(jax.vmap(one))(jnp.asarray(S))
  return np.asarray(first), np.asarray(final)


def main(argv=None):
  if plot_only(argv, "collusion_sweep", plot):
    return
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  # under the repository's results/ from any working directory (the README runs it from
  # experiments/, which used to leave a stray copy in experiments/results/)
  ap.add_argument("--out", default=str(out_paths("collusion_sweep")[0]))
  ap.add_argument("--seeds", type=int, default=4)
  ap.add_argument("--epochs", type=int, default=20)
  ap.add_argument("--blocks", type=int, default=100)
  args = ap.parse_args(argv)
  t0 = time.perf_counter()
  shares = np.round(np.arange(0.10, 0.601, 0.01), 2)
  yp = YumaConfig()  # chain defaults: kappa 32767/65535, beta 1, Yuma 2, alpha 0.1 (§2.2)
  yuma = yuma_sweep(shares, args.seeds, args.epochs, yp)
  bp = BitTensorConfig()  # rho 10, kappa 0.5, tau 0.1 (§1.2, §1.3)
  first_2020, final_2020 = sweep_2020(shares, args.blocks, bp)
  elapsed = time.perf_counter() - t0

  y_first, y_last = yuma[:, :, 0].mean(1), yuma[:, :, -1].mean(1)
  key = [0.1, 0.3, 0.45, 0.49, 0.5, 0.51, 0.55, 0.6]
  idx = {x: int(np.argmin(np.abs(shares - x))) for x in key}
  above = shares[y_last > shares + 1e-6]
  result = {
      "experiment": "collusion_sweep", "stake_share": shares.tolist(),
      "yuma": {"config": {"kappa": yp.kappa, "bonds_penalty": yp.bonds_penalty,
                          "bonds_alpha": yp.bonds_alpha, "yuma3": yp.yuma3},
               "validators": V, "miners": M, "coalition_validators": V_C,
               "coalition_miners": M_C, "seeds": args.seeds, "epochs": args.epochs,
               "emission_share_epoch0": y_first.tolist(),
               "emission_share_last_epoch": y_last.tolist(),
               "emission_share_last_epoch_std": yuma[:, :, -1].std(1).tolist(),
               "first_share_above_stake": float(above.min()) if above.size else None},
      "bittensor2020": {"config": {"rho": bp.rho, "kappa": bp.kappa, "tau": bp.tau},
                        "peers": 64, "coalition_peers": 16, "blocks": args.blocks,
                        "emission_share_first_block": first_2020.tolist(),
                        "stake_share_after_blocks": final_2020.tolist()},
      "key_numbers": {f"{x:.2f}": {"yuma_epoch0": float(y_first[i]),
                                   "yuma_last": float(y_last[i]),
                                   "bt2020_first_block": float(first_2020[i]),
                                   "bt2020_stake_after": float(final_2020[i])}
                      for x, i in idx.items()},
      "seconds": elapsed,
  }
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2))
  plot(result, out.with_suffix(".png"))
  print(f"{'stake':>6} {'yuma e0':>8} {'yuma e' + str(args.epochs - 1):>8} "
        f"{'2020 b1':>8} {'2020 S' + str(args.blocks):>9}")
  for x, i in idx.items():
    print(f"{x:6.2f} {y_first[i]:8.4f} {y_last[i]:8.4f} {first_2020[i]:8.4f} {final_2020[i]:9.4f}")
  print(f"wrote {out} and {out.with_suffix('.png')} in {elapsed:.1f}s")


def plot(out: dict, path):
  """Both mechanisms' coalition share against its stake share, from the JSON."""
  from jaxnet import plotstyle as ps
  plt = ps.pyplot()
  shares = out["stake_share"]
  y, b = out["yuma"], out["bittensor2020"]
  fig, ax = plt.subplots(2, 1, figsize=(7.5, 7), sharex=True)
  c = ps.palette(4)   # four series over the two panels: none shares a colour
  # the two Yuma curves coincide: the later one is drawn wide and pale under the first
  ax[0].plot(shares, y["emission_share_epoch0"], "o-", ms=3, color=c[0], zorder=3,
             label="emission share, epoch 0")
  ax[0].plot(shares, y["emission_share_last_epoch"], "s-", ms=7, lw=4, alpha=0.45, color=c[1],
             label=f"emission share, epoch {y['epochs'] - 1} (bonds built)")
  ax[0].set_title(f"Yuma Consensus (Yuma 2, chain defaults): {y['validators']} validators x "
                  f"{y['miners']} miners, mean of {y['seeds']} seeds", fontsize=9)
  ax[1].plot(shares, b["emission_share_first_block"], "o-", ms=3, color=c[2],
             label="emission share, block 1")
  ax[1].plot(shares, b["stake_share_after_blocks"], "s-", ms=3, color=c[3],
             label=f"stake share after {b['blocks']} blocks")
  ax[1].set_title(f"2020 mechanism (rho {b['config']['rho']:g}, tau {b['config']['tau']:g}): "
                  f"{b['peers']} peers in two disjoint blocks", fontsize=9)
  for a, kappa in zip(ax, (y["config"]["kappa"], b["config"]["kappa"])):
    a.plot([0, 1], [0, 1], "k:", lw=1, label="share = stake share")
    a.axvline(kappa, color="grey", lw=1, ls="--", label=f"kappa = {kappa:.5g}")
    a.set_xlim(0.08, 0.62)
    a.set_ylim(-0.02, 1.02)
    ps.label(a, "coalition stake share (fraction of all stake)",
             "coalition share (fraction)", legend="")
  ax[0].tick_params(labelbottom=True)
  ps.title(fig, "A coalition weighting only its own miners: its share against its stake share")
  fig.tight_layout()
  return save_figure(fig, path)


if __name__ == "__main__":
  main()
