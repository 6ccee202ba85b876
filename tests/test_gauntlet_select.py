"""Evaluation candidates, binning, sampling, gather peers (gauntlet.md §6, §8, §13)."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet.gauntlet import select
from jaxnet.gauntlet.config import GauntletConfig, GauntletError

CFG = GauntletConfig()
REF_CFG = GauntletConfig(uids_per_window=4)   # the reference sampling (§8)


def test_candidates_and_waiting_counters():
  active = jnp.array([True, True, False, True])
  stake = jnp.array([0.0, 20000.0, 0.0, 20000.5])
  cand = select.candidates(active, stake, 20000.0)
  np.testing.assert_array_equal(cand, [True, True, False, False])
  waiting = select.refresh_waiting(jnp.array([0, 3, 5, 2], jnp.int32), cand)
  np.testing.assert_array_equal(waiting, [1, 3, 0, 0])   # new -> 1, kept, deleted, deleted
  waiting = select.update_waiting(waiting, cand, jnp.array([False, True, False, False]))
  np.testing.assert_array_equal(waiting, [2, 1, 0, 0])   # not evaluated +1, evaluated -> 1


def _ref_bins(ordinal, candidate, num_bins, upw):
  """templar @9ce04f64 `bin_evaluation_peers`, literally (uids in ascending order)."""
  peers = [u for u in range(len(ordinal)) if candidate[u]]
  if len(peers) < num_bins * upw:
    return {0: peers}
  peers = sorted(peers, key=lambda u: ordinal[u], reverse=True)   # stable: ties by uid
  q, r = divmod(len(peers), num_bins)
  bins, start = {}, 0
  for i in range(num_bins):
    end = start + q + (1 if i < r else 0)
    if start < len(peers):
      bins[i] = peers[start:end]
    start = end
  return bins


@pytest.mark.parametrize("n_cand,upw", [(23, 2), (40, 4), (39, 4), (7, 4), (30, 3)])
def test_bins_match_reference_and_are_contiguous(n_cand, upw):
  rng = np.random.default_rng(n_cand)
  n = 48
  candidate = np.zeros(n, bool)
  candidate[rng.choice(n, n_cand, replace=False)] = True
  ordinal = rng.normal(size=n).round(1).astype(np.float32)   # rounding creates ties
  ordinal[rng.choice(n, 5, replace=False)] = 0.0             # unrated
  bin_N, n_bins = select.bin_ids(jnp.asarray(ordinal), jnp.asarray(candidate), 10, upw)
  ref = _ref_bins(ordinal, candidate, 10, upw)
  assert int(n_bins) == len(ref)
  got = {b: [u for u in range(n) if int(bin_N[u]) == b] for b in range(int(n_bins))}
  for b, uids in ref.items():
    assert sorted(uids) == got[b]
  assert np.all(np.asarray(bin_N)[~candidate] == -1)
  # contiguous: every ordinal in bin b is >= every ordinal in bin b + 1
  for b in range(int(n_bins) - 1):
    assert ordinal[got[b]].min() >= ordinal[got[b + 1]].max()


def test_sampling_deterministic_and_only_eligible():
  key = jax.random.key(3)
  w = jnp.arange(1, 13, dtype=jnp.int32)
  elig = jnp.arange(12) % 3 != 0
  a = select.sample_without_replacement(key, w, elig, 4)
  b = select.sample_without_replacement(key, w, elig, 4)
  np.testing.assert_array_equal(a, b)
  assert int(a.sum()) == 4 and not bool((a & ~elig).any())
  few = select.sample_without_replacement(key, w, jnp.arange(12) < 2, 4)   # only 2 eligible
  np.testing.assert_array_equal(np.flatnonzero(few), [0, 1])


def _draws(weight, eligible, k, n_keys, seed=0):
  keys = jax.random.split(jax.random.key(seed), n_keys)
  f = jax.jit(jax.vmap(lambda key: select.sample_without_replacement(key, weight, eligible, k)))
  return np.asarray(f(keys))


def test_single_draw_frequency_proportional_to_waiting():
  w = jnp.array([1, 2, 3, 4, 10, 7], jnp.int32)
  elig = jnp.array([True, True, True, True, False, True])
  picks = _draws(w, elig, 1, 20000)
  assert np.all(picks.sum(1) == 1) and not picks[:, 4].any()
  expect = np.array([1, 2, 3, 4, 0, 7]) / 17
  np.testing.assert_allclose(picks.mean(0), expect, atol=0.015)   # std <= 0.0035


def test_two_draws_match_successive_sampling_inclusion():
  """Gumbel-top-2 = draw one ∝ c, then another ∝ c among the rest (exact enumeration)."""
  c = np.array([1.0, 2.0, 3.0, 6.0])
  incl = np.zeros(4)
  for i, j in itertools.permutations(range(4), 2):
    prob = c[i] / c.sum() * c[j] / (c.sum() - c[i])
    incl[i] += prob
    incl[j] += prob
  picks = _draws(jnp.asarray(c, jnp.int32), jnp.ones(4, bool), 2, 20000, seed=1)
  assert np.all(picks.sum(1) == 2)
  np.testing.assert_allclose(picks.mean(0), incl, atol=0.015)


def test_select_for_evaluation_all_candidates_by_default():
  cand = jnp.array([True, False, True, True])
  sel, info = select.select_for_evaluation(jax.random.key(0), cand, jnp.zeros(4),
                                           jnp.ones(4, jnp.int32), CFG)
  np.testing.assert_array_equal(sel, cand)
  assert int(info["n_bins"]) == 1


def test_select_for_evaluation_one_bin_uniform_bins():
  n = 64
  cand = jnp.arange(n) % 8 != 0                 # 56 candidates >= 10 x 4 -> 10 bins
  ordinal = jnp.linspace(-3.0, 5.0, n)
  waiting = jnp.arange(n, dtype=jnp.int32) % 5 + 1
  bin_N, n_bins = select.bin_ids(ordinal, cand, 10, 4)
  keys = jax.random.split(jax.random.key(7), 3000)
  sel, info = jax.jit(jax.vmap(
    lambda k: select.select_for_evaluation(k, cand, ordinal, waiting, REF_CFG)))(keys)
  sel, chosen = np.asarray(sel), np.asarray(info["bin"])
  assert int(n_bins) == 10
  assert np.all(sel.sum(1) == 4) and not sel[:, ~np.asarray(cand)].any()
  for s, b in zip(sel[:50], chosen[:50]):
    assert set(np.asarray(bin_N)[s]) == {b}
  np.testing.assert_allclose(np.bincount(chosen, minlength=10) / 3000, 0.1, atol=0.03)


# ------------------------------------------------------------------ gather peers

def test_gather_timing_refresh_every_5_effective_plus_2():
  n = 40
  cfg = GauntletConfig()
  state = select.init_gather(cfg.gather_size)
  active = jnp.ones(n, bool)
  step = jax.jit(select.gather_step)
  pick = jax.jit(select.select_gather_peers, static_argnums=3)
  posted, seen = {}, {}
  for w in range(16):
    weight = jnp.roll(jnp.linspace(1.0, 2.0, n), 3 * w)   # a different top-15 each window
    expect, _ = pick(jax.random.key(w), weight, active, 15)
    posted[w] = set(np.asarray(expect).tolist())
    state, mask = step(state, w, weight, active, jax.random.key(w), cfg)
    seen[w] = set(np.flatnonzero(np.asarray(mask)).tolist())
  # first list at window 0 takes effect at once; refreshes at 5, 10, 15 take effect at +2
  for w in range(16):
    src = 0 if w < 7 else 5 if w < 12 else 10
    assert seen[w] == posted[src], w
  assert int(state.last_update) == 15 and int(state.effective_window) == 17


def test_gather_top_by_weight_ties_by_uid_and_random_fill():
  n = 30
  weight = jnp.zeros(n).at[jnp.array([4, 9, 2])].set(jnp.array([0.5, 0.5, 0.9]))
  active = jnp.ones(n, bool).at[jnp.array([1, 3])].set(False)
  uids, n_active = select.select_gather_peers(jax.random.key(0), weight, active, 15)
  uids = np.asarray(uids)
  assert int(n_active) == 28
  np.testing.assert_array_equal(uids[:3], [2, 4, 9])    # weight desc, tie 4 < 9
  fill = uids[3:]
  assert len(set(fill)) == 12 and not set(fill) & {1, 3, 2, 4, 9}
  other, _ = select.select_gather_peers(jax.random.key(1), weight, active, 15)
  assert not np.array_equal(np.asarray(other)[3:], fill)   # fill order comes from the key
  again, _ = select.select_gather_peers(jax.random.key(0), weight, active, 15)
  np.testing.assert_array_equal(again, uids)


def test_gather_needs_minimum_peers_and_pads():
  cfg = GauntletConfig()
  state = select.init_gather(15)
  active = jnp.zeros(10, bool).at[jnp.array([0, 1, 2, 3])].set(True)    # 4 < 5
  state, mask = select.gather_step(state, 0, jnp.ones(10), active, jax.random.key(0), cfg)
  assert not bool(mask.any()) and int(state.last_update) == -1          # retried next window
  active = active.at[7].set(True)                                       # 5 active
  state, mask = select.gather_step(state, 1, jnp.ones(10), active, jax.random.key(0), cfg)
  np.testing.assert_array_equal(np.flatnonzero(mask), [0, 1, 2, 3, 7])  # N < G: padded with -1
  assert np.sum(np.asarray(state.current) == -1) == 10


def test_bad_gather_state_size():
  with pytest.raises(GauntletError, match="gather_size"):
    select.gather_step(select.init_gather(4), 0, jnp.ones(8), jnp.ones(8, bool),
                       jax.random.key(0), CFG)


def test_everything_jits_and_vmaps_over_keys():
  n, b = 50, 8
  keys = jax.random.split(jax.random.key(11), b)
  cand = jnp.arange(n) % 5 != 0
  ordinal = jnp.sin(jnp.arange(n, dtype=jnp.float32))
  waiting = jnp.arange(n, dtype=jnp.int32) % 7 + 1

  def one_round(key):
    k_eval, k_gather = jax.random.split(key)
    sel, _ = select.select_for_evaluation(k_eval, cand, ordinal, waiting, REF_CFG)
    new_wait = select.update_waiting(waiting, cand, sel)
    gstate, gmask = select.gather_step(select.init_gather(15), 0, jnp.zeros(n), cand,
                                       k_gather, CFG)
    return sel, new_wait, gmask

  sel, new_wait, gmask = jax.jit(jax.vmap(one_round))(keys)
  assert sel.shape == (b, n) and np.all(np.asarray(sel).sum(1) == 4)
  np.testing.assert_array_equal(np.asarray(new_wait)[np.asarray(sel)], 1)
  assert np.all(np.asarray(gmask).sum(1) == 15)
  single = jax.jit(one_round)
  for i in range(b):   # batched == one at a time
    s1, w1, g1 = single(keys[i])
    np.testing.assert_array_equal(s1, sel[i])
    np.testing.assert_array_equal(g1, gmask[i])
