"""Ledger epochs inside the network loop: validators' weights -> emission (bittensor.md).

Every `sim.ledger_every` rounds the validators' weight rows (the Gauntlet weights of each
validator over the N peer uids, set just before the epoch) go through one epoch of the
configured mechanism and the integer ledger pays miners and validators. With
`ledger_every = 0` the network runs without a ledger. Validators here are honest and see
the same inputs, so their rows agree; the collusion experiment drives the ledger directly
with dissenting rows.

Index layout. Yuma's split layout has V validator rows and N miner columns. The 2020
mechanism (`ledger.mechanism: bittensor2020`, spec §1.2) and Yuma's combined layout rank
one population of n = V + N uids: uids 0..V-1 are the validators (their stake, their
weight rows), uids V..V+N-1 the peers (no stake at the start, zero rows: peers set no
weights). Under the 2020 mechanism the inflation is paid into stake, so peers that earn
gain stake in the ledger; that never makes them validators of the Gauntlet.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxnet.config import Config
from jaxnet.configbase import ConfigError
from jaxnet.ledger import LedgerInputError, init_ledger, ledger_step
from jaxnet.ledger.state import _check_headroom

STAKE_UNITS = 1_000_000   # integer ledger units per unit of validator stake


class LedgerBridge:
  def __init__(self, cfg: Config, n_miners: int):
    self.cfg, self.n = cfg, n_miners
    self.every = cfg.sim.ledger_every
    self.enabled = self.every > 0
    self.n_validators = cfg.sim.validators
    self.square = (cfg.ledger.mechanism == "bittensor2020"
                   or cfg.ledger.yuma.layout == "combined")
    if self.enabled:
      # Integer totals must not wrap within the run: refuse it at start, in one line.
      try:
        _check_headroom(self.init(), cfg.ledger, cfg.sim.rounds // self.every)
      except LedgerInputError as e:
        raise ConfigError(f"sim.rounds: {cfg.sim.rounds} rounds with sim.ledger_every "
                          f"{self.every}: {e}") from None

  def init(self):
    if not self.enabled:
      return {"epochs": jnp.int32(0)}
    units = np.round(np.asarray(self.cfg.sim.validator_stake) * STAKE_UNITS)
    if self.square:
      return init_ledger(np.concatenate([units, np.zeros(self.n)]), None, self.cfg.ledger)
    return init_ledger(units, self.n, self.cfg.ledger)

  def miner_stake(self) -> np.ndarray:
    # peers hold no stake: every uid stays an evaluation candidate (gauntlet.md §6)
    return np.zeros(self.n, np.float32)

  def weight_rows(self, weights_N) -> jnp.ndarray:
    """The validators' rows: [V, N] (split), or [n, n] with the rows of uids 0..V-1 set."""
    V = self.n_validators
    W = jnp.tile(jnp.asarray(weights_N, jnp.float32)[None, :], (V, 1))
    if self.square:
      W = jnp.zeros((V + self.n, V + self.n), jnp.float32).at[:V, V:].set(W)
    return W

  def maybe_epoch(self, state, window: int, weights_N):
    if not self.enabled or (window + 1) % self.every:
      return state, None
    state, rec = ledger_step(state, self.weight_rows(weights_N), self.cfg.ledger)
    server, validator = np.asarray(rec.server_units), np.asarray(rec.validator_units)
    if self.square:   # one index: validators first, then the peers
      paid, V = server + validator, self.n_validators
      server, validator = paid[V:], paid[:V]
    return state, {"epoch": int(rec.epoch), "minted": int(rec.minted), "owner": int(rec.owner),
                   "miner_units": server.tolist(), "validator_units": validator.tolist()}
