"""Plackett-Luce rating (jaxnet/gauntlet/rating.py) against openskill 6.2.0 and gauntlet.md §11.

Tolerance on tie-free matches: |ours - openskill| <= 1e-6 * max(1, |ref|) on mu and sigma in
float32. Absolute 1e-6 is not reachable in float32: a mu near 25 has an ulp of 1.9e-6, so
merely storing the package's float64 answer costs up to 9.5e-7 (measured worst absolute error
at 256 players: about 2e-6 on mu in [-10, 60], i.e. half an ulp; relative about 2e-7). The
float64 path (under `jax.enable_x64`) is held to 1e-9 absolute.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from openskill.models import PlackettLuce

from jaxnet.configbase import ConfigError
from jaxnet.gauntlet.rating import (RatingError, RatingParams, RatingState, check_state,
                                    init_state, ordinal, rate, reset, tie_broken_ranks)

GAUNTLET = RatingParams()                                   # beta 7, tau 0.1 (§11.1)
OPENSKILL_DEFAULTS = RatingParams(beta=25.0 / 6.0, tau=25.0 / 300.0)
RTOL = 1e-6

rate_jit = jax.jit(rate, static_argnames="params")


@pytest.fixture(autouse=True)
def _strict_rank_promotion():
  """jax.md rule 13: no implicit rank promotion (scoped, not process-wide)."""
  with jax.numpy_rank_promotion("raise"):
    yield


def _package(params: RatingParams) -> PlackettLuce:
  return PlackettLuce(mu=params.mu0, sigma=params.sigma0, beta=params.beta, tau=params.tau,
                      kappa=params.kappa)


def _package_rate(params, mu, sigma, ranks):
  """openskill on one-player teams, by ranks (gauntlet.md §11.3: pass ranks, not scores)."""
  model = _package(params)
  teams = [[model.rating(mu=float(m), sigma=float(s))] for m, s in zip(mu, sigma)]
  out = model.rate(teams, ranks=[int(r) for r in ranks])
  return (np.array([t[0].mu for t in out]), np.array([t[0].sigma for t in out]),
          np.array([t[0].ordinal() for t in out]))


def _spec_formula(mu, sigma, ranks, params):
  """Slow float64 transcription of gauntlet.md §11.2 steps 1-7 (ties share a rank)."""
  n = len(mu)
  s2 = sigma**2 + params.tau**2
  c = math.sqrt(np.sum(s2 + params.beta**2))
  e = np.exp(mu / c)
  s_q = np.array([e[ranks >= ranks[q]].sum() for q in range(n)])
  a_q = np.array([(ranks == ranks[q]).sum() for q in range(n)])
  omega, delta = np.zeros(n), np.zeros(n)
  for i in range(n):
    for q in range(n):
      if ranks[q] <= ranks[i]:
        p = e[i] / s_q[q]
        omega[i] += (float(q == i) - p) / a_q[q]
        delta[i] += p * (1 - p) / a_q[q]
  omega *= s2 / c
  delta *= np.sqrt(s2) / c * s2 / c**2
  return mu + omega, np.sqrt(s2) * np.sqrt(np.maximum(1 - delta, params.kappa))


def _assert_rel(ours, ref, what):
  err = np.abs(np.asarray(ours, np.float64) - ref) / np.maximum(1.0, np.abs(ref))
  assert err.max() <= RTOL, f"{what}: relative error {err.max():.2e} > {RTOL}"


@pytest.mark.parametrize("params, n, mu_ref, sigma_ref, ord_ref, ord_tol", [
  (GAUNTLET, 2, [27.2562, 22.7438], [8.1669, 8.1669], [2.7555, -1.7569], 5e-5),
  (GAUNTLET, 4, [27.3931, 26.3295, 24.7341, 21.5433], [8.2900, 8.2376, 8.1782, 8.1782],
   [2.5232, 1.6168, 0.1995, -2.9912], 5e-5),
  (OPENSKILL_DEFAULTS, 5, [27.6668, 26.8334, 25.7223, 24.0555, 20.7220],
   [8.2910, 8.2406, 8.1804, 8.1122, 8.1122], [2.794, 2.112, 1.181, -0.281, -3.615], 5e-4),
])
def test_reference_values_table(params, n, mu_ref, sigma_ref, ord_ref, ord_tol):
  """gauntlet.md §11.2 table: fresh ratings, ranks 1..n (given as descending scores)."""
  state = init_state(n, params)
  assert np.all(np.asarray(ordinal(state, params.z)) == 0)  # fresh: ordinal 0
  scores = jnp.arange(n, 0, -1, dtype=jnp.float32)
  new, metrics = rate_jit(state, jnp.ones(n, bool), scores, params=params)
  np.testing.assert_allclose(new.mu, mu_ref, atol=5e-5)
  np.testing.assert_allclose(new.sigma, sigma_ref, atol=5e-5)
  np.testing.assert_allclose(ordinal(new, params.z), ord_ref, atol=ord_tol)
  assert np.asarray(new.rated).all() and bool(metrics["applied"])
  np.testing.assert_array_equal(metrics["rank"], np.arange(n))


def _random_match(rng, num_uids, size):
  """Random priors over the pool (a quarter unrated), `size` random players, distinct scores."""
  mu = rng.uniform(-10.0, 60.0, num_uids).astype(np.float32)
  sigma = rng.uniform(0.05, 25.0 / 3.0, num_uids).astype(np.float32)
  rated = rng.random(num_uids) < 0.75
  mu[~rated], sigma[~rated] = GAUNTLET.mu0, GAUNTLET.sigma0
  in_match = np.zeros(num_uids, bool)
  in_match[rng.choice(num_uids, size, replace=False)] = True
  scores = rng.normal(size=num_uids).astype(np.float32)
  assert len(np.unique(scores[in_match])) == size  # tie-free by construction
  return RatingState(jnp.asarray(mu), jnp.asarray(sigma), jnp.asarray(rated)), in_match, scores


def test_matches_openskill_on_random_tie_free_matches():
  """200 matches of 2..256 players (log-uniform sizes) in a pool of 256, float32."""
  rng = np.random.default_rng(1234)
  num_uids = 256
  sizes = np.concatenate([np.round(np.exp(rng.uniform(math.log(2), math.log(256), 198))),
                          [2, 256]]).astype(int)
  for size in sizes:
    state, in_match, scores = _random_match(rng, num_uids, size)
    new, metrics = rate_jit(state, jnp.asarray(in_match), jnp.asarray(scores), params=GAUNTLET)
    players = np.flatnonzero(in_match)
    # Independent rank computation: descending score (tie-free here).
    ranks = np.empty(size, int)
    ranks[np.argsort(-scores[players], kind="stable")] = np.arange(1, size + 1)
    np.testing.assert_array_equal(np.asarray(metrics["rank"])[players], ranks - 1)
    mu_ref, sigma_ref, _ = _package_rate(GAUNTLET, np.asarray(state.mu)[players],
                                         np.asarray(state.sigma)[players], ranks)
    _assert_rel(np.asarray(new.mu)[players], mu_ref, f"mu, {size} players")
    _assert_rel(np.asarray(new.sigma)[players], sigma_ref, f"sigma, {size} players")
    # Non-players: bitwise untouched (no tau added), rated flags only gained by players.
    out = ~in_match
    np.testing.assert_array_equal(np.asarray(new.mu)[out], np.asarray(state.mu)[out])
    np.testing.assert_array_equal(np.asarray(new.sigma)[out], np.asarray(state.sigma)[out])
    np.testing.assert_array_equal(new.rated, np.asarray(state.rated) | in_match)
    assert int(metrics["num_players"]) == size


def test_float64_option_matches_openskill_to_1e9():
  rng = np.random.default_rng(7)
  with jax.enable_x64(True):
    for size in (2, 17, 256):
      mu, sigma = rng.uniform(-10, 60, size), rng.uniform(0.05, 25 / 3, size)
      scores = rng.normal(size=size)
      state = RatingState(jnp.asarray(mu), jnp.asarray(sigma), jnp.ones(size, bool))
      assert state.mu.dtype == jnp.float64
      new, _ = rate_jit(state, jnp.ones(size, bool), jnp.asarray(scores), params=GAUNTLET)
      assert new.mu.dtype == jnp.float64
      ranks = np.empty(size, int)
      ranks[np.argsort(-scores)] = np.arange(1, size + 1)
      mu_ref, sigma_ref, _ = _package_rate(GAUNTLET, mu, sigma, ranks)
      np.testing.assert_allclose(new.mu, mu_ref, rtol=0, atol=1e-9)
      np.testing.assert_allclose(new.sigma, sigma_ref, rtol=0, atol=1e-9)
    assert init_state(3, dtype=jnp.float64).mu.dtype == jnp.float64
    # float64 scores keep distinctions float32 would erase (no spurious tie by uid).
    close = jnp.array([1.0, 1.0 + 1e-12, 0.5])
    np.testing.assert_array_equal(tie_broken_ranks(jnp.ones(3, bool), close), [1, 0, 2])
  with pytest.raises(RatingError, match="enable_x64"):
    init_state(3, dtype=jnp.float64)


def _openskill_version() -> tuple[int, ...]:
  from importlib.metadata import version
  return tuple(int(p) for p in version("openskill").split(".")[:2] if p.isdigit())


@pytest.mark.skipif(_openskill_version() < (6, 2),
                    reason="the spec's tie reference values are openskill 6.2.0's; 6.1.x rates "
                           "this tie differently (the oldest stack pins 6.1.2)")
def test_package_multiway_tie_defect():
  """gauntlet.md §11.3: openskill ranks [1,2,2,4,5] put 4th place level with the tied pair."""
  params = OPENSKILL_DEFAULTS
  fresh_mu, fresh_sigma = np.full(5, params.mu0), np.full(5, params.sigma0)
  mu_pkg, _, ord_pkg = _package_rate(params, fresh_mu, fresh_sigma, [1, 2, 2, 4, 5])
  np.testing.assert_allclose(mu_pkg[1:4], 25.1667, atol=1e-4)       # same mu for 2nd,2nd,4th
  np.testing.assert_allclose(ord_pkg[1:4], [0.445, 0.445, 0.648], atol=1e-3)
  assert ord_pkg[3] > ord_pkg[1]                                     # 4th above the tied pair
  # The spec's formula (A_q sharing) reproduces the defect, so it is the formula, not a bug
  # of the package's bookkeeping.
  mu_spec, _ = _spec_formula(fresh_mu, fresh_sigma, np.array([1, 2, 2, 4, 5]), params)
  np.testing.assert_allclose(mu_spec, mu_pkg, atol=1e-12)


def test_our_tie_break_gives_distinct_ranks():
  """Ours: equal scores for uids 1 and 2 -> ascending uid wins the tie; ranks all distinct."""
  params = OPENSKILL_DEFAULTS
  fresh_mu, fresh_sigma = np.full(5, params.mu0), np.full(5, params.sigma0)
  scores = jnp.array([5.0, 4.0, 4.0, 2.0, 1.0])
  new, metrics = rate_jit(init_state(5, params), jnp.ones(5, bool), scores, params=params)
  np.testing.assert_array_equal(metrics["rank"], [0, 1, 2, 3, 4])
  mu, ords = np.asarray(new.mu), np.asarray(ordinal(new, params.z))
  assert np.all(np.diff(mu) < 0) and np.all(np.diff(ords) < 0)       # strictly decreasing
  assert mu[3] < min(mu[1], mu[2]) and ords[3] < min(ords[1], ords[2])
  mu_ref, sigma_ref, _ = _package_rate(params, fresh_mu, fresh_sigma, [1, 2, 3, 4, 5])
  _assert_rel(mu, mu_ref, "tie-broken mu")
  _assert_rel(new.sigma, sigma_ref, "tie-broken sigma")


def test_tie_break_by_ascending_uid_and_order_only():
  in_match = jnp.array([True, True, False, True, True, True, True, True])
  scores = jnp.array([0.0, 1.0, 9.0, -0.0, 1.0, jnp.nan, -jnp.inf, -3.0e38])
  # uid 1 and 4 tie at 1.0 (1 first); 0 and 3 tie at +-0.0 (0 first); a finite score beats
  # -inf; NaN ties with -inf (both last, by uid); the non-player's 9.0 is ignored.
  expected = [2, 0, -1, 3, 1, 5, 6, 4]
  np.testing.assert_array_equal(tie_broken_ranks(in_match, scores), expected)
  state = init_state(8)
  new, metrics = rate_jit(state, in_match, scores, params=GAUNTLET)
  assert np.all(np.isfinite(np.asarray(new.mu))) and np.all(np.isfinite(np.asarray(new.sigma)))
  np.testing.assert_array_equal(metrics["rank"], expected)
  # Only the order enters (gauntlet.md §11.1): a monotone transform changes nothing.
  s = jnp.array([0.3, -1.2, 0.0, 2.5, 0.7, 1.1, -0.4, 0.9])
  full = jnp.ones(8, bool)
  a, _ = rate_jit(state, full, s, params=GAUNTLET)
  b, _ = rate_jit(state, full, 3.0 * jnp.exp(s) + 1.0, params=GAUNTLET)
  np.testing.assert_array_equal(a.mu, b.mu)
  np.testing.assert_array_equal(a.sigma, b.sigma)


@pytest.mark.parametrize("players", [[], [3]])
def test_fewer_than_two_players_leaves_state_unchanged(players):
  """gauntlet.md §18 row 10f: skip the update and drop the lone score."""
  rng = np.random.default_rng(3)
  state, _, scores = _random_match(rng, 8, 2)
  state = state._replace(rated=jnp.zeros(8, bool))   # a lone player must not become rated
  in_match = np.zeros(8, bool)
  in_match[players] = True
  new, metrics = rate_jit(state, jnp.asarray(in_match), jnp.asarray(scores), params=GAUNTLET)
  for got, want in zip(new, state):
    np.testing.assert_array_equal(got, want)
  assert not bool(metrics["applied"]) and int(metrics["num_players"]) == len(players)
  np.testing.assert_array_equal(metrics["rank"], np.where(in_match, 0, -1))


def test_kappa_floor_matches_package():
  """A very uncertain last-placed player drives 1 - Delta below kappa (§11.2 step 7)."""
  n = 64
  mu, sigma = np.full(n, 25.0), np.full(n, 25.0 / 3.0)
  sigma[-1] = 200.0
  state = RatingState(jnp.asarray(mu, jnp.float32), jnp.asarray(sigma, jnp.float32),
                      jnp.ones(n, bool))
  scores = jnp.arange(n, 0, -1, dtype=jnp.float32)        # uid n-1 ranks last
  new, _ = rate_jit(state, jnp.ones(n, bool), scores, params=GAUNTLET)
  mu_ref, sigma_ref, _ = _package_rate(GAUNTLET, mu, sigma, np.arange(1, n + 1))
  floor = math.sqrt(200.0**2 + GAUNTLET.tau**2) * math.sqrt(GAUNTLET.kappa)
  assert sigma_ref[-1] == pytest.approx(floor, rel=1e-12)  # the floor is active
  _assert_rel(new.mu, mu_ref, "mu")
  _assert_rel(new.sigma, sigma_ref, "sigma")


def test_vmap_over_matches_equals_loop():
  """vmap over independent matches (own or shared state) equals a Python loop of `rate`.

  Allowed: 2 float32 ulp, since XLA may block the cumulative sums differently for batched
  shapes; ranks, flags and untouched entries must match exactly.
  """
  rng = np.random.default_rng(11)
  batch = [_random_match(rng, 32, int(k)) for k in rng.integers(0, 33, 12)]
  states = jax.tree.map(lambda *xs: jnp.stack(xs), *[b[0] for b in batch])
  in_match = jnp.asarray(np.stack([b[1] for b in batch]))
  scores = jnp.asarray(np.stack([b[2] for b in batch]))
  batched = jax.jit(jax.vmap(lambda s, m, x: rate(s, m, x, GAUNTLET)))
  new_b, metrics_b = batched(states, in_match, scores)
  shared_state = batch[0][0]
  shared = jax.jit(jax.vmap(rate, in_axes=(None, 0, 0, None)), static_argnums=3)
  new_s, metrics_s = shared(shared_state, in_match, scores, GAUNTLET)
  for i, (state, m, x) in enumerate(batch):
    for base, out_b, mets_b in ((state, new_b, metrics_b), (shared_state, new_s, metrics_s)):
      new, metrics = rate_jit(base, jnp.asarray(m), jnp.asarray(x), params=GAUNTLET)
      np.testing.assert_allclose(out_b.mu[i], new.mu, rtol=2.4e-7, atol=0)
      np.testing.assert_allclose(out_b.sigma[i], new.sigma, rtol=2.4e-7, atol=0)
      np.testing.assert_array_equal(out_b.rated[i], new.rated)
      np.testing.assert_array_equal(np.asarray(out_b.mu[i])[~m], np.asarray(base.mu)[~m])
      for key in ("rank", "num_players", "applied"):
        np.testing.assert_array_equal(mets_b[key][i], metrics[key])


def test_ordinal_and_reset():
  params = GAUNTLET
  state = init_state(6, params)
  in_match = jnp.array([True, True, True, False, False, False])
  state, _ = rate_jit(state, in_match, jnp.array([3.0, 2.0, 1.0, 0.0, 0.0, 0.0]), params=params)
  ords = np.asarray(ordinal(state, params.z))
  np.testing.assert_allclose(ords[:3], np.asarray(state.mu - 3 * state.sigma)[:3], rtol=1e-6)
  np.testing.assert_array_equal(ords[3:], 0.0)
  np.testing.assert_allclose(ordinal(state, 1.0)[:3], np.asarray(state.mu - state.sigma)[:3],
                             rtol=1e-6)
  mask = jnp.array([False, True, False, False, True, False])
  after = reset(state, mask, params)
  np.testing.assert_array_equal(after.rated, [True, False, True, False, False, False])
  assert float(after.mu[1]) == params.mu0 and float(after.sigma[1]) == np.float32(params.sigma0)
  assert float(ordinal(after, params.z)[1]) == 0.0
  for i in (0, 2, 3, 5):
    assert float(after.mu[i]) == float(state.mu[i])
    assert float(after.sigma[i]) == float(state.sigma[i])


def test_bad_inputs_raise_one_line_errors():
  state = init_state(4)
  good_mask, good_scores = jnp.ones(4, bool), jnp.zeros(4)
  with pytest.raises(RatingError, match="scores has shape"):
    rate(state, good_mask, jnp.zeros(5))
  with pytest.raises(RatingError, match="in_match must be bool"):
    rate(state, jnp.ones(4, jnp.int32), good_scores)
  with pytest.raises(RatingError, match="scores must be floating"):
    rate(state, good_mask, jnp.zeros(4, jnp.int32))
  with pytest.raises(RatingError, match="1-D"):
    rate(jax.tree.map(lambda x: x[None], state), good_mask[None], good_scores[None])
  with pytest.raises(RatingError, match="mask must be bool"):
    reset(state, jnp.ones(3, bool))
  with pytest.raises(RatingError, match="num_uids"):
    init_state(0)
  with pytest.raises(ConfigError, match="rating.beta"):
    RatingParams(beta=0.0)
  with pytest.raises(ConfigError, match="rating.kappa"):
    RatingParams(kappa=1.0)
  with pytest.raises(RatingError, match="state.sigma"):
    check_state(state._replace(sigma=state.sigma.at[2].set(0.0)))
  with pytest.raises(RatingError, match="state.mu"):
    check_state(state._replace(mu=state.mu.at[1].set(jnp.nan)))
  check_state(state)
