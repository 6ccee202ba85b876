"""Shared numerics of the ledger: safe normalisation, u16 emulation, the kappa-median.

All functions are pure, shape-static and jit/vmap-able. "Normalise" means divide by the
sum, and a zero-sum slice stays all-zero, never NaN (spec, Notation). The generic helpers
take any array; `stake_weighted_quantile` checks its inputs (its bit-pattern search is
only exact for w >= 0), and the epoch calls `stake_weighted_quantile_core`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnet.ledger.validate import check_matrix, check_scalar, check_vector, shape_of

U16_MAX = 65535.0  # chain u16 proportions: 65535 = 1.0 (spec §2 "Chain arithmetic")


def safe_div(num, den):
  """num / den, and 0 where den == 0 (spec §5.1 edge rules, e.g. T = R / P)."""
  ok = den != 0
  return jnp.where(ok, num / jnp.where(ok, den, 1), 0)


def normalize(x, axis=-1):
  """Divides by the sum along `axis`; zero-sum slices stay 0 (spec §5.2 `normalize`)."""
  return safe_div(x, jnp.sum(x, axis=axis, keepdims=True))


def row_normalize(x_VxM):
  """Every non-empty row sums to 1 (spec §2.1 step 5)."""
  return normalize(x_VxM, axis=1)


def col_normalize(x_VxM):
  """Every non-empty column sums to 1 (spec §2.1 step 11a)."""
  return normalize(x_VxM, axis=0)


def max_upscale(x, axis):
  """Divides by the max along `axis` so the largest entry is exactly 1 (zero slices stay 0).

  XLA may lower x / m as x * (1 / m), which gives 0.99999994 for x == m; the chain's
  stored maximum is exactly 65535, so the maximum is pinned to 1.
  """
  m = jnp.max(x, axis=axis, keepdims=True)
  return jnp.where((x == m) & (m > 0), 1.0, safe_div(x, m))


def col_max_upscale(x_VxM):
  """Column max-upscale: the largest entry of every non-zero column becomes 1 (§2.1 11a.5)."""
  return max_upscale(x_VxM, axis=0)


def u16_floor(x):
  """Stores a proportion the way the chain does: `fixed_proportion_to_u16` truncates.

  The spec (§5.1) writes round(x * 65535); the chain (the reference, §2) truncates the
  fractional bits when it persists vectors and bonds, and subtensor's `test_bonds` expects
  the truncated values (e.g. 0.25 -> 16383, not 16384), so storage truncates.
  """
  return jnp.floor(jnp.clip(x, 0.0, 1.0) * U16_MAX) / U16_MAX


def u16_round(x):
  """Rounds a proportion to u16 (weights: `vec_max_upscale_to_u16` rounds; spec §5.1)."""
  return jnp.round(jnp.clip(x, 0.0, 1.0) * U16_MAX) / U16_MAX


def u16_weights(w_VxM):
  """Weights as set on chain: each row max-upscaled to 65535, rounded to u16 (§2.1 step 5)."""
  return u16_round(max_upscale(w_VxM, axis=1))


def _quantile_inputs(w_VxM, a_V):
  """Positive-stake rows only, their stake renormalised (spec §5.2).

  Returns (w_VxM, a_V, floor_M), floor_M the column minimum over positive-stake rows
  (+inf for a column with none). Positive means positive on input: a tiny stake may
  underflow to 0 when renormalised, but its row still takes part.
  """
  pos_V = a_V > 0
  a_V = normalize(jnp.where(pos_V, a_V, 0).astype(w_VxM.dtype))
  # Zero-stake rows carry no stake; zeroing their entries keeps them from being picked at
  # kappa = 0. Subnormals are flushed to 0 because XLA CPU compares them as 0 anyway.
  tiny = jnp.finfo(w_VxM.dtype).tiny
  w_VxM = jnp.where(pos_V[:, None] & (w_VxM >= tiny), w_VxM, 0)
  floor_M = jnp.min(jnp.where(pos_V[:, None], w_VxM, jnp.inf), axis=0)
  return w_VxM, a_V, floor_M


def _qualifies(c, stake_ge, floor, kappa):
  """Whether a candidate value c is at or below the kappa-median (spec §2.1 step 6).

  The spec's test stake(W >= c) >= min(kappa, total) is, in exact arithmetic, "the stake
  sum reaches kappa, or all positive stake is counted", and the second half is c <=
  `floor`, the column minimum over positive-stake rows. A min is exact in any reduction
  order, unlike a float sum: comparing a masked sum with a separately reduced total let
  one ulp collapse kappa = 1 to 0. At kappa >= 1 only that exact half decides, since a
  rounded partial sum can reach 1 before the last positive row and skip the minimum.
  """
  return (c <= floor) | ((stake_ge >= kappa) & (kappa < 1))


def _quantile_sort(w_VxM, a_V, floor_M, kappa):
  a_VxM = jnp.broadcast_to(a_V[:, None], w_VxM.shape)
  neg_sorted, a_sorted = jax.lax.sort((-w_VxM, a_VxM), dimension=0, num_keys=1)
  cum_VxM = jnp.cumsum(a_sorted, axis=0)
  # With ties, v_k <= floor may hold while a positive row of the same value follows k;
  # the value read is the same, so the first qualifying index still gives the median.
  ok_VxM = _qualifies(-neg_sorted, cum_VxM, floor_M[None, :], kappa)
  first_M = jnp.argmax(ok_VxM, axis=0)
  return -jnp.take_along_axis(neg_sorted, first_M[None, :], axis=0)[0]


def _quantile_bisect(w_VxM, a_V, floor_M, kappa):
  # For w >= 0 the float order equals the integer order of the bit patterns, so a binary
  # search over bits finds max{w : w qualifies} exactly. That maximum is always one of
  # the column's values: both halves of the test only change just above a value.
  idt = jnp.int32 if w_VxM.dtype == jnp.float32 else jnp.int64
  w_MxV = w_VxM.T  # reduce along the contiguous axis
  lo_M = jnp.zeros((w_VxM.shape[1],), idt)  # invariant: lo qualifies (0 always does)
  hi_M = jax.lax.bitcast_convert_type(jnp.max(w_VxM, axis=0), idt)

  def body(carry):
    lo_M, hi_M = carry
    mid_M = lo_M + (hi_M - lo_M + 1) // 2
    mid_f = jax.lax.bitcast_convert_type(mid_M, w_VxM.dtype)
    stake_M = jnp.sum(jnp.where(w_MxV >= mid_f[:, None], a_V[None, :], 0), axis=1)
    ok_M = _qualifies(mid_f, stake_M, floor_M, kappa)
    return jnp.where(ok_M, mid_M, lo_M), jnp.where(ok_M, hi_M, mid_M - 1)

  lo_M, _ = jax.lax.while_loop(lambda c: jnp.any(c[0] < c[1]), body, (lo_M, hi_M))
  c_M = jax.lax.bitcast_convert_type(lo_M, w_VxM.dtype)
  # Subnormal midpoints compare like 0 on CPU (flush-to-zero), so when the answer is 0 the
  # search stops inside the subnormal range; W holds no subnormals, so that means 0.
  return jnp.where(c_M >= jnp.finfo(w_VxM.dtype).tiny, c_M, 0)


def stake_weighted_quantile(w_VxM, a_V, kappa, method: str = "bisect"):
  """kappa-stake-weighted median per column (spec §2.1 step 6, §5.2).

  c_j = max{ w : sum_i a_i [W_ij >= w] >= kappa }, over positive-stake rows only, whose
  stake is renormalised to sum 1; with no positive stake c = 0. Ties resolve as on chain:
  stake(W >= c) >= kappa and stake(W > c) < kappa.

  The spec compares with min(kappa, total) so that kappa = 1 gives the column minimum
  despite rounding. Here a value qualifies when its stake sum reaches kappa (for kappa <
  1) or when no positive-stake row of the column lies below it. In exact arithmetic that
  is the same test; in floats the second half is a boolean, so kappa = 1 gives exactly the
  column minimum over positive-stake rows whatever the reduction order, and kappa = 0
  the column maximum.

  Two exact methods give identical results (tests check it bit for bit):
  * "sort" (spec §5.2): sort each column descending carrying the stakes, take the
    cumulative stake, and read the value at the first index that qualifies (cumulative
    stake reaches kappa, or the value is the column minimum over positive-stake rows);
    with a descending sort that index carries the largest qualifying value.
  * "bisect": binary search over the float bit patterns, one masked stake sum per step
    (31 steps in float32). About 3x faster than XLA's sort on CPU at 256 x 4096.

  Args:
    w_VxM: weights, >= 0.
    a_V: stake, >= 0 (any scale).
    kappa: majority fraction in [0, 1] (python float or traced scalar).
    method: "bisect" or "sort".
  Returns:
    c_M, each entry one of its column's values (from a positive-stake row) or 0.
  Raises:
    LedgerInputError: negative or non-finite w or a, mismatched shapes, kappa outside [0, 1].
  """
  check_matrix(w_VxM, "w_VxM")
  check_vector(a_V, "a_V", shape_of(w_VxM)[0], of="rows of w_VxM")
  check_scalar(kappa, "kappa", 1.0)
  return stake_weighted_quantile_core(w_VxM, a_V, kappa, method)


def stake_weighted_quantile_core(w_VxM, a_V, kappa, method: str = "bisect"):
  """`stake_weighted_quantile` without input checks (inside the epoch)."""
  w_VxM, a_V, floor_M = _quantile_inputs(w_VxM, a_V)
  kappa = jnp.asarray(kappa, w_VxM.dtype)
  if method == "sort":
    return _quantile_sort(w_VxM, a_V, floor_M, kappa)
  if method == "bisect":
    return _quantile_bisect(w_VxM, a_V, floor_M, kappa)
  raise ValueError(f"method: {method!r} is not 'sort' or 'bisect'")


def topk_nonzero(s_V, k: int):
  """Top-k entries of s among the non-zero ones (spec §2.1 step 3, chain `is_topk_nonzero`).

  The chain sorts ascending with a stable sort and drops the first n - k, so among equal
  stakes the lower index loses its permit first; this reproduces that order.
  """
  n = s_V.shape[0]
  nonzero_V = s_V != 0
  if k >= n:
    return nonzero_V
  order_V = jnp.argsort(s_V, stable=True)
  pos_V = jnp.zeros((n,), jnp.int32).at[order_V].set(jnp.arange(n, dtype=jnp.int32))
  return nonzero_V & (pos_V >= n - k)


def sigmoid(x):
  """Logistic 1 / (1 + exp(-x)) (spec, Notation)."""
  return jax.nn.sigmoid(x)
