"""templar's final validator: the `templar-final` preset (schemes.md §5).

Each rule as a pure function on hand-made arrays with values computed by hand from the
spec, the preset's config expansion, and one tiny-model validator round under the shipped
`configs/sim-tiny-templar.yaml` (compiled once, run at window 0 and window 20).
"""
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from jaxnet.config import ConfigError, config_from_dict, load_config, to_yaml
from jaxnet.gauntlet import fast, rating, scores, templar
from jaxnet.gauntlet.config import PRESETS, GauntletConfig, GauntletError

CONFIGS = Path(__file__).parent.parent / "configs"
TF = GauntletConfig(preset="templar-final")


# ------------------------------------------------------------------ the preset

def test_preset_fills_unset_fields_and_explicit_values_win():
  paper = GauntletConfig()
  assert paper.preset == "paper" and paper.uids_per_window == 0 and paper.sync_saturation == 5.0
  assert (TF.uids_per_window, TF.num_evaluation_bins, TF.gather_size) == (20, 5, 20)
  assert (TF.sync_saturation, TF.sync_estimate, TF.reset_inactivity_windows) == (3.0, "iqm", 3)
  assert (TF.overlap_detection, TF.overlap_threshold, TF.overlap_scope,
          TF.overlap_warmup_windows) == (True, 0.4, "gathered", 20)
  # the templar-only constants (schemes.md §5) are the field defaults
  assert (TF.missing_score, TF.bma_threshold, TF.bma_warmup_windows) == (-99.0, 0.10, 10)
  assert (TF.burn_share, TF.weight_top_count, TF.weight_top_share, TF.weight_top_ratio,
          TF.weight_reserve_count, TF.weight_reserve_decay) == (0.5, 20, 0.75, 2.0, 10, 0.5)
  assert (TF.missing_history, TF.missing_reset_fraction, TF.missing_timeout_windows) == (8, 0.5, 20)
  assert (TF.negative_history, TF.negative_fraction, TF.negative_slash, TF.negative_streak,
          TF.negative_skip_rank) == (8, 0.5, 0.25, 3, 5)
  assert TF.missing_escalation == (0.75, 0.5, 0.0)
  # an explicit value wins, even one equal to the paper default
  c = GauntletConfig(preset="templar-final", sync_saturation=5.0, gather_size=15)
  assert (c.sync_saturation, c.gather_size, c.uids_per_window) == (5.0, 15, 20)
  assert templar.preset_overrides("templar-final") == PRESETS["templar-final"]
  assert templar.preset_overrides("paper") == {}
  with pytest.raises(GauntletError, match="unknown preset"):
    templar.preset_overrides("nope")
  hash(TF)   # still a static pytree


def test_shipped_templar_config_loads_and_round_trips():
  cfg = load_config(CONFIGS / "sim-tiny-templar.yaml")
  g = cfg.gauntlet
  assert g.preset == "templar-final"
  # set in the file: kept; not set: the preset's
  assert (g.gather_size, g.minimum_peers, g.overlap_threshold) == (8, 3, 0.97)
  assert (g.uids_per_window, g.sync_saturation, g.overlap_scope) == (20, 3.0, "gathered")
  assert config_from_dict(yaml.safe_load(to_yaml(cfg))) == cfg
  # the same preset from the command line over the paper sim-tiny
  over = load_config(CONFIGS / "sim-tiny.yaml", ["--gauntlet.preset", "templar-final"])
  assert over.gauntlet.uids_per_window == 20 and over.gauntlet.gather_size == 8
  with pytest.raises(ConfigError, match="gauntlet.preset"):
    load_config(CONFIGS / "sim-tiny.yaml", ["--gauntlet.preset", "templar"])
  # replace keeps every current value (it passes them all)
  assert dataclasses.replace(g, sample_rate=0.5).uids_per_window == 20


# ------------------------------------------------------------------ rating: -99 for missing

