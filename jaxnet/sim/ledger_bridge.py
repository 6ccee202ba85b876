"""Ledger epochs inside the network loop: validators' weights -> emission (bittensor.md).

Every `sim.ledger_every` rounds the validators' weight rows W [V, N] (the Gauntlet
weights of each validator over the N peer uids) go through one epoch of the configured
mechanism (`ledger.mechanism`: Yuma Consensus or the 2020 mechanism) and the integer
ledger pays miners and validators. With `ledger_every = 0` the network runs without a
ledger. Validators here are honest and see the same inputs, so their rows agree; the
collusion experiment drives the ledger directly with dissenting rows.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxnet.config import Config
from jaxnet.ledger import init_ledger, ledger_step

STAKE_UNITS = 1_000_000   # integer ledger units per unit of validator stake


class LedgerBridge:
  def __init__(self, cfg: Config, n_miners: int):
    self.cfg, self.n = cfg, n_miners
    self.enabled = cfg.sim.ledger_every > 0 and cfg.ledger.mechanism == "yuma"
    self.every = cfg.sim.ledger_every
    self.n_validators = cfg.sim.validators
    if cfg.sim.ledger_every > 0 and cfg.ledger.mechanism != "yuma":
      # the 2020 mechanism ranks within one n x n population: see experiments/collusion.py
      raise ValueError("sim.ledger_every: the network loop runs the Yuma ledger "
                       "(ledger.mechanism: yuma); the 2020 mechanism is in experiments/collusion.py")

  def init(self):
    if not self.enabled:
      return {"epochs": jnp.int32(0)}
    units = np.round(np.asarray(self.cfg.sim.validator_stake) * STAKE_UNITS)
    return init_ledger(units, self.n, self.cfg.ledger)

  def miner_stake(self) -> np.ndarray:
    # peers hold no stake: every uid stays an evaluation candidate (gauntlet.md §6)
    return np.zeros(self.n, np.float32)

  def maybe_epoch(self, state, window: int, weights_N):
    if not self.enabled or (window + 1) % self.every:
      return state, None
    W = jnp.tile(jnp.asarray(weights_N, jnp.float32)[None, :], (self.n_validators, 1))
    state, rec = ledger_step(state, W, self.cfg.ledger)
    return state, {"epoch": int(rec.epoch), "minted": int(rec.minted), "owner": int(rec.owner),
                   "miner_units": np.asarray(rec.server_units).tolist(),
                   "validator_units": np.asarray(rec.validator_units).tolist()}
