"""Validator round: penalties for every malformed class, the round goes on, 1 vs 4 devices."""
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import skip_if_not_enough_devices
from jaxnet import data as jdata, peer, sharding as shd
from jaxnet import schemes
from jaxnet.schemes import demo
from jaxnet import model as jmodel
from jaxnet.config import load_config
from jaxnet.gauntlet import collect, fast
from jaxnet.gauntlet.validator import init_state
from jaxnet.sim import adversaries
from jaxnet.submission import to_bytes

TINY = Path(__file__).parent.parent / "configs" / "tiny.yaml"
N_HONEST = 4
# uid -> what it uploads (the validator sees only bytes and times)
KINDS = ["honest"] * N_HONEST + ["nan", "inf_lut", "wrong_k", "index_range", "truncated",
                                 "wrong_dtype", "wrong_shape", "missing", "late", "early"]
N = len(KINDS)


def _wrong_dtype(sub, layout):
  t = layout.tensors[0]
  return to_bytes(sub._replace(idx={**sub.idx, t.name: sub.idx[t.name].astype(np.int32)}), layout)


def _wrong_shape(sub, layout):
  t = layout.tensors[0]
  return to_bytes(sub._replace(idx={**sub.idx, t.name: sub.idx[t.name][:1]},
                               val={**sub.val, t.name: sub.val[t.name][:1]}), layout)


@pytest.fixture(scope="module")
def round_setup():
  cfg = load_config(TINY, ["--gauntlet.sample_rate", "0.5", "--gauntlet.gather_size", "8",
                           "--gauntlet.minimum_peers", "2"])
  corpus = jdata.load_corpus(cfg.data)
  params = jmodel.init_params(cfg.model, jax.random.key(0))
  layout = demo.make_layout(params, cfg.demo, n_pages=cfg.data.pages_per_window)
  batches = corpus.peer_batches(np.arange(N), 0)
  lr = jnp.float32(2e-3)
  subs, _, _ = jax.jit(lambda p, s, b: peer.peers_round(p, s, b, lr, layout, cfg))(
      params, peer.init_states(params, N, cfg), batches)
  subs = jax.tree.map(np.asarray, subs._replace(uid=jnp.arange(N, dtype=jnp.int32),
                                                window=jnp.zeros(N, jnp.int32)))
  own = [jax.tree.map(lambda x: x[u], subs) for u in range(N)]
  uploads, offsets = [], np.full(N, 2.0, np.float32)
  for u, kind in enumerate(KINDS):
    if kind == "honest":
      uploads.append(to_bytes(own[u], layout))
    elif kind in adversaries.MALFORMED_KINDS:
      uploads.append(adversaries.malformed_bytes(own[u], layout, kind, schemes.get(cfg)))
    elif kind == "wrong_dtype":
      uploads.append(_wrong_dtype(own[u], layout))
    elif kind == "wrong_shape":
      uploads.append(_wrong_shape(own[u], layout))
    elif kind == "missing":
      uploads.append(None)
    else:
      uploads.append(to_bytes(own[u], layout))
      offsets[u] = 15.0 if kind == "late" else -3.0
  probe = np.asarray(fast.sync_probe(params, layout))
  own_b, rand_b = collect.round_batches(corpus, N, 0, cfg.gauntlet.sample_rate, 0)
  data = {"own": own_b, "rand": rand_b, "probes": np.tile(probe, (N, 1)),
          "probe_present": np.ones(N, bool), "stake": np.zeros(N, np.float32)}
  # every uid starts with a positive record, so each penalty is visible
  state = init_state(N, cfg.gauntlet)
  sc = state.scores._replace(final=jnp.full((N,), 2.0), bma=jnp.full((N,), 0.5),
                             ever_evaluated=jnp.ones((N,), bool), waiting=jnp.ones((N,), jnp.int32))
  # ...and uploaded in the previous window, so it is active (a candidate) this round
  state = state._replace(scores=sc, last_upload=jnp.full((N,), -1, jnp.int32))
  return cfg, params, layout, uploads, offsets, data, state


def _run(round_setup, mesh=None):
  cfg, params, layout, uploads, offsets, data, state = round_setup
  v = collect.Validator(cfg, layout, N, mesh)
  return collect.validator_round(state, uploads, offsets, params, data, jax.random.key(0),
                                 validator=v, window=0, lr_t=2e-3)


def test_every_malformed_class_gets_its_penalty_and_the_round_goes_on(round_setup):
  _, report = _run(round_setup)
  kinds = np.array(KINDS)
  honest = kinds == "honest"
  # the honest peers were scored and rated in this round's match
  assert report["scored"][honest].all() and report["in_match"][honest].all()
  assert np.isfinite(report["r_rand"]).all()
  expected_reason = {"nan": "nonfinite", "inf_lut": "nonfinite", "wrong_k": "wrong_k",
                     "index_range": "index_range", "truncated": "truncated",
                     "wrong_dtype": "wrong_dtype", "wrong_shape": "wrong_shape",
                     "missing": "missing", "late": "too_late", "early": "too_early"}
  for u, kind in enumerate(KINDS):
    if kind == "honest":
      assert report["reason"][u] == ""
      continue
    assert report["reason"][u] == expected_reason[kind], (kind, report["reason"][u])
    assert not report["scored"][u]
    if kind in ("missing", "late", "early"):
      # missing or outside the put window: F x 0.75 and BMA x 0.75 (once as evaluated peer,
      # and once more if it is also in the gather list)
      times = 2 if report["in_gather"][u] else 1
      np.testing.assert_allclose(report["final"][u], 2.0 * 0.75 ** times, rtol=1e-6)
      np.testing.assert_allclose(report["bma"][u], 0.5 * 0.75 ** times, rtol=1e-6)
    else:
      # malformed: a positive F goes to 0 (§7.4, §14)
      assert report["final"][u] == 0.0, kind
      assert report["weight"][u] == 0.0


