"""Edge cases found by an independent reference: kappa = 1, x64 hyperparameters, the
default permits of `epoch`, row scale in the 2020 epoch, and empty shapes."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet.configbase import ConfigError
from jaxnet.ledger import (LedgerConfig, LedgerInputError, YumaConfig, cabal_toy,
                           connectivity_loss, emission_split, epoch, first_permits, init_ledger,
                           legacy_epoch_2020, ledger_step, run, run_2020, run_ledger,
                           split_units, stake_weighted_quantile)
from jaxnet.ledger.bittensor import legacy_epoch_2020_core


# ---------------------------------------------------------------- kappa = 1 (spec §5.2)

@pytest.mark.parametrize("method", ["bisect", "sort"])
@pytest.mark.parametrize("V", [32, 64, 256, 512])
def test_kappa_one_unanimous_epochs_give_the_common_row(V, method):
  """Spec §5.3 property 5: identical rows give c = that row, also at kappa = 1.

  The target min(kappa, total) used to be reduced differently from the stake sums it was
  compared with, so one ulp collapsed c to 0 in some of these epochs."""
  B, M = 40, 8
  rng = np.random.default_rng(V)
  rows = jnp.asarray(rng.random((B, M)) + 1e-3, jnp.float32)
  stakes = jnp.asarray(rng.random((B, V)) + 1e-3, jnp.float32)
  quantile = lambda row, a: stake_weighted_quantile(  # noqa: E731
      jnp.broadcast_to(row, (V, M)), a, 1.0, method)
  c = jax.jit(jax.vmap(quantile))(rows, stakes)
  np.testing.assert_array_equal(np.asarray(c), np.asarray(rows))
  # Unbatched calls reduce in another order; they failed at other draws.
  one = jax.jit(quantile)
  for b in range(B):
    np.testing.assert_array_equal(np.asarray(one(rows[b], stakes[b])), np.asarray(rows[b]))


@pytest.mark.parametrize("method", ["bisect", "sort"])
@pytest.mark.parametrize("k", [3, 11, 12])
def test_kappa_one_counts_a_tiny_positive_stake(k, method):
  """k rows of stake 1 and one of stake 1e-8 with the smallest weight: the renormalised
  stakes of the k big rows already sum to 1 in float32, yet the minimum is the tiny row's."""
  W = np.arange(k + 1, 0, -1, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
  a = np.array([1.0] * k + [1e-8], np.float32)
  np.testing.assert_array_equal(np.asarray(stake_weighted_quantile(W, a, 1.0, method)),
                                [1.0, 1.0, 1.0])
  # kappa = 0 is the column maximum, and a zero-stake row never counts.
  np.testing.assert_array_equal(np.asarray(stake_weighted_quantile(W, a, 0.0, method)),
                                [k + 1.0] * 3)
  a[-1] = 0.0
  np.testing.assert_array_equal(np.asarray(stake_weighted_quantile(W, a, 1.0, method)),
                                [2.0, 2.0, 2.0])


@pytest.mark.parametrize("method", ["bisect", "sort"])
@pytest.mark.parametrize("V", [32, 64, 256, 512])
def test_kappa_one_is_the_column_minimum_over_positive_stake(V, method):
  B, M = 20, 16
  rng = np.random.default_rng(1000 + V)
  W = rng.random((B, V, M)) * (rng.random((B, V, M)) < 0.9)
  a = rng.random((B, V)) * (rng.random((B, V)) < 0.8)
  a[:, 0] = 1.0  # at least one positive-stake row per draw
  W[:, 1, :] = 1e-4 * (a[:, 1, None] == 0)  # a zero-stake row below everything: ignored
  W, a = jnp.asarray(W, jnp.float32), jnp.asarray(a, jnp.float32)
  c = jax.jit(jax.vmap(lambda w, s: stake_weighted_quantile(w, s, 1.0, method)))(W, a)
  w = np.asarray(W)
  want = np.where(np.asarray(a)[:, :, None] > 0, w, np.inf).min(axis=1)
  np.testing.assert_array_equal(np.asarray(c), want)


def test_kappa_one_epoch_consensus_is_the_common_row():
  """The same through `epoch`: W is row-normalised first, so the common row is out.weights."""
  rng = np.random.default_rng(8)
  for V in (32, 256):
    p = YumaConfig(kappa=1.0, max_validators=V)
    for _ in range(20):
      W = np.tile(rng.random(6), (V, 1))
      out = epoch(W, rng.random(V) + 1e-3, params=p)
      np.testing.assert_array_equal(np.asarray(out.consensus), np.asarray(out.weights)[0])


# ---------------------------------------------------------------- x64 (spec §5.1 dtypes)

def test_x64_hyperparameters_are_float64_and_entry_points_agree():
  """Under jax_enable_x64, epoch(), run() and run_ledger() use the same float64 kappa,
  alpha, ...; float32 hyperparameters made exact ties flip between them."""
  from jaxnet.ledger.yuma import hyper_of
  jax.config.update("jax_enable_x64", True)
  try:
    # kappa = 0.3 is not a float32 number: a stake of exactly 0.3 sits on the float64 kappa.
    p = YumaConfig(kappa=0.3, bonds_alpha=0.3, max_validators=8)
    cfg = LedgerConfig(yuma=p, epoch_emission=1_000_000, owner_cut=0.0, compound=False)
    stake = np.array([300, 200, 500])
    W = np.array([[0.9, 0.1, 0.0], [0.2, 0.5, 0.3], [0.0, 0.3, 0.7]])
    one = epoch(W, stake.astype(np.float64), params=p)
    _, _, outs = run(W, stake.astype(np.float64), p, epochs=1)
    _, rec = run_ledger(init_ledger(stake, 3, cfg), W, cfg, epochs=1)
    for k in one._fields:
      np.testing.assert_array_equal(np.asarray(getattr(outs, k)[0]),
                                    np.asarray(getattr(one, k)), err_msg=k)
    for k in ("incentive", "dividends", "consensus", "validator_trust"):
      np.testing.assert_array_equal(np.asarray(getattr(rec, k)[0]),
                                    np.asarray(getattr(one, k)), err_msg=k)
      assert np.asarray(getattr(one, k)).dtype == np.float64
    # The tie: row 0 holds exactly kappa = 0.3 of the stake at weight 0.9 in column 0, so
    # 0.9 is the median; float32(0.3) > 0.3 made it 0.2 in epoch() and run().
    assert float(one.consensus[0]) == 0.9
    assert all(x.dtype == jnp.float64 for x in hyper_of(YumaConfig(), as_arrays=True))
  finally:
    jax.config.update("jax_enable_x64", False)
  assert not jax.config.jax_enable_x64


# ---------------------------------------------------------------- default permits (§2.1 step 3)

@pytest.mark.parametrize("yuma3", [False, True])
def test_default_masks_do_not_permit_zero_stake_validators(yuma3):
  """`epoch(masks=None)` masks with the permit set a first epoch would have, as `run`
  does; a zero-stake validator's differing row used to enter the bonds and dividends."""
  p = YumaConfig(kappa=0.5, yuma3=yuma3)
  W = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  S = np.array([1.0, 1.0, 0.0])
  one = epoch(W, S, params=p)
  _, _, outs = run(W, S, p, epochs=1)
  for k in one._fields:
    np.testing.assert_array_equal(np.asarray(getattr(outs, k)[0]), np.asarray(getattr(one, k)),
                                  err_msg=k)
  np.testing.assert_array_equal(np.asarray(one.weights)[2], [0.0, 0.0])
  np.testing.assert_allclose(np.asarray(one.dividends), [0.5, 0.5, 0.0], atol=1e-7)
  np.testing.assert_array_equal(np.asarray(first_permits(S, p)), [True, True, False])


# ---------------------------------------------------------------- 2020 row scale (§1.2)

def test_2020_epoch_is_invariant_to_row_scale():
  """Spec §1.2: each row is a distribution over the neighbours; §5.3 property 2."""
  rng = np.random.default_rng(3)
  n = 6
  W = rng.random((n, n)) * (rng.random((n, n)) < 0.7)
  W[4] = 0.0  # an empty row stays empty
  S = rng.random(n) + 0.1
  base = legacy_epoch_2020(W, S)
  for row in range(n):
    for c in (1e-3, 0.37, 8.0, 1e3):
      Wc = W.copy()
      Wc[row] *= c
      out = legacy_epoch_2020(Wc, S)
      for k in base._fields:
        np.testing.assert_allclose(np.asarray(getattr(out, k)), np.asarray(getattr(base, k)),
                                   rtol=2e-6, atol=1e-7, err_msg=f"{k} row {row} x {c}")
  loss = float(connectivity_loss(W, S))
  Wc = W.copy()
  Wc[0] *= 5.0
  np.testing.assert_allclose(float(connectivity_loss(Wc, S)), loss, rtol=1e-5)
  # Rows sum to 1 after normalisation: the ranks sum to the stake that has weights set.
  s = S / S.sum()
  np.testing.assert_allclose(float(jnp.sum(base.rank)), s[W.sum(1) > 0].sum(), rtol=1e-6)
  # The runner and the ledger see the same normalised epoch.
  S_a, _, _ = run_2020(W, S, epochs=3)
  Wc = W * rng.uniform(0.5, 4.0, (n, 1))
  S_b, _, _ = run_2020(Wc, S, epochs=3)
  np.testing.assert_allclose(np.asarray(S_a), np.asarray(S_b), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(legacy_epoch_2020_core(Wc, S).incentive),
                             np.asarray(base.incentive), rtol=2e-6, atol=1e-7)


def test_2020_cabal_toy_unchanged_by_row_scale():
  # The toy's W = identity is row-stochastic already; a scaled block-diagonal W agrees.
  W = np.diag([3.0, 0.2])
  _, _, S_TxN = run_2020(W, np.array([0.51, 0.49]), epochs=20)
  share = np.asarray(S_TxN[:, 1] / S_TxN.sum(1))
  np.testing.assert_allclose(share, np.asarray(cabal_toy(0.51, 0.49, blocks=20)), rtol=1e-6)


# ---------------------------------------------------------------- empty shapes

_Y = YumaConfig(max_validators=4)
_CFG = LedgerConfig(yuma=_Y)
_C2020 = LedgerConfig(mechanism="bittensor2020")


def _state(V, M, cfg=_CFG):
  """A well-formed state of any shape, including empty ones (init_ledger refuses them)."""
  s = init_ledger(np.ones(3, int), 2 if cfg.mechanism == "yuma" else None, cfg)
  zi = lambda *shape: jnp.zeros(shape, s.stake.dtype)  # noqa: E731
  return s._replace(stake=zi(V), bonds=jnp.zeros((V, M), s.bonds.dtype),
                    permit=jnp.zeros((V,), bool), miner_balance=zi(M),
                    validator_balance=zi(V), last_server=zi(M), last_validator=zi(V))


def _empty_cases(V, M):
  W, S = np.zeros((V, M)), np.ones(V)
  sq = np.zeros((min(V, M), min(V, M)))
  return [
      ("W", lambda: epoch(W, S, params=_Y)),
      ("W", lambda: run(W, S, _Y, epochs=2)),
      ("W", lambda: run(np.zeros((2, V, M)), S, _Y)),
      ("W", lambda: legacy_epoch_2020(np.zeros((V, M)), S)),
      ("W", lambda: legacy_epoch_2020(sq, np.ones(sq.shape[0]))),
      ("W", lambda: run_2020(sq, np.ones(sq.shape[0]), epochs=2)),
      ("W", lambda: run_2020(np.zeros((2,) + sq.shape), np.ones(sq.shape[0]))),
      ("state.bonds", lambda: ledger_step(_state(V, M), W, _CFG)),
      ("state.bonds", lambda: run_ledger(_state(V, M), W, _CFG, epochs=2)),
      ("state.bonds", lambda: ledger_step(_state(0, 0, _C2020), sq, _C2020)),
      ("shares_K", lambda: split_units(jnp.zeros(min(V, M)), 100)),
      ("incentive_M" if M == 0 else "dividends_V",
       lambda: emission_split(jnp.ones(M), jnp.ones(V), jnp.ones(V), jnp.ones(V), 1.0)),
      ("w_VxM", lambda: stake_weighted_quantile(W, S, 0.5)),
  ]


@pytest.mark.parametrize("V, M", [(0, 3), (3, 0)], ids=["V=0", "M=0"])
def test_empty_shapes_raise_ledger_input_error(V, M):
  for name, fn in _empty_cases(V, M):
    with pytest.raises(LedgerInputError, match=rf"^{name}: .*empty") as e:
      fn()
    assert "\n" not in str(e.value)
  with pytest.raises(LedgerInputError, match=r"^stake_units: .*empty"):
    init_ledger(np.zeros(0, int), 3, _CFG)
  with pytest.raises(LedgerInputError, match=r"^num_miners: "):
    init_ledger(np.ones(3, int), 0, _CFG)
  with pytest.raises(LedgerInputError, match=r"^S: .*empty"):
    first_permits(np.zeros(0), _Y)


def test_empty_weight_sequences_raise_ledger_input_error():
  """T = 0 epochs in a [T, V, M] sequence: refused in one line, not an IndexError."""
  for fn in (lambda: run(np.zeros((0, 3, 2)), np.ones(3), _Y),
             lambda: run_2020(np.zeros((0, 3, 3)), np.ones(3)),
             lambda: run_ledger(_state(3, 2), np.zeros((0, 3, 2)), _CFG)):
    with pytest.raises(LedgerInputError, match=r"^W: empty sequence of shape \(0, 3, [23]\)"):
      fn()


def test_epoch_emission_bound_matches_the_int32_ledger():
  from jaxnet.ledger.state import INT32_SAFE
  assert LedgerConfig(epoch_emission=INT32_SAFE).epoch_emission == 2**30
  with pytest.raises(ConfigError, match=r"ledger\.epoch_emission: .*jax_enable_x64") as e:
    LedgerConfig(epoch_emission=INT32_SAFE + 1)
  assert "\n" not in str(e.value)
  with pytest.raises(ConfigError, match=r"ledger\.epoch_emission"):
    LedgerConfig(epoch_emission=2**31 - 1)
  assert dataclasses.replace(LedgerConfig(), epoch_emission=0).epoch_emission == 0
