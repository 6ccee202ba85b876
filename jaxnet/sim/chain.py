"""The chain between the validators and the ledger: what each validator sets, commit-reveal,
activity, and one ledger epoch, as one pure step (bittensor.md §2-§3, gauntlet.md §1.4).

`chain_step(state, own_VxN, active_N, spec)` runs at every ledger epoch e (the network's
tempo) and is free of host logic, so the network calls it once per epoch and an experiment
can `lax.scan` it over recorded validator rows and `vmap` it over stake draws (the chain
never feeds back into training: the gather list is a validator's own round, not the
ledger's). In order:

  1. Each validator's row from its behaviour (`jaxnet.sim.validators`): its own Gauntlet
     weights (honest, sampled), uniform over the miners that uploaded (lazy:uniform), the
     row of its first commit forever (lazy:stale), its own row with `boost` of it moved onto
     the coalition's miners (colluding), nothing (offline).
  2. Those rows are committed; without commit-reveal (R = 0) they are readable at once.
  3. Weight copiers read what is readable now: another validator's revealed row, or the
     stake-weighted kappa-median of every non-copier's revealed row (the consensus they can
     compute), and commit it. With R >= 1 what they read is R tempos old.
  4. Commits made R epochs ago are revealed; a validator's chain row is its last revealed
     one, and it counts as active for `activity_cutoff` epochs after its last reveal (the
     chain's ActivityCutoff 5000 blocks over Tempo 360 gives 13; registration counts as a
     reveal at epoch 0, so a validator that never sets weights drags the consensus down
     until then, as on chain).
  5. One epoch of the integer ledger on the revealed rows (`ledger_step_core`, exact
     conservation), and the epoch's terms per validator and per miner for the report.

Layouts. Yuma's split layout has V validator rows and N miner columns; the 2020 mechanism
and Yuma's combined layout put them in one n = V + N index (validators first), as
`ledger_bridge` documents.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxnet.ledger import commit_reveal as cr
from jaxnet.ledger import ops
from jaxnet.ledger.config import LedgerConfig
from jaxnet.ledger.state import LedgerState, ledger_step_core
from jaxnet.ledger.yuma import EpochMasks, epoch_core


class ChainSpec(NamedTuple):
  """The static description of the validator layer (hashable: a jit static argument)."""
  kinds: tuple            # ((kind, arg), ...) per validator (jaxnet.sim.validators)
  coalition: tuple        # miner uids the colluding validators boost
  boost: float            # share of a colluding row moved onto the coalition
  ledger: LedgerConfig    # mechanism, Yuma parameters, emission, reveal period, cutoff
  square: bool            # one n = V + N index (2020 mechanism, Yuma combined layout)


class ChainState(NamedTuple):
  ledger: LedgerState
  reveal: cr.CommitRevealState   # [R+1, V, N] commits and the [V, N] revealed rows
  set_epoch: jax.Array           # [V] int32 epoch of each validator's last reveal (0 at start)
  stale: jax.Array               # [V, N] float32 a lazy:stale validator's frozen row
  has_stale: jax.Array           # [V] bool the frozen row is set


def init_state(ledger: LedgerState, V: int, N: int, reveal_period: int) -> ChainState:
  return ChainState(ledger, cr.init(V, N, reveal_period), jnp.zeros((V,), jnp.int32),
                    jnp.zeros((V, N), jnp.float32), jnp.zeros((V,), bool))


def _is(spec: ChainSpec, kind: str, arg: int | None = None) -> jax.Array:
  return jnp.array([k == kind and (arg is None or a == arg) for k, a in spec.kinds])


def consensus_row(rows_VxN, stake_V, kappa) -> jax.Array:
  """The stake-weighted kappa-median of the rows (bittensor.md §2.1 step 6), renormalised
  into a weight row: what a copier can compute from the rows it reads."""
  c_N = ops.stake_weighted_quantile_core(ops.row_normalize(rows_VxN), stake_V, kappa)
  return ops.normalize(c_N)


def agreement(rows_VxN, c_N) -> jax.Array:
  """1 - total-variation distance between each normalised row and the normalised consensus,
  in [0, 1] (1: the row is the consensus); 0 for an empty row."""
  w_VxN, c_N = ops.row_normalize(rows_VxN), ops.normalize(c_N)
  tv_V = 0.5 * jnp.sum(jnp.abs(w_VxN - c_N[None, :]), axis=1)
  return jnp.where(jnp.sum(w_VxN, axis=1) > 0, 1.0 - tv_V, 0.0)


def _rows(state: ChainState, own_VxN, active_N, spec: ChainSpec):
  """Step 1: the row each non-copying validator sets, and the new lazy:stale memory."""
  own_VxN = ops.row_normalize(jnp.asarray(own_VxN, jnp.float32))
  N = own_VxN.shape[1]
  uniform_N = ops.normalize(jnp.asarray(active_N, jnp.float32))
  coal_N = ops.normalize(jnp.zeros((N,), jnp.float32).at[jnp.array(spec.coalition, jnp.int32)]
                         .set(1.0)) if spec.coalition else jnp.zeros((N,), jnp.float32)
  rows = jnp.where(_is(spec, "lazy", 0)[:, None], uniform_N[None, :], own_VxN)
  colluding = _is(spec, "colluding")[:, None]
  rows = jnp.where(colluding, (1.0 - spec.boost) * own_VxN + spec.boost * coal_N[None, :], rows)
  lazy_stale = _is(spec, "lazy", 1)
  # the first commit with any weight freezes the row (a lazy validator that stopped working)
  freeze = lazy_stale & ~state.has_stale & (jnp.sum(own_VxN, axis=1) > 0)
  stale = jnp.where(freeze[:, None], own_VxN, state.stale)
  has_stale = state.has_stale | freeze
  rows = jnp.where(lazy_stale[:, None], stale, rows)
  return rows, stale, has_stale


def _embed(rows_VxN, spec: ChainSpec):
  """[V, N] rows as the ledger's W: as is (split), or rows 0..V-1 of the n x n matrix."""
  if not spec.square:
    return rows_VxN
  V, N = rows_VxN.shape
  return jnp.zeros((V + N, V + N), rows_VxN.dtype).at[:V, V:].set(rows_VxN)


