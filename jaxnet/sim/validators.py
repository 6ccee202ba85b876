"""V validators with stake: behaviours, and all their Gauntlet rounds in one jitted call.

Each validator has its own `ValidatorState` (stacked on a leading validator axis), its own
random pages and keys from (seed, validator, window) (`sim.validator_seeds: independent`;
`shared` gives every validator validator 0's), and its own `uids_per_window`. One jitted
call runs every validator's `score_round`: validators that share a static configuration are
lifted with `vmap` (a group of one runs unbatched, so one validator gives exactly the
single-validator numbers). Work that does not depend on the validator (the parsed uploads,
the assigned batches and the losses of the model before any update on them) enters the
vmap unbatched, and JAX computes it once for the group.

Behaviours (`sim.validator_behaviours`, one string per validator) change only what a
validator sets on chain (`jaxnet.sim.chain`), never the network's training:

  honest          its own Gauntlet weights
  sampled[:K]     honest, evaluating K uids per round (default 4, the paper-era reference,
                  gauntlet.md §15.2 uids_per_window) instead of `gauntlet.uids_per_window`
  copier[:SRC]    sets the latest weights it can read: SRC = consensus (default), the
                  stake-weighted kappa-median of the revealed rows, or a validator index
  lazy[:MODE]     MODE = uniform (default): uniform over the miners that uploaded this
                  round; stale: the row of its first commit, forever
  colluding       its own row with `sim.collusion_boost` of it moved onto
                  `sim.coalition_uids` (a coalition boosting its own miners)
  offline         never sets weights (and runs no rounds)

Every validator that is not offline runs its Gauntlet round, so its report can be read and
the gather list comes from the highest-stake one of them (templar's rule); a lazy or copying
validator simply does not use its own result.
"""
from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet.configbase import ConfigError
from jaxnet.gauntlet.validator import RoundInputs, init_state as init_validator, score_round

KINDS = ("honest", "sampled", "copier", "lazy", "colluding", "offline")
SAMPLED_DEFAULT = 4     # gauntlet.md §15.2: uids_per_window 4 at the reference commit
LAZY_MODES = ("uniform", "stale")


def parse_behaviour(text: str, index: int, n_validators: int, name: str) -> tuple[str, int]:
  """"kind[:arg]" -> (kind, arg); a one-line ConfigError naming `name` otherwise.

  arg: sampled -> K >= 1; copier -> -1 (consensus) or a validator index other than
  `index`; lazy -> 0 (uniform) or 1 (stale); 0 for the rest.
  """
  kind, sep, arg = str(text).partition(":")
  if kind not in KINDS:
    raise ConfigError(f"{name}: unknown validator behaviour {kind!r} (known: {', '.join(KINDS)})")
  if kind == "sampled":
    if sep and not (arg.isdigit() and int(arg) >= 1):
      raise ConfigError(f"{name}: {text!r}: sampled:K needs an integer K >= 1")
    return kind, int(arg) if sep else SAMPLED_DEFAULT
  if kind == "copier":
    if not sep or arg == "consensus":
      return kind, -1
    if not arg.isdigit() or int(arg) >= n_validators or int(arg) == index:
      raise ConfigError(f"{name}: {text!r}: copier:SRC needs SRC = consensus or another "
                        f"validator's index in [0, {n_validators})")
    return kind, int(arg)
  if kind == "lazy":
    if sep and arg not in LAZY_MODES:
      raise ConfigError(f"{name}: {text!r}: lazy:MODE needs MODE in {LAZY_MODES}")
    return kind, LAZY_MODES.index(arg) if sep else 0
  if sep:
    raise ConfigError(f"{name}: {text!r}: {kind} takes no argument")
  return kind, 0


def _take(tree, idx):
  return jax.tree.map(lambda x: x[idx], tree)


def _rounds(states, inputs: RoundInputs, rand_V, params, window, lr_t, keys_V, *, groups,
            cfg, layout, model_cfg, mesh):
  """Every running validator's round; `groups` = ((uids_per_window, (v, ...)), ...).

  Returns the new stacked states and the reports stacked [V, ...] (zeros for validators
  that run no round).
  """
  V = jax.tree.leaves(states)[0].shape[0]
  reports = None
  for upw, vs in groups:
    gcfg = dataclasses.replace(cfg, uids_per_window=upw)
    one = partial(score_round, params=params, window=window, lr_t=lr_t, cfg=gcfg,
                  layout=layout, model_cfg=model_cfg, mesh=mesh)
    idx = jnp.asarray(vs, jnp.int32)

    def run(st, rand, key, one=one):
      return one(st, inputs._replace(rand=rand), key=key)

    if len(vs) == 1:   # unbatched: one validator gives exactly the single-validator round
      new, rep = run(_take(states, vs[0]), _take(rand_V, vs[0]), keys_V[vs[0]])
      new, rep = jax.tree.map(lambda x: x[None], (new, rep))
    else:
      new, rep = jax.vmap(run)(_take(states, idx), _take(rand_V, idx), keys_V[idx])
    states = jax.tree.map(lambda s, x: s.at[idx].set(x), states, new)
    if reports is None:
      reports = jax.tree.map(lambda x: jnp.zeros((V,) + x.shape[1:], x.dtype), rep)
    reports = jax.tree.map(lambda r, x: r.at[idx].set(x), reports, rep)
  return states, reports


_rounds_jit = jax.jit(_rounds, static_argnames=("groups", "cfg", "layout", "model_cfg", "mesh"))


class ValidatorSet:
  """The V validators of a network: static pieces, stacked state, one jitted round."""

  def __init__(self, cfg, layout, n_uids: int, mesh=None):
    self.cfg, self.n = cfg, n_uids
    self.kinds = cfg.sim.validator_kinds()
    self.V = len(self.kinds)
    self.running = np.array([k != "offline" for k, _ in self.kinds])
    upw = [a if k == "sampled" else cfg.gauntlet.uids_per_window for k, a in self.kinds]
    groups: dict[int, list[int]] = {}
    for v in np.flatnonzero(self.running):
      groups.setdefault(upw[v], []).append(int(v))
    self.groups = tuple((u, tuple(vs)) for u, vs in sorted(groups.items()))
    self.salts = (np.arange(self.V) if cfg.sim.validator_seeds == "independent"
                  else np.zeros(self.V, int))
    self._round = partial(_rounds_jit, groups=self.groups, cfg=cfg.gauntlet, layout=layout,
                          model_cfg=cfg.model, mesh=mesh)

  def init_state(self):
    one = init_validator(self.n, self.cfg.gauntlet)
    return jax.tree.map(lambda x: jnp.stack([x] * self.V), one)

  def round(self, states, inputs: RoundInputs, rand_V, params, window: int, lr_t, keys_V):
    """(states [V], shared inputs, random batches [V, B, L], ...) -> (states, reports [V])."""
    return self._round(states, inputs, rand_V, params, jnp.int32(window), jnp.float32(lr_t),
                       keys_V)

  def lead(self, stake_V) -> int:
    """The validator whose gather list the network uses: the highest stake among those that
    run rounds (the lowest index on ties)."""
    s = np.where(self.running, np.asarray(stake_V, np.float64), -np.inf)
    return int(np.argmax(s))
