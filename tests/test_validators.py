"""Many validators with stake (issue 13): one jitted call, commit-reveal, the chain step."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from jaxnet.config import load_config
from jaxnet.configbase import ConfigError
from jaxnet.gauntlet import collect
from jaxnet.gauntlet.validator import score_round
from jaxnet.ledger import LedgerConfig, YumaConfig, init_ledger
from jaxnet.ledger import commit_reveal as cr
from jaxnet.sim import chain, network

SIM_TINY = Path(__file__).resolve().parents[1] / "configs" / "sim-tiny.yaml"
PEERS = '["honest:3", "noise:1", "copier:1"]'
BASE = ["--sim.rounds", "3", "--sim.ledger_every", "1", "--checkpoint.every", "2",
        "--sim.peers", PEERS, "--sim.validators", "3", "--sim.validator_stake", "[3.0, 1.0, 2.0]",
        "--sim.validator_behaviours", '["honest", "sampled:2", "copier:0"]']


@pytest.fixture(scope="module")
def three(tmp_path_factory):
  out = tmp_path_factory.mktemp("three")
  return network.simulate(load_config(SIM_TINY, BASE + ["--train.out_dir", str(out)]),
                          progress=False)


def test_v_validators_in_one_call_equal_a_loop_over_validators(three):
  net, st = three["network"], three["state"]
  w = int(st.window)
  lr_t = net.scheme.step_size(w)
  net.upload(st, w, lr_t)
  inputs, _ = net.validator_inputs(w)
  rand_V, keys_V = net.validator_randomness(w, inputs)
  _, rep_V = net.validators.round(st.validator, inputs, rand_V, st.params, w, lr_t, keys_V)
  assert net.validators.groups == ((0, (0, 2)), (2, (1,)))   # a vmapped pair and a single
  for v, upw in enumerate((0, 2, 0)):
    one = jax.jit(score_round, static_argnames=("cfg", "layout", "model_cfg", "mesh"))
    sv = jax.tree.map(lambda x: x[v], st.validator)
    rand = {k: x[v] for k, x in rand_V.items()}
    _, rep = one(sv, inputs._replace(rand=rand), st.params, jnp.int32(w), jnp.float32(lr_t),
                 keys_V[v], cfg=dataclasses.replace(net.cfg.gauntlet, uids_per_window=upw),
                 layout=net.layout, model_cfg=net.cfg.model, mesh=net.mesh)
    for k, x in rep.items():
      # the value-sketch cosine sums 16384 buckets; vmap's batched matmul adds them in
      # another order (float32: a few 1e-6); every other term holds at 1e-6
      tol = 1e-5 if k == "max_overlap" else 1e-6
      np.testing.assert_allclose(np.asarray(rep_V[k][v], np.float64), np.asarray(x, np.float64),
                                 rtol=tol, atol=tol, err_msg=f"validator {v}: {k}")
  # independent randomness: validators 0 and 2 evaluate the same uids on other random pages
  assert not np.array_equal(rand_V["inputs"][0], rand_V["inputs"][2])
  assert rep_V["evaluated"][1].sum() <= 2 < rep_V["evaluated"][0].sum()


@pytest.mark.slow   # 30 s; the one-call test checks a group of one against score_round in CI
def test_one_validator_gives_the_single_validator_round(tmp_path):
  """With V = 1 the network's round is today's single-validator round on the same inputs."""
  cfg = load_config(SIM_TINY, ["--sim.rounds", "2", "--sim.peers", PEERS,
                               "--train.out_dir", str(tmp_path)])
  res = network.simulate(cfg, progress=False)
  net = res["network"]
  # round 0 from the initial state (later rounds depend on the outer step's params)
  rec = res["history"][0]
  init = net.init_state()
  inputs, _ = net.validator_inputs(0)   # the uploads are still in the storage
  _, rep = net.validator.round(jax.tree.map(lambda x: x[0], init.validator), inputs,
                               init.params, 0, net.scheme.step_size(0), net.round_key(0))
  for k, x in rep.items():
    np.testing.assert_array_equal(np.asarray(rec["report"][k]), np.asarray(x), err_msg=k)


@pytest.mark.slow   # CI covers the network's kill-and-resume in tests/test_sim.py
def test_kill_and_resume_with_validators_and_commit_reveal_is_bit_exact(three, tmp_path):
  cfg = load_config(SIM_TINY, BASE + ["--train.out_dir", str(tmp_path)])
  network.simulate(cfg, progress=False, stop_after=2)
  resumed = network.simulate(cfg, progress=False)
  assert resumed["start"] == 2
  for a, b in zip(jax.tree.leaves(three["state"]), jax.tree.leaves(resumed["state"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert three["history"][-1]["ledger"] == resumed["history"][-1]["ledger"]


def test_the_network_ledger_equals_a_replay_of_its_recorded_rows(three):
  """The chain never feeds back into training, so replaying the recorded validator rows
  through `run_chain` gives the network's ledger exactly (the experiments rely on it)."""
  net, hist = three["network"], three["history"]
  ep = [r for r in hist if r["ledger"]]
  rows = jnp.asarray([r["validator_weights"] for r in ep], jnp.float32)
  active = jnp.asarray([r["report"]["present"] for r in ep], bool)
  state, logs = chain.run_chain_jit(net.ledger.init(), rows, active, spec=net.ledger.spec)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(three["state"].ledger)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.asarray(logs["validator_units"]).tolist() == [r["ledger"]["validator_units"] for r in ep]