def test_missing_and_invalid_gradients_play_the_match_last():
  scored = jnp.array([True, True, True, False, False, False])
  failed = jnp.array([False, False, False, True, False, True])
  score = jnp.array([0.3, -0.2, 0.1, 0.0, 0.0, 0.0], jnp.float32)
  players, s = templar.match_with_missing(scored, score, failed, -99.0)
  assert players.tolist() == [True, True, True, True, False, True]
  np.testing.assert_array_equal(s, np.float32([0.3, -0.2, 0.1, -99.0, 0.0, -99.0]))
  _, m = rating.rate(rating.init_state(6), players, s)
  # the two failed uids take the last places (tie by ascending uid)
  assert np.asarray(m["rank"]).tolist() == [0, 2, 1, 3, -1, 4]


# ------------------------------------------------------------------ BMA' and F

def test_bma_threshold_applies_after_the_warmup_windows():
  bma = jnp.array([-0.2, 0.05, 0.05, 0.5, 0.0999], jnp.float32)
  windows = jnp.array([20, 9, 10, 10, 30], jnp.int32)
  out = templar.bma_effective(bma, windows, 0.10, 10)
  np.testing.assert_array_equal(out, np.float32([0.0, 0.05, 0.0, 0.5, 0.0]))


def test_final_score_is_the_product_and_zeroes_below_the_floor():
  f = templar.final_score(jnp.array([2.0, 1e-3, -1.0, 4.0]), jnp.array([0.5, 0.05, 0.5, 0.0]),
                          jnp.array([1.0, 1.0, 1.0, 1.0]), 1e-4)
  # 1e-3 x 0.05 = 5e-5 < 1e-4 -> 0; a negative product -> 0
  np.testing.assert_allclose(f, [1.0, 0.0, 0.0, 0.0])


# ------------------------------------------------------------------ sync: IQM, x/3

def test_sync_from_the_interquartile_mean_of_the_probe_estimates():
  est = np.array([0, 1, 2, 3, 4, 5, 6, 100], np.float32)   # one far outlier
  # K = 8: drop the 2 smallest and the 2 largest -> mean(2, 3, 4, 5) = 3.5
  assert float(templar.interquartile_mean(jnp.asarray(est))) == 3.5
  # K = 3 (< 4): nothing dropped
  assert float(templar.interquartile_mean(jnp.array([1.0, 2.0, 6.0]))) == 3.0
  lr = 2e-3
  own = jnp.zeros(8)
  probes = jnp.stack([jnp.asarray(est[[1, 0, 2, 3, 4, 5, 6, 7]]) * lr,      # order-free
                      jnp.full((8,), 1.5 * lr), jnp.full((8,), 4.0 * lr),
                      jnp.asarray(est).at[3].set(jnp.nan) * lr])
  x = templar.steps_behind_iqm(own, probes, lr)
  np.testing.assert_allclose(x[:3], [3.5, 1.5, 4.0], rtol=1e-5)
  assert x[3] == np.inf   # a NaN is never trimmed away
  # the paper's mean would have been 15.125 for the first row
  np.testing.assert_allclose(fast.steps_behind(own, probes[:1], lr), [15.125], rtol=1e-5)
  s = fast.sync_score(x, jnp.ones(4, bool), TF)
  # (1 - min(x, 3)/3)^2.5: 1.5 -> 0.5^2.5; 3.5 and 4 saturate at 3
  np.testing.assert_allclose(s, [0.0, 0.5 ** 2.5, 0.0, 0.0], atol=1e-6)


# ------------------------------------------------------------------ weights

def _weights(final, mask=None, **over):
  cfg = dataclasses.replace(TF, **over)
  final = jnp.asarray(final, jnp.float32)
  mask = jnp.ones(final.shape, bool) if mask is None else mask
  w, info = jax.jit(templar.weights, static_argnums=2)(final, mask, cfg)
  return np.asarray(w, np.float64), info


