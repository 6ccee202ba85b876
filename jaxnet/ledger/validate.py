"""Input checks at the ledger boundary (spec §5.1 edge rules: no NaN ledger, ever).

Jitted code cannot raise on data, so every public entry point of `jaxnet.ledger` calls
these first, on the host, before its jitted or pure core. Shape checks always run; value
checks (NaN, negative) run only on concrete arrays, so the same entry points still work
under an outer `jit`/`vmap`/`scan` (where the caller owns validation). The unchecked cores
(`epoch_core`, `legacy_epoch_2020_core`, `ledger_step_core`) skip even the shape checks.
"""
from __future__ import annotations

import jax
import numpy as np

from jaxnet.ledger.config import YumaConfig


class LedgerInputError(ValueError):
  """Malformed ledger input; the one-line message names the argument and the problem."""


def _concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def shape_of(x) -> tuple:
  """Shape of an array, list or tracer (jnp.shape refuses lists)."""
  return tuple(np.shape(x))


_shape = shape_of


def check_matrix(x, name: str, shape: tuple | None = None, *, unit: bool = False):
  """A finite, non-negative, non-empty matrix (weights or bonds); `unit` also requires
  entries <= 1."""
  if len(_shape(x)) != 2:
    raise LedgerInputError(f"{name}: expected a 2-D [rows, cols] array, got shape {_shape(x)}")
  if 0 in _shape(x):
    # No validators or no miners: the normalisations and the kappa-median have nothing
    # to act on, and the runners would fail later with an unrelated error.
    raise LedgerInputError(f"{name}: empty shape {_shape(x)}; needs at least one row and "
                           "one column")
  if shape is not None and _shape(x) != tuple(shape):
    raise LedgerInputError(f"{name}: shape {_shape(x)} does not match expected {tuple(shape)}")
  if _concrete(x):
    v = np.asarray(x)
    if not np.all(np.isfinite(v)):
      bad = np.argwhere(~np.isfinite(v))[0].tolist()
      raise LedgerInputError(f"{name}: non-finite value (NaN/Inf) at {bad}")
    if np.any(v < 0):
      bad = np.argwhere(v < 0)[0].tolist()
      raise LedgerInputError(f"{name}: negative value {float(v[tuple(bad)])} at {bad}")
    if unit and np.any(v > 1):
      bad = np.argwhere(v > 1)[0].tolist()
      raise LedgerInputError(f"{name}: value {float(v[tuple(bad)])} > 1 at {bad}")


def check_vector(x, name: str, length: int | None = None, of: str = "rows of W"):
  """A finite, non-negative, non-empty vector (stake); `length` is that of `of`, for the
  message."""
  if len(_shape(x)) != 1:
    raise LedgerInputError(f"{name}: expected a 1-D array, got shape {_shape(x)}")
  if _shape(x)[0] == 0:
    raise LedgerInputError(f"{name}: empty (length 0); needs at least one entry")
  if length is not None and _shape(x)[0] != length:
    raise LedgerInputError(f"{name}: length {_shape(x)[0]} does not match {length} {of}")
  if _concrete(x):
    v = np.asarray(x)
    if not np.all(np.isfinite(v)):
      raise LedgerInputError(f"{name}: non-finite value (NaN/Inf) at index "
                             f"{int(np.argwhere(~np.isfinite(v))[0][0])}")
    if np.any(v < 0):
      i = int(np.argwhere(v < 0)[0][0])
      raise LedgerInputError(f"{name}: negative value {float(v[i])} at index {i}")


def check_mask(x, name: str, shape: tuple):
  if _shape(x) != tuple(shape):
    raise LedgerInputError(f"{name}: mask shape {_shape(x)} does not match expected {tuple(shape)}")


def check_mask_sequence(masks, T: int, V: int, M: int):
  """Masks for a T-epoch run: every field carries a leading T axis."""
  if masks is None:
    return
  check_mask(masks.active, "masks.active", (T, V))
  check_mask(masks.permit, "masks.permit", (T, V))
  check_mask(masks.outdated, "masks.outdated", (T, V, M))
  check_mask(masks.recently_registered, "masks.recently_registered", (T, M))


def check_scalar(x, name: str, upper: float | None = None, *, integer: bool = False):
  """A finite scalar >= 0 (and <= `upper`; a whole number with `integer`)."""
  if _shape(x) != ():
    raise LedgerInputError(f"{name}: expected a scalar, got shape {_shape(x)}")
  if _concrete(x):
    try:
      v = float(np.asarray(x))
    except (TypeError, ValueError):
      raise LedgerInputError(f"{name}: expected a number, got {type(x).__name__}") from None
    if not np.isfinite(v) or v < 0 or (upper is not None and v > upper):
      bound = ">= 0" if upper is None else f"in [0, {upper:g}]"
      raise LedgerInputError(f"{name}: must be finite and {bound}, got {v}")
    if integer and v != round(v):
      raise LedgerInputError(f"{name}: must be a whole number, got {v}")


def check_sequence(W, name: str = "W"):
  """A [T, rows, cols] weight sequence with T >= 1 (the runners read block 0's shape)."""
  if _shape(W)[0] == 0:
    raise LedgerInputError(f"{name}: empty sequence of shape {_shape(W)}; needs at least "
                           "one epoch")


def check_count(x, name: str):
  """A python int >= 0 (epochs, blocks): it sets a static shape."""
  if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 0:
    raise LedgerInputError(f"{name}: must be an int >= 0, got {x!r}")


def check_config(x, cls, name: str):
  """Configs are static arguments: a wrong type fails later with an unclear trace."""
  if not isinstance(x, cls):
    raise LedgerInputError(f"{name}: expected a {cls.__name__}, got {type(x).__name__}")


def check_masks(masks, V: int, M: int):
  """One epoch's `EpochMasks` (fields [V], [V], [V, M], [M]), or None."""
  if masks is None:
    return
  check_mask(masks.active, "masks.active", (V,))
  check_mask(masks.permit, "masks.permit", (V,))
  check_mask(masks.outdated, "masks.outdated", (V, M))
  check_mask(masks.recently_registered, "masks.recently_registered", (M,))


def check_epoch_inputs(W, S, B_prev, masks, params, emission=None):
  """Validates one Yuma epoch's inputs (spec §2.1) against each other and `params`."""
  check_config(params, YumaConfig, "params")
  check_matrix(W, "W")
  V, M = _shape(W)
  check_vector(S, "S", V)
  if B_prev is not None:
    check_matrix(B_prev, "B_prev", (V, M), unit=bool(params.yuma3))
  if params.layout == "combined" and V != M:
    raise LedgerInputError(f"W: combined layout needs a square n x n matrix, got {V} x {M}")
  if params.owner >= V:
    raise LedgerInputError(f"params.owner: row {params.owner} is out of range for {V} rows")
  check_masks(masks, V, M)
  if emission is not None:
    check_scalar(emission, "emission")


def check_2020_inputs(W, S):
  """Validates the 2020 mechanism's n x n weights and stake (spec §1.2)."""
  check_matrix(W, "W")
  n, m = _shape(W)
  if n != m:
    raise LedgerInputError(f"W: the 2020 mechanism needs a square n x n matrix, got {n} x {m}")
  check_vector(S, "S", n)
