"""Shared by the validator-layer experiments (issue 13): record a live Gauntlet network's
validator rows once per seed, then replay the chain over them.

The chain (commit-reveal, behaviours, Yuma) never feeds back into training: the network's
model and every validator's Gauntlet round depend only on the uploads and each validator's
own randomness (tests/test_validators.py checks that replaying the recorded rows gives the
network's ledger exactly). So each seed runs the network once with `full` validators that
evaluate every peer and `sampled` ones that evaluate 4 per round, all with independent
randomness, and the experiments replay the recorded rows [T, V, N] through
`jaxnet.sim.chain.run_chain` under every chain variant (reveal period, Yuma version,
behaviours, stake draws), vmapped over draws and seeds in one call. What a replay cannot
show: a different lead validator's gather list (the lead here is validator 0, a full one).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from _common import ROOT, fresh_run_dir, run_sim
from jaxnet.config import load_config
from jaxnet.ledger import init_ledger
from jaxnet.sim import chain

CONFIG = ROOT / "configs" / "sim-tiny.yaml"
FULL, SAMPLED = 6, 4       # validators evaluating every peer / 4 peers per round
ROUNDS, TEMPO = 40, 2      # 20 ledger epochs


def record(seed: int, rounds: int = ROUNDS, tempo: int = TEMPO, config: Path = CONFIG,
           overrides: tuple = ()) -> dict:
  """Rows [T, V, N] each validator would set at every epoch, uploads present [T, N], the
  peers' behaviours; cached under runs/validator-rows (delete it to re-record)."""
  cache = ROOT / "runs" / "validator-rows" / f"{Path(config).stem}-s{seed}-r{rounds}-t{tempo}.npz"
  if cache.exists() and not overrides:
    z = np.load(cache)
    return {"rows": z["rows"], "present": z["present"], "val_loss": z["val_loss"],
            "behaviours": json.loads(str(z["behaviours"])), "seconds": float(z["seconds"])}
  V = FULL + SAMPLED
  stake = [1.5] + [1.0] * (V - 1)   # validator 0 (full) leads the gather list
  kinds = ["honest"] * FULL + ["sampled:4"] * SAMPLED
  cfg = load_config(config, [
      "--sim.seed", str(seed), "--train.seed", str(seed), "--data.seed", str(seed),
      "--sim.rounds", str(rounds), "--sim.ledger_every", str(tempo),
      "--ledger.reveal_period", "0", "--sim.validators", str(V),
      "--sim.validator_stake", json.dumps(stake), "--sim.validator_behaviours", json.dumps(kinds),
      "--checkpoint.resume", "never", "--checkpoint.every", "0",
      "--train.out_dir", fresh_run_dir(f"validator-rows-{seed}"), *overrides])
  res = run_sim(cfg, f"network seed {seed} ({V} validators)")
  ep = [r for r in res["history"] if r["ledger"]]
  out = {"rows": np.asarray([r["validator_weights"] for r in ep], np.float32),
         "present": np.asarray([r["report"]["present"] for r in ep], bool),
         "val_loss": np.asarray([r["val_loss"] for r in res["history"]], np.float32),
         "behaviours": res["network"].behaviours, "seconds": res["seconds"]}
  if not overrides:
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **{k: v for k, v in out.items() if k != "behaviours"},
             behaviours=json.dumps(out["behaviours"]))
  return out


def fresh_chain(spec: chain.ChainSpec, stake_V, n_miners: int) -> chain.ChainState:
  """A new chain for stake `stake_V` (units: 1e6 per unit of stake)."""
  units = np.round(np.asarray(stake_V, np.float64) * 1e6)
  if spec.square:
    led = init_ledger(np.concatenate([units, np.zeros(n_miners)]), None, spec.ledger)
  else:
    led = init_ledger(units, n_miners, spec.ledger)
  return chain.init_state(led, len(units), n_miners, spec.ledger.reveal_period)


def replay(spec: chain.ChainSpec, stakes_DxV, rows_SxTxVxN, present_SxTxN) -> dict:
  """Every (seed, stake draw) through the chain in one jitted, vmapped call.

  Returns the per-epoch logs as numpy arrays [S, D, T, ...]."""
  S, D = rows_SxTxVxN.shape[0], len(stakes_DxV)
  N = rows_SxTxVxN.shape[-1]
  states = [fresh_chain(spec, s, N) for s in stakes_DxV]
  st_D = jax.tree.map(lambda *x: jnp.stack(x), *states)

  def one(st, rows, present):
    return chain.run_chain(st, rows, present, spec)[1]

  over_draws = jax.vmap(one, in_axes=(0, None, None))
  over_seeds = jax.vmap(over_draws, in_axes=(None, 0, 0))
  logs = jax.jit(over_seeds)(st_D, jnp.asarray(rows_SxTxVxN), jnp.asarray(present_SxTxN))
  assert all(np.asarray(x).shape[:2] == (S, D) for x in jax.tree.leaves(logs))
  return jax.tree.map(np.asarray, logs)


def stake_draws(rng, n_draws: int, groups: list[tuple[list[int], float]], V: int) -> np.ndarray:
  """[D, V] stakes: ~ N(1, 0.3^2) clamped at 0.05 (bittensor.md §3 item 1's Monte Carlo),
  each group of validators rescaled to its share of the total; others get 0."""
  out = np.zeros((n_draws, V))
  for d in range(n_draws):
    s = np.clip(rng.normal(1.0, 0.3, V), 0.05, None)
    for members, share in groups:
      out[d, members] = s[members] * share / s[members].sum()
  return out


def args_and_recordings(doc: str, argv, rounds: int):
  """The experiments' shared command line (--seeds, --draws, --rounds) and their
  recordings: (args, rows [S, T, V, N], present [S, T, N], the peers' behaviours)."""
  ap = argparse.ArgumentParser(description=doc)
  ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  ap.add_argument("--draws", type=int, default=16)
  ap.add_argument("--rounds", type=int, default=rounds,
                  help="network rounds per seed (2 per ledger epoch)")
  args = ap.parse_args(argv)
  recs = [record(s, rounds=args.rounds) for s in args.seeds]
  rows = np.stack([r["rows"] for r in recs])
  present = np.stack([r["present"] for r in recs])
  return args, rows, present, recs[0]["behaviours"]


def first_paid_epoch(rows_SxTxVxN, validators, reveal_period: int) -> int:
  """The first epoch at which every seed has revealed a non-empty row of each of
  `validators`: before it the Gauntlet pays nobody yet (own-page evidence takes a few
  evaluations) and emission falls back to stake, a warm-up the measurements leave out."""
  nonempty = (rows_SxTxVxN[:, :, validators].sum(-1) > 0).all(-1)   # [S, T]
  return int(max(np.argmax(ne) for ne in nonempty)) + reveal_period
