"""Yuma Consensus epoch (spec §2.1, §3, §4): scenarios, chain tests, masks, reference."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet.ledger import (EpochMasks, LedgerInputError, YumaConfig, default_masks, epoch,
                           epoch_core, masks_from_blocks, run, stake_weighted_quantile,
                           topk_nonzero)
from jaxnet.ledger.ops import col_max_upscale
from jaxnet.ledger.reference import epoch_numpy

HALF = YumaConfig(kappa=0.5)


def arr(x):
  return np.asarray(x, np.float64)


def test_scenario_a_clipping_demo():
  """Spec §4.1 A. Expected values derived by hand from §2.1 (kappa = 0.5, beta = 1)."""
  out = epoch(arr([[.3, .7], [.6, .4], [.61, .39]]), arr([.49, .49, .02]), params=HALF)
  close = lambda x, y: np.testing.assert_allclose(arr(x), y, atol=1e-5)  # noqa: E731
  close(out.consensus, [.6, .4])                      # column medians
  close(out.prerank, [.4532, .5468])                  # .49*.3 + .49*.6 + .02*.61, ...
  close(out.rank, [.453, .3998])                      # clipped: .6 and .4
  close(out.incentive, [.453 / .8528, .3998 / .8528])
  close(out.server_trust, [.453 / .4532, .3998 / .5468])
  close(out.validator_trust, [.7, 1.0, .99])          # .3 + .4, .6 + .4, .6 + .39
  delta = np.array([[.147, .196], [.294, .196], [.012, .0078]]) / np.array([.453, .3998])
  close(out.bonds, delta)                             # no prior bonds: B = normalise(dB)
  inc = np.array([.453, .3998]) / .8528
  close(out.dividends, delta @ inc / (delta @ inc).sum())
  # The out-of-consensus validator (row 0 puts .7 above the .4 median) earns less.
  d = arr(out.dividends)
  assert d[0] / .49 < d[1] / .49


def test_scenario_c_cabal_gets_nothing():
  """Spec §4.1 C: a 40%-stake cabal weighting only its own miners gets nothing."""
  W = arr([[.5, .5, 0, 0], [.5, .5, 0, 0], [0, 0, .5, .5], [0, 0, .5, .5]])
  out = epoch(W, arr([.3, .3, .2, .2]), params=dataclasses.replace(HALF, bonds_alpha=0.1))
  np.testing.assert_allclose(arr(out.consensus), [.5, .5, 0, 0], atol=1e-6)
  np.testing.assert_allclose(arr(out.incentive), [.5, .5, 0, 0], atol=1e-6)
  np.testing.assert_allclose(arr(out.validator_trust), [1, 1, 0, 0], atol=1e-6)
  np.testing.assert_allclose(arr(out.dividends), [.5, .5, 0, 0], atol=1e-6)
  assert arr(out.server_emission)[2:].sum() == 0 and arr(out.validator_emission)[2:].sum() == 0
  np.testing.assert_allclose(arr(out.server_emission).sum() + arr(out.validator_emission).sum(),
                             1.0, rtol=1e-6)


ONE, TWO = [1.0, 0.0], [0.0, 1.0]
# Spec §4.1 B / subtensor test_yuma_3_kappa_moves_first: big validator moves first.
KAPPA_FIRST = [[ONE, ONE, ONE], [TWO, ONE, ONE], [TWO, TWO, ONE], [TWO, TWO, TWO],
               [TWO, TWO, TWO], [TWO, TWO, TWO]]


def test_chain_yuma3_kappa_moves_first():
  """Chain-exact targets of subtensor `test_yuma_3_kappa_moves_first` (1e-3, u16 mode)."""
  p = YumaConfig(bonds_penalty=0.0, bonds_alpha=1 - 0.975, yuma3=True, liquid_alpha=True,
                 alpha_low=0.1, alpha_high=0.3, alpha_steepness=1000.0, max_validators=3,
                 u16=True)
  _, _, outs = run(arr(KAPPA_FIRST), arr([8, 1, 1]), p)
  bonds = [[[.1013, 0], [.1013, 0], [.1013, 0]], [[.0908, .1013], [.3697, 0], [.3697, 0]],
           [[.0815, .1924], [.3170, .1013], [.5580, 0]],
           [[.0731, .2742], [.2765, .1924], [.4306, .1013]],
           [[.0656, .3478], [.2435, .2742], [.3589, .1924]],
           [[.0588, .4139], [.2157, .3478], [.3089, .2742]]]
  divs = [[.8, .1, .1], [1, 0, 0], [.9382, .0618, 0], [.8819, .0773, .0407],
          [.8564, .0844, .0592], [.8418, .0884, .0697]]
  np.testing.assert_allclose(arr(outs.bonds), bonds, atol=1e-3)
  np.testing.assert_allclose(arr(outs.dividends), divs, atol=1e-3)


def _test_bonds_weights():
  """The weight schedule of subtensor `test_bonds` (combined layout, 4 validators, 4 servers)."""
  w = np.zeros((8, 8))
  w[:4, 4:] = np.array([65535 // 4, 65535 // 2, (65535 // 4) * 3, 65535]) / 65535
  seq = [w.copy()]
  for uid in (0, 1, 2):  # validators 1-3 in turn set only a self-weight
    w[uid] = 0
    w[uid, uid] = 1
    seq.append(w.copy())
  w[2] = 0
  w[2, 7] = 1  # validator 3 then puts everything on server 4
  return np.stack(seq + [w.copy()] * 3)


def test_chain_test_bonds_yuma2_stored_u16():
  """Stored u16 bonds asserted by subtensor `test_bonds` (stake 1:2:3:4, Yuma 2, beta = 1).

  Ours use float32 where the chain uses I32F32, so the chain's last-bit drift is allowed:
  within 2 u16 units (3e-5), far inside the 1e-3 the chain tests use.
  """
  p = YumaConfig(layout="combined", max_validators=8, u16=True)
  Ws = _test_bonds_weights()
  S = arr([1, 2, 3, 4, 0, 0, 0, 0])
  expect = {0: (4, [16383, 32767, 49151, 65535]), 1: (4, [14582, 32767, 49151, 65535]),
            2: (4, [12603, 28321, 49151, 65535]), 3: (7, [12602, 28320, 49150, 65535]),
            4: (7, [10951, 24609, 49150, 65535]), 5: (7, [9559, 21482, 49150, 65535]),
            6: (7, [8376, 18824, 49150, 65535])}
  _, B_T, outs = run(Ws, S, p)
  for t, (col, want) in expect.items():
    # What the chain stores: column max-upscaled, truncated to u16 (§2.1 step 11a.5).
    stored = np.floor(np.asarray(col_max_upscale(outs.bonds[t])) * 65535)
    np.testing.assert_allclose(stored[:4, col], want, atol=2.0, err_msg=f"epoch {t}")
  np.testing.assert_array_equal(np.asarray(B_T) * 65535, stored)  # the carried state
  # Epoch 3: the only weight setter holds 0.4 < kappa, consensus is 0 and emission falls
  # back to stake (chain log: nE = [.1, .2, .3, .4, 0, ...]).
  np.testing.assert_allclose(arr(outs.validator_emission[3])[:4], [.1, .2, .3, .4], atol=1e-6)
  assert arr(outs.server_emission[3]).sum() == 0
  # Epoch 1: validator 1 (self-weight only) has an empty row: Tv = 0, no new bonds, and
  # its bonds decay at rate alpha (0.9 * 0.1 before renormalisation, chain emaB 0.08999).
  assert float(outs.validator_trust[1][0]) == 0.0
  np.testing.assert_allclose(float(outs.bonds[1][0, 4]), 0.0899967, atol=2e-5)


@pytest.mark.parametrize("yuma3", [False, True])
def test_scenario_b_dividends_independent_of_beta(yuma3):
  """Spec §4.1 B: with one-hot weights dividends do not depend on beta; server-1 bonds do."""
  runs = []
  for beta in (0.0, 1.0):
    p = YumaConfig(kappa=0.5, bonds_penalty=beta, bonds_alpha=0.1, yuma3=yuma3)
    runs.append(run(arr(KAPPA_FIRST), arr([.8, .1, .1]), p)[2])
  np.testing.assert_allclose(arr(runs[0].dividends), arr(runs[1].dividends), atol=1e-6)
  assert np.max(np.abs(arr(runs[0].bonds)[:, :, 0] - arr(runs[1].bonds)[:, :, 0])) > 1e-2


def test_scenario_b_yuma3_fixed_alpha_bonds_are_weight_ema():
  """Yuma 3, fixed alpha = .1, beta = 0: bonds are the EMA of the weights (§2.1 11b.2)."""
  p = YumaConfig(kappa=0.5, bonds_penalty=0.0, bonds_alpha=0.1, yuma3=True)
  _, _, outs = run(arr(KAPPA_FIRST), arr([.8, .1, .1]), p)
  b = np.zeros((3, 2))
  for t, w in enumerate(KAPPA_FIRST):
    b = 0.9 * b + 0.1 * np.asarray(w)
    np.testing.assert_allclose(arr(outs.bonds[t]), b, atol=1e-6)
    # Incentive is one-hot on the big validator's server (its .8 stake sets both medians).
    inc = np.asarray(w[0])
    bn = b / np.where(b.sum(0) > 0, b.sum(0), 1)
    d = np.array([.8, .1, .1]) * (bn @ inc)
    np.testing.assert_allclose(arr(outs.dividends[t]), d / d.sum(), atol=1e-6)


@pytest.mark.parametrize("p", [
    YumaConfig(kappa=0.5, bonds_penalty=0.0, yuma3=True),
    YumaConfig(kappa=0.5, bonds_penalty=0.0, yuma3=True, liquid_alpha=True, alpha_low=0.1,
               alpha_high=0.3),
    YumaConfig(kappa=0.5, bonds_penalty=0.0, yuma3=False)])
def test_scenario_b_laggards_fall_then_recover(p):
  """Spec §3 item 4: laggards' dividend share falls below stake share, then recovers."""
  _, _, outs = run(arr(KAPPA_FIRST), arr([.8, .1, .1]), p)
  lazy = arr(outs.dividends)[:, 2]  # the validator that moves last
  assert lazy[0] == pytest.approx(0.1, abs=1e-6)
  assert lazy[1] < 0.1 and lazy[2] < 0.1  # lagging
  assert np.all(np.diff(lazy[2:]) > 0)    # recovering once it follows


