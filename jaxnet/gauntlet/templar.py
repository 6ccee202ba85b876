"""templar's final validator rules: the `templar-final` preset (schemes.md §5, templar @142666f0).

Pure, jittable functions over the uid pool [N]; the per-uid history they need lives in
`TemplarState` (rolling windows of the last `missing_history` missing flags and the last
`negative_history` evaluation signs, streak counters, the gather exclusion and the count of
evaluated windows). `validator.score_round` calls them behind static `cfg.preset` branches;
the paper path never touches them. Each constant is a `GauntletConfig` field (config.py).

Rules and the choices made where the spec leaves room (each says so in its function):
  * missing or invalid gradients of evaluated uids play the match at `missing_score` -99
    (`match_with_missing`);
  * BMA' = max(0, BMA), and 0 below `bma_threshold` once the uid has been evaluated in
    `bma_warmup_windows` windows (`bma_effective`); F = ordinal x BMA' x sync, F < 1e-4 -> 0
    (`final_score`);
  * sync from the interquartile mean of the per-probe-position steps-behind estimates
    (`steps_behind_iqm`);
  * weights: burn share, top group on a linear ramp, reserve group on a geometric ramp
    capped below the top group, renormalised (`weights`);
  * missing gradients: escalating factors over consecutive misses, reset and timeout when
    at least half of the last 8 observed windows were missing (`missing_step`);
  * negative evaluations: x 0.25 when more than half of the last 8 were negative, gather
    exclusion after 3 in a row until a non-negative one, both skipped in a window whose
    5th-ranked score is negative (`skip_negative_penalty`, `negative_step`).
A "window" of a history is a window in which the rule observed the uid (templar's deques
append only then), so a uid outside the gather list and not evaluated keeps its history.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxnet.gauntlet.config import (GauntletConfig, GauntletError, check_pool_array as _check,
                                    preset_overrides)

__all__ = [
  "TemplarState", "init_state", "reset", "push_history", "interquartile_mean",
  "steps_behind_iqm", "bma_effective", "final_score", "match_with_missing",
  "missing_step", "skip_negative_penalty", "negative_step", "weights", "set_timeout",
  "preset_overrides",
]


class TemplarState(NamedTuple):
  """Per-uid history of the templar-final rules (index = uid; column 0 = most recent).

  Attributes:
    missing_hist: missing flag of the last `missing_history` windows the uid was expected
      to upload (gather peer or evaluated).
    missing_streak: consecutive expected windows with a missing gradient.
    negative_hist: sign of the last `negative_history` evaluations (True = score < 0).
    negative_streak: consecutive negative evaluations.
    excluded: out of the gather list until a non-negative evaluation.
    evaluated_windows: windows in which the uid was scored (BMA warm-up).
  """
  missing_hist: jax.Array       # [N, H_m] bool
  missing_streak: jax.Array     # [N] int32
  negative_hist: jax.Array      # [N, H_n] bool
  negative_streak: jax.Array    # [N] int32
  excluded: jax.Array           # [N] bool
  evaluated_windows: jax.Array  # [N] int32


def init_state(n: int, cfg: GauntletConfig) -> TemplarState:
  """A pool of `n` uids with empty histories (built for every preset: one state layout)."""
  if int(n) < 1:
    raise GauntletError(f"the uid pool needs n >= 1, got {n}")
  zeros = jnp.zeros((n,), jnp.int32)
  return TemplarState(
    missing_hist=jnp.zeros((n, cfg.missing_history), bool), missing_streak=zeros,
    negative_hist=jnp.zeros((n, cfg.negative_history), bool), negative_streak=zeros,
    excluded=jnp.zeros((n,), bool), evaluated_windows=zeros)


def reset(state: TemplarState, mask: jax.Array) -> TemplarState:
  """Deletes the history of the uids in `mask` (any full reset deletes the whole record)."""
  n = state.excluded.shape[0]
  _check("mask", mask, n, "bool")

  def clear(x):
    m = mask.reshape((n,) + (1,) * (x.ndim - 1))
    return jnp.where(m, jnp.zeros_like(x), x)
  return jax.tree.map(clear, state)


def push_history(hist: jax.Array, flag: jax.Array, observed: jax.Array) -> jax.Array:
  """Rolling window [N, H]: `flag` enters column 0 where observed, the oldest entry drops."""
  shifted = jnp.concatenate([flag[:, None], hist[:, :-1]], axis=1)
  return jnp.where(observed[:, None], shifted, hist)


# ------------------------------------------------------------------ sync

def interquartile_mean(x: jax.Array, axis: int = -1) -> jax.Array:
  """Mean of the middle half: sort, drop the floor(K/4) smallest and largest of K values.

  For K divisible by 4 this is the textbook IQM; for K < 4 nothing is dropped (the mean).
  """
  k = x.shape[axis]
  q = k // 4
  mid = lax.slice_in_dim(jnp.sort(x, axis=axis), q, k - q, axis=axis % x.ndim)
  return jnp.mean(mid, axis=axis)


def steps_behind_iqm(own_probe: jax.Array, probes_NxK: jax.Array, lr_t) -> jax.Array:
  """x = IQM over the K probe positions of |θ_val − θ_peer| / η_t (schemes.md §5).

  jaxnet receives one debug dict per uid per round: K = 2 x (#tensors) probed weights
  (gauntlet.md §7.2). Each position is its own steps-behind estimate, so the IQM is taken
  over those K estimates of this round (no window over earlier rounds: a peer's lag changes
  between rounds and the probes of one round are what the data offers). A non-finite
  estimate anywhere gives x = inf (a garbage debug dict is desynced, never trimmed away).
  """
  est_NxK = jnp.abs(probes_NxK - own_probe[None, :]) / lr_t
  x_N = interquartile_mean(est_NxK, axis=-1)
  return jnp.where(jnp.all(jnp.isfinite(est_NxK), axis=-1), x_N, jnp.inf)


# ------------------------------------------------------------------ final score

def bma_effective(bma: jax.Array, evaluated_windows: jax.Array, threshold, warmup) -> jax.Array:
  """BMA' = max(0, BMA), and 0 if BMA < threshold once the uid was evaluated in `warmup`
  windows (`bma_threshold` 0.10, `bma_warmup_windows` 10: a per-uid count, as templar's
  "windows before BMA penalties apply to new miners"; the current window counts)."""
  _check("evaluated_windows", evaluated_windows, jnp.shape(bma)[0], "num")
  warm = evaluated_windows >= warmup
  return jnp.where(warm & (bma < threshold), 0.0, jnp.maximum(bma, 0.0)).astype(bma.dtype)


def final_score(ordinal: jax.Array, bma_eff: jax.Array, sync: jax.Array, floor) -> jax.Array:
  """F = ordinal x BMA' x sync; every F below `floor` (1e-4) is 0 (schemes.md §5: "scores
  below 1e-4 are zeroed", negative ones included, which changes no weight)."""
  f = ordinal * bma_eff * sync
  return jnp.where(f < floor, jnp.zeros_like(f), f)


def match_with_missing(players: jax.Array, score: jax.Array, failed: jax.Array,
                       missing_score) -> tuple[jax.Array, jax.Array]:
  """Adds the evaluated uids whose gradient was missing or invalid to the match with
  `missing_score` (-99: below any LossScore, so last; ties among them by ascending uid, the
  rating module's tie break). Returns (players, scores)."""
  n = jnp.shape(players)[0]
  _check("failed", failed, n, "bool")
  _check("score", score, n, "float")
  return players | failed, jnp.where(failed, jnp.asarray(missing_score, score.dtype), score)


# ------------------------------------------------------------------ missing gradients

def missing_step(state: TemplarState, observed: jax.Array, missing: jax.Array,
                 cfg: GauntletConfig) -> tuple[TemplarState, jax.Array, jax.Array]:
  """One window of the missing-gradient rules over the uids expected to upload (`observed`).

  * Escalation: the k-th consecutive miss multiplies F (and BMA) by
    `missing_escalation[k - 1]`, the last entry repeating: templar's 0.75, 0.5, 0 (its test
    `test_slash_for_missing_gradients_escalating`: first miss x 0.75, second x 0.5, third
    x 0). An upload resets the streak.
  * History: the flag enters the rolling window of the last `missing_history` observed
    windows; a uid missing now with at least `missing_reset_fraction` of that full window
    missing (4 of 8) is reset and timed out. The fraction is of the whole window (slots not
    yet filled count as uploads), so a new uid is not reset for its first miss.

  Returns (state, factor [N]: 1 where not missing, reset [N] bool).
  """
  n = state.excluded.shape[0]
  _check("observed", observed, n, "bool")
  _check("missing", missing, n, "bool")
  missing = missing & observed
  streak = jnp.where(observed, jnp.where(missing, state.missing_streak + 1, 0),
                     state.missing_streak).astype(jnp.int32)
  table = jnp.asarray(cfg.missing_escalation, jnp.float32)
  k = jnp.clip(streak - 1, 0, table.shape[0] - 1)
  factor = jnp.where(missing, table[k], 1.0)
  hist = push_history(state.missing_hist, missing, observed)
  count = jnp.sum(hist, axis=1, dtype=jnp.int32)
  reset_N = missing & (count >= cfg.missing_reset_fraction * cfg.missing_history)
  return state._replace(missing_hist=hist, missing_streak=streak), factor, reset_N


def set_timeout(timeout_until: jax.Array, mask: jax.Array, window, windows: int) -> jax.Array:
  """timeout_until = window + windows for `mask` (the overlap timeout's convention: the uid
  may be selected again from that window on). A longer running timeout is kept."""
  until = jnp.asarray(window, jnp.int32) + windows
  return jnp.where(mask, jnp.maximum(timeout_until, until), timeout_until)


# ------------------------------------------------------------------ negative evaluations

def skip_negative_penalty(score: jax.Array, scored: jax.Array, rank: int) -> jax.Array:
  """True when this window's `rank`-th best score (1-based; the last when fewer were scored)
  is negative: a window where even that peer hurt the loss says more about the evaluation
  than about the peers (`should_skip_negative_penalty`, L587-618). No scores: False.

  Only uids scored this window count; the -99 entries of missing uids do not, since they
  say nothing about the evaluation batch.
  """
  n = jnp.shape(score)[0]
  _check("scored", scored, n, "bool")
  count = jnp.sum(scored, dtype=jnp.int32)
  desc = -jnp.sort(jnp.where(scored, -score.astype(jnp.float32), jnp.inf))
  idx = jnp.clip(jnp.minimum(count, rank) - 1, 0, n - 1)
  return (count > 0) & (desc[idx] < 0)


def negative_step(state: TemplarState, scored: jax.Array, score: jax.Array, skip,
                  cfg: GauntletConfig) -> tuple[TemplarState, jax.Array]:
  """One window of the negative-evaluation rules for the uids scored in it.

  A negative evaluation is a LossScore below 0 (the match score: the loss got worse); 0
  and above count as positive. Every evaluation enters the rolling window and the streak,
  skipped window or not. Unless `skip`:
  * more than `negative_fraction` of the last `negative_history` evaluations negative
    (5 of 8; unfilled slots count as positive) -> F x `negative_slash`, in every window the
    uid is evaluated while that holds;
  * `negative_streak` negatives in a row (3) -> excluded from the gather list.
  A positive evaluation lifts the exclusion (skipped window or not).

  Returns (state, slash [N] bool: where F x negative_slash applies).
  """
  n = state.excluded.shape[0]
  _check("scored", scored, n, "bool")
  _check("score", score, n, "float")
  negative = scored & (score < 0)
  hist = push_history(state.negative_hist, negative, scored)
  streak = jnp.where(scored, jnp.where(negative, state.negative_streak + 1, 0),
                     state.negative_streak).astype(jnp.int32)
  count = jnp.sum(hist, axis=1, dtype=jnp.int32)
  slash = scored & (count > cfg.negative_fraction * cfg.negative_history) & ~skip
  exclude = scored & (streak >= cfg.negative_streak) & ~skip
  excluded = (state.excluded | exclude) & ~(scored & ~negative)
  return state._replace(negative_hist=hist, negative_streak=streak, excluded=excluded), slash


# ------------------------------------------------------------------ weights

def weights(final: jax.Array, mask: jax.Array, cfg: GauntletConfig) -> tuple[jax.Array, dict]:
  """templar's `update_weights` (L1084-1164) over the uids in `mask` with F > 0.

  Rank the positive F (ties by ascending uid; the burn uid never ranks). Of the non-burned
  share 1 - b:
    * top group, ranks 1..T (T = 20): `weight_top_share` (75 %) on a linear ramp from
      `weight_top_ratio` (2) down to 1, so w_1 = 2 w_T;
    * reserve group, the next R (10): the rest (25 %) on a geometric ramp 1, 0.5, 0.25, ...;
      when its first weight exceeds the smallest top weight, the whole group is scaled so
      that it becomes `weight_reserve_decay` x that smallest top weight;
    * then both groups are scaled together to sum to 1 - b (the cap can move weight from
      reserve to top, so 75/25 is the split before the cap).
  The burn uid gets b (1 when no uid has positive F, as templar's fall-back). With
  `burn_uid = -1` nobody is paid the burn: the weights sum to 1 - b (0 without positives).

  Returns (w [N], info): info["group"] [N] int32 (1 top, 2 reserve, 0 none) and
  info["burn"] () the share taken out of the miners' weights.
  """
  n = jnp.shape(final)[0]
  _check("final", final, n, "float")
  _check("mask", mask, n, "bool")
  if cfg.burn_uid >= n:
    raise GauntletError(f"burn_uid {cfg.burn_uid} is outside the pool of {n} uids")
  uid = jnp.arange(n, dtype=jnp.int32)
  f = final.astype(jnp.float32)
  pos = mask & (f > 0) & (uid != cfg.burn_uid)
  order = jnp.lexsort((uid, jnp.where(pos, -f, jnp.inf)))   # by -F, then uid
  rank = jnp.zeros((n,), jnp.int32).at[order].set(uid)
  n_pos = jnp.sum(pos, dtype=jnp.int32)
  t, r = cfg.weight_top_count, cfg.weight_reserve_count
  top = pos & (rank < t)
  res = pos & (rank >= t) & (rank < t + r)
  n_top = jnp.minimum(n_pos, t)
  ratio, decay = cfg.weight_top_ratio, cfg.weight_reserve_decay
  # linear ramp ratio .. 1 over the n_top ranks (a lone top uid gets the ratio)
  prof_top = jnp.where(top, ratio - (ratio - 1.0) * rank / jnp.maximum(n_top - 1, 1), 0.0)
  prof_res = jnp.where(res, decay ** jnp.maximum(rank - t, 0).astype(jnp.float32), 0.0)
  keep = 1.0 - cfg.burn_share
  safe = lambda s: jnp.where(s > 0, s, 1.0)  # noqa: E731
  w_top = keep * cfg.weight_top_share * prof_top / safe(jnp.sum(prof_top))
  w_res = keep * (1.0 - cfg.weight_top_share) * prof_res / safe(jnp.sum(prof_res))
  min_top = jnp.min(jnp.where(top, w_top, jnp.inf))
  max_res = jnp.max(jnp.where(res, w_res, 0.0))
  cap = jnp.any(top) & jnp.any(res) & (max_res > min_top)
  w_res = jnp.where(cap, w_res * (min_top / safe(max_res) * decay), w_res)
  w = (w_top + w_res).astype(jnp.float32)
  total = jnp.sum(w)
  w = jnp.where(total > 0, w * (keep / safe(total)), 0.0)
  burn = jnp.where(total > 0, cfg.burn_share, 1.0).astype(jnp.float32)
  if cfg.burn_uid >= 0:   # static: the config is a static pytree
    w = w.at[cfg.burn_uid].set(burn)
  group = jnp.where(top, 1, jnp.where(res, 2, 0)).astype(jnp.int32)
  return w, {"group": group, "burn": burn}
