"""LossScore: one call over all peers equals the per-peer loop, on 1 and 4 devices."""
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import spearmanr

from conftest import skip_if_not_enough_devices
from jaxnet import data as jdata, peer, sharding as shd
from jaxnet.schemes import demo
from jaxnet import model as jmodel
from jaxnet.config import load_config
from jaxnet.gauntlet import lossscore

TINY = Path(__file__).parent.parent / "configs" / "tiny.yaml"
N = 8


@pytest.fixture(scope="module")
def setup():
  cfg = load_config(TINY)
  corpus = jdata.load_corpus(cfg.data)
  params = jmodel.init_params(cfg.model, jax.random.key(0))
  # a few AdamW-free sign steps so the model is not at its symmetric init
  layout = demo.make_layout(params, cfg.demo, n_pages=cfg.data.pages_per_window)
  batches = corpus.peer_batches(np.arange(N), window=5)
  states = peer.init_states(params, N, cfg)
  lr = jnp.float32(2e-3)
  subs, _, _ = jax.jit(lambda p, s, b: peer.peers_round(p, s, b, lr, layout, cfg))(params, states, batches)
  own = jax.tree.map(lambda x: x[:, :4], batches)
  rand = corpus.batch_from_pages(corpus.random_pages(5))
  rand = jax.tree.map(lambda x: x[:8], rand)
  return cfg, params, layout, subs, own, rand


def _score(setup, mode="exact", mesh=None, eval_batch=2):
  cfg, params, layout, subs, own, rand = setup
  fn = jax.jit(lambda p, s, o, r: lossscore.score_peers(
      p, s, o, r, 2e-3, layout=layout, model_cfg=cfg.model, eval_batch=eval_batch, mode=mode, mesh=mesh))
  if mesh is not None:
    subs = shd.put_tree(subs, shd.along(mesh, "peer"))
    own = shd.put_tree(own, shd.along(mesh, "peer"))
  return fn(params, subs, own, rand)


def test_all_peers_in_one_call_equal_the_per_peer_loop(setup):
  cfg, params, layout, subs, own, rand = setup
  got = _score(setup)
  one = jax.jit(lambda p, s, o, r: lossscore.score_one(p, s, o, r, 2e-3, layout=layout, model_cfg=cfg.model))
  for k in range(N):
    r_own, r_rand = one(params, jax.tree.map(lambda x: x[k], subs), jax.tree.map(lambda x: x[k], own), rand)
    np.testing.assert_allclose(got.r_own[k], r_own, atol=1e-5)
    np.testing.assert_allclose(got.r_rand[k], r_rand, atol=1e-5)


def test_definitions_and_signs(setup):
  """r = (before - after) / before; honest steps help, the negated step hurts."""
  cfg, params, layout, subs, own, rand = setup
  s = _score(setup)
  np.testing.assert_allclose(s.r_rand, (s.rand_before - s.rand_after) / s.rand_before, rtol=1e-6)
  np.testing.assert_allclose(s.r_own, (s.own_before - s.own_after) / s.own_before, rtol=1e-6)
  assert np.all(np.asarray(s.r_own) > 0)
  # flipping every value flips the direction: the random-data loss then goes up
  flipped = _score((cfg, params, layout, _negate(subs), own, rand))
  assert np.all(np.asarray(flipped.r_own) < 0)


@skip_if_not_enough_devices(4)
def test_one_and_four_devices_equal(setup):
  a = _score(setup, mesh=shd.make_mesh("peer", 1))
  b = _score(setup, mesh=shd.make_mesh("peer", 4))
  for x, y in zip(a, b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)


def _negate(subs):
  return subs._replace(val=jax.tree.map(lambda v: 255 - v if v.dtype == jnp.uint8 else -v, subs.val),
                       qmean=jax.tree.map(lambda m: -m, subs.qmean),
                       qlut=jax.tree.map(lambda l: -l[..., ::-1], subs.qlut))


def test_first_order_agrees_with_exact(setup):
  """Peers of mixed quality (half negated): same signs, strongly correlated ranks."""
  cfg, params, layout, subs, own, rand = setup
  half = jnp.arange(N) % 2 == 0
  neg = _negate(subs)
  mixed = jax.tree.map(lambda a, b: jnp.where(half.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), subs, neg)
  exact = _score((cfg, params, layout, mixed, own, rand))
  fo = _score((cfg, params, layout, mixed, own, rand), mode="first_order")
  np.testing.assert_allclose(fo.r_own, exact.r_own, atol=1e-6)
  np.testing.assert_array_equal(np.sign(fo.r_rand), np.sign(exact.r_rand))
  rho = spearmanr(np.asarray(exact.r_rand), np.asarray(fo.r_rand)).statistic
  assert rho > 0.7, rho
