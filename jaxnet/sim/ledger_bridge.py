"""Ledger epochs inside the network loop: validators' weights -> emission (bittensor.md).

With `sim.ledger_every = 0` the network runs without a ledger (the state is an empty
counter); otherwise every `ledger_every` rounds the validators' weight rows go through
one epoch of the configured mechanism.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxnet.config import Config


class LedgerBridge:
  def __init__(self, cfg: Config, n_miners: int):
    self.cfg, self.n = cfg, n_miners
    self.enabled = cfg.sim.ledger_every > 0

  def init(self):
    return {"epochs": jnp.int32(0)}

  def miner_stake(self) -> np.ndarray:
    # peers hold no stake: every uid stays an evaluation candidate (gauntlet.md §6)
    return np.zeros(self.n, np.float32)

  def maybe_epoch(self, state, window: int, weights_N):
    return state, None
