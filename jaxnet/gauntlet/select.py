"""Whom to evaluate and whom to gather (gauntlet.md §6, §8, §13), over a fixed pool of N uids.

Evaluation (§8, templar @9ce04f64 `bin_evaluation_peers` / `select_evaluation_uids_from_bin`):
candidates are sorted by OpenSkill ordinal (0 if unrated), best first with ties by ascending
uid, and cut into `num_evaluation_bins` near-equal contiguous bins (the first n mod B bins hold
one extra uid) when there are at least bins x uids_per_window candidates, else one bin. One
bin is drawn uniformly, then `uids_per_window` uids are drawn inside it without replacement
with probability proportional to the waiting counter c_u.

Sampling without replacement is Gumbel-top-k: with g_u i.i.d. standard Gumbel, the k largest
log c_u + g_u are distributed exactly as k successive draws without replacement, each with
probability c_u / (sum of the remaining c) (Gumbel-max trick; Kool, van Hoof & Welling 2019,
arXiv 1903.06059). Masked uids get -inf, so shapes stay static and it jits and vmaps.

Gather peers (§13, templar `select_initial_peers` / `select_next_peers`): the top
`gather_size` active uids by weight (ties by ascending uid); when fewer than that have weight
> 0, the list is filled with active zero-weight uids in a random order drawn from the key.
No list is made with fewer than `minimum_peers` active uids (the old one stays and the refresh
is retried next window). A refresh is due `peer_replacement_frequency` windows after the last
posted list and takes effect `peer_list_window_margin` windows later; the very first list
takes effect at once, because there is no earlier list to keep.

Every random choice comes from an explicit key; the validator derives it from (seed, window).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxnet.gauntlet.config import GauntletConfig, GauntletError, check_pool_array as _check

__all__ = [
  "candidates", "refresh_waiting", "update_waiting", "bin_ids", "sample_without_replacement",
  "select_for_evaluation", "GatherState", "init_gather", "select_gather_peers", "gather_step",
  "uids_to_mask",
]


def _pool(x, name: str) -> int:
  shape = jnp.shape(x)
  if len(shape) != 1:
    raise GauntletError(f"{name} must be 1-D [N] (vmap for batches), got shape {shape}")
  return shape[0]


# ------------------------------------------------------------------ candidates and counters

def candidates(active: jax.Array, stake: jax.Array, stake_cap) -> jax.Array:
  """Evaluation candidates (§6): active uids with stake <= cap (this excludes validators)."""
  n = _pool(active, "active")
  _check("active", active, n, "bool")
  _check("stake", stake, n, "num")
  return active & (stake <= stake_cap)


def refresh_waiting(waiting: jax.Array, candidate: jax.Array) -> jax.Array:
  """Counters for this window's candidates: kept, 1 for new candidates, 0 (deleted) otherwise."""
  _check("candidate", candidate, _pool(waiting, "waiting"), "bool")
  return jnp.where(candidate, jnp.maximum(waiting, 1), 0).astype(jnp.int32)


def update_waiting(waiting: jax.Array, candidate: jax.Array, selected: jax.Array) -> jax.Array:
  """After selection (§8): selected -> 1, other candidates + 1, non-candidates 0."""
  n = _pool(waiting, "waiting")
  _check("candidate", candidate, n, "bool")
  _check("selected", selected, n, "bool")
  waiting = jnp.where(selected, 1, waiting + 1)
  return jnp.where(candidate, waiting, 0).astype(jnp.int32)


# ------------------------------------------------------------------ binning and sampling

