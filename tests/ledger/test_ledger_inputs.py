"""Every public ledger entry point refuses NaN, negative or misshapen inputs (issue 10).

Unchecked, a NaN weight minted 1,000,000 units and paid 179,995, and a negative one paid
a validator -501,114 units; the simulator calls `ledger_step` directly, so the checks
live in the exported functions, not only in `run_ledger`.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet.ledger import (BitTensorConfig, EpochMasks, LedgerConfig, LedgerInputError,
                           YumaConfig, connectivity_loss, default_masks, emission_split, epoch,
                           first_permits, inflate, init_ledger, ledger_step, ledger_step_core,
                           legacy_epoch_2020, masks_from_blocks, run, run_2020, run_ledger,
                           split_units, stake_weighted_quantile, stored_bonds)

V, M = 4, 5
YUMA = LedgerConfig(yuma=YumaConfig(max_validators=4), epoch_emission=999_983)
Y2020 = LedgerConfig(mechanism="bittensor2020")


def _w(rows=V, cols=M, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.random((rows, cols)) * (rng.random((rows, cols)) < 0.7)).astype(np.float32)


def _state(cfg=YUMA):
  n = None if cfg.mechanism == "bittensor2020" else M
  return init_ledger(np.array([5, 2, 7, 1]) * 1000, n, cfg)


def _raises(fn, match):
  with pytest.raises(LedgerInputError, match=match) as e:
    fn()
  assert "\n" not in str(e.value)


def _with(a, idx, value):
  a = np.array(a, np.float32)
  a[idx] = value
  return a


# ------------------------------------------------------------------------------ ledger_step

@pytest.mark.parametrize("cfg", [YUMA, Y2020], ids=["yuma", "2020"])
@pytest.mark.parametrize("bad, match", [
    ("nan_w", r"^W: non-finite value \(NaN/Inf\) at \[1, 2\]$"),
    ("inf_w", r"^W: non-finite value \(NaN/Inf\) at \[0, 0\]$"),
    ("negative_w", r"^W: negative value -0\.5 at \[3, 1\]$"),
    ("negative_stake", r"^state\.stake: negative value -1(\.0)? at index 2$"),
    ("w_wrong_shape", r"^W: shape \(4, 6\) does not match expected \(4, [45]\)$"),
    ("w_1d", r"^W: expected a 2-D \[rows, cols\] array, got shape \(4,\)$"),
    ("stake_wrong_length", r"^state\.stake: length 3 does not match 4 rows of state\.bonds$"),
    ("nan_bonds", r"^state\.bonds: non-finite value"),
    ("balance_wrong_shape", r"^state\.miner_balance: shape \(2,\) does not match expected"),
    ("not_a_state", r"^state: expected a LedgerState, got dict$"),
])
def test_ledger_step_refuses(cfg, bad, match):
  state = _state(cfg)
  n_cols = state.bonds.shape[1]
  W = _w(V, n_cols)
  if bad == "nan_w":
    W = _with(W, (1, 2), np.nan)
  elif bad == "inf_w":
    W = _with(W, (0, 0), np.inf)
  elif bad == "negative_w":
    W = _with(W, (3, 1), -0.5)
  elif bad == "negative_stake":
    state = state._replace(stake=state.stake.at[2].set(-1))
  elif bad == "w_wrong_shape":
    W = np.ones((V, 6), np.float32)
  elif bad == "w_1d":
    W = np.ones(V, np.float32)
  elif bad == "stake_wrong_length":
    state = state._replace(stake=state.stake[:3])
  elif bad == "nan_bonds":
    state = state._replace(bonds=state.bonds.at[0, 1].set(jnp.nan))
  elif bad == "balance_wrong_shape":
    state = state._replace(miner_balance=jnp.zeros(2, state.miner_balance.dtype))
  elif bad == "not_a_state":
    state = state._asdict()
  _raises(lambda: ledger_step(state, W, cfg), match)


def test_ledger_step_checks_masks_config_and_headroom():
  state, W = _state(), _w()
  bad = default_masks(V, M)._replace(outdated=jnp.zeros((M, V), bool))
  _raises(lambda: ledger_step(state, W, YUMA, bad),
          r"^masks\.outdated: mask shape \(5, 4\) does not match expected \(4, 5\)$")
  _raises(lambda: ledger_step(state, W, YUMA, {"active": None}),
          r"^masks: expected EpochMasks or None, got dict$")
  _raises(lambda: ledger_step(state, W, YumaConfig()), r"^config: expected a LedgerConfig")
  full = state._replace(minted=jnp.asarray(2**30 - 10, state.minted.dtype))
  if state.minted.dtype == jnp.int32:
    _raises(lambda: ledger_step(full, W, YUMA), r"^ledger: totals could reach")


def test_ledger_step_valid_inputs_conserve_exactly_and_match_the_core():
  """Checks change nothing for valid input: same result as the core, minted == paid."""
  state = _state()
  paid_before = 0
  for t in range(6):
    W = _w(seed=t)
    if t == 2:
      W[:] = 0                          # nobody sets weights: the fallback pays validators
    new, rec = ledger_step(state, W, YUMA)
    ref, ref_rec = ledger_step_core(state, jnp.asarray(W), YUMA)
    for a, b in zip(jax.tree.leaves((new, rec)), jax.tree.leaves((ref, ref_rec))):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    paid = (int(rec.server_units.sum()) + int(rec.validator_units.sum()) + int(rec.owner))
    assert int(rec.minted) == paid == 999_983
    assert np.all(np.asarray(rec.server_units) >= 0) and np.all(np.asarray(rec.validator_units) >= 0)
    state = new
    paid_before += paid
  total = (int(state.miner_balance.sum()) + int(state.validator_balance.sum())
           + int(state.owner_balance))
  assert total == int(state.minted) == paid_before == 6 * 999_983
  # The 2020 ledger: everything minted goes into stake.
  s20 = _state(Y2020)
  new, rec = ledger_step(s20, _w(V, V), Y2020)
  assert int(new.stake.sum()) - int(s20.stake.sum()) == int(rec.minted) > 0


def test_ledger_step_still_traces_under_jit_and_scan():
  """Traced inputs get the shape checks only, so the checked step composes with jit/scan."""
  state = _state()
  Ws = jnp.asarray(np.stack([_w(seed=t) for t in range(3)]))
  scanned, _ = jax.lax.scan(lambda st, w: ledger_step(st, w, YUMA), state, Ws)
  looped = state
  for t in range(3):
    looped, _ = jax.jit(ledger_step, static_argnums=2)(looped, Ws[t], YUMA)
  np.testing.assert_array_equal(np.asarray(scanned.validator_balance),
                                np.asarray(looped.validator_balance))
  with pytest.raises(LedgerInputError, match=r"W: shape \(4, 3\)"):
    jax.jit(ledger_step, static_argnums=2)(state, jnp.ones((V, 3)), YUMA)


def test_run_ledger_checks_the_state_too():
  state = _state()
  _raises(lambda: run_ledger(state._replace(stake=state.stake.at[0].set(-3)), _w(), YUMA,
                             epochs=2), r"^state\.stake: negative value")
  _raises(lambda: run_ledger(state, _w(), YUMA, epochs=2.5), r"^epochs: must be an int >= 0")
  _raises(lambda: init_ledger([1, 2], 0, YUMA), r"^num_miners: must be an int >= 1")


# ------------------------------------------------------------------------------ inflate

@pytest.mark.parametrize("S, inc, tau, match", [
    ([3.0, np.nan, 1.0], [0.2, 0.3, 0.5], 0.1, r"^S: non-finite value \(NaN/Inf\) at index 1$"),
    ([3.0, -2.0, 1.0], [0.2, 0.3, 0.5], 0.1, r"^S: negative value -2\.0 at index 1$"),
    ([3.0, 2.0, 1.0], [0.2, np.nan, 0.5], 0.1, r"^incentive: non-finite value"),
    ([3.0, 2.0, 1.0], [0.2, -0.3, 0.5], 0.1, r"^incentive: negative value -0\.3 at index 1$"),
    ([3.0, 2.0, 1.0], [0.5, 0.5], 0.1, r"^incentive: length 2 does not match 3 entries of S$"),
    ([[3.0, 2.0]], [0.5, 0.5], 0.1, r"^S: expected a 1-D array, got shape \(1, 2\)$"),
    ([3.0, 2.0, 1.0], [0.2, 0.3, 0.5], float("nan"), r"^tau: must be finite and >= 0, got nan$"),
    ([3.0, 2.0, 1.0], [0.2, 0.3, 0.5], -0.1, r"^tau: must be finite and >= 0, got -0\.1$"),
    ([3.0, 2.0, 1.0], [0.2, 0.3, 0.5], [0.1, 0.1], r"^tau: expected a scalar"),
])
def test_inflate_refuses(S, inc, tau, match):
  _raises(lambda: inflate(np.asarray(S), np.asarray(inc), tau), match)


def test_inflate_valid_still_mints_tau_total():
  S = jnp.asarray([3.0, 1.0, 0.0, 6.0])
  new = np.asarray(inflate(S, jnp.asarray([0.1, 0.0, 0.6, 0.3]), 0.1))
  np.testing.assert_allclose(new - np.asarray(S), [0.1, 0.0, 0.6, 0.3], atol=1e-6)
  # Under jit the values are traced: only shapes are checked, and the result is the same.
  np.testing.assert_allclose(np.asarray(jax.jit(inflate)(S, jnp.asarray([0.1, 0.0, 0.6, 0.3]),
                                                         0.1)), new, atol=1e-6)


# ------------------------------------------------------------------------------ the rest

def test_other_entry_points_refuse_bad_inputs():
  W, S = _w(), np.array([1.0, 2.0, 0.0, 3.0], np.float32)
  y = YumaConfig(max_validators=4)
  _raises(lambda: split_units(jnp.asarray([1.0, -1.0, 2.0]), 100),
          r"^shares_K: negative value -1\.0 at index 1$")
  _raises(lambda: split_units(jnp.asarray([1.0, np.nan]), 100), r"^shares_K: non-finite")
  _raises(lambda: split_units(jnp.ones(3), 10.5), r"^total: must be a whole number, got 10\.5$")
  _raises(lambda: split_units(jnp.ones(3), -4), r"^total: must be finite and in \[0, ")
  _raises(lambda: emission_split(jnp.ones(M), jnp.ones(V), jnp.ones(V), jnp.ones(3), 1.0),
          r"^stake_V: length 3 does not match 4 entries of dividends_V$")
  _raises(lambda: emission_split(jnp.ones(M), jnp.ones(V), jnp.ones(V), jnp.ones(V), np.nan),
          r"^emission: must be finite")
  _raises(lambda: emission_split(jnp.ones(M), jnp.ones(V), jnp.ones(V), jnp.ones(V), 1.0, 1.5),
          r"^split: must be finite and in \[0, 1\], got 1\.5$")
  # A negative weight breaks the bit-pattern search of the median: refused, not mis-ranked.
  _raises(lambda: stake_weighted_quantile(_with(W, (0, 0), -0.1), S, 0.5),
          r"^w_VxM: negative value")
  _raises(lambda: stake_weighted_quantile(W, S, 1.5), r"^kappa: must be finite and in \[0, 1\]")
  _raises(lambda: stake_weighted_quantile(W, S[:3], 0.5), r"^a_V: length 3 does not match 4")
  out = epoch(W, S, None, y)
  _raises(lambda: stored_bonds(out, np.ones((V, M + 1)), out.new_permit, y),
          r"^B_prev: shape \(4, 6\) does not match expected \(4, 5\)$")
  _raises(lambda: stored_bonds(out, _with(np.ones((V, M)), (1, 1), np.nan), out.new_permit, y),
          r"^B_prev: non-finite")
  _raises(lambda: stored_bonds(out, None, np.ones(3, bool), y), r"^permit_prev_V: mask shape")
  _raises(lambda: first_permits(_with(S, 1, np.nan), y), r"^S: non-finite")
  _raises(lambda: epoch(W, S, None, YUMA), r"^params: expected a YumaConfig, got LedgerConfig$")
  _raises(lambda: run(W, S, y, epochs=2, permit0=np.ones(3, bool)), r"^permit0: mask shape")
  _raises(lambda: masks_from_blocks([1, 2], [0, 0, 0], 10, tempo=5, activity_cutoff=5,
                                    permit_V=np.ones(3, bool)), r"^permit_V: mask shape")
  _raises(lambda: masks_from_blocks([1, np.nan], [0], 10, tempo=5, activity_cutoff=5),
          r"^last_update_V: non-finite")
  sq = _w(V, V)
  _raises(lambda: legacy_epoch_2020(sq, S, 10.0, 2.0), r"^kappa: must be finite and in \[0, 1\]")
  _raises(lambda: connectivity_loss(_with(sq, (2, 2), np.nan), S), r"^W: non-finite")
  # run_2020 used to check only the first block for sign: a later negative block is refused.
  Ws = np.stack([sq, _with(sq, (1, 3), -0.25)])
  _raises(lambda: run_2020(Ws, S, BitTensorConfig()), r"^W: negative value -0\.25 at \[5, 3\]$")
  _raises(lambda: run_2020(sq, S, YumaConfig(), epochs=3), r"^params: expected a BitTensorConfig")


def test_checked_helpers_still_vmap():
  """The checks are shape-only on tracers: vmapped calls of the exported names still work."""
  rng = np.random.default_rng(2)
  Ws = jnp.asarray(rng.random((3, V, M)), jnp.float32)
  Ss = jnp.asarray(rng.random((3, V)), jnp.float32)
  c = jax.vmap(lambda w, s: stake_weighted_quantile(w, s, 0.5))(Ws, Ss)
  for b in range(3):
    np.testing.assert_array_equal(np.asarray(c[b]),
                                  np.asarray(stake_weighted_quantile(Ws[b], Ss[b], 0.5)))
  units = jax.vmap(lambda s: split_units(s, 1000))(Ss)
  np.testing.assert_array_equal(np.asarray(units).sum(1), [1000, 1000, 1000])
  masks = jax.vmap(lambda b: masks_from_blocks(jnp.asarray([1, 2, 3, 4]) + b, jnp.zeros(M, int),
                                               10, tempo=5, activity_cutoff=5))(jnp.arange(3))
  assert isinstance(masks, EpochMasks) and masks.outdated.shape == (3, V, M)
