"""DeMo as plain optax transformations equals jaxnet's DeMo (schemes issue item 2)."""
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import optax

from jaxnet import decentral, peer
from jaxnet.schemes import base, demo
from jaxnet import data as jdata
from jaxnet import model as jmodel
from jaxnet.config import load_config
from jaxnet.schemes import demo_optax

TINY = Path(__file__).parent.parent / "configs" / "tiny.yaml"


def _tree(seed):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return {"w": jax.random.normal(k1, (8, 16)), "b": jax.random.normal(k2, (16,))}


def test_outer_transformation_is_the_outer_step():
  for wd, exact in ((0.0, True), (0.1, False)):
    cfg = dataclasses.replace(load_config(TINY).demo, weight_decay=wd, warmup=3)
    tx = demo_optax.outer(cfg)
    params, state = _tree(0), tx.init(_tree(0))
    ref = params
    for w in range(5):
      direction = jax.tree.map(jnp.sign, _tree(10 + w))
      updates, state = tx.update(direction, state, params)
      params = optax.apply_updates(params, updates)
      ref = demo.outer_step(ref, direction, demo.demo_lr(w, cfg), cfg)
      for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref)):
        if exact:
          np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        else:
          np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


@pytest.mark.slow   # CI time (21 s): the outer transformation's equivalence stays in this file
def test_single_worker_optimizer_equals_a_one_peer_decentral_round():
  cfg = load_config(TINY, ["--demo.warmup", "2", "--demo.ef_warmup", "1"])
  corpus = jdata.load_corpus(cfg.data)
  params = jmodel.init_params(cfg.model, jax.random.key(0))
  layout = demo.make_layout(params, cfg.demo, n_pages=cfg.data.pages_per_window)
  tx = demo_optax.optimizer(layout, cfg.demo)
  round_fn = jax.jit(lambda p, o, s, b, w: decentral.round_fn(
      p, o, s, b, w, cfg=cfg, layout=layout, mesh=None, n_gather=1))
  grads_fn = jax.jit(lambda p, b: base.mean_grads(p, b, cfg)[0])
  update = jax.jit(tx.update)
  theta, opt_state = params, tx.init(params)
  ref, states = params, peer.init_states(params, 1, cfg)
  outer_state = demo.outer(cfg.demo).init(params)
  for w in range(4):   # through the LR warm-up and the error-feedback warm-up
    batch = corpus.peer_batches(np.arange(1), w)
    updates, opt_state = update(grads_fn(theta, jax.tree.map(lambda x: x[0], batch)), opt_state, theta)
    theta = optax.apply_updates(theta, updates)
    ref, outer_state, states, _ = round_fn(ref, outer_state, states, batch, jnp.int32(w))
    for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(ref)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert any(not np.array_equal(np.asarray(a), np.asarray(b))
             for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(params)))