def test_cabal_down_weighting_honest_miners_changes_nothing():
  """Spec §3 item 2: a minority below kappa cannot move honest miners' medians.

  The honest validators agree (identical rows), so their median is their common weight;
  a cabal holding 0.3 / 1.3 of the stake that zeroes the honest miners and weights its
  own miners leaves every honest c_j and honest incentive (up to normalisation) unchanged.
  """
  rng = np.random.default_rng(3)
  row = rng.uniform(0.1, 1.0, 6)
  honest = np.hstack([np.tile(row, (5, 1)), np.zeros((5, 2))])
  S_h = rng.uniform(1, 2, 5)
  base = epoch(honest, S_h, params=HALF)
  cabal = np.hstack([np.zeros((3, 6)), np.ones((3, 2))])
  cabal_stake = np.full(3, 0.1 * S_h.sum())
  both = epoch(np.vstack([honest, cabal]), np.concatenate([S_h, cabal_stake]), params=HALF)
  np.testing.assert_allclose(arr(both.consensus), arr(base.consensus), atol=1e-6)
  np.testing.assert_allclose(arr(both.consensus)[6:], 0.0)  # the cabal's miners: nothing
  inc_b, inc_h = arr(both.incentive), arr(base.incentive)
  np.testing.assert_allclose(inc_b[:6] / inc_b[:6].sum(), inc_h[:6], atol=1e-6)
  assert inc_b[6:].sum() == 0 and arr(both.dividends)[5:].sum() == 0