def test_slashes_never_raise_a_negative_score(round_setup):
  cfg, params, layout, uploads, offsets, data, state = round_setup
  neg = state._replace(scores=state.scores._replace(final=-jnp.ones((N,)), bma=-0.5 * jnp.ones((N,))))
  _, report = _run((cfg, params, layout, uploads, offsets, data, neg))
  bad = np.array([k != "honest" for k in KINDS])
  np.testing.assert_array_equal(report["final"][bad], -1.0)
  np.testing.assert_array_equal(report["bma"][bad], -0.5)


@skip_if_not_enough_devices(4)
@pytest.mark.slow   # CI time: device-count invariance stays in tests/test_peer.py and test_train.py
def test_one_and_four_devices_give_the_same_report(round_setup):
  # N = 14 uids: 2 devices divide it; the 4-device mesh pads the peer axis to 16
  _, r1 = _run(round_setup, shd.make_mesh("peer", 1))
  _, r4 = _run(round_setup, shd.make_mesh("peer", 4))
  for k in r1:
    if r1[k].dtype == object:
      assert list(r1[k]) == list(r4[k])
    else:
      np.testing.assert_allclose(r1[k], r4[k], atol=1e-6, err_msg=k)


def test_sync_score_table():
  """gauntlet.md §7.2 table: x = 0..5 -> 1, 0.572, 0.279, 0.101, 0.018, 0."""
  from jaxnet.gauntlet.config import GauntletConfig
  x = jnp.array([0.0, 1, 2, 3, 4, 5, 7, 5.5])
  s = jax.jit(lambda x: fast.sync_score(x, jnp.ones(8, bool), GauntletConfig()))(x)
  np.testing.assert_allclose(s, [1.0, 0.572, 0.279, 0.101, 0.018, 0.0, 0.0, 0.0], atol=6e-4)
  assert float(fast.sync_score(jnp.zeros(1), jnp.zeros(1, bool), GauntletConfig())[0]) == 0.0
  d = fast.desynced(jnp.array([2.9, 3.0, 3.1, jnp.nan]), jnp.array([True, True, True, True]),
                    GauntletConfig())
  np.testing.assert_array_equal(d, [False, False, True, True])


def test_put_window_rule():
  t = fast.timeliness(jnp.array([True, True, True, True, False]),
                      jnp.array([-0.1, 0.0, 10.0, 10.1, 1.0]), 10.0)
  np.testing.assert_array_equal(t.on_time, [False, True, True, False, False])
  np.testing.assert_array_equal(t.too_early, [True, False, False, False, False])
  np.testing.assert_array_equal(t.too_late, [False, False, False, True, False])
  np.testing.assert_array_equal(t.missing, [False, False, False, False, True])


def test_a_non_finite_loss_score_is_a_penalty_not_a_silent_skip(round_setup):
  """Issue 12 finding 6: an upload that passes the format checks (finite values, LUT and
  decode) but whose raw step (eval_apply_sign off, a large eval step) overflows the model
  gets the malformed penalty and a reason; the round goes on for everyone else (their
  raw steps are small enough)."""
  cfg, params, layout, uploads, offsets, data, state = round_setup
  cfg = load_config(TINY, ["--gauntlet.sample_rate", "0.5", "--gauntlet.gather_size", "8",
                           "--gauntlet.minimum_peers", "2", "--gauntlet.eval_apply_sign", "false",
                           "--gauntlet.eval_lr_factor", "1e10"])
  from jaxnet.submission import from_bytes
  sub = from_bytes(uploads[0], layout)
  big = lambda d: {k: (v * np.float32(1e20) * np.float32(1e20)).astype(v.dtype) if v.dtype.kind == "f" else v
                   for k, v in d.items()}   # finite values (or LUT), far too large a step
  bomb = sub._replace(val=big(sub.val), qlut=big(sub.qlut))
  uploads = [to_bytes(bomb, layout)] + list(uploads[1:])
  v = collect.Validator(cfg, layout, N, None)
  _, report = collect.validator_round(state, uploads, offsets, params, data, jax.random.key(0),
                                      validator=v, window=0, lr_t=2e-3)
  assert report["format_ok"][0] and report["slash_nonfinite"][0]
  assert report["reason"][0] == "nonfinite_loss"
  assert not report["scored"][0] and report["final"][0] == 0.0 and report["weight"][0] == 0.0
  assert report["scored"][1:N_HONEST].all()
