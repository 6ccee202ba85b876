"""Per-uid validator score state and its pure update steps (gauntlet.md §7, §10-§12, §14).

Everything works on a fixed pool of N uids (arrays [N], index = uid) with boolean masks, so
each step jits and vmaps; there are no loops over peers and no data-dependent shapes.

Sign rule (§14, §16, issue #45): a slash multiplies **positive** scores only, because
0.75 x (a negative score) would raise it. F and BMA are scaled together, only where F > 0
(the reference condition), and BMA only where it is itself positive, which also closes the
corner where a lone (unmatched) evaluation left F > 0 with BMA < 0. Any F that a slash leaves
in (0, score_floor) becomes 0 (§18 row 10g; templar #592 "infinite decay").
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxnet.gauntlet.config import GauntletConfig, GauntletError, check_pool_array as _check
from jaxnet.gauntlet.select import refresh_waiting

__all__ = [
  "ScoreState", "init", "reset_uids", "slash_positive", "apply_score_floor", "slash_scores",
  "zero_positive", "indicator_and_bma", "record_evaluation", "final_score", "update_final",
  "weights", "inactivity_step", "match_players", "settle_pending", "NOT_TRACKED",
  "evidence_table", "record_evidence", "evidence_wins", "has_evidence", "gate_final",
]

NOT_TRACKED = -1   # inactive_since value of a uid whose inactivity is not being tracked


class ScoreState(NamedTuple):
  """What the validator keeps per uid (templar @9ce04f64 `neurons/validator.py` tensors).

  Attributes:
    final: F, the final score (§11.4).
    bma: binary moving average of the indicator (§10).
    sync: sync score stored at the last evaluation (§7.2, §9.2 step 8).
    gradient_score: r_rand of the last evaluation (§9.2 step 6).
    indicator: I = +-1 of the last evaluation, 0 before any (§10).
    waiting: waiting counter c_u of an evaluation candidate (§6, §8); 0 = not a candidate
      (the reference keeps counters in a dict over candidates only).
    inactive_since: window at which a candidate went inactive, NOT_TRACKED otherwise (§7.1).
    ever_evaluated: uid was evaluated or slashed as an evaluated/gather peer; only these get
      weight (§12, the reference's `evaluated_uids`).
    last_eval_window: last window the uid was evaluated, -1 if never.
    timeout_until: first window at which a "mega" overlap copier may be selected again,
      -1 if none (§14 post-paper; templar HEAD `naughty_peers`).
    pending: scored in a round without a match (alone); its score waits for the next match
      (only with `carry_unmatched_scores`, §18 row 10f; the reference's score dict).
    pending_score: that waiting score (0 where not pending).
    evidence_bits: the last `evidence_window` indicators as bits (1 = I was +1, newest in
      bit 0); the proof of assigned data tests them (`has_evidence`).
    evidence_n: how many indicators those bits hold (<= evidence_window).
  """
  final: jax.Array             # [N] float32
  bma: jax.Array               # [N] float32
  sync: jax.Array              # [N] float32
  gradient_score: jax.Array    # [N] float32
  indicator: jax.Array         # [N] float32
  waiting: jax.Array           # [N] int32
  inactive_since: jax.Array    # [N] int32
  ever_evaluated: jax.Array    # [N] bool
  last_eval_window: jax.Array  # [N] int32
  timeout_until: jax.Array     # [N] int32
  pending: jax.Array           # [N] bool
  pending_score: jax.Array     # [N] float32
  evidence_bits: jax.Array     # [N] int32
  evidence_n: jax.Array        # [N] int32


def init(n: int, bma_init: float = 0.0) -> ScoreState:
  """A pool of `n` fresh uids: every score 0, BMA at `bma_init` (§10: 0), nobody a candidate."""
  if int(n) < 1:
    raise GauntletError(f"the uid pool needs n >= 1, got {n}")
  zeros = jnp.zeros((n,), jnp.float32)
  return ScoreState(
    final=zeros, bma=jnp.full((n,), bma_init, jnp.float32), sync=zeros, gradient_score=zeros,
    indicator=zeros, waiting=jnp.zeros((n,), jnp.int32),
    inactive_since=jnp.full((n,), NOT_TRACKED, jnp.int32),
    ever_evaluated=jnp.zeros((n,), bool), last_eval_window=jnp.full((n,), -1, jnp.int32),
    timeout_until=jnp.full((n,), -1, jnp.int32), pending=jnp.zeros((n,), bool),
    pending_score=zeros, evidence_bits=jnp.zeros((n,), jnp.int32),
    evidence_n=jnp.zeros((n,), jnp.int32))


def _pool_size(state: ScoreState) -> int:
  shape = jnp.shape(state.final)
  if len(shape) != 1:
    raise GauntletError(f"state.final must be 1-D [N] (vmap for batches), got shape {shape}")
  return shape[0]


def reset_uids(state: ScoreState, mask: jax.Array, bma_init: float = 0.0) -> ScoreState:
  """Full reset of the uids in `mask` (§7.1): scores to 0, BMA to its initial value.

  A waiting unmatched score is dropped with the rest of the record.

  The waiting counter is deleted (0; a returning candidate restarts at 1) and inactivity is
  no longer tracked, as in the reference `reset_peer`. `timeout_until` survives: a reset must
  not lift a copy timeout. Deleting the OpenSkill rating is the caller's job (rating module).
  """
  fresh = init(_pool_size(state), bma_init)._replace(timeout_until=state.timeout_until)
  return jax.tree.map(lambda new, old: jnp.where(mask, new, old), fresh, state)


def slash_positive(x: jax.Array, factor, mask: jax.Array) -> jax.Array:
  """x * factor where mask and x > 0; other entries (negative scores included) unchanged."""
  return jnp.where(mask & (x > 0), x * jnp.asarray(factor, x.dtype), x)


def apply_score_floor(x: jax.Array, floor, mask: jax.Array) -> jax.Array:
  """Zeroes entries in mask with 0 < x < floor (§18 row 10g: only after a slash)."""
  return jnp.where(mask & (x > 0) & (x < floor), jnp.zeros_like(x), x)


def slash_scores(state: ScoreState, factor, mask: jax.Array, cfg: GauntletConfig,
                 scale_bma: bool = True) -> ScoreState:
  """One slash event (§14 table): F x factor and BMA x factor where F > 0, then the floor.

  `scale_bma=False` for the inactivity decay, which acts on F only (§7.1).
  """
  n = _pool_size(state)
  _check("mask", mask, n, "bool")
  hit_N = mask & (state.final > 0)
  final = apply_score_floor(slash_positive(state.final, factor, hit_N), cfg.score_floor, hit_N)
  bma = slash_positive(state.bma, factor, hit_N) if scale_bma else state.bma
  return state._replace(final=final, bma=bma)


def zero_positive(state: ScoreState, mask: jax.Array) -> ScoreState:
  """Malformed gradient of an evaluated peer (§7.4, §9.2 step 3): positive F -> 0, rest kept."""
  _check("mask", mask, _pool_size(state), "bool")
  return state._replace(final=slash_positive(state.final, 0.0, mask))


def indicator_and_bma(bma: jax.Array, r_own: jax.Array, r_rand: jax.Array,
                      evaluated: jax.Array, alpha) -> tuple[jax.Array, jax.Array]:
  """Unique-computation indicator and its EMA (§10).

  I = +1 if r_own > r_rand else -1 (a NaN on either side gives -1, so garbage never helps);
  BMA <- (1 - alpha) BMA + alpha I for evaluated uids only. Returns (I with 0 outside
  `evaluated`, new BMA).
  """
  n = jnp.shape(bma)[0]
  for name, x, kind in (("r_own", r_own, "float"), ("r_rand", r_rand, "float"),
                        ("evaluated", evaluated, "bool")):
    _check(name, x, n, kind)
  ind_N = jnp.where(r_own > r_rand, 1.0, -1.0).astype(bma.dtype)
  new_bma = (1.0 - alpha) * bma + alpha * ind_N
  return jnp.where(evaluated, ind_N, 0.0).astype(bma.dtype), jnp.where(evaluated, new_bma, bma)


def record_evaluation(state: ScoreState, window, evaluated: jax.Array, r_own: jax.Array,
                      r_rand: jax.Array, sync: jax.Array, cfg: GauntletConfig,
                      r_other: jax.Array | None = None) -> ScoreState:
  """Stores one round of LossScore results (§9.2 steps 6-8) for the uids in `evaluated`.

  Updates the indicator and BMA (§10), the gradient score r_rand and the sync score; other
  uids are untouched. F is recomputed later, by `update_final`, for the match participants.
  `r_other` is what r_own is compared with for the indicator (default r_rand; with foils
  the better of r_rand and r_foil, issue 12).
  """
  n = _pool_size(state)
  _check("sync", sync, n, "float")
  ind_N, bma_N = indicator_and_bma(state.bma, r_own, r_rand if r_other is None else r_other,
                                   evaluated, cfg.bma_alpha)
  keep = lambda new, old: jnp.where(evaluated, new, old)
  return state._replace(
    bma=bma_N, indicator=keep(ind_N, state.indicator),
    gradient_score=keep(r_rand.astype(jnp.float32), state.gradient_score),
    sync=keep(sync.astype(jnp.float32), state.sync),
    ever_evaluated=state.ever_evaluated | evaluated,
    last_eval_window=keep(jnp.asarray(window, jnp.int32), state.last_eval_window))


def final_score(ordinal: jax.Array, bma: jax.Array, sync: jax.Array) -> jax.Array:
  """F = ordinal x max(0, BMA) x sync (§11.4); a negative ordinal gives F <= 0."""
  return ordinal * jnp.maximum(bma, 0.0) * sync


def update_final(state: ScoreState, ordinal: jax.Array, in_match: jax.Array) -> ScoreState:
  """Recomputes F for this round's match participants only (§11.4); others keep theirs.

  `in_match` is empty when fewer than 2 peers were scored (§11.1), which leaves F as is.
  """
  n = _pool_size(state)
  _check("ordinal", ordinal, n, "float")
  _check("in_match", in_match, n, "bool")
  new_N = final_score(ordinal.astype(jnp.float32), state.bma, state.sync)
  return state._replace(final=jnp.where(in_match, new_N, state.final))


def match_players(state: ScoreState, scored: jax.Array, score: jax.Array,
                  carry: bool) -> tuple[jax.Array, jax.Array]:
  """Who plays this round's match, and with which score (§11.1, §18 row 10f).

  The uids scored this round, with this round's score. With `carry` (the reference quirk)
  also the uids whose lone score waits from an earlier round; a waiting uid scored again
  plays with its new score. Returns (players [N] bool, scores [N], 0 outside).
  """
  n = _pool_size(state)
  _check("scored", scored, n, "bool")
  _check("score", score, n, "float")
  score = jnp.where(scored, score, 0.0).astype(jnp.float32)
  if not carry:   # static: the config is a static pytree
    return scored, score
  return scored | state.pending, jnp.where(scored, score, state.pending_score)


def settle_pending(state: ScoreState, players: jax.Array, score: jax.Array, applied,
                   carry: bool) -> ScoreState:
  """After the match: with `carry`, the players of a match that was skipped (fewer than 2,
  so at most one) wait for the next one; otherwise nothing waits (§18 row 10f)."""
  pending = players & ~applied if carry else jnp.zeros_like(players)
  return state._replace(pending=pending,
                        pending_score=jnp.where(pending, score, 0.0).astype(jnp.float32))


def weights(final: jax.Array, p, eps, mask: jax.Array | None = None) -> jax.Array:
  """Power normalisation (§12): w = F^p / sum F^p over F > 0 (and mask); 0 if the sum < eps."""
  pos_N = final > 0
  if mask is not None:
    _check("mask", mask, jnp.shape(final)[0], "bool")
    pos_N = pos_N & mask
  # Power of a safe base: 0^p is fine but a negative base would give NaN under jit.
  pow_N = jnp.where(pos_N, jnp.where(pos_N, final, 1.0) ** p, 0.0)
  total = jnp.sum(pow_N)
  return jnp.where(total >= eps, pow_N / jnp.where(total > 0, total, 1.0), 0.0)


def inactivity_step(state: ScoreState, window, active: jax.Array, candidate: jax.Array,
                    cfg: GauntletConfig) -> tuple[ScoreState, jax.Array]:
  """Refreshes the candidate set, decays inactive uids and resets long-inactive ones (§6, §7.1).

  As templar @9ce04f64 `neurons/validator.py::run` step 3:
  * a uid that was a candidate last window (waiting > 0) and is no longer active starts being
    tracked with inactive_since = window; a uid that is a candidate again stops being tracked;
  * tracked uids with window - inactive_since > reset_inactivity_windows are fully reset
    (`reset_uids`), the others get F x slash_inactive (positive F only, then the floor);
  * waiting counters keep their value for candidates, start at 1 for new candidates and are
    deleted (0) for non-candidates (`comms.update_peers_with_buckets`).

  Args:
    window: the round being processed (scalar int).
    active: [N] bool, an upload in the last `recent_windows` windows (§6).
    candidate: [N] bool, active with stake <= cap (`select.candidates`).

  Returns:
    (new state, reset [N] bool): the rating module must delete the ratings of `reset` uids.
  """
  n = _pool_size(state)
  _check("active", active, n, "bool")
  _check("candidate", candidate, n, "bool")
  window = jnp.asarray(window, jnp.int32)
  newly_inactive = (state.waiting > 0) & ~active
  since = jnp.where(newly_inactive & (state.inactive_since == NOT_TRACKED), window,
                    state.inactive_since)
  since = jnp.where(candidate, NOT_TRACKED, since)
  tracked = since != NOT_TRACKED
  reset = tracked & (window - since > cfg.reset_inactivity_windows)
  state = slash_scores(state._replace(inactive_since=since), cfg.slash_inactive,
                       tracked & ~reset, cfg, scale_bma=False)
  state = reset_uids(state, reset, cfg.bma_init)
  return state._replace(waiting=refresh_waiting(state.waiting, candidate)), reset


# ------------------------------------------------------------------ proof of assigned data

def evidence_table(alpha: float, window: int, p0: float = 0.5) -> tuple[int, ...]:
  """Critical win counts of a one-sided binomial test: c[n] for n = 0..window.

  c[n] is the least k with P(Binomial(n, p0) >= k) <= alpha, or n + 1 when even n wins
  out of n are not significant. Under the null hypothesis (the update was not computed on
  the peer's assigned pages) the assigned pages and the m other page sets it is compared
  with are exchangeable, so the indicator ("own pages improve most") is +1 with
  probability at most p0 = 1 / (m + 1), independently across windows (fresh pages every
  window): a peer is declared to have evidence with probability <= alpha per look. A
  static table (Python ints), computed at trace time from the config.
  """
  import math
  out = []
  for n in range(window + 1):
    tail, c = 0.0, n + 1
    for k in range(n, -1, -1):   # grow the upper tail from k = n down while it stays <= alpha
      tail += math.comb(n, k) * p0 ** k * (1.0 - p0) ** (n - k)
      if tail > alpha:
        break
      c = k
    out.append(c)
  return tuple(out)


def record_evidence(state: ScoreState, evaluated: jax.Array, indicator: jax.Array,
                    window: int) -> ScoreState:
  """Pushes this round's indicator (+1 -> bit 1) into the last-`window` history of each
  evaluated uid; the others keep theirs."""
  _check("evaluated", evaluated, _pool_size(state), "bool")
  mask = jnp.int32((1 << window) - 1)
  bits = ((state.evidence_bits << 1) | (indicator > 0).astype(jnp.int32)) & mask
  n = jnp.minimum(state.evidence_n + 1, window)
  return state._replace(evidence_bits=jnp.where(evaluated, bits, state.evidence_bits),
                        evidence_n=jnp.where(evaluated, n, state.evidence_n))


def evidence_wins(state: ScoreState) -> jax.Array:
  """[N] int32: +1 indicators among the stored ones."""
  return jax.lax.population_count(state.evidence_bits).astype(jnp.int32)


def has_evidence(state: ScoreState, alpha: float, window: int, p0: float = 0.5) -> jax.Array:
  """[N] bool: the binomial test rejects "not trained on its own pages" at level alpha."""
  table = jnp.asarray(evidence_table(alpha, window, p0), jnp.int32)
  return evidence_wins(state) >= table[jnp.clip(state.evidence_n, 0, window)]


def gate_final(state: ScoreState, evidence: jax.Array) -> ScoreState:
  """F <= 0 without evidence: a positive indicator is paid only once it is significant
  (issue 12; the paper pays max(0, BMA), i.e. the positive half of a random walk)."""
  _check("evidence", evidence, _pool_size(state), "bool")
  return state._replace(final=jnp.where(evidence, state.final, jnp.minimum(state.final, 0.0)))