def test_weights_burn_top_ramp_and_capped_reserve():
  # 32 uids: uid 31 burns; uids 1..30 positive with distinct F (uid 1 best); uid 0 at F = 0
  final = np.zeros(32)
  final[1:31] = np.arange(30, 0, -1)
  w, info = _weights(final, burn_uid=31)
  assert w[31] == 0.5 and float(info["burn"]) == 0.5            # burn exactly 50 %
  np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)
  top, res = w[1:21], w[21:31]
  assert np.asarray(info["group"])[1:21].tolist() == [1] * 20
  assert np.asarray(info["group"])[21:31].tolist() == [2] * 10 and info["group"][0] == 0
  np.testing.assert_allclose(top[0], 2 * top[19], rtol=1e-6)    # w_1 = 2 w_20
  np.testing.assert_allclose(np.diff(top), np.diff(top)[0], rtol=1e-4)   # linear
  np.testing.assert_allclose(res[1:] / res[:-1], 0.5, rtol=1e-6)          # geometric 0.5
  # the reserve's first weight is capped to 0.5 x the smallest top weight
  np.testing.assert_allclose(res[0], 0.5 * top[19], rtol=1e-6)
  # by hand: top ramp 2 - i/19 sums to 30, reserve 0.5^i sums to 1023/512, so
  # w_20 = 0.5 / (30 + 0.5 * 1023/512)
  w20 = 0.5 / (30 + 0.5 * 1023 / 512)
  np.testing.assert_allclose(top[19], w20, rtol=1e-6)
  assert w[0] == 0.0


def test_weights_group_shares_when_the_cap_does_not_bind():
  # top 2 and reserve 10: top ramp (2, 1)/3 of 0.375 = 0.25, 0.125; reserve's first
  # 0.125 / (1023/512) = 0.0626 < 0.125: no cap, so the shares are exactly 75 % / 25 %
  final = np.arange(12, 0, -1).astype(np.float64)
  w, _ = _weights(final, weight_top_count=2)
  np.testing.assert_allclose(w[:2], [0.25, 0.125], rtol=1e-6)
  np.testing.assert_allclose(w[2:].sum(), 0.125, rtol=1e-6)
  np.testing.assert_allclose(w[2], 0.125 * 512 / 1023, rtol=1e-6)
  # burn_uid -1: nobody is paid the burn, the weights sum to 1 - 0.5
  np.testing.assert_allclose(w.sum(), 0.5, rtol=1e-6)


def test_weights_ties_by_uid_mask_and_fallbacks():
  w, info = _weights([1.0, 3.0, 3.0, 0.0, -1.0, 2.0])
  # order 1, 2 (tie: lower uid first), 5, 0 over a 4-step ramp 2, 5/3, 4/3, 1 (sum 6)
  np.testing.assert_allclose(w, np.array([1, 2, 5 / 3, 0, 0, 4 / 3]) / 6 * 0.5, rtol=1e-6)
  # only uids in the mask rank (the validator passes ever_evaluated)
  w, _ = _weights([1.0, 3.0], mask=jnp.array([True, False]))
  np.testing.assert_allclose(w, [0.5, 0.0])
  # nobody positive: all 0 without a burn uid, everything to the burn uid with one
  w, info = _weights([0.0, -1.0, 0.0])
  assert w.tolist() == [0.0, 0.0, 0.0] and float(info["burn"]) == 1.0
  w, _ = _weights([0.0, -1.0, 0.0], burn_uid=2)
  assert w.tolist() == [0.0, 0.0, 1.0]
  with pytest.raises(GauntletError, match="burn_uid"):
    templar.weights(jnp.zeros(3), jnp.ones(3, bool), dataclasses.replace(TF, burn_uid=3))


# ------------------------------------------------------------------ missing gradients

def test_missing_slash_escalates_with_consecutive_misses():
  st = templar.init_state(2, TF)
  obs = jnp.array([True, False])   # uid 1 never expected: untouched
  factors = []
  for miss in (True, True, True, True, False, True):
    st, f, reset = templar.missing_step(st, obs, jnp.array([miss, True]), TF)
    factors.append(float(f[0]))
    assert float(f[1]) == 1.0 and not bool(reset[1])
  # 0.75, 0.5, 0, then 0 again; an upload resets the streak
  assert factors == [0.75, 0.5, 0.0, 0.0, 1.0, 0.75]
  assert int(st.missing_streak[0]) == 1 and int(st.missing_streak[1]) == 0