def test_every_epoch_of_the_network_conserves_emission_exactly(three):
  for rec in three["history"]:
    g = rec["ledger"]
    if g:
      assert g["owner"] + sum(g["miner_units"]) + sum(g["validator_units"]) == g["minted"]


# --------------------------------------------------------------------------- commit-reveal

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(R=st.integers(0, 3), commits=st.lists(st.lists(st.booleans(), min_size=3, max_size=3),
                                             min_size=1, max_size=9))
def test_commit_reveal_never_shows_a_row_before_its_reveal_window(R, commits):
  V, M = 3, 4
  s = cr.init(V, M, R)
  history = {}   # (v, epoch) -> row committed
  for e, mask in enumerate(commits):
    rows = np.stack([np.full(M, 100 * e + v, np.float32) for v in range(V)])
    # what anyone can read before this epoch's reveal: commits of epoch <= e - 1 - R
    before = np.asarray(s.revealed_epoch)
    assert np.all((before == cr.NONE) | (before <= e - 1 - R))
    s = cr.commit(s, e, rows, np.asarray(mask))
    for v in range(V):
      if mask[v]:
        history[(v, e)] = rows[v]
    s = cr.reveal(s, e)
    got = np.asarray(s.revealed_epoch)
    for v in range(V):
      due = [t for t in range(e - R + 1) if (v, t) in history]
      want = max(due) if due else cr.NONE
      assert got[v] == want   # the latest commit that is R epochs old, never a newer one
      np.testing.assert_array_equal(np.asarray(s.revealed[v]),
                                    history[(v, want)] if due else np.zeros(M))


# --------------------------------------------------------------------------- chain step

def _spec(kinds, R=1, yuma3=False, square=False, coalition=(), boost=1.0):
  ledger = LedgerConfig(reveal_period=R, yuma=YumaConfig(yuma3=yuma3, liquid_alpha=yuma3))
  return chain.ChainSpec(kinds=tuple(kinds), coalition=tuple(coalition), boost=boost,
                         ledger=ledger, square=square)


def _fresh(spec, stake, N):
  V = len(stake)
  units = np.round(np.asarray(stake, np.float64) * 1e6)
  led = init_ledger(np.concatenate([units, np.zeros(N)]) if spec.square else units,
                    None if spec.square else N, spec.ledger)
  return chain.init_state(led, V, N, spec.ledger.reveal_period)


