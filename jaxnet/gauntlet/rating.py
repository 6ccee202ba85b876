"""LossRating: OpenSkill Plackett-Luce over a fixed pool of uids (gauntlet.md §11).

Weng & Lin (2011) Algorithm 4 exactly as `openskill` 6.2.0 `PlackettLuce` computes it for
one-player teams (gauntlet.md §11.2), written with fixed shapes so that one match per round
jits, and many independent matches vmap:

* the pool holds N uids; the match is the boolean mask `in_match[N]`, the outcome the score
  vector `scores[N]` (r_rand, higher is better; gauntlet.md §11.1);
* ranks are argsort(-score) with **exact ties broken by ascending uid**, so every rank is
  distinct and the package's multi-way-tie defect (gauntlet.md §11.3) never arises;
* one integer sort puts the players first, best first; S_q and the sums over q <= i are
  then cumulative sums in rank order (O(N log N)); uids outside the match are masked out of
  every sum and keep their rating untouched (their sigma does not get tau added);
* a match of fewer than 2 players leaves the state unchanged and its score is dropped
  (gauntlet.md §18 row 10f).

Precision. The state's dtype is the compute dtype: float32 by default (scoring paths are
float32), float64 when the state is created with `dtype=jnp.float64` under
`jax.enable_x64(True)`. In float32 the results agree with the float64 package to a relative
1e-6 (|ours - ref| <= 1e-6 * max(1, |ref|); measured worst about 2e-7 at 256 players): a
float32 mu near 25 cannot hold 1e-6 absolute (its ulp is 1.9e-6), so the absolute error is
about half an ulp of mu. In float64 they agree to 1e-9 (measured about 1e-14). Both are
checked in tests/test_rating.py at up to 256 players.

Non-finite scores: NaN and -inf rank last (ties among them by uid), so outputs stay finite.
Non-finite mu/sigma cannot be caught inside jit; `check_state` validates a state on the host.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnet.configbase import require, static_config

__all__ = [
  "RatingError", "RatingParams", "RatingState", "init_state", "rate", "ordinal", "reset",
  "check_state", "tie_broken_ranks",
]


class RatingError(ValueError):
  """Bad input to the rating functions (shape, dtype, or a non-finite / invalid state)."""


@static_config
class RatingParams:
  """Plackett-Luce constants (gauntlet.md §11.1, §15.2, §18 row 5).

  beta = 7 and tau = 0.1 are the reference validator's values at the end of the 1.2B run
  (`PlackettLuce(beta=7, tau=0.1)`, §11.1); mu0 = 25, sigma0 = 25/3, kappa = 1e-4 are the
  openskill defaults it inherits (§11.1); z = 3 gives the ordinal mu - 3 sigma (§11.2 step 8,
  §18 row 5). openskill's own defaults are beta = 25/6, tau = 25/300.
  """
  beta: float = 7.0              # performance noise (openskill default 25/6)
  tau: float = 0.1               # sigma added per match (openskill default 25/300)
  mu0: float = 25.0              # initial mean skill
  sigma0: float = 25.0 / 3.0     # initial skill uncertainty
  kappa: float = 1e-4            # floor of the sigma shrink factor (step 7)
  z: float = 3.0                 # ordinal = mu - z * sigma

  def __post_init__(self):
    require(self.beta > 0, "rating.beta", f"must be > 0, got {self.beta}")
    require(self.tau >= 0, "rating.tau", f"must be >= 0, got {self.tau}")
    require(self.sigma0 > 0, "rating.sigma0", f"must be > 0, got {self.sigma0}")
    require(0 < self.kappa < 1, "rating.kappa", f"must be in (0, 1), got {self.kappa}")
    for name in ("beta", "tau", "mu0", "sigma0", "kappa", "z"):
      value = getattr(self, name)
      require(value == value and abs(value) != float("inf"), f"rating.{name}",
              f"must be finite, got {value}")


class RatingState(NamedTuple):
  """Ratings of a fixed pool of N uids (index = uid).

  Invariant: an unrated uid holds (mu0, sigma0) and `rated = False`; its ordinal is 0
  (gauntlet.md §11.2 step 8). `init_state` and `reset` keep this invariant.
  """
  mu: jax.Array      # [N] float
  sigma: jax.Array   # [N] float, > 0
  rated: jax.Array   # [N] bool: took part in at least one applied match since the last reset


def init_state(num_uids: int, params: RatingParams = RatingParams(),
               dtype=jnp.float32) -> RatingState:
  """A pool of `num_uids` fresh, unrated ratings in `dtype` (the compute dtype of `rate`)."""
  if int(num_uids) < 1:
    raise RatingError(f"num_uids must be >= 1, got {num_uids}")
  dtype = jnp.dtype(dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise RatingError(f"dtype must be floating, got {dtype}")
  if dtype == jnp.float64 and not jax.config.read("jax_enable_x64"):
    # Without x64 jnp would silently hand back float32 arrays.
    raise RatingError("dtype float64 needs jax.enable_x64(True)")
  return RatingState(mu=jnp.full((num_uids,), params.mu0, dtype),
                     sigma=jnp.full((num_uids,), params.sigma0, dtype),
                     rated=jnp.zeros((num_uids,), bool))


def _check_match(state: RatingState, in_match, scores) -> None:
  """Trace-time shape and dtype checks (shapes are static, so these never touch data)."""
  n = state.mu.shape
  if len(n) != 1:
    raise RatingError(f"state.mu must be 1-D [N] (vmap for batches), got shape {n}")
  for name, x in (("state.sigma", state.sigma), ("state.rated", state.rated),
                  ("in_match", in_match), ("scores", scores)):
    if jnp.shape(x) != n:
      raise RatingError(f"{name} has shape {jnp.shape(x)}, expected {n}")
  if jnp.result_type(in_match) != jnp.bool_:
    raise RatingError(f"in_match must be bool, got {jnp.result_type(in_match)}")
  if not jnp.issubdtype(jnp.result_type(scores), jnp.floating):
    raise RatingError(f"scores must be floating, got {jnp.result_type(scores)}")
  if not jnp.issubdtype(state.mu.dtype, jnp.floating):
    raise RatingError(f"state.mu must be floating, got {state.mu.dtype}")


def _sort_key(in_match_N: jax.Array, scores_N: jax.Array) -> jax.Array:
  """Integer key whose ascending order is: players by descending score, then non-players.

  The float key -score is canonicalised (NaN -> +inf, so NaN and -inf scores rank last;
  -0.0 -> 0.0, so they tie) and mapped to a signed integer of the same width with the
  order-preserving bit trick (negative floats: flip all bits but the sign). +inf maps
  below the integer maximum, which marks non-players, so players take the first positions.
  An integer sort is also cheaper than a float one on CPU.
  """
  float_dtype = jnp.promote_types(jnp.result_type(scores_N), jnp.float32)
  int_dtype = jnp.int64 if float_dtype == jnp.float64 else jnp.int32
  key_N = -scores_N.astype(float_dtype)
  key_N = jnp.where(jnp.isnan(key_N), jnp.inf, key_N)
  key_N = jnp.where(key_N == 0, jnp.zeros_like(key_N), key_N)
  bits_N = lax.bitcast_convert_type(key_N, int_dtype)
  int_max = jnp.iinfo(int_dtype).max
  bits_N = jnp.where(bits_N < 0, bits_N ^ jnp.asarray(int_max, int_dtype), bits_N)
  return jnp.where(in_match_N, bits_N, jnp.asarray(int_max, int_dtype))


def _rank_order(in_match_N: jax.Array, scores_N: jax.Array):
  """(order, position): `order` lists uids best first, players before non-players, exact
  score ties by ascending uid (the stable sort keeps index order: the deterministic tie
  break of gauntlet.md §11.3); `position[uid]` is the inverse permutation."""
  n = in_match_N.shape[0]
  order_N = jnp.argsort(_sort_key(in_match_N, scores_N), stable=True)
  iota_N = jnp.arange(n, dtype=jnp.int32)
  position_N = jnp.zeros((n,), jnp.int32).at[order_N].set(iota_N, unique_indices=True)
  return order_N, position_N


def tie_broken_ranks(in_match: jax.Array, scores: jax.Array) -> jax.Array:
  """0-based rank of every uid in the match (0 = best, all distinct), -1 outside it."""
  if jnp.shape(in_match) != jnp.shape(scores) or len(jnp.shape(scores)) != 1:
    raise RatingError(f"in_match {jnp.shape(in_match)} and scores {jnp.shape(scores)} must "
                      "be 1-D of one shape")
  _, position_N = _rank_order(in_match, scores)
  return jnp.where(in_match, position_N, -1)


def rate(state: RatingState, in_match: jax.Array, scores: jax.Array,
         params: RatingParams = RatingParams()) -> tuple[RatingState, dict]:
  """One Plackett-Luce match over the uids in `in_match`, ranked by descending `scores`.

  Args:
    state: ratings of the pool, [N] each; the compute dtype is `state.mu.dtype`.
    in_match: [N] bool, the uids evaluated this round.
    scores: [N] float, r_rand (higher is better); ignored outside the match.
    params: model constants (static under jit).

  Returns:
    (new_state, metrics); metrics: `num_players` (int32), `applied` (bool, >= 2 players),
    `rank` ([N] int32, 0-based, -1 outside the match).
  """
  _check_match(state, in_match, scores)
  dtype = state.mu.dtype
  n = state.mu.shape[0]
  order_N, position_N = _rank_order(in_match, scores)
  # Arrays named *_R below are in rank order: players first, best first, then non-players.
  num_players = jnp.sum(in_match.astype(jnp.int32))
  applied = num_players >= 2              # §18 row 10f: a lone player is skipped and dropped
  player_R = jnp.arange(n, dtype=jnp.int32) < num_players
  mu_R = state.mu[order_N]
  sigma_R = state.sigma[order_N]

  zero = jnp.zeros((), dtype)
  beta, tau = jnp.asarray(params.beta, dtype), jnp.asarray(params.tau, dtype)
  # Step 1, dynamics: sigma^2 + tau^2 (players only; the rest is discarded below).
  sigma2_R = sigma_R * sigma_R + tau * tau
  # Step 2: c = sqrt(sum_i (sigma_i^2 + beta^2)).
  c = jnp.sqrt(jnp.sum(jnp.where(player_R, sigma2_R + beta * beta, zero)))
  c = jnp.where(applied, c, jnp.ones((), dtype))  # keeps the skipped branch finite
  # Steps 3-4: p_{i|q} = e_i / S_q is invariant to a common factor in e, so shift by the
  # largest mu: e <= 1 and nothing overflows, whatever the ratings.
  shift = jnp.where(applied, jnp.max(jnp.where(player_R, mu_R, -jnp.inf)), zero)
  e_R = jnp.where(player_R, jnp.exp((mu_R - shift) / c), zero)
  # S_q = sum of e over the players ranked at or below q (distinct ranks, so A_q = 1), and
  # S_{q+1} = the sum strictly below q, taken from the same cumulative sum, not S_q - e_q.
  s_R = lax.cumsum(e_R, axis=0, reverse=True)
  s_below_R = jnp.concatenate([s_R[1:], jnp.zeros((1,), dtype)])
  inv_s_R = jnp.where(player_R, 1 / jnp.where(player_R, s_R, jnp.ones((), dtype)), zero)
  # Sums over q ranked strictly above i of 1/S_q and 1/S_q^2 (one stacked cumulative sum).
  inv_s_2xR = jnp.stack([inv_s_R, inv_s_R * inv_s_R])
  above_2xR = lax.cumsum(inv_s_2xR, axis=1) - inv_s_2xR
  p_ii_R = e_R * inv_s_R
  q_ii_R = s_below_R * inv_s_R             # 1 - p_{i|i}, free of cancellation
  # Step 5: Omega_i = sigma_i^2 / c * ((1 - p_{i|i}) - sum_{q above i} p_{i|q}).
  omega_R = sigma2_R / c * (q_ii_R - e_R * above_2xR[0])
  # Step 6: Delta_i = gamma_i sigma_i^2 / c^2 * sum_{q <= i} p_{i|q} (1 - p_{i|q}),
  # with gamma_i = sigma_i / c.
  pq_sum_R = p_ii_R * q_ii_R + e_R * above_2xR[0] - e_R * e_R * above_2xR[1]
  sigma_dyn_R = jnp.sqrt(sigma2_R)
  delta_R = sigma_dyn_R / c * sigma2_R / (c * c) * pq_sum_R
  # Step 7.
  kappa = jnp.asarray(params.kappa, dtype)
  update_R = player_R & applied
  new_mu_R = jnp.where(update_R, mu_R + omega_R, mu_R)
  new_sigma_R = jnp.where(update_R, sigma_dyn_R * jnp.sqrt(jnp.maximum(1 - delta_R, kappa)),
                          sigma_R)
  new_state = RatingState(mu=new_mu_R[position_N], sigma=new_sigma_R[position_N],
                          rated=state.rated | (in_match & applied))
  metrics = {"num_players": num_players, "applied": applied,
             "rank": jnp.where(in_match, position_N, -1)}
  return new_state, metrics


def ordinal(state: RatingState, z: float = RatingParams.z) -> jax.Array:
  """Conservative skill mu - z sigma per uid, 0 for unrated uids (gauntlet.md §11.2 step 8)."""
  value = state.mu - jnp.asarray(z, state.mu.dtype) * state.sigma
  return jnp.where(state.rated, value, jnp.zeros_like(value))


def reset(state: RatingState, mask: jax.Array,
          params: RatingParams = RatingParams()) -> RatingState:
  """Deletes the ratings of the uids in `mask` (inactivity reset, gauntlet.md §7.1)."""
  if jnp.shape(mask) != state.mu.shape or jnp.result_type(mask) != jnp.bool_:
    raise RatingError(f"mask must be bool of shape {state.mu.shape}, got "
                      f"{jnp.result_type(mask)}{list(jnp.shape(mask))}")
  dtype = state.mu.dtype
  return RatingState(mu=jnp.where(mask, jnp.asarray(params.mu0, dtype), state.mu),
                     sigma=jnp.where(mask, jnp.asarray(params.sigma0, dtype), state.sigma),
                     rated=state.rated & ~mask)


def check_state(state: RatingState) -> None:
  """Host-side validation: raises RatingError on non-finite mu/sigma or sigma <= 0."""
  mu, sigma = np.asarray(state.mu), np.asarray(state.sigma)
  bad = np.flatnonzero(~np.isfinite(mu))
  if bad.size:
    raise RatingError(f"state.mu has non-finite values at uids {bad[:8].tolist()}")
  bad = np.flatnonzero(~(np.isfinite(sigma) & (sigma > 0)))
  if bad.size:
    raise RatingError(f"state.sigma must be finite and > 0; bad uids {bad[:8].tolist()}")
