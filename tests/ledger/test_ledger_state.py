"""Ledger state and history: scan runner, exact conservation, Orbax round trip, JSONL audit."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxnet.ledger import (BitTensorConfig, EpochMasks, LedgerAuditError, LedgerCheckpointer,
                           LedgerConfig, LedgerInputError, YumaConfig, audit_epoch_log,
                           cabal_toy, default_masks, epoch, init_ledger, ledger_step, run,
                           run_ledger, split_units, stored_bonds, write_epoch_log)
from jaxnet.ledger.state import first_permits


def _weights(T, V, M, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.random((T, V, M)) * (rng.random((T, V, M)) < 0.6)).astype(np.float32)


@pytest.mark.parametrize("p", [YumaConfig(max_validators=4),
                               YumaConfig(yuma3=True, liquid_alpha=True, max_validators=4)])
def test_run_scan_equals_python_loop(p):
  T, V, M = 5, 6, 4
  Ws = _weights(T, V, M)
  rng = np.random.default_rng(1)
  masks = EpochMasks(jnp.asarray(rng.random((T, V)) < 0.9), jnp.ones((T, V), bool),
                     jnp.asarray(rng.random((T, V, M)) < 0.1),
                     jnp.asarray(rng.random((T, M)) < 0.2))
  S0 = jnp.asarray(rng.uniform(0, 3, V), jnp.float32)
  S_T, B_T, outs = run(Ws, S0, p, masks=masks, emission=2.0, compound=True)
  S, B, permit = S0, jnp.zeros((V, M)), first_permits(S0, p)
  for t in range(T):
    mk = jax.tree.map(lambda m: m[t], masks)._replace(permit=permit)
    out = epoch(Ws[t], S, B, p, mk, emission=2.0)
    for k in ("consensus", "incentive", "dividends", "bonds", "validator_emission"):
      np.testing.assert_allclose(np.asarray(getattr(outs, k)[t]), np.asarray(getattr(out, k)),
                                 atol=1e-6, err_msg=f"{k} at {t}")
    S = S + out.validator_emission
    B = stored_bonds(out, B, permit, p)
    permit = out.new_permit
  np.testing.assert_allclose(np.asarray(S_T), np.asarray(S), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(B_T), np.asarray(B), atol=1e-6)
  # Constant stake without compounding (subtensor's epoch tests keep stake fixed).
  S_fixed, _, _ = run(Ws, S0, p, masks=masks)
  np.testing.assert_array_equal(np.asarray(S_fixed), np.asarray(S0))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.floats(0, 1e3, width=32), min_size=1, max_size=40),
       st.integers(0, 2**30))
def test_split_units_is_exact(shares, total):
  units = np.asarray(split_units(jnp.asarray(shares, jnp.float32), total))
  shares = np.asarray(shares, np.float64)
  if shares.sum() == 0:
    assert np.all(units == 0)
    return
  assert int(units.sum()) == total and np.all(units >= 0)
  exact = total * shares / shares.sum()
  # Within one unit plus float32 rounding of total * cumulative share.
  assert np.all(np.abs(units - exact) <= 1 + 4e-7 * total * len(shares))


def _yuma_ledger(layout="split", **kw):
  return LedgerConfig(yuma=YumaConfig(layout=layout, max_validators=5), epoch_emission=999_983,
                      **kw)


@pytest.mark.parametrize("layout", ["split", "combined"])
def test_yuma_ledger_conserves_exactly(layout):
  V = 6
  M = V if layout == "combined" else 9
  cfg = _yuma_ledger(layout)
  state = init_ledger(np.array([5, 0, 7, 1, 3, 9]) * 1000, M, cfg)
  Ws = _weights(12, V, M, seed=2)
  Ws[3] = 0  # an epoch where nobody sets weights: the fallback pays validators by stake
  new, rec = run_ledger(state, Ws, cfg)
  minted = int(new.minted)
  assert minted == 12 * 999_983
  paid = int(new.miner_balance.sum()) + int(new.validator_balance.sum()) + int(new.owner_balance)
  assert paid == minted  # exact integer equality, not to rounding
  per_epoch = (np.asarray(rec.server_units).sum(1) + np.asarray(rec.validator_units).sum(1)
               + np.asarray(rec.owner))
  np.testing.assert_array_equal(per_epoch, np.asarray(rec.minted))
  staked = np.asarray(rec.validator_units).sum()
  if layout == "combined":
    staked += np.asarray(rec.server_units).sum()
  assert int(new.stake.sum()) - int(state.stake.sum()) == staked  # compounding
  assert int(new.owner_balance) == 12 * int(999_983 * cfg.owner_cut)
  assert np.asarray(rec.server_units)[3].sum() == 0
  if layout == "split":  # validator 1 never has stake, so even the fallback pays it nothing
    assert np.asarray(new.validator_balance)[1] == 0 and np.asarray(rec.validator_units)[3, 0] > 0


def test_2020_ledger_conserves_and_tracks_the_toy():
  cfg = LedgerConfig(mechanism="bittensor2020", bittensor=BitTensorConfig(tau=0.1))
  state = init_ledger([510_000, 490_000], None, cfg)
  new, rec = run_ledger(state, np.eye(2), cfg, epochs=40)
  minted = np.asarray(rec.minted)
  assert int(new.stake.sum()) - 1_000_000 == int(minted.sum()) == int(new.minted)
  np.testing.assert_array_equal(np.asarray(rec.server_units).sum(1), minted)
  share = np.asarray(new.stake)[1] / np.asarray(new.stake).sum()
  np.testing.assert_allclose(share, float(cabal_toy(0.51, 0.49, blocks=40)[-1]), atol=1e-4)


def test_degenerate_ledger_zero_stake_and_no_weights():
  cfg = _yuma_ledger()
  state = init_ledger(np.zeros(4, int), 3, cfg)
  new, _ = run_ledger(state, np.zeros((4, 3)), cfg, epochs=3)
  assert int(new.validator_balance.sum()) + int(new.owner_balance) == int(new.minted)
  assert np.ptp(np.asarray(new.validator_balance)) <= 3  # split equally (±1 unit per epoch)


def test_vmap_ledger_step_over_stake_draws():
  cfg = _yuma_ledger()
  stakes = jnp.asarray(np.random.default_rng(3).integers(0, 1000, (16, 6)), jnp.int32)
  W = jnp.asarray(_weights(1, 6, 9)[0])
  base = init_ledger(np.zeros(6, int), 9, cfg)
  batch = jax.tree.map(lambda x: jnp.broadcast_to(x, (16,) + x.shape), base)
  permits = jax.vmap(lambda s: first_permits(s, cfg.yuma))(stakes)
  batch = batch._replace(stake=stakes, permit=permits)
  new, rec = jax.jit(jax.vmap(lambda st: ledger_step(st, W, cfg)))(batch)
  totals = np.asarray(rec.server_units).sum(1) + np.asarray(rec.validator_units).sum(1)
  np.testing.assert_array_equal(totals + np.asarray(rec.owner), np.asarray(rec.minted))
  one, _ = jax.jit(ledger_step, static_argnums=2)(jax.tree.map(lambda x: x[5], batch), W, cfg)
  np.testing.assert_array_equal(np.asarray(new.validator_balance[5]),
                                np.asarray(one.validator_balance))


def test_checkpoint_round_trip_and_bitwise_resume(tmp_path):
  cfg = dataclasses.replace(_yuma_ledger(), yuma=YumaConfig(yuma3=True, max_validators=5))
  state0 = init_ledger(np.array([5, 2, 7, 1, 3, 9]) * 100, 9, cfg)
  Ws = _weights(8, 6, 9, seed=4)
  straight, _ = run_ledger(state0, Ws, cfg)
  half, _ = run_ledger(state0, Ws[:4], cfg)
  with LedgerCheckpointer(tmp_path / "ckpt", keep=2) as ck:
    assert ck.save(half) == 4
  with LedgerCheckpointer(tmp_path / "ckpt") as ck:
    assert ck.latest_step() == 4
    restored = ck.restore(like=state0)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(half)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  resumed, _ = run_ledger(restored, Ws[4:], cfg)
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_epoch_log_audits_to_the_balances(tmp_path):
  cfg = _yuma_ledger()
  state = init_ledger(np.array([5, 2, 7, 1, 3, 9]) * 100, 9, cfg)
  log = tmp_path / "ledger.jsonl"
  Ws = _weights(6, 6, 9, seed=5)
  mid, rec1 = run_ledger(state, Ws[:3], cfg)
  end, rec2 = run_ledger(mid, Ws[3:], cfg)
  assert write_epoch_log(log, rec1, append=False) == 3
  write_epoch_log(log, rec2)
  totals = audit_epoch_log(log)
  assert totals["epochs"] == 6 and totals["minted"] == int(end.minted)
  assert totals["owner"] == int(end.owner_balance)
  for key, bal in (("miners", end.miner_balance), ("validators", end.validator_balance)):
    got = np.zeros(len(bal), int)
    for uid, units in totals[key].items():
      got[uid] = units
    np.testing.assert_array_equal(got, np.asarray(bal))
  lines = log.read_text().splitlines()
  assert [json.loads(x)["epoch"] for x in lines] == list(range(6))
  bad = json.loads(lines[2])
  bad["validators"][0][1] += 1  # someone quietly pays themselves one more unit
  lines[2] = json.dumps(bad)
  log.write_text("\n".join(lines) + "\n")
  with pytest.raises(LedgerAuditError, match=r"ledger.jsonl:3: epoch 2 minted \d+ but paid \d+"):
    audit_epoch_log(log)


def test_ledger_boundary_errors():
  cfg = _yuma_ledger()
  with pytest.raises(LedgerInputError, match="fractional"):
    init_ledger([1.5, 2.0], 3, cfg)
  with pytest.raises(LedgerInputError, match="stake_units: negative"):
    init_ledger([-1, 2], 3, cfg)
  state = init_ledger([10, 20], 3, cfg)
  with pytest.raises(LedgerInputError, match=r"W: shape \(2, 4\) does not match expected \(2, 3\)"):
    run_ledger(state, np.ones((2, 4)), cfg, epochs=2)
  with pytest.raises(LedgerInputError, match="W: non-finite"):
    run_ledger(state, np.full((2, 3), np.nan), cfg, epochs=2)
  with pytest.raises(LedgerInputError, match="totals could reach"):
    run_ledger(state, np.ones((2, 3)), cfg, epochs=5000)  # 5e9 units overflow int32
  hot = LedgerConfig(mechanism="bittensor2020", bittensor=BitTensorConfig(tau=1.0))
  with pytest.raises(LedgerInputError, match="totals could reach"):
    run_ledger(init_ledger([10, 20], None, hot), np.eye(2), hot, epochs=40)


def test_run_rejects_masks_without_time_axis():
  msg = r"masks.active: mask shape \(3,\) does not match expected \(4, 3\)"
  with pytest.raises(LedgerInputError, match=msg):
    run(np.ones((4, 3, 2)), np.ones(3), masks=default_masks(3, 2))