def test_missing_half_of_the_last_8_resets_with_a_20_window_timeout():
  st = templar.init_state(1, TF)
  one = jnp.ones(1, bool)
  # a new uid's first miss is 1 of 8: no reset
  _, _, r = templar.missing_step(st, one, one, TF)
  assert not bool(r[0])
  # windows (oldest first): miss, ok, miss, ok, ok, ok, miss -> 3 of 8, no reset
  for miss in (1, 0, 1, 0, 0, 0, 1):
    st, _, r = templar.missing_step(st, one, jnp.array([bool(miss)]), TF)
    assert not bool(r[0])
  # an unobserved window (not gathered, not evaluated) adds nothing
  st, _, r = templar.missing_step(st, ~one, one, TF)
  assert int(st.missing_hist.sum()) == 3
  # the 4th miss in the last 8: 50 % -> reset and timeout
  st, f, r = templar.missing_step(st, one, one, TF)
  assert bool(r[0]) and int(st.missing_hist.sum()) == 4
  until = templar.set_timeout(jnp.array([-1, 50]), jnp.array([True, True]), 7, 20)
  assert until.tolist() == [27, 50]   # a longer running timeout is kept
  # the full reset deletes the history
  st = templar.reset(st, one)
  assert int(st.missing_hist.sum()) == 0 and int(st.missing_streak[0]) == 0
  # the first of 9 windows leaves the history: 5 misses long ago, then 8 uploads
  st = templar.init_state(1, TF)
  for miss in (1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0):
    st, _, _ = templar.missing_step(st, one, jnp.array([bool(miss)]), TF)
  assert int(st.missing_hist.sum()) == 0


# ------------------------------------------------------------------ negative evaluations

@pytest.mark.parametrize("window_scores,skip", [
  ([0.5, 0.3, 0.1, 0.05, -0.1, -0.2, -0.3], True),    # 5th ranked -0.1
  ([0.5, 0.3, 0.2, 0.1, 0.05, -0.1, -0.2], False),    # 5th ranked 0.05
  ([0.3, 0.1, -0.2], True),                           # fewer than 5: the last
  ([0.3, 0.2, 0.1], False),
  ([0.4, 0.3, 0.2, 0.1, -0.1], True),                 # exactly 5
  ([], False),                                        # nobody scored
])
def test_skip_when_the_5th_ranked_peer_is_negative(window_scores, skip):
  # templar's cases (test_should_skip_negative_penalty_*), shuffled into a pool of 10
  # whose unscored uids hold garbage scores that must not count
  n = 10
  rng = np.random.default_rng(len(window_scores))
  uids = rng.permutation(n)[:len(window_scores)]
  score = np.full(n, -5.0, np.float32)
  score[uids] = window_scores
  scored = np.zeros(n, bool)
  scored[uids] = True
  out = jax.jit(templar.skip_negative_penalty, static_argnums=2)(
      jnp.asarray(score), jnp.asarray(scored), 5)
  assert bool(out) is skip


def _neg_run(signs, skips=None, state=None):
  """Feeds uid 0 one evaluation per entry of `signs` (+1, -1, or 0 = not evaluated)."""
  st = state or templar.init_state(1, TF)
  slashes = []
  for i, s in enumerate(signs):
    skip = jnp.asarray(bool(skips[i]) if skips else False)
    st, slash = templar.negative_step(st, jnp.array([s != 0]), jnp.array([0.1 * s], jnp.float32),
                                      skip, TF)
    slashes.append(bool(slash[0]))
  return st, slashes


def test_more_than_half_negative_of_the_last_8_slashes_unless_skipped():
  # templar's history [T, F, T, T, F, T, F, T] (True = negative), then one more negative:
  # the last 8 hold 5 negatives (62.5 %) -> F x 0.25
  hist = [-1, 1, -1, -1, 1, -1, 1, -1]
  st, slashes = _neg_run(hist + [-1])
  assert slashes[-1] and int(st.negative_hist.sum()) == 5
  # 4 of 8 (50 %, not more): no slash
  _, slashes = _neg_run([-1, 1, -1, 1, -1, 1, -1, 1])
  assert not any(slashes)
  # the same 5-of-8 window with a negative 5th-ranked peer: skipped, but recorded
  st, slashes = _neg_run(hist + [-1], skips=[0] * 8 + [1])
  assert not slashes[-1] and int(st.negative_hist.sum()) == 5
  # F x 0.25 on positive F only, BMA untouched (scores.slash_scores with scale_bma False)
  sc = scores.init(1)._replace(final=jnp.array([1.0]), bma=jnp.array([0.5]))
  sc = scores.slash_scores(sc, TF.negative_slash, jnp.array([True]), TF, scale_bma=False)
  assert float(sc.final[0]) == 0.25 and float(sc.bma[0]) == 0.5


