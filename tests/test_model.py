"""Model: causality, masking, RoPE, NNX split/merge equals the pure forward, bf16 path."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet import model
from jaxnet.config import ModelConfig

CFG = ModelConfig()


@pytest.fixture(scope="module")
def graph_params():
  return model.init(CFG, jax.random.key(0))


def _tokens(key, B=2, L=32):
  return jax.random.randint(jax.random.key(key), (B, L), 0, CFG.vocab_size)


def test_param_layout_and_count(graph_params):
  _, p = graph_params
  assert p["layers"]["wq"]["kernel"].shape == (CFG.n_layers, CFG.d_model, CFG.d_model)
  assert p["layers"]["attn_norm"]["scale"].shape == (CFG.n_layers, CFG.d_model)
  D, F, V, L = CFG.d_model, CFG.d_ff, CFG.vocab_size, CFG.n_layers
  assert model.count_params(p) == 2 * V * D + L * (4 * D * D + 3 * D * F + 2 * D) + D


def test_nnx_apply_equals_pure_forward(graph_params):
  g, p = graph_params
  x = _tokens(1)
  np.testing.assert_allclose(jax.jit(model.apply, static_argnums=0)(g, p, x),
                             model.forward(p, x, CFG), rtol=1e-6, atol=1e-6)


def test_causal(graph_params):
  _, p = graph_params
  x = _tokens(2, B=1, L=32)
  y = x.at[0, 20].set((x[0, 20] + 1) % CFG.vocab_size)
  a, b = model.forward(p, x, CFG), model.forward(p, y, CFG)
  np.testing.assert_array_equal(a[0, :20], b[0, :20])
  assert jnp.abs(a[0, 20:] - b[0, 20:]).max() > 1e-4


def test_scan_equals_unrolled_layers(graph_params):
  """The scanned stack equals running each layer by hand (scan order, no mixing)."""
  _, p = graph_params
  x = _tokens(3)
  cos, sin = model.rope_tables(x.shape[1], CFG.head_dim, CFG.rope_theta)
  h = p["embed"]["embedding"][x]
  for i in range(CFG.n_layers):
    h = model._block(h, jax.tree.map(lambda a: a[i], p["layers"]), cos, sin, CFG)
  h = model.rms_norm(h, p["final_norm"]["scale"], CFG.norm_eps)
  np.testing.assert_allclose(h @ p["lm_head"]["kernel"], model.forward(p, x, CFG), atol=1e-5)


def test_rope_is_a_rotation_and_relative():
  cos, sin = model.rope_tables(16, 8, 1e4)
  q = jax.random.normal(jax.random.key(0), (1, 16, 1, 8))
  k = jax.random.normal(jax.random.key(1), (1, 16, 1, 8))
  rq, rk = model.apply_rope(q, cos, sin), model.apply_rope(k, cos, sin)
  np.testing.assert_allclose(jnp.linalg.norm(rq, axis=-1), jnp.linalg.norm(q, axis=-1), rtol=1e-5)
  np.testing.assert_allclose(jnp.linalg.norm(rk, axis=-1), jnp.linalg.norm(k, axis=-1), rtol=1e-5)
  # same content at positions (i, j) and (i+3, j+3) gives the same dot product
  q2 = jnp.broadcast_to(q[:, :1], q.shape)
  k2 = jnp.broadcast_to(k[:, :1], k.shape)
  rq2, rk2 = model.apply_rope(q2, cos, sin), model.apply_rope(k2, cos, sin)
  d1 = jnp.sum(rq2[0, 5, 0] * rk2[0, 2, 0])
  d2 = jnp.sum(rq2[0, 9, 0] * rk2[0, 6, 0])
  np.testing.assert_allclose(d1, d2, rtol=1e-4)


def test_mask_excludes_positions(graph_params):
  _, p = graph_params
  x = _tokens(4, B=2, L=33)
  batch = {"inputs": x[:, :-1], "targets": x[:, 1:], "mask": jnp.ones((2, 32))}
  masked = dict(batch, mask=batch["mask"].at[:, 10:].set(0.0))
  changed = dict(masked, targets=masked["targets"].at[:, 10:].set(0))
  l1 = model.loss_fn(p, masked, CFG)
  l2 = model.loss_fn(p, changed, CFG)
  assert l1 == l2
  assert jnp.abs(model.loss_fn(p, batch, CFG) - l1) > 1e-6
  # an untrained model is near uniform: loss ~ log V
  assert abs(float(model.loss_fn(p, batch, CFG)) - np.log(CFG.vocab_size)) < 0.1


def test_bf16_compute_close_to_fp32(graph_params):
  _, p = graph_params
  x = _tokens(5)
  cfg16 = dataclasses.replace(CFG, compute_dtype="bfloat16")
  a = model.forward(p, x, CFG)
  b = model.forward(p, x, cfg16)
  assert b.dtype == jnp.float32 and p["layers"]["wq"]["kernel"].dtype == jnp.float32
  assert jnp.abs(a - b).max() < 0.05


def test_remat_same_gradients(graph_params):
  _, p = graph_params
  x = _tokens(6, L=17)
  batch = {"inputs": x[:, :-1], "targets": x[:, 1:], "mask": jnp.ones((2, 16))}
  g1 = jax.grad(model.loss_fn)(p, batch, CFG)
  g2 = jax.grad(model.loss_fn)(p, batch, dataclasses.replace(CFG, remat=True))
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, atol=1e-6)
