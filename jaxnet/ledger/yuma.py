"""Yuma Consensus, one epoch, as a pure jitted function (spec §2.1 steps 1-12, §5.2).

`epoch_core` is the pure function (jit/vmap it freely); `epoch` validates its inputs at
the boundary (raising `LedgerInputError`) and calls the jitted core. The other public
helpers (`emission_split`, `stored_bonds`, `masks_from_blocks`) check their inputs too;
the epoch and the runners use their unchecked `_core` forms. Shapes: V validator
rows, M miner columns (split layout) or V = M = n UIDs (combined layout, diagonal masked).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxnet.ledger import ops
from jaxnet.ledger.config import YumaConfig
from jaxnet.ledger.validate import (LedgerInputError, check_config, check_epoch_inputs,
                                   check_mask, check_matrix, check_scalar, check_vector,
                                   shape_of)


class EpochMasks(NamedTuple):
  """Per-epoch masks (spec §5.2 `masks`). True means "is": active, permitted, outdated."""
  active: jax.Array               # [V] bool: updated within the activity cutoff (step 1)
  permit: jax.Array               # [V] bool: the *previous* epoch's permit set (step 3)
  outdated: jax.Array             # [V, M] bool: weights set at/before j registered (step 5)
  recently_registered: jax.Array  # [M] bool: registered since the last epoch (step 11)


class EpochOut(NamedTuple):
  """Everything one epoch computes (spec §5.2 `EpochOut`)."""
  stake: jax.Array               # [V] s, normalised stake after the threshold (step 2)
  active_stake: jax.Array        # [V] a (step 4)
  weights: jax.Array             # [V, M] masked, row-normalised W (step 5)
  consensus: jax.Array           # [M] c (step 6)
  clipped_weights: jax.Array     # [V, M] W-bar (step 7)
  validator_trust: jax.Array     # [V] Tv (step 8)
  prerank: jax.Array             # [M] P = W^T a (step 9)
  rank: jax.Array                # [M] R = W-bar^T a (step 9)
  server_trust: jax.Array        # [M] T = R / P (step 9)
  incentive: jax.Array           # [M] I (step 9)
  bonds: jax.Array               # [V, M] B after the epoch (step 11; Yuma 2 column-normalised)
  dividends: jax.Array           # [V] D (step 11)
  server_emission: jax.Array     # [M] (step 12)
  validator_emission: jax.Array  # [V] (step 12)
  new_permit: jax.Array          # [V] bool, the permit set stored for the next epoch (step 3)


def default_masks(V: int, M: int) -> EpochMasks:
  """Everyone active and permitted, nothing outdated or newly registered."""
  return EpochMasks(active=jnp.ones((V,), bool), permit=jnp.ones((V,), bool),
                    outdated=jnp.zeros((V, M), bool),
                    recently_registered=jnp.zeros((M,), bool))


def masks_from_blocks(last_update_V, registered_M, current_block, *, tempo: int,
                      activity_cutoff: int, permit_V=None, commit_block_V=None) -> EpochMasks:
  """Builds the masks from block numbers as the chain does (spec §2.1 steps 1, 5, 11).

  Args:
    last_update_V: block at which each validator last set weights.
    registered_M: block at which each miner (column UID) was last registered.
    current_block: the epoch's block.
    tempo, activity_cutoff: §2.2 Tempo and ActivityCutoff.
    permit_V: previous permit set (default all).
    commit_block_V: earliest unexpired commit block per validator when commit-reveal is on;
      weights committed before j registered are masked like outdated ones (step 5).
  """
  check_vector(last_update_V, "last_update_V")
  V = shape_of(last_update_V)[0]
  check_vector(registered_M, "registered_M")
  check_scalar(current_block, "current_block")
  check_scalar(tempo, "tempo")
  check_scalar(activity_cutoff, "activity_cutoff")
  if permit_V is not None:
    check_mask(permit_V, "permit_V", (V,))
  if commit_block_V is not None:
    check_vector(commit_block_V, "commit_block_V", V, of="entries of last_update_V")
  last_update_V = jnp.asarray(last_update_V)
  registered_M = jnp.asarray(registered_M)
  active_V = last_update_V + activity_cutoff >= current_block
  outdated_VxM = last_update_V[:, None] <= registered_M[None, :]
  if commit_block_V is not None:
    outdated_VxM |= jnp.asarray(commit_block_V)[:, None] < registered_M[None, :]
  recent_M = current_block - tempo <= registered_M
  permit_V = jnp.ones_like(active_V) if permit_V is None else jnp.asarray(permit_V, bool)
  return EpochMasks(active_V, permit_V, outdated_VxM, recent_M)


class Hyper(NamedTuple):
  """The numeric hyperparameters of a `YumaConfig`, as values that may be traced.

  `epoch` and `run` pass these as arrays, so configs that differ only in numbers share
  one compilation, and a sweep can `vmap` over them (e.g. over kappa).
  """
  kappa: jax.Array
  bonds_penalty: jax.Array
  bonds_alpha: jax.Array
  alpha_low: jax.Array
  alpha_high: jax.Array
  alpha_steepness: jax.Array
  stake_threshold: jax.Array
  miner_split: jax.Array


def hyper_of(p: YumaConfig, as_arrays: bool = False) -> Hyper:
  """The numeric fields of `p` (python floats, or arrays of the default float dtype).

  Arrays take the default float dtype (spec §5.1): float64 under `jax_enable_x64`, so
  `epoch`/`run` (arrays) and the ledger (python floats) use the same kappa and alpha;
  float32 hyperparameters in an x64 run flipped exact ties between them.
  """
  h = Hyper(*(getattr(p, f) for f in Hyper._fields))
  if not as_arrays:
    return h
  dt = jnp.result_type(float)
  return jax.tree.map(lambda x: jnp.asarray(x, dt), h)


def _permits(S_V, stake_threshold, max_validators: int, owner: int):
  """(s, new permit set) from raw stake (spec §2.1 steps 2-3), shared by the epoch and
  `first_permits` so that both pick the same set, ties included."""
  owner_V = jnp.arange(S_V.shape[0]) == owner  # all False when owner = -1
  s_V = ops.normalize(jnp.where((S_V >= stake_threshold) | owner_V, S_V, 0.0))
  return s_V, ops.topk_nonzero(s_V, max_validators) | owner_V


def first_permits(S, params: YumaConfig):
  """The permit set a first epoch would store (spec §2.1 step 3): the top-k non-zero
  stakes after the stake threshold, plus the owner. Raises `LedgerInputError`."""
  check_vector(S, "S")
  check_config(params, YumaConfig, "params")
  return first_permits_core(S, params)


def first_permits_core(S, params: YumaConfig):
  """`first_permits` without input checks."""
  S_V = jnp.asarray(S, jnp.result_type(float))
  return _permits(S_V, params.stake_threshold, params.max_validators, params.owner)[1]


def static_of(p: YumaConfig) -> YumaConfig:
  """`p` with its numeric fields at their defaults: the part that shapes the program."""
  d = YumaConfig()
  return dataclasses.replace(p, **{f: getattr(d, f) for f in Hyper._fields})


def liquid_alpha(wb_VxM, b0_VxM, c_M, p: Hyper):
  """Per-entry EMA rate, Liquid Alpha 2 (spec §2.1 step 11b.3, chain `alpha_sigmoid`)."""
  buy_VxM = jnp.clip(wb_VxM - c_M[None, :], 0.0, 1.0)
  sell_VxM = jnp.clip(b0_VxM - wb_VxM, 0.0, 1.0)
  d_VxM = jnp.where(wb_VxM >= b0_VxM, buy_VxM, sell_VxM)
  sig_VxM = ops.sigmoid((p.alpha_steepness / 100.0) * (d_VxM - 0.5))
  alpha_VxM = p.alpha_low + (p.alpha_high - p.alpha_low) * sig_VxM
  return jnp.clip(alpha_VxM, p.alpha_low, p.alpha_high)


def _yuma2_bonds(wb_VxM, b_prev_VxM, a_V, incentive_M, recent_M, p: Hyper):
  """Yuma 2 bonds and dividends (spec §2.1 step 11a)."""
  b0_VxM = ops.col_normalize(jnp.where(recent_M[None, :], 0.0, b_prev_VxM))
  delta_VxM = ops.col_normalize(a_V[:, None] * wb_VxM)
  bonds_VxM = ops.col_normalize(p.bonds_alpha * delta_VxM + (1 - p.bonds_alpha) * b0_VxM)
  return bonds_VxM, ops.normalize(bonds_VxM @ incentive_M)


def _yuma3_bonds(wb_VxM, b_prev_VxM, a_V, c_M, incentive_M, recent_M, liquid: bool, p: Hyper):
  """Yuma 3 relative bonds, optional liquid alpha, and dividends (spec §2.1 step 11b)."""
  b0_VxM = jnp.where(recent_M[None, :], 0.0, jnp.clip(b_prev_VxM, 0.0, 1.0))
  if liquid:
    # The chain falls back to the fixed alpha when every consensus entry is 0.
    alpha = jnp.where(jnp.any(c_M != 0), liquid_alpha(wb_VxM, b0_VxM, c_M, p), p.bonds_alpha)
  else:
    alpha = p.bonds_alpha
  bonds_VxM = jnp.clip((1 - alpha) * b0_VxM + alpha * wb_VxM, 0.0, 1.0)
  per_validator_V = ops.col_normalize(bonds_VxM) @ incentive_M
  return bonds_VxM, ops.normalize(a_V * per_validator_V)


def emission_split(incentive_M, dividends_V, active_stake_V, stake_V, emission, split=0.5):
  """Server and validator emission with the fallback (spec §2.1 step 12, §5.2 `inflate`).

  `split` of E goes to miners by incentive and the rest to validators by dividends (the
  chain's E * I / (sum I + sum D) is split = 0.5). If nobody earned incentive (no valid
  weights), everything goes to validators by active stake, or by stake if no stake is
  active. If even the stake is all zero the chain would pay no one; this ledger then
  splits E equally over the validator rows so that what is minted is always paid.

  Raises `LedgerInputError` on negative or non-finite inputs or mismatched lengths.
  """
  check_vector(incentive_M, "incentive_M")
  check_vector(dividends_V, "dividends_V")
  V = shape_of(dividends_V)[0]
  check_vector(active_stake_V, "active_stake_V", V, of="entries of dividends_V")
  check_vector(stake_V, "stake_V", V, of="entries of dividends_V")
  check_scalar(emission, "emission")
  check_scalar(split, "split", 1.0)
  return emission_split_core(incentive_M, dividends_V, active_stake_V, stake_V, emission, split)


def emission_split_core(incentive_M, dividends_V, active_stake_V, stake_V, emission, split=0.5):
  """`emission_split` without input checks (inside the epoch)."""
  V = dividends_V.shape[0]
  fallback = jnp.sum(incentive_M) + jnp.sum(dividends_V) == 0
  backup_V = jnp.where(jnp.sum(active_stake_V) > 0, active_stake_V, stake_V)
  backup_V = jnp.where(jnp.sum(backup_V) > 0, backup_V, jnp.full((V,), 1.0 / V, backup_V.dtype))
  server_M = jnp.where(fallback, 0.0, split * emission * ops.normalize(incentive_M))
  validator_V = jnp.where(fallback, emission * ops.normalize(backup_V),
                          (1 - split) * emission * ops.normalize(dividends_V))
  return server_M, validator_V


def _u16_param(x):
  q = jnp.floor(x * ops.U16_MAX + 0.5)
  # XLA turns "/ 65535" into "* (1 / 65535)", so pin u16::MAX to exactly 1.
  return jnp.where(q == ops.U16_MAX, 1.0, q / ops.U16_MAX)


def epoch_core(W, S, B_prev=None, params: YumaConfig = YumaConfig(), masks=None,
               emission=1.0, hyper: Hyper | None = None) -> EpochOut:
  """One Yuma epoch (spec §2.1 steps 2-12). Pure; no checks (see `epoch`).

  `params` supplies the static switches (layout, yuma3, liquid_alpha, u16, median,
  max_validators, owner); the numbers come from `hyper` if given, else from `params`.
  With `masks` None everyone is active and the permit set is the one this epoch stores,
  i.e. what a first epoch would have (as `epoch` and `run` use).
  """
  p = params
  h = hyper_of(p) if hyper is None else hyper
  w_VxM = jnp.asarray(W, jnp.result_type(float))
  V, M = w_VxM.shape
  dt = w_VxM.dtype
  S_V = jnp.asarray(S, dt)
  b_prev_VxM = jnp.zeros((V, M), dt) if B_prev is None else jnp.asarray(B_prev, dt)
  owner_V = jnp.arange(V) == p.owner  # all False when owner = -1
  # u16 mode: Kappa and BondsPenalty are u16 hyperparameters on chain (§2.2, §5.1).
  kappa = _u16_param(h.kappa) if p.u16 else h.kappa
  beta = _u16_param(h.bonds_penalty) if p.u16 else h.bonds_penalty

  # Step 2: stake threshold (owner exempt), normalised stake.
  # Step 3: new permits for the next epoch; this epoch masks with the previous set.
  s_V, new_permit_V = _permits(S_V, h.stake_threshold, p.max_validators, p.owner)
  if masks is None:
    # No previous set given: the first epoch's (spec §2.1 step 3), as `run` starts with.
    mk = default_masks(V, M)._replace(permit=new_permit_V)
  else:
    mk = masks
  permit_V = mk.permit.astype(bool)
  # Step 4: active stake.
  a_V = ops.normalize(jnp.where(mk.active.astype(bool) & permit_V, s_V, 0.0))
  # Step 5: weights as stored (u16 mode), permit rows, diagonal, outdated, row-normalise.
  if p.u16:
    w_VxM = ops.u16_weights(w_VxM)
  w_VxM = jnp.where(permit_V[:, None], w_VxM, 0.0)
  if p.layout == "combined":
    diag_VxM = jnp.eye(V, M, dtype=bool) & ~owner_V[:, None]
    w_VxM = jnp.where(diag_VxM, 0.0, w_VxM)
  w_VxM = ops.row_normalize(jnp.where(mk.outdated.astype(bool), 0.0, w_VxM))
  # Step 6: consensus. Step 7: clip (min(W, c) also drops columns with c <= 0 since W >= 0).
  c_M = ops.stake_weighted_quantile_core(w_VxM, a_V, kappa, p.median)
  wc_VxM = jnp.minimum(w_VxM, c_M[None, :])
  # Steps 8-9: validator trust, prerank, rank, server trust, incentive.
  tv_V = jnp.sum(wc_VxM, axis=1)
  prerank_M = a_V @ w_VxM
  rank_M = a_V @ wc_VxM
  trust_M = ops.safe_div(rank_M, prerank_M)
  incentive_M = ops.normalize(rank_M)
  # Step 10: bonds penalty.
  # The chain's `interpolate` returns W or W-bar outright at ratio 0 or 1; doing the same
  # keeps rounding from leaking a 1e-8 share of W into bonds that get column-normalised.
  wb_VxM = jnp.where(beta == 1, wc_VxM,
                     jnp.where(beta == 0, w_VxM, (1 - beta) * w_VxM + beta * wc_VxM))
  # Step 11: bonds and dividends.
  recent_M = mk.recently_registered.astype(bool)
  if p.yuma3:
    bonds_VxM, div_V = _yuma3_bonds(wb_VxM, b_prev_VxM, a_V, c_M, incentive_M, recent_M,
                                    p.liquid_alpha, h)
  else:
    bonds_VxM, div_V = _yuma2_bonds(wb_VxM, b_prev_VxM, a_V, incentive_M, recent_M, h)
  # Step 12: emission (from the unquantised vectors, as on chain).
  server_M, validator_V = emission_split_core(incentive_M, div_V, a_V, s_V,
                                              jnp.asarray(emission, dt), h.miner_split)
  if p.u16:  # Step 13: what the chain persists is stored as u16 proportions.
    q = ops.u16_floor
    c_M, incentive_M, div_V, tv_V, trust_M = map(q, (c_M, incentive_M, div_V, tv_V, trust_M))
    if p.yuma3:
      bonds_VxM = q(bonds_VxM)
  return EpochOut(stake=s_V, active_stake=a_V, weights=w_VxM, consensus=c_M,
                  clipped_weights=wc_VxM, validator_trust=tv_V, prerank=prerank_M,
                  rank=rank_M, server_trust=trust_M, incentive=incentive_M, bonds=bonds_VxM,
                  dividends=div_V, server_emission=server_M, validator_emission=validator_V,
                  new_permit=new_permit_V)


_epoch_jit = jax.jit(epoch_core)


def epoch(W, S, B_prev=None, params: YumaConfig = YumaConfig(), masks: EpochMasks | None = None,
          emission=1.0) -> EpochOut:
  """One Yuma epoch with boundary checks (spec §5.2 `epoch(W, S, B_prev, params, masks)`).

  Args:
    W: [V, M] weights, >= 0, any row scale.
    S: [V] stake, >= 0, any scale.
    B_prev: [V, M] bonds from the previous epoch (`stored_bonds` of it), or None for none.
    params: a `YumaConfig` (static).
    masks: `EpochMasks`, or None: everyone active, nothing outdated or newly registered,
      and the permit set a first epoch would have (`first_permits(S, params)`, spec §2.1
      step 3), so zero-stake rows are not permitted, as in `run` and on chain.
    emission: E, the epoch's emission to split (owner cut already removed).
  Raises:
    LedgerInputError: negative or non-finite values, or mismatched shapes.
  """
  check_epoch_inputs(W, S, B_prev, masks, params, emission)
  V, M = shape_of(W)
  # Materialise the defaults so that every call of one shape shares one compilation.
  if B_prev is None:
    B_prev = jnp.zeros((V, M), jnp.result_type(float))
  if masks is None:
    masks = default_masks(V, M)._replace(permit=first_permits_core(S, params))
  return _epoch_jit(W, S, B_prev, static_of(params), masks, emission, hyper_of(params, True))


def stored_bonds(out: EpochOut, B_prev, permit_prev_V, params: YumaConfig):
  """The bonds the next epoch reads (spec §2.1 steps 11a.5, 11b.5; chain storage rules).

  Yuma 2 stores B column-max-upscaled (u16 in parity mode); the next epoch
  column-normalises it again, so float mode may carry B as is. Rows of validators without
  a new permit are cleared if they had one, else left as they were (chain `epoch`).
  Raises `LedgerInputError` on a malformed `B_prev` or `permit_prev_V`.
  """
  if not isinstance(out, EpochOut):
    raise LedgerInputError(f"out: expected the EpochOut of an epoch, got {type(out).__name__}")
  check_config(params, YumaConfig, "params")
  V, M = shape_of(out.bonds)
  if B_prev is not None:
    check_matrix(B_prev, "B_prev", (V, M))
  check_mask(permit_prev_V, "permit_prev_V", (V,))
  return stored_bonds_core(out, B_prev, permit_prev_V, params)


def stored_bonds_core(out: EpochOut, B_prev, permit_prev_V, params: YumaConfig):
  """`stored_bonds` without input checks (inside the runners)."""
  if B_prev is None:
    B_prev = jnp.zeros_like(out.bonds)
  bonds_VxM = out.bonds
  if params.u16 and not params.yuma3:
    bonds_VxM = ops.u16_floor(ops.col_max_upscale(bonds_VxM))
  keep_VxM = jnp.where(permit_prev_V[:, None], 0.0, B_prev)
  return jnp.where(out.new_permit[:, None], bonds_VxM, keep_VxM)