def test_masks_inactive_outdated_recent():
  """Spec §2.1 steps 1, 4, 5, 11; §3 item 7."""
  W = arr([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
  S = arr([3, 1, 2, 2])
  # Inactive stake leaves the median: without validator 0, column 0 loses its majority.
  mk = default_masks(4, 3)._replace(active=jnp.asarray([False, True, True, True]))
  out = epoch(W, S, params=HALF, masks=mk)
  assert float(out.active_stake[0]) == 0 and float(out.consensus[0]) == 0
  assert float(epoch(W, S, params=HALF).consensus[0]) == 1.0
  # Outdated weights are removed before row normalisation.
  mk = default_masks(4, 3)._replace(outdated=jnp.asarray(np.eye(4, 3, dtype=bool)))
  out = epoch(W + 0.5, S, params=HALF, masks=mk)
  np.testing.assert_allclose(arr(out.weights)[0], [0, .5, .5])
  # Bonds to recently registered miners are reset (no inherited bonds on a sniped UID).
  B_prev = np.full((4, 3), 0.5)
  mk = default_masks(4, 3)._replace(recently_registered=jnp.asarray([False, False, True]))
  for p in (HALF, dataclasses.replace(HALF, yuma3=True)):
    out = epoch(np.zeros((4, 3)), S, B_prev, p, mk)
    assert np.all(arr(out.bonds)[:, 2] == 0) and np.all(arr(out.bonds)[:, :2] > 0)


def test_masks_from_blocks_follow_chain_comparisons():
  mk = masks_from_blocks([100, 5000, 10], [0, 50, 90], current_block=5100, tempo=360,
                         activity_cutoff=5000)
  np.testing.assert_array_equal(np.asarray(mk.active), [True, True, False])  # 10+5000 < 5100
  np.testing.assert_array_equal(np.asarray(mk.outdated),
                                [[False, False, False], [False, False, False],
                                 [False, True, True]])  # updated at/before registration
  mk = masks_from_blocks([100], [4800], current_block=5100, tempo=360, activity_cutoff=5000,
                         commit_block_V=[4700])
  assert bool(mk.recently_registered[0]) and bool(mk.outdated[0, 0])


def test_fallback_when_nobody_sets_weights():
  """Spec §2.1 step 12: all to validators by active stake, else stake, else (ours) equally."""
  S = arr([1, 3, 0, 4])
  out = epoch(np.zeros((4, 2)), S)
  np.testing.assert_allclose(arr(out.validator_emission), S / 8, atol=1e-7)
  assert arr(out.server_emission).sum() == 0
  mk = default_masks(4, 2)._replace(active=jnp.zeros(4, bool))
  np.testing.assert_allclose(arr(epoch(np.ones((4, 2)), S, masks=mk).validator_emission), S / 8,
                             atol=1e-7)
  out = epoch(np.ones((4, 2)), np.zeros(4), emission=2.0)
  np.testing.assert_allclose(arr(out.validator_emission), [.5] * 4, atol=1e-7)


def test_permits_topk_tie_order_owner_and_threshold():
  # Chain `is_topk_nonzero`: ascending stable sort drops the lower index among equals.
  np.testing.assert_array_equal(np.asarray(topk_nonzero(jnp.asarray([2., 1, 1, 0, 3]), 3)),
                                [True, False, True, False, True])
  np.testing.assert_array_equal(np.asarray(topk_nonzero(jnp.asarray([0., 1, 2]), 5)),
                                [False, True, True])
  p = YumaConfig(max_validators=2, owner=0, stake_threshold=1.5)
  out = epoch(np.ones((4, 3)), arr([1, 2, 3, 1.4]), params=p)
  np.testing.assert_array_equal(np.asarray(out.new_permit), [True, True, True, False])
  np.testing.assert_allclose(arr(out.stake), [1 / 6, 2 / 6, 3 / 6, 0], atol=1e-7)
  # Non-permitted rows lose their weights and stake in this epoch.
  mk = default_masks(4, 3)._replace(permit=jnp.asarray([True, False, True, True]))
  out = epoch(np.ones((4, 3)), arr([1, 2, 3, 4]), masks=mk)
  assert arr(out.weights)[1].sum() == 0 and float(out.active_stake[1]) == 0


def test_combined_layout_masks_diagonal_except_owner():
  W = np.ones((3, 3))
  out = epoch(W, arr([1, 1, 1]), params=YumaConfig(layout="combined"))
  assert np.all(np.diag(arr(out.weights)) == 0)
  out = epoch(W, arr([1, 1, 1]), params=YumaConfig(layout="combined", owner=1))
  np.testing.assert_array_equal(np.diag(arr(out.weights)) > 0, [False, True, False])


CONFIGS = [YumaConfig(), YumaConfig(median="sort"), YumaConfig(kappa=0.6, bonds_penalty=0.4),
           YumaConfig(yuma3=True), YumaConfig(yuma3=True, liquid_alpha=True),
           YumaConfig(layout="combined", owner=2, max_validators=5, stake_threshold=0.2)]


@pytest.mark.parametrize("p", CONFIGS)
def test_epoch_matches_numpy_reference(p):
  rng = np.random.default_rng(4)
  V = M = 9
  W = rng.random((V, M)) * (rng.random((V, M)) < 0.5)
  S = rng.random(V) * (rng.random(V) < 0.8)
  B = rng.random((V, M)) * (rng.random((V, M)) < 0.5)
  masks = EpochMasks(rng.random(V) < 0.9, rng.random(V) < 0.9, rng.random((V, M)) < 0.1,
                     rng.random(M) < 0.2)
  out = epoch(W, S, B, p, masks=jax.tree.map(jnp.asarray, masks), emission=3.0)
  ref = epoch_numpy(W, S, B, p, masks=masks, emission=3.0)
  for k, v in ref.items():
    np.testing.assert_allclose(arr(getattr(out, k)), v.astype(np.float64), atol=2e-6,
                               err_msg=k)


def test_default_masks_match_numpy_reference_past_max_validators():
  """Without masks both take the permits a first epoch stores: with more staked validators
  than max_validators, the smallest stakes hold none (benchmarks/ledger.py at 256 x 4096)."""
  rng = np.random.default_rng(5)
  p = YumaConfig(max_validators=4)
  W, S = rng.random((7, 5)), rng.random(7) + 0.1
  out, ref = epoch(W, S, None, p), epoch_numpy(W, S, None, p)
  assert np.count_nonzero(ref["active_stake"]) == 4
  for k, v in ref.items():
    np.testing.assert_allclose(arr(getattr(out, k)), v.astype(np.float64), atol=2e-6, err_msg=k)


def test_vmap_over_scenarios_equals_loop():
  rng = np.random.default_rng(5)
  Ws = jnp.asarray(rng.random((6, 5, 7)), jnp.float32)
  Ss = jnp.asarray(rng.random((6, 5)), jnp.float32)
  batched = jax.jit(jax.vmap(lambda w, s: epoch_core(w, s, None, YumaConfig())))(Ws, Ss)
  for b in range(6):
    one = epoch(Ws[b], Ss[b])
    for k in ("consensus", "incentive", "dividends", "bonds", "validator_emission"):
      np.testing.assert_allclose(arr(getattr(batched, k)[b]), arr(getattr(one, k)), atol=1e-6)


def test_median_methods_agree_exactly_at_scale():
  rng = np.random.default_rng(6)
  W = jnp.asarray(rng.random((64, 300)) * (rng.random((64, 300)) < 0.4), jnp.float32)
  a = jnp.asarray(rng.integers(0, 4, 64), jnp.float32)
  for kappa in (0.0, 32767 / 65535, 0.8, 1.0):
    np.testing.assert_array_equal(np.asarray(stake_weighted_quantile(W, a, kappa, "sort")),
                                  np.asarray(stake_weighted_quantile(W, a, kappa, "bisect")))


@pytest.mark.parametrize("args,msg", [
    ((np.ones((2, 3)), arr([1, -1])), r"S: negative value -1.0 at index 1"),
    ((np.array([[1, np.nan, 0], [0, 1, 0]]), arr([1, 1])),
     r"W: non-finite value \(NaN/Inf\) at \[0, 1\]"),
    ((-np.ones((2, 3)), arr([1, 1])), r"W: negative value"),
    ((np.ones((2, 3)), arr([1, 1, 1])), r"S: length 3 does not match 2 rows of W"),
    ((np.ones((2, 3)), arr([1, 1]), np.ones((3, 2))), r"B_prev: shape \(3, 2\) does not match"),
    ((np.ones(3), arr([1, 1, 1])), r"W: expected a 2-D"),
])
def test_malformed_inputs_raise(args, msg):
  with pytest.raises(LedgerInputError, match=msg):
    epoch(*args)


def test_malformed_masks_and_layout_raise():
  with pytest.raises(LedgerInputError, match="masks.outdated: mask shape"):
    epoch(np.ones((2, 3)), arr([1, 1]), masks=default_masks(2, 2))
  with pytest.raises(LedgerInputError, match="combined layout needs a square"):
    epoch(np.ones((2, 3)), arr([1, 1]), params=YumaConfig(layout="combined"))
  with pytest.raises(LedgerInputError, match=r"emission: must be finite"):
    epoch(np.ones((2, 3)), arr([1, 1]), emission=float("nan"))


def test_config_validation_and_defaults():
  from jaxnet.configbase import ConfigError
  from jaxnet.ledger import LedgerConfig
  with pytest.raises(ConfigError, match=r"ledger.yuma.kappa: must be in \[0, 1\]"):
    YumaConfig(kappa=1.5)
  with pytest.raises(ConfigError, match="ledger.yuma.alpha_low"):
    YumaConfig(alpha_low=0.9, alpha_high=0.7)
  with pytest.raises(ConfigError, match="ledger.owner_cut"):
    LedgerConfig(owner_cut=1.0)
  p = YumaConfig()  # spec §2.2 defaults
  assert p.kappa == 32767 / 65535 and p.bonds_penalty == 1.0 and p.bonds_alpha == 0.1
  assert (round(p.alpha_low, 4), round(p.alpha_high, 4)) == (0.7, 0.9)
  assert not p.yuma3 and not p.liquid_alpha and p.max_validators == 128
  assert hash(LedgerConfig()) == hash(LedgerConfig())  # static under jit


def test_numeric_params_are_traced_so_kappa_can_be_vmapped():
  from jaxnet.ledger.yuma import hyper_of, static_of
  W = arr([[.3, .7], [.6, .4], [.61, .39]])
  S = arr([.49, .49, .02])
  hs = jax.vmap(lambda k: hyper_of(YumaConfig(), True)._replace(kappa=k))(jnp.asarray([.3, .5, .9]))
  core = lambda h: epoch_core(W, S, None, static_of(YumaConfig()), None, 1.0, h)  # noqa: E731
  c = jax.vmap(lambda h: core(h).consensus)(hs)
  for i, k in enumerate((.3, .5, .9)):
    np.testing.assert_allclose(arr(c[i]), arr(epoch(W, S, params=YumaConfig(kappa=k)).consensus),
                               atol=1e-7)
