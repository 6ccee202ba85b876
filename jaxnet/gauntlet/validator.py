"""The validator round as one pure function over `ValidatorState` (gauntlet.md §15.1).

`score_round(state, inputs, params, window, lr_t, key) -> (state, report)` runs, for a
fixed pool of N uids and in one jitted call:

  1. uptime: activity, candidates, inactivity decay and resets (§6, §7.1)
  2. gather list refresh (§13) and the gather checks: skipped-peer slash (§7.3; x 0 when
     the gather success rate is below `gather_slash_threshold`)
  3. sync score and the desync slash (§7.2); both slashes hit `fast_scope` (§18 row 7)
  4. whom to evaluate: every candidate (jaxnet default) or templar's binned sampling (§8)
  5. LossScore of every evaluated peer at once (§9), indicator and BMA (§10)
  6. one Plackett-Luce match ranked by r_rand (§11) and the final score F (§11.4); a lone
     score is dropped, or waits for the next match (`carry_unmatched_scores`, §18 row 10f)
  7. optional index-overlap copy detection (§14, §18 row 4)
  8. weights F^p / Σ F^p (§12)

`cfg.preset == "templar-final"` (schemes.md §5) switches, by static branches on the config,
to templar's final rules (`jaxnet.gauntlet.templar`): timed-out, excluded and burn uids
leave the gather list; x from the IQM of the probe estimates; missing or invalid evaluated
gradients play the match at -99; F = ordinal x BMA' x sync with BMA' thresholded; then, on
that fresh F, the escalating missing-gradient slash, the reset and timeout of frequent
missers, F <- 0 for invalid gradients and the negative-evaluation penalties; copy detection
over the gathered peers after 20 windows; burn + top/reserve ramp weights. The paper path
("paper", the default) runs exactly the operations it ran before the preset existed, except
that a non-finite LossScore is now the malformed penalty instead of a silent skip.

`cfg.preset == "hardened"` (issue 12) keeps the paper's structure and switches on, each by
its own field: the foil in the indicator (step 5), the evidence gate on F (after step 6),
the scored gather rule (step 2), and the value-sketch copy detector with calibrated flags
and blame by evidence (step 7, `jaxnet.gauntlet.copies`).

The report holds, per uid, every term and every slash with its reason, so a peer can see
why it earned what it earned (`jaxnet report`). Randomness comes only from `key`, which
the caller derives from (seed, window): validators with the same inputs agree.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxnet import schemes
from jaxnet.config import ModelConfig
from jaxnet.gauntlet import copies, fast, lossscore, overlap, rating, scores, select, templar
from jaxnet.gauntlet.config import GauntletConfig
from jaxnet.submission import Layout, Submission

NEVER = -(10 ** 6)


class ValidatorState(NamedTuple):
  """Everything a validator carries across rounds (a pytree; Orbax checkpoints it)."""
  scores: scores.ScoreState
  rating: rating.RatingState
  gather: select.GatherState
  last_upload: jax.Array   # [N] int32 window of the latest gradient object
  weights: jax.Array       # [N] float32 latest weights
  window: jax.Array        # () int32 last processed window
  templar: templar.TemplarState  # histories of the templar-final rules (untouched by paper)


class RoundInputs(NamedTuple):
  """What the validator sees in round s: uploads and their times, never peer labels."""
  subs: Submission         # [N, ...] stacked; zeros where missing or malformed
  present: jax.Array       # [N] bool: a gradient object exists for this round
  struct_ok: jax.Array     # [N] bool: it parsed with the expected structure (host check)
  offset_s: jax.Array      # [N] float32: upload time − T_{w+1} (seconds)
  probes: jax.Array        # [N, K] float32: debug dict θ[10:12] of each tensor (§3.4)
  probe_present: jax.Array  # [N] bool
  stake: jax.Array         # [N] float32: candidates have stake <= cap (§6)
  own: dict                # [N, B, L] each uid's sampled assigned batch (§9.2 step 1)
  rand: dict               # [B, L] the round's shared random batch (§9.1)


def init_state(n_uids: int, cfg: GauntletConfig) -> ValidatorState:
  return ValidatorState(
      scores=scores.init(n_uids, cfg.bma_init),
      rating=rating.init_state(n_uids, cfg.rating),
      gather=select.init_gather(cfg.gather_size),
      last_upload=jnp.full((n_uids,), NEVER, jnp.int32),
      weights=jnp.zeros((n_uids,), jnp.float32),
      window=jnp.int32(-1),
      templar=templar.init_state(n_uids, cfg))


def _take(tree, idx):
  return jax.tree.map(lambda x: jnp.asarray(x)[idx], tree)


def _score_source(ls: lossscore.LossScores, cfg: GauntletConfig):
  if cfg.score_source == "assigned":
    return ls.r_own
  if cfg.score_source == "both":
    return 0.5 * (ls.r_own + ls.r_rand)
  return ls.r_rand


def _foils(m: int, pad: int, key):
  """Row i < m of the evaluated block is also scored on row (i + s) mod m's assigned batch,
  s uniform in [1, m): every evaluated peer gets another evaluated peer's pages as its foil
  (issue 12). Padding rows point at themselves (their result is dropped)."""
  s = jax.random.randint(key, (), 1, m)
  i = jnp.arange(m + pad)
  return jnp.where(i < m, (i + s) % m, i)


def _evaluate(params, inputs: RoundInputs, selected_N, step_size, context, key, *,
              cfg: GauntletConfig, layout: Layout, model_cfg: ModelConfig, mesh):
  """LossScore for the selected uids; returns [N] arrays (0 outside the selection)."""
  n = selected_N.shape[0]
  m = n if cfg.uids_per_window == 0 else min(cfg.uids_per_window, n)
  if m == n:
    idx_M = jnp.arange(n)
  else:  # static M: the selected uids first (ascending uid), padded with unselected ones
    idx_M = jnp.argsort(~selected_N, stable=True)[:m]
  shards = mesh.size if mesh is not None else 1
  pad = (-m) % shards
  idx_M = jnp.concatenate([idx_M, jnp.zeros((pad,), idx_M.dtype)]) if pad else idx_M
  # Uploads that are not evaluated are zeroed first: garbage (NaN, bad indices) never
  # reaches the model, and their slots cost a no-op step (sign(0) = 0).
  keep_N = selected_N.reshape(-1)
  clean = jax.tree.map(lambda x: jnp.where(keep_N.reshape((-1,) + (1,) * (x.ndim - 1)), x,
                                           jnp.zeros_like(x)), inputs.subs)
  subs_M, own_M = _take(clean, idx_M), _take(inputs.own, idx_M)
  foil_src = _foils(m, pad, key) if _use_foils(cfg, m) else None
  foil_M = _take(own_M, foil_src) if foil_src is not None else None
  if mesh is not None and mesh.size > 1:
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("peer"))
    subs_M = jax.lax.with_sharding_constraint(subs_M, spec)
    own_M = jax.lax.with_sharding_constraint(own_M, spec)
    if foil_M is not None:
      foil_M = jax.lax.with_sharding_constraint(foil_M, spec)
  ls = lossscore.score_peers(params, subs_M, own_M, inputs.rand, step_size, layout=layout,
                             model_cfg=model_cfg, eval_batch=cfg.eval_batch,
                             mode=cfg.score_mode, apply_sign=cfg.eval_apply_sign,
                             relative=cfg.relative_improvement, mesh=mesh, context=context,
                             foil_PxBxL=foil_M, foil_src=foil_src)
  idx_M, valid_M = idx_M[:m], jnp.arange(m) < m

  def scatter(v_M, fill=0.0):
    out = jnp.full((n,), fill, jnp.float32).at[idx_M].set(jnp.where(valid_M, v_M[:m], fill))
    return jnp.where(selected_N, out, fill)

  out = {k: scatter(getattr(ls, k)) for k in ("own_before", "own_after", "rand_after", "r_own",
                                               "r_rand", "r_foil")}
  out["score"] = scatter(_score_source(ls, cfg))
  out["rand_before"] = jnp.broadcast_to(ls.rand_before, (n,))
  return out


def _use_foils(cfg: GauntletConfig, m: int) -> bool:
  """Foils need a second evaluated peer (static: m is the evaluated block's size)."""
  return cfg.indicator_foils and m >= 2


def _null_rate(cfg: GauntletConfig, n: int) -> float:
  """P(I = +1) for an update not computed on its own pages: 1/3 against random pages and a
  foil, 1/2 against random pages alone (issue 12; exchangeable page sets)."""
  m = n if cfg.uids_per_window == 0 else min(cfg.uids_per_window, n)
  return 1.0 / 3.0 if _use_foils(cfg, m) else 0.5


def _statistic(rt: rating.RatingState, cfg: GauntletConfig):
  """The rating statistic in F (§11.4, §18 row 5): the ordinal mu - z sigma, or mu."""
  stat = rating.ordinal(rt, cfg.rating.z) if cfg.score_statistic == "ordinal" else rt.mu
  return stat.astype(jnp.float32)


def gather_score(sc: scores.ScoreState, rt: rating.RatingState, cfg: GauntletConfig):
  """The paper's F, ordinal x max(0, BMA) x sync, before the evidence gate: it ranks the
  gather candidates under `gather_rule: scored` (the model may use an update before its
  author has earned pay; never one whose conservative rating is not positive, whatever
  statistic pays: mu is positive for nearly every rated uid)."""
  return scores.final_score(rating.ordinal(rt, cfg.rating.z).astype(jnp.float32), sc.bma,
                            sc.sync)


def _copy_verdict(stat_PxP, identical_PxP, compared, offset_s, evidence, cfg: GauntletConfig):
  """(level, partner, unresolved, max statistic) per uid from the pair statistic (§14).

  Fixed thresholds give templar's levels 1-3; calibrated flags (`overlap_calibration:
  round`, `jaxnet.gauntlet.copies`) give level 3 (reset and timeout). The copier of a
  flagged pair is the later uploader (`copy_blame: time`) or the member without own-page
  evidence (`copy_blame: evidence`; unresolved pairs are reported, not punished).
  """
  n = stat_PxP.shape[0]
  times = jnp.where(compared, offset_s, jnp.inf)
  thresholds = (cfg.overlap_threshold, cfg.overlap_max_threshold, cfg.overlap_mega_threshold)
  if cfg.overlap_calibration == "fixed" and cfg.copy_blame == "time":   # templar's rule
    v = overlap.copy_slash(stat_PxP, times, compared, thresholds)
    return v.level, v.source, jnp.zeros((n,), bool), v.max_overlap
  pair = compared[:, None] & compared[None, :] & ~jnp.eye(n, dtype=bool)
  stat = jnp.nan_to_num(stat_PxP.astype(jnp.float32), nan=0.0)
  max_stat = jnp.maximum(jnp.max(jnp.where(pair, stat, -1.0), axis=1), 0.0)
  if cfg.overlap_calibration == "round":
    flag = copies.flag_pairs(copies.pair_distances(stat, cfg.overlap_statistic), identical_PxP,
                             compared, cfg.overlap_ratio, cfg.copy_share_ratio)
    strength = jnp.where(flag, 3, 0)
  else:   # templar's levels: high / max / mega, oriented by evidence
    strength = jnp.where(pair, sum((stat >= x).astype(jnp.int32) for x in thresholds), 0)
    flag = strength > 0
  blamed, unresolved = copies.blame(flag, evidence,
                                    times if cfg.copy_blame == "time" else None)
  level = jnp.max(jnp.where(blamed, strength, 0), axis=1).astype(jnp.int32)
  # the partner: the strongest blamed source (templar's `source`), else a flagged partner
  pick = jnp.where(jnp.any(blamed, axis=1)[:, None], jnp.where(blamed, stat, -1.0),
                   jnp.where(flag, stat, -1.0))
  partner = jnp.where(jnp.max(pick, axis=1) >= 0, jnp.argmax(pick, axis=1), -1)
  return level, partner.astype(jnp.int32), unresolved, max_stat


def score_round(state: ValidatorState, inputs: RoundInputs, params, window, lr_t, key, *,
                cfg: GauntletConfig, layout: Layout, model_cfg: ModelConfig,
                mesh: jax.sharding.Mesh | None = None) -> tuple[ValidatorState, dict]:
  """One validator round (module docstring). Jit with everything after `key` static."""
  n = state.last_upload.shape[0]
  window = jnp.asarray(window, jnp.int32)
  k_gather, k_select = jax.random.split(key)
  sc, rt, ts = state.scores, state.rating, state.templar
  tf = cfg.preset == "templar-final"   # static: the config is a static pytree
  scheme = schemes.of_layout(layout)    # static: the layout names its scheme

  # 1. uptime (§6, §7.1)
  last_upload = fast.update_activity(state.last_upload, inputs.present, window)
  active = fast.is_active(last_upload, window, cfg)
  candidate = select.candidates(active, inputs.stake, cfg.candidate_stake_cap)
  final_before = sc.final
  sc, reset_inactive = scores.inactivity_step(sc, window, active, candidate, cfg)
  rt = rating.reset(rt, reset_inactive, cfg.rating)

  # 2. gather list and gather checks (§13, §7.3, §7.4)
  if tf:   # timed-out, excluded (3 negatives in a row) and burn uids are not gathered
    blocked = (window < sc.timeout_until) | ts.excluded | (jnp.arange(n) == cfg.burn_uid)
    gather_state, in_gather = select.gather_step(
        state.gather, window, jnp.where(blocked, 0.0, state.weights), active & ~blocked,
        k_gather, cfg)
    in_gather = in_gather & ~blocked   # a list posted earlier loses them at once
  elif cfg.gather_rule == "scored":   # issue 12: positive scores only, no random filler
    key_N = gather_score(sc, rt, cfg)
    eligible_g = active & (window >= sc.timeout_until) & (key_N > 0)
    if cfg.evidence_alpha > 0:   # once enough uids have own-page evidence, only they
      proven = scores.has_evidence(sc, cfg.evidence_alpha, cfg.evidence_window,
                                   _null_rate(cfg, n))
      enough = jnp.sum(eligible_g & proven) >= cfg.minimum_peers
      eligible_g = eligible_g & (proven | ~enough)
    gather_state, in_gather = select.gather_step(
        state.gather, window, jnp.where(eligible_g, key_N, 0.0), eligible_g, k_gather, cfg)
    in_gather = in_gather & eligible_g   # a list posted earlier loses them at once
  else:
    gather_state, in_gather = select.gather_step(state.gather, window, state.weights, active,
                                                 k_gather, cfg)
  tl = fast.timeliness(inputs.present, inputs.offset_s, cfg.put_window_s)
  fmt_ok, fmt_flags = fast.format_ok(inputs.subs, inputs.struct_ok, layout)
  usable = tl.on_time & fmt_ok
  # §18 row 7: the fast checks slash the gather peers (reference) or every active uid
  scope = in_gather if cfg.fast_scope == "gather_evaluated" else in_gather | active
  gather_skipped = scope & ~usable
  # §7.3 post-paper: a gather that mostly failed zeroes the skipped peers instead
  gather_success = (jnp.sum(in_gather & usable, dtype=jnp.float32)
                    / jnp.maximum(jnp.sum(in_gather, dtype=jnp.float32), 1.0))
  if not tf:   # templar-final: one escalating missing slash after the match (step 6b)
    skip_factor = jnp.where(gather_success < cfg.gather_slash_threshold, 0.0, cfg.slash_missing)
    sc = scores.slash_scores(sc, skip_factor, gather_skipped, cfg)

  # 3. sync (§7.2): the debug dict of round s−1 against our θ after update s−1
  own_probe = fast.sync_probe(params, layout)
  if cfg.sync_estimate == "iqm":
    x_N = templar.steps_behind_iqm(own_probe, inputs.probes, lr_t)
  else:
    x_N = fast.steps_behind(own_probe, inputs.probes, lr_t)
  sync_N = fast.sync_score(x_N, inputs.probe_present, cfg)
  desync = scope & fast.desynced(x_N, inputs.probe_present, cfg)
  sc = scores.slash_scores(sc, cfg.slash_desync, desync, cfg)

  # 4. whom to evaluate (§8); timed-out copiers are not candidates
  eligible = candidate & (window >= sc.timeout_until)
  selected, sel_metrics = select.select_for_evaluation(k_select, eligible, rating.ordinal(rt, cfg.rating.z),
                                                       sc.waiting, cfg)
  sc = sc._replace(waiting=select.update_waiting(sc.waiting, candidate, selected))

  # 5. LossScore (§9) and the indicator (§10)
  missing_eval = selected & ~tl.on_time
  malformed_eval = selected & tl.on_time & ~fmt_ok
  if not tf:   # templar-final slashes after the match, on the fresh F (step 6b)
    sc = scores.slash_scores(sc, cfg.slash_missing, missing_eval, cfg)
    sc = scores.zero_positive(sc, malformed_eval)
  # the scheme's view of the gathered peers (SparseLoCo: their median value norms, §4)
  # (an empty gather, e.g. before anyone has a positive score under `gather_rule: scored`,
  # falls back to every usable upload: SparseLoCo's clip norm would otherwise be 0)
  gathered_ok = in_gather & usable
  context = scheme.eval_context(inputs.subs, jnp.where(jnp.any(gathered_ok), gathered_ok,
                                                       usable), layout)
  # fold_in, not a third split: the paper path keeps its random numbers
  ev = _evaluate(params, inputs, selected & usable, lr_t * cfg.eval_lr_factor, context,
                 jax.random.fold_in(key, 0xF011), cfg=cfg, layout=layout,
                 model_cfg=model_cfg, mesh=mesh)
  finite = (jnp.isfinite(ev["r_own"]) & jnp.isfinite(ev["score"]) & jnp.isfinite(ev["r_rand"])
            & jnp.isfinite(ev["r_foil"]))
  scored = selected & usable & finite
  # issue 12: a non-finite LossScore is the peer's doing (its update broke the model): the
  # malformed penalty, never a silent skip
  nonfinite_eval = selected & usable & ~finite
  # the indicator's comparison: the random pages, or the better of them and the foil
  other = jnp.maximum(ev["r_rand"], ev["r_foil"]) if cfg.indicator_foils else ev["r_rand"]
  sc = scores.record_evaluation(sc, window, scored, jnp.where(finite, ev["r_own"], 0.0),
                                jnp.where(finite, ev["r_rand"], 0.0), sync_N, cfg,
                                r_other=jnp.where(finite, other, 0.0))
  if cfg.evidence_alpha > 0:
    sc = scores.record_evidence(sc, scored, sc.indicator, cfg.evidence_window)
  if not tf:
    sc = scores.zero_positive(sc, nonfinite_eval)
  sc = sc._replace(ever_evaluated=sc.ever_evaluated | missing_eval | malformed_eval
                   | nonfinite_eval)

  # 6. rating: one match ranked by the score (§11), F for the participants (§11.4)
  players, match_score = scores.match_players(sc, scored, ev["score"], cfg.carry_unmatched_scores)
  carried = players & ~scored
  failed = selected & ~scored   # missing, late, malformed or non-finite
  if tf:   # they play at -99: last place (schemes.md §5)
    players, match_score = templar.match_with_missing(players, match_score, failed,
                                                      cfg.missing_score)
    carried = carried & ~failed
  rt, rate_metrics = rating.rate(rt, players, match_score, cfg.rating)
  in_match = players & rate_metrics["applied"]
  sc = scores.settle_pending(sc, players & ~failed if tf else players, match_score,
                             rate_metrics["applied"], cfg.carry_unmatched_scores)
  stat = _statistic(rt, cfg)
  if tf:
    ts = ts._replace(evaluated_windows=ts.evaluated_windows + scored.astype(jnp.int32))
    bma_eff = templar.bma_effective(sc.bma, ts.evaluated_windows, cfg.bma_threshold,
                                    cfg.bma_warmup_windows)
    new_final = templar.final_score(stat.astype(jnp.float32), bma_eff, sc.sync, cfg.score_floor)
    sc = sc._replace(final=jnp.where(in_match, new_final, sc.final))
  else:
    sc = scores.update_final(sc, stat, in_match)
  evidence = jnp.ones((n,), bool)
  if cfg.evidence_alpha > 0:   # issue 12: paid only once the test says "own pages"
    evidence = scores.has_evidence(sc, cfg.evidence_alpha, cfg.evidence_window,
                                   _null_rate(cfg, n))
    sc = scores.gate_final(sc, evidence)

  # 6b. templar-final penalties on this round's F (schemes.md §5)
  if tf:
    expected = scope | selected   # whoever should have uploaded a usable gradient
    missing = expected & ~tl.on_time
    invalid = (expected & tl.on_time & ~fmt_ok) | (selected & usable & ~finite)
    ts, miss_factor, reset_missing = templar.missing_step(ts, expected, missing, cfg)
    # §7.3 post-paper: a gather that mostly failed zeroes its skipped peers
    miss_factor = jnp.where(in_gather & (gather_success < cfg.gather_slash_threshold), 0.0,
                            miss_factor)
    sc = scores.slash_scores(sc, miss_factor, missing, cfg)
    sc = scores.zero_positive(sc, invalid)
    neg_skip = templar.skip_negative_penalty(ev["score"], scored, cfg.negative_skip_rank)
    ts, neg_slash = templar.negative_step(ts, scored, ev["score"], neg_skip, cfg)
    sc = scores.slash_scores(sc, cfg.negative_slash, neg_slash, cfg, scale_bma=False)
    sc = scores.reset_uids(sc, reset_missing, cfg.bma_init)
    sc = sc._replace(timeout_until=templar.set_timeout(sc.timeout_until, reset_missing, window,
                                                       cfg.missing_timeout_windows))
    rt = rating.reset(rt, reset_missing, cfg.rating)

  # 7. index-overlap copy detection (post-paper, off by default)
  copy_level = jnp.zeros((n,), jnp.int32)
  max_overlap = jnp.zeros((n,), jnp.float32)
  reset_copy = jnp.zeros((n,), bool)
  copy_partner = jnp.full((n,), -1, jnp.int32)
  copy_unresolved = jnp.zeros((n,), bool)
  if cfg.overlap_detection:
    compared = usable & in_gather if cfg.overlap_scope == "gathered" else usable
    if cfg.overlap_statistic == "values":   # sketched value cosines (issue 12)
      sk, codes = copies.sketches(inputs.subs, scheme, layout,
                                  jax.random.fold_in(key, 0xC0B1), cfg.copy_sample_chunks,
                                  cfg.copy_sketch_buckets)
      stat, nonzero = copies.cosines(sk)
      identical = copies.identical_shares(codes)
      compared = compared & nonzero   # a zero upload has no direction to copy
    else:
      chunk_lens = {t.name: t.chunk_len for t in layout.tensors}
      idx_N = jax.vmap(lambda s: scheme.indices(s, layout))(inputs.subs)
      stat = overlap.index_overlap(idx_N, chunk_lens, cfg.overlap_size_weight)
      identical = jnp.zeros_like(stat)
    level, copy_partner, copy_unresolved, max_overlap = _copy_verdict(
        stat, identical, compared, inputs.offset_s, evidence, cfg)
    if cfg.overlap_warmup_windows > 0:   # "skipped in the first 20 steps"
      level = jnp.where(window >= cfg.overlap_warmup_windows, level, 0)
    sc, reset_copy = overlap.apply_copy_verdict(sc, level, window, cfg)
    rt = rating.reset(rt, reset_copy, cfg.rating)
    copy_level = level

  # 8. weights (§12; templar-final: burn + top/reserve ramps)
  if tf:
    w, w_info = templar.weights(sc.final, sc.ever_evaluated, cfg)
    ts = templar.reset(ts, reset_inactive | reset_missing | reset_copy)
  else:
    w = scores.weights(sc.final, cfg.power, cfg.weight_min_sum, mask=sc.ever_evaluated)
  new_state = ValidatorState(sc, rt, gather_state, last_upload, w, window, ts)
  report = {
      "uid": jnp.arange(n, dtype=jnp.int32), "present": inputs.present,
      "on_time": tl.on_time, "too_early": tl.too_early, "too_late": tl.too_late,
      "format_ok": fmt_ok, **{f"fmt_{k}": v for k, v in fmt_flags.items() if k != "ok"},
      "active": active, "candidate": candidate, "in_gather": in_gather,
      "gather_valid": in_gather & usable, "evaluated": selected, "scored": scored,
      "in_match": in_match, "carried": carried, "own_before": ev["own_before"],
      "own_after": ev["own_after"],
      "rand_before": ev["rand_before"], "rand_after": ev["rand_after"],
      "r_own": ev["r_own"], "r_rand": ev["r_rand"], "indicator": sc.indicator,
      "bma": sc.bma, "steps_behind": x_N, "sync": sync_N, "mu": rt.mu, "sigma": rt.sigma,
      "ordinal": rating.ordinal(rt, cfg.rating.z), "final_before": final_before,
      "final": sc.final, "weight": w,
      "slash_inactive_reset": reset_inactive, "slash_gather_skipped": gather_skipped,
      "slash_desync": desync, "slash_eval_missing": missing_eval,
      "slash_malformed": malformed_eval, "slash_nonfinite": nonfinite_eval,
      "copy_level": copy_level, "max_overlap": max_overlap, "copy_partner": copy_partner,
      "copy_unresolved": copy_unresolved, "timeout": window < sc.timeout_until,
      "timeout_until": sc.timeout_until, "r_foil": ev["r_foil"], "evidence": evidence,
      "evidence_wins": scores.evidence_wins(sc), "evidence_n": sc.evidence_n,
      "eval_bin": jnp.broadcast_to(sel_metrics["bin"], (n,)),
      "gather_success": jnp.broadcast_to(gather_success, (n,)),
  }
  if tf:   # the templar-final terms (schemes.md §5); the slashes replace the paper ones
    report.update({
        "slash_gather_skipped": scope & missing, "slash_eval_missing": selected & missing,
        "slash_malformed": invalid, "match_score": jnp.where(in_match, match_score, 0.0),
        "bma_eff": bma_eff, "missing_factor": miss_factor,
        "missing_streak": ts.missing_streak,
        "missing_count": jnp.sum(ts.missing_hist, axis=1, dtype=jnp.int32),
        "slash_missing_reset": reset_missing, "slash_negative": neg_slash,
        "negative": scored & (ev["score"] < 0), "neg_streak": ts.negative_streak,
        "neg_count": jnp.sum(ts.negative_hist, axis=1, dtype=jnp.int32),
        "neg_skip": jnp.broadcast_to(neg_skip, (n,)), "excluded": ts.excluded,
        "evaluated_windows": ts.evaluated_windows, "weight_group": w_info["group"],
        "burn": jnp.broadcast_to(w_info["burn"], (n,)),
    })
  return new_state, report