def chain_step(state: ChainState, own_VxN, active_N, spec: ChainSpec):
  """One ledger epoch of the validator layer (module docstring) -> (state, log)."""
  p = spec.ledger
  e = state.ledger.epoch.astype(jnp.int32)
  V, N = own_VxN.shape
  R = cr.reveal_period(state.reveal)
  stake_V = state.ledger.stake[:V].astype(jnp.float32)
  # 1-2. everyone but the copiers (and the offline) commits; R = 0 reveals at once
  rows, stale, has_stale = _rows(state, own_VxN, active_N, spec)
  copier, offline = _is(spec, "copier"), _is(spec, "offline")
  rv = cr.commit(state.reveal, e, rows, ~copier & ~offline)
  if R == 0:
    rv = cr.reveal(rv, e)
  # 3. copiers read what is readable now
  seen = (rv.revealed_epoch >= 0) & ~copier
  cons_N = consensus_row(rv.revealed, jnp.where(seen, stake_V, 0.0), p.yuma.kappa)
  source = jnp.array([a if k == "copier" and a >= 0 else 0 for k, a in spec.kinds])
  copied = jnp.where(_is(spec, "copier", -1)[:, None], cons_N[None, :], rv.revealed[source])
  rv = cr.commit(rv, e, copied, copier)
  # 4. reveal what was committed R epochs ago; activity from the last reveal
  rv = cr.reveal(rv, e)
  fresh = rv.revealed_epoch == e - R
  set_epoch = jnp.where(fresh & (rv.revealed_epoch >= 0), e, state.set_epoch)
  active_V = e - set_epoch <= p.activity_cutoff
  # 5. the ledger epoch on the revealed rows
  W = _embed(rv.revealed, spec)
  n_rows, n_cols = W.shape
  active = jnp.concatenate([active_V, jnp.ones((n_rows - V,), bool)])
  masks = EpochMasks(active=active, permit=jnp.ones((n_rows,), bool),
                     outdated=jnp.zeros((n_rows, n_cols), bool),
                     recently_registered=jnp.zeros((n_cols,), bool))
  ledger, rec = ledger_step_core(state.ledger, W, p, masks)
  paid_server, paid_validator = rec.server_units, rec.validator_units
  if spec.square:   # one index: validators first, then the miners
    paid = paid_server + paid_validator
    paid_server, paid_validator = paid[V:], paid[:V]
  log = {"epoch": e, "minted": rec.minted, "owner": rec.owner,
         "validator_units": paid_validator, "miner_units": paid_server,
         "stake_units": state.ledger.stake[:V], "committed": ~offline,
         "revealed_epoch": rv.revealed_epoch, "active": active_V}
  if p.mechanism == "yuma":   # the epoch's terms: the same pure epoch on the same inputs
    mk = masks._replace(permit=masks.permit & state.ledger.permit)
    out = epoch_core(W, state.ledger.stake.astype(W.dtype), state.ledger.bonds, p.yuma, mk, 1.0)
    v, m = (slice(0, V), slice(V, None)) if spec.square else (slice(None), slice(None))
    bonds_VxN = out.bonds[v, m]
    log.update(vtrust=out.validator_trust[v], dividends=out.dividends[v],
               bond_share=ops.normalize(jnp.sum(bonds_VxN, axis=1)),
               consensus=out.consensus[m], incentive=out.incentive[m],
               clipped=out.prerank[m] - out.rank[m], prerank=out.prerank[m],
               agreement=agreement(out.weights[v, m], out.consensus[m]))
  else:
    # no Yuma consensus here: agreement with the kappa-median a copier computes
    log.update(consensus=rec.consensus[V:] if spec.square else rec.consensus,
               incentive=rec.incentive[V:] if spec.square else rec.incentive,
               agreement=agreement(rv.revealed, cons_N))
  return ChainState(ledger, rv, set_epoch, stale, has_stale), log


def run_chain(state: ChainState, own_TxVxN, active_TxN, spec: ChainSpec):
  """`chain_step` over T recorded epochs with `lax.scan` -> (state, logs stacked over T)."""
  return jax.lax.scan(lambda s, x: chain_step(s, x[0], x[1], spec), state,
                      (own_TxVxN, active_TxN))


chain_step_jit = jax.jit(chain_step, static_argnames=("spec",))
run_chain_jit = jax.jit(run_chain, static_argnames=("spec",))