@pytest.mark.parametrize("R", [0, 1, 2])
def test_a_copier_reads_only_what_commit_reveal_has_revealed(R):
  V, N, T = 3, 5, 6
  spec = _spec([("honest", 0), ("honest", 0), ("copier", 0)], R=R)
  rng = np.random.default_rng(R)
  own = rng.random((T, V, N)).astype(np.float32)
  _, logs = chain.run_chain_jit(_fresh(spec, [2.0, 1.0, 1.0], N), jnp.asarray(own),
                                jnp.ones((T, N), bool), spec=spec)
  rev = np.asarray(logs["revealed_epoch"])
  # validator 2 commits at e what validator 0 committed at e - R, revealed at e + R
  for e in range(2 * R, T):
    assert rev[e, 2] == e - R and rev[e, 0] == e - R


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), spec_i=st.integers(0, 3))
def test_every_chain_epoch_conserves_emission_exactly(seed, spec_i):
  kinds = [("honest", 0), ("copier", -1), ("lazy", 1), ("colluding", 0), ("offline", 0)]
  spec = [_spec(kinds, R=1, coalition=(0,)), _spec(kinds, R=0, yuma3=True, coalition=(1, 2)),
          _spec(kinds, R=2, square=True), _spec(kinds, R=1, yuma3=True, boost=0.5,
                                                coalition=(3,))][spec_i]
  rng = np.random.default_rng(seed)
  T, N = 5, 6
  own = rng.random((T, len(kinds), N)).astype(np.float32) * (rng.random((T, len(kinds), N)) < 0.7)
  state, logs = chain.run_chain_jit(_fresh(spec, rng.random(len(kinds)) + 0.1, N),
                                    jnp.asarray(own), jnp.asarray(rng.random((T, N)) < 0.8),
                                    spec=spec)
  paid = (np.asarray(logs["owner"]) + np.asarray(logs["miner_units"]).sum(1)
          + np.asarray(logs["validator_units"]).sum(1))
  np.testing.assert_array_equal(paid, np.asarray(logs["minted"]))
  assert not np.asarray(logs["committed"])[:, 4].any()   # offline never commits


def test_an_offline_validator_leaves_the_active_stake_after_the_cutoff():
  spec = _spec([("honest", 0), ("offline", 0)], R=0)
  spec = spec._replace(ledger=dataclasses.replace(spec.ledger, activity_cutoff=2))
  T, N = 5, 3
  own = np.tile(np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], np.float32), (T, 1, 1))
  _, logs = chain.run_chain_jit(_fresh(spec, [1.0, 3.0], N), jnp.asarray(own),
                                jnp.ones((T, N), bool), spec=spec)
  act = np.asarray(logs["active"])
  assert act[:, 0].all() and act[:3, 1].all() and not act[3:, 1].any()
  # while active, its empty row (3/4 of the stake) holds the consensus at 0: no incentive
  assert np.asarray(logs["miner_units"])[:3].sum() == 0 < np.asarray(logs["miner_units"])[3:].sum()


# --------------------------------------------------------------------------- bad configs

@pytest.mark.parametrize("extra, field", [
    (["--sim.validators", "2", "--sim.validator_stake", "[1.0]"], "sim.validator_stake"),
    (["--sim.validators", "2", "--sim.validator_stake", "[1.0, -1.0]"], "sim.validator_stake"),
    (["--ledger.reveal_period", "-1"], "ledger.reveal_period"),
    (["--sim.validator_behaviours", '["honest", "lazy"]'], "sim.validator_behaviours"),
    (["--sim.validator_behaviours", '["bribed"]'], "sim.validator_behaviours[0]"),
    (["--sim.validator_behaviours", '["copier:0"]'], "sim.validator_behaviours[0]"),
    (["--sim.validator_behaviours", '["sampled:0"]'], "sim.validator_behaviours[0]"),
    (["--sim.coalition_uids", "[99]"], "sim.coalition_uids"),
])
def test_bad_validator_configs_give_one_line_errors(extra, field):
  with pytest.raises(ConfigError) as e:
    load_config(SIM_TINY, extra)
  msg = str(e.value)
  assert msg.startswith(field + ":") and "\n" not in msg, msg


def test_report_shows_the_validator_and_miner_tables(three, capsys):
  from jaxnet.cli import main
  run_dir = three["network"].cfg.train.out_dir
  assert main(["report", run_dir]) == 0
  out = capsys.readouterr().out
  assert "div/stake" in out and "sampled:2" in out and "copier:0" in out
  assert "consensus  clipped incentive  emission" in out
  assert (Path(run_dir) / "chain.png").exists()
  g = three["history"][-1]["ledger"]
  # the table's dividends per unit stake are the epoch's units over the stake it started with
  line = [x for x in out.splitlines() if x.strip().startswith("1 sampled:2")][0]
  assert f"{g['validator_units'][1] / g['stake_units'][1]:.5f}" in line