def test_three_negatives_in_a_row_exclude_from_gather_until_a_positive():
  st, _ = _neg_run([-1, -1])
  assert not bool(st.excluded[0])
  st, _ = _neg_run([-1], state=st)
  assert bool(st.excluded[0]) and int(st.negative_streak[0]) == 3
  # windows without an evaluation, or with more negatives, keep the exclusion
  st, _ = _neg_run([0, -1, 0], state=st)
  assert bool(st.excluded[0]) and int(st.negative_streak[0]) == 4
  # one positive evaluation lifts it and resets the streak
  st, _ = _neg_run([1], state=st)
  assert not bool(st.excluded[0]) and int(st.negative_streak[0]) == 0
  # the third negative in a window whose 5th-ranked peer is negative: not excluded
  st, _ = _neg_run([-1, -1, -1], skips=[0, 0, 1])
  assert not bool(st.excluded[0]) and int(st.negative_streak[0]) == 3


# ------------------------------------------------------------------ one validator round

N_ROUND = 9   # 0-3 honest, 4 missing, 5 NaN values, 6 missing (3 earlier misses),
              # 7 copies uid 0 (gathered), 8 copies uid 1 (not gathered)


@pytest.fixture(scope="module")
def templar_round():
  from jaxnet import data as jdata, peer
  from jaxnet import schemes
  from jaxnet.schemes import demo
  from jaxnet import model as jmodel
  from jaxnet.gauntlet import collect
  from jaxnet.gauntlet.validator import init_state
  from jaxnet.sim import adversaries
  from jaxnet.submission import to_bytes
  n = N_ROUND
  cfg = load_config(CONFIGS / "sim-tiny-templar.yaml", ["--gauntlet.gather_size", "7"])
  corpus = jdata.load_corpus(cfg.data)
  params = jmodel.init_params(cfg.model, jax.random.key(0))
  layout = demo.make_layout(params, cfg.demo, n_pages=cfg.data.pages_per_window)
  subs, _, _ = jax.jit(lambda p, s, b: peer.peers_round(p, s, b, jnp.float32(2e-3), layout, cfg))(
      params, peer.init_states(params, n, cfg), corpus.peer_batches(np.arange(n), 0))
  subs = jax.tree.map(np.asarray, subs)
  probe = np.asarray(fast.sync_probe(params, layout))
  offsets = np.full(n, 2.0, np.float32)
  offsets[7] = offsets[8] = 4.0   # the copiers upload after their victims
  validator = collect.Validator(cfg, layout, n)

  def uploads(window):
    own = [jax.tree.map(lambda x: x[u], subs)._replace(uid=np.int32(u), window=np.int32(window))
           for u in range(n)]
    out = [to_bytes(s, layout) for s in own]
    out[4] = out[6] = None
    out[5] = adversaries.malformed_bytes(own[5], layout, "nan", schemes.get(cfg))
    out[7] = to_bytes(own[0]._replace(uid=np.int32(7)), layout)
    out[8] = to_bytes(own[1]._replace(uid=np.int32(8)), layout)
    return out

  state = init_state(n, cfg.gauntlet)
  sc = state.scores._replace(final=jnp.full((n,), 2.0), bma=jnp.full((n,), 0.5),
                             sync=jnp.ones((n,)), ever_evaluated=jnp.ones((n,), bool),
                             waiting=jnp.ones((n,), jnp.int32))
  # strong earlier ratings (ordinal 34), so one lost match leaves F > 0 to be slashed
  rt = state.rating._replace(mu=jnp.full((n,), 40.0), sigma=jnp.full((n,), 2.0),
                             rated=jnp.ones((n,), bool))
  ts = state.templar._replace(
      # uid 2 is excluded (3 negatives in a row earlier); uid 6 missed 3 of its last windows
      excluded=jnp.arange(n) == 2, negative_streak=jnp.where(jnp.arange(n) == 2, 3, 0),
      missing_hist=state.templar.missing_hist.at[6, :3].set(True))
  # every uid but 8 has weight: the gather list (7) is 0, 1, 3, 4, 5, 6, 7 (2 is excluded)
  state = state._replace(scores=sc, rating=rt, templar=ts,
                         weights=jnp.array([0.2, 0.2, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.0]))

  def run(window):
    own_b, rand_b = collect.round_batches(corpus, n, window, cfg.gauntlet.sample_rate, 0)
    data = {"own": own_b, "rand": rand_b, "probes": np.tile(probe, (n, 1)),
            "probe_present": np.ones(n, bool), "stake": np.zeros(n, np.float32)}
    # every uid uploaded in the previous window: active (a candidate) in this one
    st = state._replace(last_upload=jnp.full((n,), window - 1, jnp.int32))
    return collect.validator_round(st, uploads(window), offsets, params, data,
                                   jax.random.key(0), validator=validator, window=window,
                                   lr_t=2e-3)
  return run


