"""Score state, slashes, BMA, final score, weights and inactivity (gauntlet.md §7, §10-§14)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet.configbase import ConfigError
from jaxnet.gauntlet import scores
from jaxnet.gauntlet.config import GauntletConfig, GauntletError

CFG = GauntletConfig()


# ------------------------------------------------------------------ config

def test_config_defaults_are_the_reference_values():
  c = CFG
  assert (c.slash_inactive, c.slash_missing, c.slash_desync) == (0.75, 0.75, 0.75)
  assert (c.reset_inactivity_windows, c.recent_windows) == (25, 5)
  assert (c.bma_alpha, c.bma_init) == (0.05, 0.0)
  assert (c.power, c.weight_min_sum, c.score_floor) == (2.2, 1e-8, 1e-4)
  assert (c.gather_size, c.minimum_peers, c.peer_replacement_frequency,
          c.peer_list_window_margin) == (15, 5, 5, 2)
  assert (c.overlap_detection, c.overlap_threshold, c.overlap_max_threshold,
          c.overlap_mega_threshold) == (False, 0.4, 0.5, 0.6)
  assert (c.rating.beta, c.rating.tau, c.rating.z) == (7.0, 0.1, 3.0)
  assert c.uids_per_window == 0 and c.num_evaluation_bins == 10
  hash(c)   # static pytree: hashable, so it can be a jit argument
  assert jax.tree.leaves(c) == []


@pytest.mark.parametrize("field,value,match", [
  ("power", 0.0, "gauntlet.power"),
  ("slash_missing", 1.5, "gauntlet.slash_missing"),
  ("bma_alpha", 0.0, "gauntlet.bma_alpha"),
  ("minimum_peers", 16, "gauntlet.minimum_peers"),
  ("overlap_max_threshold", 0.3, "gauntlet.overlap_threshold"),
  ("uids_per_window", -1, "gauntlet.uids_per_window"),
])
def test_config_rejects_bad_values_naming_the_field(field, value, match):
  with pytest.raises(ConfigError, match=match):
    GauntletConfig(**{field: value})


# ------------------------------------------------------------------ slashes

def test_slash_positive_leaves_negative_and_zero_scores_alone():
  x = jnp.array([2.0, -2.0, 0.0, 1.0], jnp.float32)
  mask = jnp.array([True, True, True, False])
  out = scores.slash_positive(x, 0.75, mask)
  # Issue #45: 0.75 x (-2) = -1.5 would *raise* a negative score.
  np.testing.assert_array_equal(out, [1.5, -2.0, 0.0, 1.0])


def test_slash_scores_scales_bma_only_with_positive_final_and_applies_floor():
  s = scores.init(5)._replace(
    final=jnp.array([1.0, 1.2e-4, -0.5, 0.8, 2.0], jnp.float32),
    bma=jnp.array([0.6, 0.5, 0.4, -0.2, 0.3], jnp.float32))
  mask = jnp.array([True, True, True, True, False])
  out = scores.slash_scores(s, 0.75, mask, CFG)
  # 1.2e-4 x 0.75 = 9e-5 < 1e-4 -> 0 (§18 row 10g); -0.5 keeps F and BMA (F <= 0);
  # F > 0 with BMA < 0 keeps BMA (a slash never raises a score); uid 4 is not in the mask.
  np.testing.assert_allclose(out.final, [0.75, 0.0, -0.5, 0.6, 2.0], rtol=1e-6)
  np.testing.assert_allclose(out.bma, [0.45, 0.375, 0.4, -0.2, 0.3], rtol=1e-6)
  no_bma = scores.slash_scores(s, 0.75, mask, CFG, scale_bma=False)
  np.testing.assert_array_equal(no_bma.bma, s.bma)


def test_floor_only_after_a_slash():
  x = jnp.array([5e-5, 5e-5, 2e-4], jnp.float32)
  out = scores.apply_score_floor(x, 1e-4, jnp.array([True, False, True]))
  np.testing.assert_array_equal(out, np.array([0.0, 5e-5, 2e-4], np.float32))


def test_zero_positive_keeps_negative():
  s = scores.init(3)._replace(final=jnp.array([0.3, -0.3, 0.3], jnp.float32))
  out = scores.zero_positive(s, jnp.array([True, True, False]))
  np.testing.assert_array_equal(out.final, np.array([0.0, -0.3, 0.3], np.float32))


# ------------------------------------------------------------------ indicator and BMA

def test_indicator_rules_and_only_evaluated_move():
  bma = jnp.array([0.2, 0.2, 0.2, 0.2, 0.2], jnp.float32)
  r_own = jnp.array([0.02, 0.01, 0.01, jnp.nan, 0.5], jnp.float32)
  r_rand = jnp.array([0.01, 0.01, 0.02, 0.01, 0.1], jnp.float32)
  ev = jnp.array([True, True, True, True, False])
  ind, new = scores.indicator_and_bma(bma, r_own, r_rand, ev, 0.05)
  # equal -> -1 (strict >), NaN -> -1, not evaluated -> 0 and BMA unchanged
  np.testing.assert_array_equal(ind, [1.0, -1.0, -1.0, -1.0, 0.0])
  np.testing.assert_allclose(new, [0.95 * 0.2 + 0.05, 0.95 * 0.2 - 0.05, 0.95 * 0.2 - 0.05,
                                   0.95 * 0.2 - 0.05, 0.2], rtol=1e-6)


def test_bma_ramp_matches_spec():
  """§10: an honest peer from BMA 0 has 1 - 0.95^n: 0.51 after 14, 0.80 after 31."""
  s = scores.init(2)
  ev = jnp.array([True, False])
  step = jax.jit(lambda s, w: scores.record_evaluation(
    s, w, ev, jnp.array([0.02, 0.0]), jnp.array([0.01, 0.0]), jnp.ones(2), CFG))
  for w in range(31):
    s = step(s, w)
    if w + 1 == 14:
      assert round(float(s.bma[0]), 2) == 0.51
      np.testing.assert_allclose(s.bma[0], 1 - 0.95 ** 14, rtol=1e-5)
  assert round(float(s.bma[0]), 2) == 0.80
  np.testing.assert_allclose(s.bma[0], 1 - 0.95 ** 31, rtol=1e-5)
  assert float(s.bma[1]) == 0.0 and not bool(s.ever_evaluated[1])
  assert int(s.last_eval_window[0]) == 30 and int(s.last_eval_window[1]) == -1


# ------------------------------------------------------------------ final score and weights

def test_final_score_formula():
  ordinal = jnp.array([2.7555, 2.7555, -1.7569, 2.0], jnp.float32)
  bma = jnp.array([0.5, -0.3, 0.5, 0.8], jnp.float32)
  sync = jnp.array([1.0, 1.0, 1.0, 0.572], jnp.float32)
  np.testing.assert_allclose(scores.final_score(ordinal, bma, sync),
                             [1.37775, 0.0, -0.87845, 2.0 * 0.8 * 0.572], rtol=1e-6)


def test_update_final_only_for_match():
  s = scores.init(3)._replace(final=jnp.array([9.0, 9.0, 9.0]), bma=jnp.array([0.5, 0.5, 0.5]),
                              sync=jnp.array([1.0, 0.5, 1.0]))
  out = scores.update_final(s, jnp.array([2.0, 2.0, 2.0]), jnp.array([True, True, False]))
  np.testing.assert_allclose(out.final, [1.0, 0.5, 9.0])


def test_weights_by_hand():
  f = jnp.array([2.0, 1.0, 0.0, -1.0], jnp.float32)
  w = scores.weights(f, 2.2, 1e-8)
  # 2^2.2 = 4.594793, 1^2.2 = 1: w = (4.594793, 1) / 5.594793
  np.testing.assert_allclose(w, [0.821262, 0.178738, 0.0, 0.0], atol=1e-6)
  assert math.isclose(2 ** 2.2 / (2 ** 2.2 + 1), 0.821262, abs_tol=1e-6)
  # mask (ever evaluated) drops uid 0; the rest renormalise
  np.testing.assert_allclose(scores.weights(f, 2.2, 1e-8, jnp.array([False, True, True, True])),
                             [0.0, 1.0, 0.0, 0.0])


def test_weights_zero_below_min_sum_and_never_nan():
  f = jnp.array([1e-4, 1e-4, -5.0], jnp.float32)   # 2 x (1e-4)^2.2 = 3.2e-9 < 1e-8
  np.testing.assert_array_equal(scores.weights(f, 2.2, 1e-8), [0.0, 0.0, 0.0])
  g = jax.grad(lambda x: scores.weights(x, 2.2, 1e-8)[0])(jnp.array([1.0, -1.0, 0.0]))
  assert np.all(np.isfinite(g))


# ------------------------------------------------------------------ inactivity

def _run_inactive(n_windows, start_final=1.0):
  """uid 0: candidate at window 0, inactive afterwards; uid 1 stays a candidate."""
  s = scores.init(3)._replace(final=jnp.array([start_final, 1.0, -2.0], jnp.float32),
                              bma=jnp.array([0.5, 0.5, 0.5], jnp.float32))
  step = jax.jit(scores.inactivity_step)
  both = jnp.array([True, True, True])
  s, _ = step(s, 0, both, both, CFG)
  gone = jnp.array([False, True, False])
  history = []
  for w in range(1, n_windows + 1):
    s, reset = step(s, w, gone, gone, CFG)
    history.append((w, float(s.final[0]), bool(reset[0]), float(s.final[2])))
  return s, history


def test_inactivity_decay_then_single_reset():
  s, hist = _run_inactive(30)
  # Reference: reset when window - inactive_since > 25; inactive since window 1, so windows
  # 1..26 slash (26 times) and window 27 resets.
  for w, f0, reset, f2 in hist:
    if w <= 26:
      np.testing.assert_allclose(f0, 0.75 ** w, rtol=1e-5)
      assert not reset
      assert f2 == -2.0   # a negative score is never decayed (uid 2 resets with uid 0)
  assert [w for w, _, r, _ in hist if r] == [27]
  assert float(s.final[0]) == 0.0 and float(s.bma[0]) == 0.0
  assert int(s.waiting[0]) == 0 and int(s.inactive_since[0]) == scores.NOT_TRACKED
  assert float(s.final[1]) == 1.0 and int(s.waiting[1]) == 1   # the active uid is untouched


def test_inactivity_stops_when_active_again_and_floor_applies():
  s, _ = _run_inactive(3)
  np.testing.assert_allclose(s.final[0], 0.75 ** 3, rtol=1e-6)
  back = jnp.array([True, True, True])
  s, reset = scores.inactivity_step(s, 4, back, back, CFG)
  np.testing.assert_allclose(s.final[0], 0.75 ** 3, rtol=1e-6)
  assert int(s.inactive_since[0]) == scores.NOT_TRACKED and int(s.waiting[0]) == 1
  # small positive F: one inactive window takes it under 1e-4 -> 0
  s, _ = _run_inactive(1, start_final=1.2e-4)
  assert float(s.final[0]) == 0.0


def test_reset_keeps_copy_timeout():
  s = scores.init(2)._replace(final=jnp.array([1.0, 1.0]), timeout_until=jnp.array([50, -1]),
                              waiting=jnp.array([3, 3], jnp.int32))
  out = scores.reset_uids(s, jnp.array([True, False]))
  assert float(out.final[0]) == 0.0 and int(out.timeout_until[0]) == 50
  assert int(out.waiting[0]) == 0 and float(out.final[1]) == 1.0


def test_bad_input_names_the_problem():
  s = scores.init(4)
  with pytest.raises(GauntletError, match="active has shape"):
    scores.inactivity_step(s, 0, jnp.ones(3, bool), jnp.ones(4, bool), CFG)
  with pytest.raises(GauntletError, match="must be bool"):
    scores.slash_scores(s, 0.75, jnp.ones(4), CFG)
  with pytest.raises(GauntletError, match="n >= 1"):
    scores.init(0)


def test_inactivity_vmaps_over_states():
  batch = jax.tree.map(lambda x: jnp.stack([x] * 3), scores.init(4)._replace(
    final=jnp.ones(4), waiting=jnp.ones(4, jnp.int32)))
  active = jnp.array([[True] * 4, [False] * 4, [True, False, True, False]])
  out, reset = jax.jit(jax.vmap(scores.inactivity_step, in_axes=(0, None, 0, 0, None)))(
    batch, 7, active, active, CFG)
  np.testing.assert_allclose(out.final, np.where(np.asarray(active), 1.0, 0.75))
  assert not bool(reset.any())
