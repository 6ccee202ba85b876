"""Ledger epochs inside the network loop: validators' weights -> emission (bittensor.md).

Every `sim.ledger_every` rounds (the chain's tempo) each validator sets the row its
behaviour says, through commit-reveal (`ledger.reveal_period` tempos), and the integer
ledger pays miners and validators for one epoch of the configured mechanism on the rows
the chain has revealed (`jaxnet.sim.chain.chain_step`). With `ledger_every = 0` the network
runs without a ledger.

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
from jaxnet.ledger import LedgerInputError, init_ledger
from jaxnet.ledger.state import _check_headroom
from jaxnet.ledger.validate import check_matrix
from jaxnet.sim import chain

STAKE_UNITS = 1_000_000   # integer ledger units per unit of validator stake


class LedgerBridge:
  def __init__(self, cfg: Config, n_miners: int, kinds=None):
    self.cfg, self.n = cfg, n_miners
    self.every = cfg.sim.ledger_every
    self.enabled = self.every > 0
    self.n_validators = cfg.sim.validators
    self.square = (cfg.ledger.mechanism == "bittensor2020"
                   or cfg.ledger.yuma.layout == "combined")
    kinds = tuple(kinds) if kinds is not None else tuple(cfg.sim.validator_kinds())
    self.spec = chain.ChainSpec(kinds=kinds, coalition=tuple(cfg.sim.coalition_uids),
                                boost=float(cfg.sim.collusion_boost), ledger=cfg.ledger,
                                square=self.square)
    if self.enabled:
      # Integer totals must not wrap within the run: refuse it at start, in one line.
      try:
        _check_headroom(self.init().ledger, cfg.ledger, cfg.sim.rounds // self.every)
      except LedgerInputError as e:
        raise ConfigError(f"sim.rounds: {cfg.sim.rounds} rounds with sim.ledger_every "
                          f"{self.every}: {e}") from None

  def init(self):
    if not self.enabled:
      return {"epochs": jnp.int32(0)}
    units = np.round(np.asarray(self.cfg.sim.validator_stake) * STAKE_UNITS)
    if self.square:
      ledger = init_ledger(np.concatenate([units, np.zeros(self.n)]), None, self.cfg.ledger)
    else:
      ledger = init_ledger(units, self.n, self.cfg.ledger)
    return chain.init_state(ledger, self.n_validators, self.n, self.cfg.ledger.reveal_period)

  def miner_stake(self) -> np.ndarray:
    # peers hold no stake: every uid stays an evaluation candidate (gauntlet.md §6)
    return np.zeros(self.n, np.float32)

  def validator_stake(self, state) -> np.ndarray:
    """[V] each validator's stake now (the ledger's units, or the configured stake)."""
    if not self.enabled:
      return np.asarray(self.cfg.sim.validator_stake, np.float64)
    return np.asarray(state.ledger.stake)[:self.n_validators].astype(np.float64)

  def rows(self, weights) -> np.ndarray:
    """[V, N] validator rows from [V, N], or one [N] row given to every validator."""
    w = np.asarray(weights, np.float32)
    if w.ndim == 1:
      w = np.broadcast_to(w[None, :], (self.n_validators, w.shape[0]))
    check_matrix(w, "weights", (self.n_validators, self.n))
    return w

  def maybe_epoch(self, state, window: int, weights, active_N=None):
    """At the end of a tempo: one chain step (set weights, commit, reveal, epoch) ->
    (state, the epoch's log as lists), else (state, None)."""
    if not self.enabled or (window + 1) % self.every:
      return state, None
    active_N = np.ones(self.n, bool) if active_N is None else np.asarray(active_N, bool)
    _check_headroom(state.ledger, self.cfg.ledger, 1)
    state, log = chain.chain_step_jit(state, jnp.asarray(self.rows(weights)),
                                      jnp.asarray(active_N), spec=self.spec)
    out = {k: np.asarray(v).tolist() for k, v in log.items()}
    return state, out
