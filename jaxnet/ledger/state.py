"""Ledger state and history: `lax.scan` over epochs with exact emission accounting.

Two runners (spec §5.2 `run`):

* `run` is the spec's float trajectory: Yuma epochs carrying (S, B, permits), returning
  every `EpochOut` field stacked over time (the 2020 counterpart is `bittensor.run_2020`).
* `run_ledger` advances a `LedgerState` whose money is integer units. Each epoch mints a
  whole number of units and pays all of them out, so "minted == paid" holds exactly,
  not to rounding. The remainder rule: payouts are the differences of the rounded
  cumulative shares, c_k = round(total * cumsum(share)_k / sum(share)) with c_K = total,
  payout_k = c_k - c_{k-1}. They telescope to `total`, are >= 0 (c is non-decreasing),
  and each is within one unit (plus the float error of total * share) of its exact share.

Every exported function checks its inputs on the host first (`validate.py`), so NaN or
negative weights or stake raise `LedgerInputError` instead of minting money that is not
paid; `ledger_step_core` is the unchecked step for callers that validated already.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet.ledger import ops
from jaxnet.ledger.bittensor import legacy_epoch_2020_core
from jaxnet.ledger.config import INT32_SAFE, LedgerConfig, YumaConfig
from jaxnet.ledger.validate import (LedgerInputError, check_config, check_count,
                                   check_epoch_inputs, check_mask, check_mask_sequence,
                                   check_masks, check_matrix, check_scalar, check_sequence,
                                   check_vector, shape_of)
# `first_permits` is the epoch's step 3, so it lives in yuma.py (imported here as before).
from jaxnet.ledger.yuma import (EpochMasks, EpochOut, default_masks, epoch_core, first_permits,
                                hyper_of, static_of, stored_bonds_core)


def int_dtype():
  """int32, or int64 when `jax_enable_x64` is set (then totals may exceed 2**30)."""
  return jax.dtypes.canonicalize_dtype(jnp.int64)


def _int_limit() -> int:
  return INT32_SAFE if int_dtype() == jnp.int32 else 2**62


def split_units(shares_K, total):
  """Splits an integer `total` over K recipients in proportion to `shares_K`, exactly.

  Cumulative rounding (module docstring): the result sums to `total` exactly when
  sum(shares) > 0, and is all-zero otherwise. Negative shares would pay negative units,
  so shares must be finite and >= 0, and `total` a whole number in [0, limit].
  """
  check_vector(shares_K, "shares_K")
  check_scalar(total, "total", _int_limit(), integer=True)
  return _split_units(shares_K, total)


def _split_units(shares_K, total):
  idt = int_dtype()
  fdt = jnp.result_type(float)
  total = jnp.asarray(total, idt)
  cum_K = jnp.cumsum(jnp.asarray(shares_K, fdt))
  frac_K = ops.safe_div(cum_K, cum_K[-1])  # non-decreasing, in [0, 1]
  c_K = jnp.round(frac_K * total.astype(fdt)).astype(idt)
  c_K = jnp.minimum(c_K, total)
  c_K = c_K.at[-1].set(jnp.where(cum_K[-1] > 0, total, 0))
  return jnp.diff(c_K, prepend=jnp.zeros((1,), idt))


# --------------------------------------------------------------------------- float run

def run(W, S0, params: YumaConfig = YumaConfig(), *, B0=None, masks: EpochMasks | None = None,
        emission=1.0, compound: bool = False, permit0=None, epochs: int | None = None):
  """Yuma epochs under `lax.scan`, carrying (S, B, permits) (spec §5.2 `run`).

  Args:
    W: [V, M] constant weights (then pass `epochs`), or [T, V, M].
    S0: [V] initial stake.
    params: `YumaConfig`.
    B0: [V, M] initial bonds (default none).
    masks: `EpochMasks` with a leading T axis, or None. The permit used each epoch is the
      carried permit set AND `masks.permit`.
    emission: E per epoch.
    compound: add payouts to S each epoch (the current model of `inflate`: validators'
      emission in the split layout, everyone's in the combined one). False keeps S fixed,
      as subtensor's epoch tests do.
    permit0: [V] the permit set before epoch 0 (default: what a first epoch would set).
  Returns:
    (S_T, B_T, EpochOut stacked over T).
  """
  W = jnp.asarray(W, jnp.result_type(float))
  if W.ndim == 2:
    if epochs is None:
      raise LedgerInputError("epochs: required when W is a single [V, M] matrix")
    check_count(epochs, "epochs")
    w0 = W
  elif W.ndim == 3:
    check_sequence(W)
    epochs, w0 = W.shape[0], W[0]
  else:
    raise LedgerInputError(f"W: expected [V, M] or [T, V, M], got shape {W.shape}")
  check_epoch_inputs(w0, S0, B0, None, params, emission)
  if W.ndim == 3 and not isinstance(W, jax.core.Tracer):
    check_matrix(W.reshape(-1, W.shape[-1]), "W")
  V, M = w0.shape
  check_mask_sequence(masks, epochs, V, M)
  if permit0 is not None:
    check_mask(permit0, "permit0", (V,))
  S0 = jnp.asarray(S0, W.dtype)
  B0 = jnp.zeros((V, M), W.dtype) if B0 is None else jnp.asarray(B0, W.dtype)
  if permit0 is None:
    permit0 = first_permits(S0, params)
  return _run_jit(W, S0, B0, masks, jnp.asarray(emission, W.dtype), jnp.asarray(permit0, bool),
                  hyper_of(params, True), static_of(params), compound, epochs)


def _run_core(W, S0, B0, masks, emission, permit0, hyper, params, compound, epochs):
  const = W.ndim == 2
  V, M = B0.shape

  def step(carry, xs):
    S, B, permit = carry
    w, mk = xs
    w = W if const else w
    mk = default_masks(V, M) if mk is None else mk
    mk = mk._replace(permit=mk.permit & permit)
    out = epoch_core(w, S, B, params, mk, emission, hyper)
    if compound:
      paid = out.validator_emission
      if params.layout == "combined":
        paid = paid + out.server_emission
      S = S + paid
    B = stored_bonds_core(out, B, mk.permit, params)
    return (S, B, out.new_permit), out

  xs = (None if const else W, masks)
  (S_T, B_T, _), outs = jax.lax.scan(step, (S0, B0, permit0), xs, length=epochs)
  return S_T, B_T, outs


_run_jit = jax.jit(_run_core, static_argnums=(7, 8, 9))


# --------------------------------------------------------------------------- integer ledger

class LedgerState(NamedTuple):
  """The ledger pytree (all leaves arrays; checkpointed with Orbax)."""
  epoch: jax.Array              # [] int: epochs run so far
  stake: jax.Array              # [V] int units (2020 / combined: one entry per UID)
  bonds: jax.Array              # [V, M] float: stored bonds the next epoch reads
  permit: jax.Array             # [V] bool: permit set stored by the last epoch
  miner_balance: jax.Array      # [M] int: cumulative miner (server) payouts
  validator_balance: jax.Array  # [V] int: cumulative validator payouts
  owner_balance: jax.Array      # [] int: cumulative owner cut
  minted: jax.Array             # [] int: cumulative units minted
  last_server: jax.Array        # [M] int: last epoch's miner payouts
  last_validator: jax.Array     # [V] int: last epoch's validator payouts


class EpochRecord(NamedTuple):
  """What one ledger epoch paid, kept per epoch for the audit log (vectors only)."""
  epoch: jax.Array
  minted: jax.Array
  owner: jax.Array
  server_units: jax.Array       # [M]
  validator_units: jax.Array    # [V]
  incentive: jax.Array          # [M]
  dividends: jax.Array          # [V] (0 in 2020 mode)
  consensus: jax.Array          # [M] (2020: the sigmoid consensus C)
  validator_trust: jax.Array    # [V] (0 in 2020 mode)


def init_ledger(stake_units, num_miners: int | None, config: LedgerConfig) -> LedgerState:
  """A fresh ledger. 2020 mode (and the combined layout) uses one n x n index space."""
  check_config(config, LedgerConfig, "config")
  check_vector(stake_units, "stake_units")
  if num_miners is not None and (isinstance(num_miners, bool) or
                                 not isinstance(num_miners, (int, np.integer)) or num_miners < 1):
    raise LedgerInputError(f"num_miners: must be an int >= 1 or None, got {num_miners!r}")
  stake = np.asarray(stake_units)
  if not np.all(stake == np.round(stake)):
    raise LedgerInputError("stake_units: the ledger holds whole units; got fractional stake")
  V = stake.shape[0]
  square = config.mechanism == "bittensor2020" or config.yuma.layout == "combined"
  M = V if (square or num_miners is None) else int(num_miners)
  if square and num_miners not in (None, V):
    raise LedgerInputError(f"num_miners: {num_miners} != {V}; this mode has one n x n index")
  if int(stake.sum()) > _int_limit():
    raise LedgerInputError(f"stake_units: total {int(stake.sum())} exceeds {_int_limit()} "
                           "(enable jax_enable_x64 for larger ledgers)")
  idt = int_dtype()
  zi = lambda *shape: jnp.zeros(shape, idt)  # noqa: E731
  stake_V = jnp.asarray(stake, idt)
  return LedgerState(epoch=zi(), stake=stake_V,
                     bonds=jnp.zeros((V, M), jnp.result_type(float)),
                     permit=first_permits(stake_V, config.yuma), miner_balance=zi(M),
                     validator_balance=zi(V), owner_balance=zi(), minted=zi(),
                     last_server=zi(M), last_validator=zi(V))


def _owner_units(config: LedgerConfig) -> int:
  return int(math.floor(config.epoch_emission * config.owner_cut))


def check_ledger_state(state, config: LedgerConfig) -> tuple[int, int]:
  """A `LedgerState` whose shapes agree and whose stake and bonds are finite and >= 0;
  returns (V, M). Shape-only on traced states (see validate.py)."""
  check_config(config, LedgerConfig, "config")
  if not isinstance(state, LedgerState):
    raise LedgerInputError(f"state: expected a LedgerState, got {type(state).__name__}")
  yuma = config.mechanism == "yuma"
  check_matrix(state.bonds, "state.bonds", unit=yuma and config.yuma.yuma3)
  V, M = shape_of(state.bonds)
  if (not yuma or config.yuma.layout == "combined") and V != M:
    raise LedgerInputError(f"state.bonds: this mode needs one n x n index, got {V} x {M}")
  check_vector(state.stake, "state.stake", V, of="rows of state.bonds")
  want = {"permit": (V,), "miner_balance": (M,), "validator_balance": (V,),
          "last_server": (M,), "last_validator": (V,), "epoch": (), "owner_balance": (),
          "minted": ()}
  for name, shape in want.items():
    got = shape_of(getattr(state, name))
    if got != shape:
      raise LedgerInputError(f"state.{name}: shape {got} does not match expected {shape}")
  return V, M


def ledger_step(state: LedgerState, W, config: LedgerConfig, masks=None):
  """One epoch of the integer ledger: (state, W, masks) -> (state, EpochRecord).

  Checks on the host first (then runs `ledger_step_core`): W must be [V, M] like the
  state's bonds, finite and >= 0, the state consistent with non-negative stake, the masks
  one epoch's shapes, and one more epoch must not overflow the integer totals. Under an
  outer jit/vmap/scan only the shape checks run.

  Raises:
    LedgerInputError: naming the argument (W, state.stake, masks.permit, ...).
  """
  V, M = check_ledger_state(state, config)
  check_matrix(W, "W", (V, M))
  if masks is not None:
    if not isinstance(masks, EpochMasks):
      raise LedgerInputError(f"masks: expected EpochMasks or None, got {type(masks).__name__}")
    check_masks(masks, V, M)
  _check_headroom(state, config, 1)
  return ledger_step_core(state, W, config, masks)


def ledger_step_core(state: LedgerState, W, config: LedgerConfig, masks=None):
  """`ledger_step` without checks: pure, for jit/vmap/scan callers that validated."""
  idt = int_dtype()
  fdt = jnp.result_type(float)
  V, M = state.bonds.shape
  stake_f = state.stake.astype(fdt)
  if config.mechanism == "bittensor2020":
    bt = config.bittensor
    out = legacy_epoch_2020_core(W, stake_f, bt.rho, bt.kappa)
    # Inflation tau * sum(S), floored to whole units, all of it paid by incentive (§1.2).
    minted = jnp.floor(bt.tau * jnp.sum(stake_f)).astype(idt)
    minted = jnp.where(jnp.sum(out.incentive) > 0, minted, 0)
    owner = jnp.zeros((), idt)
    server = _split_units(out.incentive, minted)
    validator = jnp.zeros((V,), idt)
    stake = state.stake + server
    bonds, permit = state.bonds, state.permit
    rec = (out.incentive, jnp.zeros((V,), fdt), out.consensus, jnp.zeros((V,), fdt))
  else:
    p = config.yuma
    mk = default_masks(V, M) if masks is None else masks
    mk = mk._replace(permit=mk.permit & state.permit)
    out: EpochOut = epoch_core(W, stake_f, state.bonds, p, mk, 1.0)
    minted = jnp.asarray(config.epoch_emission, idt)
    owner = jnp.asarray(_owner_units(config), idt)
    units = _split_units(jnp.concatenate([out.server_emission, out.validator_emission]),
                         minted - owner)
    server, validator = units[:M], units[M:]
    stake = state.stake
    if config.compound:
      stake = stake + validator + (server if p.layout == "combined" else 0)
    bonds = stored_bonds_core(out, state.bonds, mk.permit, p)
    permit = out.new_permit
    rec = (out.incentive, out.dividends, out.consensus, out.validator_trust)
  new = LedgerState(epoch=state.epoch + 1, stake=stake, bonds=bonds, permit=permit,
                    miner_balance=state.miner_balance + server,
                    validator_balance=state.validator_balance + validator,
                    owner_balance=state.owner_balance + owner, minted=state.minted + minted,
                    last_server=server, last_validator=validator)
  return new, EpochRecord(state.epoch, minted, owner, server, validator, *rec)


def _run_ledger_core(state, W, masks, config, epochs):
  const = W.ndim == 2

  def step(st, xs):
    w, mk = xs
    return ledger_step_core(st, W if const else w, config, mk)

  return jax.lax.scan(step, state, (None if const else W, masks), length=epochs)


_run_ledger_jit = jax.jit(_run_ledger_core, static_argnums=(3, 4))


def run_ledger(state: LedgerState, W, config: LedgerConfig, *, masks=None,
               epochs: int | None = None):
  """Advances the ledger by T epochs with `lax.scan`; returns (state, EpochRecord stacked).

  Raises `LedgerInputError` on malformed weights and when the integer totals could
  overflow within these epochs (then lower the emission or enable x64).
  """
  V, M = check_ledger_state(state, config)
  W = jnp.asarray(W, jnp.result_type(float))
  if W.ndim == 2:
    if epochs is None:
      raise LedgerInputError("epochs: required when W is a single [V, M] matrix")
    check_count(epochs, "epochs")
    check_matrix(W, "W", (V, M))
  elif W.ndim == 3:
    check_sequence(W)
    epochs = W.shape[0]
    check_matrix(W.reshape(-1, M), "W", (epochs * V, M))
  else:
    raise LedgerInputError(f"W: expected [V, M] or [T, V, M], got shape {W.shape}")
  check_mask_sequence(masks, epochs, V, M)
  _check_headroom(state, config, epochs)
  return _run_ledger_jit(state, W, masks, config, epochs)


def _check_headroom(state: LedgerState, config: LedgerConfig, epochs: int):
  if any(isinstance(x, jax.core.Tracer) for x in (state.stake, state.minted)):
    return
  total = float(np.sum(np.asarray(state.stake), dtype=np.float64))
  minted = float(np.asarray(state.minted))
  if config.mechanism == "bittensor2020":
    grow = total * (1.0 + config.bittensor.tau) ** epochs
    worst = max(grow, minted + grow - total)
  else:
    worst = max(total, minted) + epochs * config.epoch_emission
  if worst > _int_limit():
    raise LedgerInputError(
        f"ledger: totals could reach {worst:.3g} units in {epochs} epochs, above the "
        f"{_int_limit()} limit of {np.dtype(int_dtype()).name}; lower the emission/tau or "
        "enable jax_enable_x64")