def bin_ids(ordinal: jax.Array, candidate: jax.Array, num_bins: int,
            uids_per_window: int) -> tuple[jax.Array, jax.Array]:
  """Bin index of every candidate (0 = best ordinals), -1 for non-candidates (§8).

  Returns (bin [N] int32, number of bins in use: num_bins or 1, int32 scalar).
  A NaN ordinal sorts as the worst.
  """
  n = _pool(ordinal, "ordinal")
  _check("candidate", candidate, n, "bool")
  key_N = -jnp.where(jnp.isnan(ordinal), -jnp.inf, ordinal).astype(jnp.float32)
  key_N = jnp.where(candidate, key_N, jnp.inf)
  # Stable sort: equal ordinals keep ascending uid (index) order -> deterministic bins.
  order_N = jnp.argsort(key_N, stable=True)
  pos_N = jnp.zeros((n,), jnp.int32).at[order_N].set(jnp.arange(n, dtype=jnp.int32))
  count = jnp.sum(candidate, dtype=jnp.int32)
  n_bins = jnp.where(count >= num_bins * uids_per_window, num_bins, 1).astype(jnp.int32)
  q, r = count // n_bins, count % n_bins
  big = r * (q + 1)   # the first r bins hold q + 1 uids, the rest q
  bin_N = jnp.where(pos_N < big, pos_N // (q + 1), r + (pos_N - big) // jnp.maximum(q, 1))
  return jnp.where(candidate, bin_N, -1).astype(jnp.int32), n_bins


def sample_without_replacement(key: jax.Array, weight: jax.Array, eligible: jax.Array,
                               k: int) -> jax.Array:
  """Draws min(k, #eligible) uids without replacement, P ∝ weight (Gumbel-top-k).

  Eligible uids need weight > 0 (waiting counters are >= 1); returns a [N] bool mask.
  """
  n = _pool(weight, "weight")
  _check("eligible", eligible, n, "bool")
  k = min(int(k), n)
  if k <= 0:
    return jnp.zeros((n,), bool)
  gumbel_N = jax.random.gumbel(key, (n,), jnp.float32)
  logw_N = jnp.log(jnp.maximum(weight.astype(jnp.float32), jnp.finfo(jnp.float32).tiny))
  score_N = jnp.where(eligible, logw_N + gumbel_N, -jnp.inf)
  _, top_K = jax.lax.top_k(score_N, k)
  picked_N = jnp.zeros((n,), bool).at[top_K].set(True)
  return picked_N & eligible   # when fewer than k are eligible, top_k also returns -inf uids


def select_for_evaluation(key: jax.Array, candidate: jax.Array, ordinal: jax.Array,
                          waiting: jax.Array, cfg: GauntletConfig) -> tuple[jax.Array, dict]:
  """Peers to run LossScore on this round (§8).

  With `cfg.uids_per_window == 0` every candidate is evaluated (the jaxnet default).
  Returns (selected [N] bool, metrics with the chosen `bin` and `n_bins`).
  """
  n = _pool(candidate, "candidate")
  _check("waiting", waiting, n, "num")
  if cfg.uids_per_window == 0:   # static: the config is a static pytree
    return candidate, {"bin": jnp.int32(0), "n_bins": jnp.int32(1)}
  bin_key, draw_key = jax.random.split(key)
  bin_N, n_bins = bin_ids(ordinal, candidate, cfg.num_evaluation_bins, cfg.uids_per_window)
  chosen = jax.random.randint(bin_key, (), 0, n_bins, dtype=jnp.int32)
  eligible_N = candidate & (bin_N == chosen)
  selected_N = sample_without_replacement(draw_key, jnp.maximum(waiting, 1), eligible_N,
                                          cfg.uids_per_window)
  return selected_N, {"bin": chosen, "n_bins": n_bins}


# ------------------------------------------------------------------ gather peers

class GatherState(NamedTuple):
  """The posted gather-peer lists (§13), as uid arrays [G] padded with -1.

  Attributes:
    current: the list in effect.
    pending: the last posted list, waiting for `effective_window` (all -1 if none).
    effective_window: window at which `pending` replaces `current`, -1 if nothing pending.
    last_update: window of the last posted list, -1 before the first.
  """
  current: jax.Array           # [G] int32
  pending: jax.Array           # [G] int32
  effective_window: jax.Array  # () int32
  last_update: jax.Array       # () int32


def init_gather(gather_size: int) -> GatherState:
  """No list yet: the first `gather_step` posts one that takes effect at once."""
  empty = jnp.full((gather_size,), -1, jnp.int32)
  return GatherState(current=empty, pending=empty, effective_window=jnp.int32(-1),
                     last_update=jnp.int32(-1))


def uids_to_mask(uids: jax.Array, n: int) -> jax.Array:
  """[G] uid list padded with -1 -> [N] bool mask."""
  safe = jnp.where(uids >= 0, uids, n)   # -1 would wrap to the last uid; send it out of range
  return jnp.zeros((n,), bool).at[safe].set(True, mode="drop")


def select_gather_peers(key: jax.Array, weight: jax.Array, active: jax.Array,
                        gather_size: int) -> tuple[jax.Array, jax.Array]:
  """Top `gather_size` active uids by weight, filled at random from active zero-weight uids.

  Returns (uids [G] int32 padded with -1, number of active uids).
  """
  n = _pool(weight, "weight")
  _check("active", active, n, "bool")
  w_N = weight.astype(jnp.float32)
  ranked_N = active & (w_N > 0)
  # Group 0: weighted, by descending weight; group 1: active filler, random order;
  # group 2: inactive. The uid is the last key, so ties never depend on sort stability.
  group_N = jnp.where(ranked_N, 0, jnp.where(active, 1, 2))
  u_N = jax.random.uniform(key, (n,), jnp.float32)
  second_N = jnp.where(ranked_N, -w_N, jnp.where(active, u_N, 0.0))
  order_N = jnp.lexsort((jnp.arange(n), second_N, group_N)).astype(jnp.int32)
  if n < gather_size:
    order_N = jnp.concatenate([order_N, jnp.full((gather_size - n,), -1, jnp.int32)])
  n_active = jnp.sum(active, dtype=jnp.int32)
  take_G = jnp.arange(gather_size) < jnp.minimum(n_active, gather_size)
  return jnp.where(take_G, order_N[:gather_size], -1), n_active


def gather_step(state: GatherState, window, weight: jax.Array, active: jax.Array,
                key: jax.Array, cfg: GauntletConfig) -> tuple[GatherState, jax.Array]:
  """Posts a new list when due and switches lists at their effective window (§13).

  Args:
    window: the validator's current window (scalar int).
    weight: [N] ranking key: the validator's weights w (on-chain incentive for the first list).
    active: [N] bool, uids eligible for the list.
    key: randomness of the zero-weight filler.

  Returns:
    (new state, [N] bool mask of the gather peers in effect this window).
  """
  n = _pool(weight, "weight")
  if state.current.shape != (cfg.gather_size,):
    raise GauntletError(f"GatherState holds {state.current.shape[0]} slots, "
                        f"gather_size is {cfg.gather_size}")
  window = jnp.asarray(window, jnp.int32)

  def promote(s: GatherState) -> GatherState:
    due = (s.effective_window >= 0) & (window >= s.effective_window)
    return s._replace(current=jnp.where(due, s.pending, s.current),
                      pending=jnp.where(due, -1, s.pending),
                      effective_window=jnp.where(due, -1, s.effective_window))

  # Promote before posting (a margin equal to the frequency must not lose a list) and after
  # (a margin of 0 takes effect in the same window).
  state = promote(state)
  first = state.last_update < 0
  due = first | (window - state.last_update >= cfg.peer_replacement_frequency)
  uids_G, n_active = select_gather_peers(key, weight, active, cfg.gather_size)
  post = due & (n_active >= cfg.minimum_peers)
  state = GatherState(
    current=jnp.where(post & first, uids_G, state.current),
    pending=jnp.where(post & ~first, uids_G, state.pending),
    effective_window=jnp.where(post & ~first, window + cfg.peer_list_window_margin,
                               state.effective_window),
    last_update=jnp.where(post, window, state.last_update))
  state = promote(state)
  return state, uids_to_mask(state.current, n)
