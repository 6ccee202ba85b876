"""The 2020 mechanism (spec §1.2, §1.3): cabal toy regression, reference equality, grads."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxnet.ledger import (BitTensorConfig, LedgerInputError, cabal_toy, connectivity_loss,
                           inflate, legacy_epoch_2020, legacy_epoch_2020_core, run_2020)
from jaxnet.ledger.reference import cabal_toy_python, epoch_2020_numpy

# Spec §1.3: the cabal share after blocks 1-5 as printed in the paper.
PRINTED = [0.48773, 0.48495, 0.48155, 0.47739, 0.47231]


def test_cabal_toy_printed_values():
  share = np.asarray(cabal_toy(0.51, 0.49, BitTensorConfig(rho=10.0, tau=0.1), blocks=100))
  assert share.shape == (100,)
  # Printed to 5 decimals: agree to half a unit in the last place.
  np.testing.assert_allclose(share[:5], PRINTED, atol=5e-6)


def test_cabal_toy_full_trajectory_matches_float64_recurrence():
  share = np.asarray(cabal_toy(0.51, 0.49, BitTensorConfig(), blocks=100))
  ref = np.asarray(cabal_toy_python(0.51, 0.49, tau=0.1, rho=10.0, blocks=100))
  np.testing.assert_allclose(share, ref, atol=1e-4)  # spec §5.3 property 9: 1e-4 per block
  assert ref[-1] < 1e-3  # the cabal's share decays geometrically (§1.3 argument)


@pytest.mark.parametrize("s_b", [0.49, 0.45, 0.3])
def test_threshold_symmetry(s_b):
  down = np.asarray(cabal_toy(1 - s_b, s_b, blocks=60))
  up = np.asarray(cabal_toy(s_b, 1 - s_b, blocks=60))  # roles swapped: cabal above 0.5
  assert np.all(np.diff(down) < 0) and down[0] < s_b
  assert np.all(np.diff(up) > 0) and up[0] > 1 - s_b
  np.testing.assert_allclose(down, 1 - up, atol=1e-6)  # exact mirror image


def test_epoch_matches_numpy_reference():
  rng = np.random.default_rng(0)
  for n in (1, 3, 17):
    W = rng.random((n, n)) * (rng.random((n, n)) < 0.5)
    S = rng.random(n) * (rng.random(n) < 0.8)
    out = legacy_epoch_2020(W, S, 10.0, 0.5)
    ref = epoch_2020_numpy(W, S, 10.0, 0.5)
    for k, v in ref.items():
      np.testing.assert_allclose(np.asarray(getattr(out, k)), v, atol=2e-6, err_msg=k)


def test_block_diagonal_cabal_epoch_is_the_toy_step():
  # Two disjoint subgraphs of several peers each: every peer's trust is its side's share.
  n_a, n_b = 3, 2
  W = np.zeros((5, 5))
  W[:n_a, :n_a] = 1 / n_a
  W[n_a:, n_a:] = 1 / n_b
  S = np.array([0.2, 0.2, 0.11, 0.3, 0.19])
  out = legacy_epoch_2020(W, S)
  trust = np.asarray(out.trust)
  np.testing.assert_allclose(trust[:n_a], 0.51, atol=1e-6)
  np.testing.assert_allclose(trust[n_a:], 0.49, atol=1e-6)
  inc_b = np.asarray(out.incentive)[n_a:].sum()
  ib, ia = 0.49 / (1 + np.exp(-10 * (0.49 - 0.5))), 0.51 / (1 + np.exp(-10 * 0.01))
  np.testing.assert_allclose(inc_b, ib / (ia + ib), atol=1e-6)


def test_inflate_mints_tau_total_into_stake():
  S = jnp.asarray([3.0, 1.0, 0.0, 6.0])
  inc = jnp.asarray([0.1, 0.0, 0.6, 0.3])
  new = np.asarray(inflate(S, inc, 0.1))
  np.testing.assert_allclose(new.sum() - 10.0, 1.0, rtol=1e-6)  # minted = tau * sum(S)
  np.testing.assert_allclose(new - np.asarray(S), [0.1, 0.0, 0.6, 0.3], atol=1e-6)
  np.testing.assert_array_equal(np.asarray(inflate(S, jnp.zeros(4), 0.1)), np.asarray(S))


def test_grad_through_smooth_parts():
  rng = np.random.default_rng(1)
  # Grad w.r.t. the *values* of W: values live on a fixed sparsity pattern, so finite
  # differences never flip the edge indicator, while trust still varies with S.
  mask = (rng.random((4, 4)) < 0.6).astype(np.float64)
  vals = rng.uniform(0.2, 1.0, (4, 4))
  S = rng.uniform(0.5, 2.0, 4)
  target = jnp.asarray([0.1, 0.2, 0.3, 0.4])

  def objective(S, vals):
    w = jnp.asarray(mask, vals.dtype) * vals
    return jnp.sum(legacy_epoch_2020_core(w, S, 10.0, 0.5).incentive * target)

  jax.config.update("jax_enable_x64", True)
  try:
    S64, v64, m64 = (jnp.asarray(x, jnp.float64) for x in (S, vals, mask))
    check_grads(objective, (S64, v64), order=1, modes=["rev"], eps=1e-6, atol=1e-5, rtol=1e-5)
    check_grads(lambda s, v: connectivity_loss(m64 * v, s), (S64, v64), order=1,
                modes=["rev"], eps=1e-6)
  finally:
    jax.config.update("jax_enable_x64", False)
  g_S, g_v = jax.grad(objective, argnums=(0, 1))(jnp.asarray(S, jnp.float32),
                                                 jnp.asarray(vals, jnp.float32))
  assert np.all(np.isfinite(np.asarray(g_S))) and np.any(np.asarray(g_v) != 0)


def test_degenerate_inputs_no_nan():
  for W, S in [(np.zeros((3, 3)), np.ones(3)), (np.ones((3, 3)), np.zeros(3)),
               (np.zeros((1, 1)), np.zeros(1)), (np.eye(2), np.array([1.0, 0.0]))]:
    out = legacy_epoch_2020(W, S)
    for v in out:
      assert np.all(np.isfinite(np.asarray(v)))
    inc = np.asarray(out.incentive)
    assert inc.sum() == 0 or abs(inc.sum() - 1) < 1e-6
  S_T, outs, _ = run_2020(np.zeros((3, 3)), np.zeros(3), epochs=5)
  assert np.all(np.asarray(S_T) == 0) and np.all(np.isfinite(np.asarray(outs.incentive)))


def test_run_with_weight_sequence_equals_constant_run():
  W = np.eye(3) * 0.5 + 0.1
  S0 = np.array([1.0, 2.0, 3.0])
  a = run_2020(W, S0, epochs=7)
  b = run_2020(np.broadcast_to(W, (7, 3, 3)), S0)
  np.testing.assert_allclose(np.asarray(a[2]), np.asarray(b[2]), rtol=1e-6)


def test_vmap_over_stake_draws():
  rng = np.random.default_rng(2)
  W = jnp.asarray(rng.random((5, 5)))
  S = jnp.asarray(rng.random((8, 5)))
  batched = jax.vmap(lambda s: legacy_epoch_2020_core(W, s).incentive)(S)
  for b in range(8):
    np.testing.assert_allclose(np.asarray(batched[b]),
                               np.asarray(legacy_epoch_2020(W, S[b]).incentive), atol=1e-6)


@pytest.mark.parametrize("W,S,msg", [
    (np.eye(2), np.array([1.0, -0.5]), "S: negative value -0.5 at index 1"),
    (np.array([[0.5, np.nan], [0, 1]]), np.ones(2), "W: non-finite value"),
    (np.ones((2, 3)), np.ones(2), "square"),
    (np.ones((2, 2)), np.ones(3), "S: length 3"),
])
def test_malformed_inputs_raise(W, S, msg):
  with pytest.raises(LedgerInputError, match=msg.replace("(", r"\(")):
    legacy_epoch_2020(W, S)