def test_templar_round_end_to_end(templar_round):
  new, r = templar_round(0)
  for key in ("bma_eff", "match_score", "missing_factor", "missing_streak", "missing_count",
              "neg_streak", "neg_count", "neg_skip", "excluded", "timeout", "burn",
              "weight_group", "slash_missing_reset", "slash_negative"):
    assert key in r, key
  assert r["in_gather"].tolist() == [True, True, False, True, True, True, True, True, False]
  assert r["evaluated"].all()   # <= 20 candidates: every one is evaluated
  # missing (4, 6) and invalid (5) play at -99 and lose the match
  assert r["in_match"].all() and (r["match_score"][[4, 5, 6]] == -99.0).all()
  assert (r["mu"][[4, 5, 6]] < 40.0).all()
  # F = ordinal x BMA' x sync for the scored uids (BMA' = BMA before warm-up; x = 0 -> 1)
  ok = np.array(r["scored"]) & ~np.array(r["slash_negative"])
  np.testing.assert_allclose(r["sync"][ok], 1.0)
  np.testing.assert_allclose(r["final"][ok], (r["ordinal"] * r["bma_eff"] * r["sync"])[ok],
                             rtol=1e-6)
  # uid 4, first miss: the fresh F (ordinal x 0.5 x 1) times 0.75, BMA x 0.75 too
  assert r["missing_streak"][4] == 1 and r["missing_factor"][4] == 0.75
  np.testing.assert_allclose(r["final"][4], r["ordinal"][4] * 0.5 * 0.75, rtol=1e-6)
  np.testing.assert_allclose(r["bma"][4], 0.375, rtol=1e-6)
  # uid 5, invalid: F <- 0
  assert r["slash_malformed"][5] and r["final"][5] == 0.0
  # uid 6: its 4th miss of the last 8 -> full reset and a 20-window timeout
  assert r["slash_missing_reset"][6] and r["final"][6] == 0.0 and r["ordinal"][6] == 0.0
  assert r["timeout"][6] and r["timeout_until"][6] == 20
  assert int(new.templar.missing_hist[6].sum()) == 0
  # uid 2 stays excluded unless its evaluation was positive
  assert r["excluded"][2] == r["negative"][2]
  # copy detection is skipped in the first 20 windows
  assert not r["copy_level"].any()
  # weights: burn 50 % withheld (burn_uid -1), so they sum to 0.5
  assert (r["burn"] == 0.5).all()
  np.testing.assert_allclose(r["weight"].sum(), 0.5, rtol=1e-5)
  assert (r["weight"][r["final"] <= 0] == 0).all()


def test_templar_round_copy_detection_after_warmup_over_gathered_peers(templar_round):
  _, r = templar_round(20)
  # uid 7 copied the gathered uid 0 (overlap 1 >= 0.99: "mega"); uid 8 copied uid 1 but is
  # not gathered, so it is not compared
  assert r["copy_level"][7] == 3 and r["copy_level"][8] == 0
  assert r["copy_level"][[0, 1, 2, 3, 4, 5, 6]].tolist() == [0] * 7
  assert r["final"][7] == 0.0
  assert r["timeout_until"][6] == 40
