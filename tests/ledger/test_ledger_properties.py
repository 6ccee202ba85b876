"""Spec §5.3 properties of the Yuma epoch, with hypothesis generating the inputs.

Weights and stakes come from small grids (so ties are common, which is where medians go
wrong) or from continuous draws. Kappa = 32767/65535 keeps exact-kappa cumulative ties,
which are rounding-sensitive in float mode (spec §5.2), out of the tie-sensitive checks.
"""
import dataclasses

import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxnet.ledger import YumaConfig, default_masks, epoch, run
from jaxnet.ledger.reference import weighted_median_chain

KAPPA = 32767 / 65535
SHAPES = [(1, 3), (4, 5), (6, 2)]
Y2 = YumaConfig()
Y3 = YumaConfig(yuma3=True, liquid_alpha=True, bonds_penalty=0.5)
SETTINGS = settings(max_examples=15, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
W_GRID = [0.0, 0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 1 / 3]
S_GRID = [0.0, 0.5, 1.0, 2.0, 3.0]


@st.composite
def inputs(draw, continuous=None):
  V, M = draw(st.sampled_from(SHAPES))
  cont = draw(st.booleans()) if continuous is None else continuous
  w_el = st.floats(0, 10, width=32) if cont else st.sampled_from(W_GRID)
  s_el = st.sampled_from(S_GRID)
  W = np.array(draw(st.lists(w_el, min_size=V * M, max_size=V * M)), np.float32).reshape(V, M)
  S = np.array(draw(st.lists(s_el, min_size=V, max_size=V)), np.float32)
  B = np.array(draw(st.lists(st.sampled_from([0.0, 0.2, 0.5, 1.0]), min_size=V * M,
                             max_size=V * M)), np.float32).reshape(V, M)
  return W, S, B


def np_out(out):
  return {k: np.asarray(v, np.float64) for k, v in out._asdict().items()}


def assert_sum_one_or_zero(x, name):
  s = x.sum()
  assert np.all(x >= 0), name
  assert s == 0 or abs(s - 1) < 1e-5, f"{name} sums to {s}"


@SETTINGS
@given(inputs(), st.sampled_from([Y2, Y3]), st.sampled_from([0.0, KAPPA, 1.0]),
       st.floats(0.0, 1e6, width=32))
def test_normalisation_conservation_no_nan(x, p, kappa, emission):
  """Properties 1 and 10: sums, non-negativity, emission conserved, no NaN/Inf."""
  W, S, B = x
  o = np_out(epoch(W, S, B, dataclasses.replace(p, kappa=kappa), emission=emission))
  for k, v in o.items():
    assert np.all(np.isfinite(v)), k
  assert_sum_one_or_zero(o["incentive"], "incentive")
  assert_sum_one_or_zero(o["dividends"], "dividends")
  paid = o["server_emission"].sum() + o["validator_emission"].sum()
  np.testing.assert_allclose(paid, emission, rtol=1e-5, atol=1e-30)
  assert np.all(o["server_emission"] >= 0) and np.all(o["validator_emission"] >= 0)


@SETTINGS
@given(inputs(), st.sampled_from([Y2, Y3]), st.integers(-3, 3), st.integers(0, 5),
       st.floats(0.2, 7.0))
def test_scale_invariance(x, p, k, row, c):
  """Property 2: scaling S or a row of W changes nothing (exactly for powers of two)."""
  W, S, B = x
  base = np_out(epoch(W, S, B, p))
  W2 = W.copy()
  W2[row % W.shape[0]] *= np.float32(2.0**k)
  for o in (np_out(epoch(W, S * np.float32(2.0**k), B, p)), np_out(epoch(W2, S, B, p))):
    for key in base:
      np.testing.assert_array_equal(o[key], base[key], err_msg=key)
  W3 = W.copy()
  W3[row % W.shape[0]] *= np.float32(c)
  for o in (np_out(epoch(W, S * np.float32(c), B, p)), np_out(epoch(W3, S, B, p))):
    for key in base:
      np.testing.assert_allclose(o[key], base[key], atol=1e-5, err_msg=key)


@SETTINGS
@given(inputs(continuous=False), st.sampled_from([Y2, Y3]), st.randoms(use_true_random=False))
def test_permutation_equivariance(x, p, rnd):
  """Property 3: permuting validators and miners permutes every output."""
  W, S, B = x
  V, M = W.shape
  pv, pm = list(range(V)), list(range(M))
  rnd.shuffle(pv)
  rnd.shuffle(pm)
  base = np_out(epoch(W, S, B, p))
  o = np_out(epoch(W[pv][:, pm], S[pv], B[pv][:, pm], p))
  for key, v in base.items():
    if v.ndim == 2:
      want = v[pv][:, pm]
    elif v.shape[0] == V and key not in ("consensus", "rank", "prerank", "server_trust",
                                         "incentive", "server_emission"):
      want = v[pv]
    else:
      want = v[pm]
    np.testing.assert_allclose(o[key], want, atol=1e-5, err_msg=key)


@SETTINGS
@given(inputs(), st.sampled_from([Y2, Y3]), st.sampled_from([0.0, KAPPA, 1.0]))
def test_clipping_bounds(x, p, kappa):
  """Property 4: W-bar <= W, W-bar <= c, Tv in [0, 1], R <= P, T in [0, 1]."""
  W, S, B = x
  o = np_out(epoch(W, S, B, dataclasses.replace(p, kappa=kappa)))
  eps = 1e-6
  assert np.all(o["clipped_weights"] <= o["weights"] + eps)
  assert np.all(o["clipped_weights"] <= o["consensus"][None, :] + eps)
  assert np.all((o["validator_trust"] >= 0) & (o["validator_trust"] <= 1 + eps))
  assert np.all(o["rank"] <= o["prerank"] + eps)
  assert np.all((o["server_trust"] >= 0) & (o["server_trust"] <= 1 + eps))


@SETTINGS
@given(inputs(), st.sampled_from(["bisect", "sort"]))
def test_median_properties(x, method):
  """Property 5: c is a column value, stake conditions with ties, chain oracle equality."""
  W, S, _ = x
  o = np_out(epoch(W, S, None, YumaConfig(median=method)))
  w, a, c = o["weights"], o["active_stake"], o["consensus"]
  pos = a > 0
  for j in range(W.shape[1]):
    col = w[pos, j]
    assert c[j] == 0 or np.any(np.float32(col) == np.float32(c[j])), (j, c[j], col)
    if pos.any():
      stake_ge = a[pos][col >= np.float32(c[j])].sum() / a[pos].sum()
      stake_gt = a[pos][col > np.float32(c[j])].sum() / a[pos].sum()
      assert stake_ge >= KAPPA - 1e-6 and stake_gt < KAPPA + 1e-6
  chain = weighted_median_chain(a, w, KAPPA)
  np.testing.assert_allclose(c, chain, atol=1e-6)


@SETTINGS
@given(st.lists(st.sampled_from(W_GRID[2:]), min_size=4, max_size=4),
       st.lists(st.sampled_from(S_GRID[1:]), min_size=5, max_size=5))
def test_median_of_identical_rows_is_that_row(row, S):
  """Property 5: if every validator gives the same weight w, then c = w."""
  W = np.tile(np.array(row, np.float32), (5, 1))
  o = np_out(epoch(W, np.array(S, np.float32)))
  np.testing.assert_allclose(o["consensus"], o["weights"][0], atol=1e-7)


@SETTINGS
@given(st.sampled_from([(1, 1), (4, 3)]), st.floats(0.05, 0.45),
       st.lists(st.sampled_from(W_GRID), min_size=12, max_size=12),
       st.lists(st.floats(0, 1, width=32), min_size=9, max_size=9))
def test_minority_coalition(sizes, share, honest_w, coal_w):
  """Property 6: a minority's self-weights never lift its miners above honest weight."""
  n_h, n_c = sizes
  M_h, M_c = 3, 3
  Wh = np.zeros((n_h, M_h + M_c), np.float32)
  # Every honest validator weights something; the coalition weights only its own miners.
  Wh[:, :M_h] = np.array(honest_w, np.float32)[: n_h * M_h].reshape(n_h, M_h) + 0.01
  Wc = np.zeros((n_c, M_h + M_c), np.float32)
  Wc[:, M_h:] = np.array(coal_w, np.float32)[: n_c * M_c].reshape(n_c, M_c) + 0.01
  S = np.concatenate([np.full(n_h, (1 - share) / n_h), np.full(n_c, share / n_c)])
  o = np_out(epoch(np.vstack([Wh, Wc]), S.astype(np.float32)))
  honest_max = o["weights"][:n_h].max(axis=0)
  assert np.all(o["consensus"] <= honest_max + 1e-7)
  assert np.all(o["incentive"][M_h:] == 0)          # honest give the cabal's miners nothing
  assert np.all(o["dividends"][n_h:] == 0)          # beta = 1: no bonds, no dividends
  assert np.all(o["validator_emission"][n_h:] == 0)


@SETTINGS
@given(inputs(continuous=True))
def test_bond_invariants(x):
  """Property 7: Yuma 2 columns sum to 1 or 0; Yuma 3 entries in [0, 1]."""
  W, S, B = x
  o2 = np_out(epoch(W, S, B, Y2))
  col = o2["bonds"].sum(axis=0)
  assert np.all((np.abs(col - 1) < 1e-5) | (col == 0))
  o3 = np_out(epoch(W, S, B, Y3))
  assert np.all((o3["bonds"] >= 0) & (o3["bonds"] <= 1))


def test_yuma2_column_without_new_bonds_keeps_old_bonds():
  W = np.array([[1, 0, 0], [0, 1, 0]], np.float32)  # nobody weights miner 2
  B = np.array([[0.3, 0, 0.2], [0.1, 1, 0.6]], np.float32)
  o = np_out(epoch(W, np.array([1, 1], np.float32), B, YumaConfig(kappa=0.5)))
  np.testing.assert_allclose(o["bonds"][:, 2], [0.25, 0.75], atol=1e-7)


def test_bonds_converge_geometrically():
  """Property 7: with constant W and S, bonds approach their fixed point at rate 1 - alpha."""
  rng = np.random.default_rng(0)
  W = rng.uniform(0.1, 1, (4, 5)).astype(np.float32)
  S = rng.uniform(0.5, 2, 4).astype(np.float32)
  B0 = rng.uniform(0.1, 1, (4, 5)).astype(np.float32)
  for p in (YumaConfig(bonds_alpha=0.2), YumaConfig(bonds_alpha=0.2, yuma3=True)):
    _, _, outs = run(W, S, p, B0=B0, epochs=12)
    B = np.asarray(outs.bonds, np.float64)
    fixed = np.asarray(epoch(W, S, None, dataclasses.replace(p, bonds_alpha=1.0)).bonds)
    err = np.abs(B - fixed[None]).max(axis=(1, 2))
    np.testing.assert_allclose(err[1:8] / err[:7], 0.8, rtol=1e-3)


def test_yuma3_identical_rows_give_dividends_equal_active_stake():
  W = np.tile(np.array([0.2, 0.5, 0.3], np.float32), (4, 1))
  S = np.array([1, 2, 3, 4], np.float32)
  for p in (YumaConfig(yuma3=True), YumaConfig(yuma3=True, liquid_alpha=True)):
    o = np_out(epoch(W, S, None, p))
    np.testing.assert_allclose(o["dividends"], o["active_stake"], atol=1e-6)


def test_degenerate_inputs():
  """Property 10: zero stake, empty rows, one validator, all inactive, kappa in {0, 1}."""
  cases = [(np.zeros((3, 4)), np.ones(3)), (np.ones((3, 4)), np.zeros(3)),
           (np.ones((1, 4)), np.ones(1)), (np.zeros((1, 1)), np.zeros(1))]
  for kappa in (0.0, 1.0):
    for p in (Y2, Y3):
      p = dataclasses.replace(p, kappa=kappa)
      for W, S in cases:
        o = np_out(epoch(W.astype(np.float32), S.astype(np.float32), None, p))
        assert all(np.all(np.isfinite(v)) for v in o.values())
        np.testing.assert_allclose(o["server_emission"].sum() + o["validator_emission"].sum(),
                                   1.0, rtol=1e-6)
      mk = default_masks(3, 4)._replace(active=jnp.zeros(3, bool))
      o = np_out(epoch(np.ones((3, 4), np.float32), np.ones(3, np.float32), None, p, mk))
      assert all(np.all(np.isfinite(v)) for v in o.values()) and o["incentive"].sum() == 0
      combined = dataclasses.replace(p, layout="combined")
      mk3 = default_masks(3, 3)._replace(active=jnp.zeros(3, bool))
      o = np_out(epoch(np.ones((3, 3), np.float32), np.ones(3, np.float32), None, combined, mk3))
      assert all(np.all(np.isfinite(v)) for v in o.values())
