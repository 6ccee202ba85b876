"""Property tests of the DeMo compressor, aggregate, outer step and schedule (issue 4).

References are slow NumPy/SciPy re-implementations written from gauntlet.md §3.2/§5.
"""
import dataclasses
import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft
from jax.sharding import NamedSharding, PartitionSpec as PS

from conftest import random_tree, skip_if_not_enough_devices
from jaxnet.schemes import demo, topk
from jaxnet import model as jmodel
from jaxnet import submission as S
from jaxnet.config import DemoConfig, load_config


# A cut-down model layout covering every chunk case: prime rows (67 -> chunk 1), prime
# columns, batched 1-D, batched 2-D with several blocks, and a 48-wide chunk (96).
SMALL = {"embed": {"embedding": (67, 64)}, "lm_head": {"kernel": (64, 67)},
         "layers": {"attn_norm": {"scale": (2, 128)}, "wq": {"kernel": (2, 128, 128)},
                    "w_down": {"kernel": (2, 96, 128)}}}
CFG = DemoConfig()


@functools.lru_cache(maxsize=None)
def step_fn(layout, cfg, lr=1e-3):
  return jax.jit(lambda g, s: demo.compress(g, s, lr, layout, cfg))


@functools.lru_cache(maxsize=None)
def peers_fn(layout, cfg, lr=1e-3):
  return jax.jit(lambda g, s: demo.compress_peers(g, s, lr, layout, cfg))


@functools.lru_cache(maxsize=None)
def decode_fn(layout):
  return jax.jit(lambda s: demo.decode_one(s, layout))


@functools.lru_cache(maxsize=None)
def aggregate_fn(layout, cfg):
  return jax.jit(lambda s, v: demo.aggregate(s, v, layout, cfg))


@functools.lru_cache(maxsize=None)
def encode_fn(layout, cfg):
  return jax.jit(lambda b: demo.encode(b, layout, cfg))


def assert_trees_close(a, b, atol=1e-6, rtol=1e-6):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y),
                                                       atol=atol, rtol=rtol), a, b)


# --------------------------------------------------------------------------- chunks, DCT

@pytest.mark.parametrize("d,want", [(2048, 64), (8192, 64), (32000, 64), (688, 43), (257, 1),
                                    (96, 48), (63, 63), (1, 1)])
def test_chunk_size_is_largest_divisor_at_most_64(d, want):
  assert demo.chunk_size(d, 64) == want


@pytest.mark.parametrize("n", [1, 7, 43, 64])
def test_dct_basis_is_scipy_ortho_dct(n):
  x = np.random.default_rng(n).standard_normal((5, n))
  np.testing.assert_allclose(x @ demo.dct_basis(n).T, scipy.fft.dct(x, norm="ortho", axis=-1),
                             atol=1e-5)


def numpy_dct_chunks(x, t):
  """Blockwise scipy DCT-II (ortho) in the same [n_chunks, chunk_len] order."""
  if len(t.blocks) == 1:
    return scipy.fft.dct(x.reshape(t.grid[0], t.blocks[0]), norm="ortho", axis=-1)
  (h, w), (ny, nx) = t.blocks, t.grid
  blocks = x.reshape(ny, h, nx, w).transpose(0, 2, 1, 3)
  return scipy.fft.dctn(blocks, norm="ortho", axes=(2, 3)).reshape(ny * nx, h * w)


def numpy_idct_chunks(c, t):
  if len(t.blocks) == 1:
    return scipy.fft.idct(c, norm="ortho", axis=-1).reshape(t.tensor_shape)
  (h, w), (ny, nx) = t.blocks, t.grid
  x = scipy.fft.idctn(c.reshape(ny, nx, h, w), norm="ortho", axes=(2, 3))
  return x.transpose(0, 2, 1, 3).reshape(t.tensor_shape)


@pytest.mark.parametrize("shape", [(257, 64), (64, 257), (96, 128), (61,), (128,), (13, 7)])
def test_dct_round_trip_is_identity_and_matches_scipy(shape):
  layout = demo.make_layout({"w": jax.ShapeDtypeStruct(shape, jnp.float32)}, CFG, n_pages=1)
  (t,) = layout.tensors
  x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
  c = jax.jit(lambda x: demo.dct_chunks(x, t))(x)
  np.testing.assert_allclose(c, numpy_dct_chunks(x, t), atol=2e-5)
  np.testing.assert_allclose(jax.jit(lambda c: demo.idct_chunks(c, t))(c), x, atol=2e-5)


# --------------------------------------------------------------------------- top-k

@pytest.mark.parametrize("stable", [True, False] if topk._HAS_STABLE_TOP_K else [False])
def test_topk_ties_go_to_the_lowest_index(stable):
  rng = np.random.default_rng(1)
  a = rng.integers(0, 6, size=(50, 64)).astype(np.float32)   # many ties at the threshold
  got = np.asarray(jax.jit(lambda a: demo.topk_indices(a, 32, stable=stable))(a))
  want = np.sort(np.stack([np.lexsort((np.arange(64), -row))[:32] for row in a]), axis=-1)
  np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------- quantisation

def test_quantization_matches_spec_and_error_is_within_bin_width():
  rng = np.random.default_rng(2)
  v = rng.standard_normal((40, 32)).astype(np.float32)
  v[0, :4] = [9.0, -12.0, 7.5, 30.0]                            # outliers go to edge bins
  q, mean, scale, lut = jax.jit(lambda v: demo.quantize(v, 256, 6.0))(v)
  mu = v.mean(dtype=np.float64)
  c = v - mu
  sigma = np.sqrt((c.astype(np.float64) ** 2).sum() / (v.size - 1))
  np.testing.assert_allclose(float(scale), 6 * sigma / 256, rtol=1e-5)
  q_ref = np.clip(np.round(c / float(scale) + 128), 0, 255)
  assert (np.asarray(q) == q_ref).mean() > 0.999                 # rounding ties aside
  q = np.asarray(q)
  c32 = v - float(mean)
  for b in np.unique(q):
    np.testing.assert_allclose(lut[b], c32[q == b].mean(), rtol=1e-5, atol=1e-7)
  assert np.all(np.asarray(lut)[np.setdiff1d(np.arange(256), q)] == 0)
  vhat = np.asarray(demo.dequantize(jnp.asarray(q), mean, lut))
  inside = np.abs(c) <= 3 * sigma
  assert inside.mean() > 0.99
  assert np.all(np.abs(vhat - v)[inside] <= float(scale) * (1 + 1e-4))
  assert np.all(q[0, [0, 3]] == 255) and q[0, 1] == 0


def test_quantization_of_a_constant_tensor_round_trips():
  v = jnp.full((3, 4), 0.25, jnp.float32)
  q, mean, scale, lut = demo.quantize(v, 256, 6.0)
  assert float(scale) == 1.0
  np.testing.assert_allclose(demo.dequantize(q, mean, lut), v)


# --------------------------------------------------------------------------- one peer

def warm_state(seed, count=100):
  """A state past the error-feedback warm-up with a non-trivial momentum."""
  return demo.DemoState(random_tree(SMALL, seed, 1e-3), jnp.int32(count))


def test_transmitted_plus_residual_is_the_buffer_before_compression():
  layout = demo.make_layout(random_tree(SMALL, 0), CFG, n_pages=2)
  g, state = random_tree(SMALL, 1), warm_state(2)
  sub, new = step_fn(layout, CFG)(g, state)
  before = jax.tree.map(lambda m, g: CFG.beta * m + 1e-3 * g, state.momentum, g)
  transmitted = decode_fn(layout)(sub)
  assert_trees_close(jax.tree.map(jnp.add, transmitted, new.momentum), before, atol=1e-7)
  # Something was transmitted, and only part of it (k = 32 of 4096 per 2-D block).
  assert all(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(transmitted))
  wq = new.momentum["layers"]["wq"]["kernel"]
  assert float(jnp.abs(wq).max()) > 0
  assert int(new.count) == 101
  assert bool(jax.jit(lambda s: demo.check_values(s, layout))(sub)["ok"])


def test_error_feedback_warmup_skips_the_subtraction():
  cfg = dataclasses.replace(CFG, ef_warmup=2)
  layout = demo.make_layout(random_tree(SMALL, 0), cfg, n_pages=2)
  g = random_tree(SMALL, 1)
  step = step_fn(layout, cfg)
  state = demo.init(g)
  _, s1 = step(g, state)                                       # call 0: no feedback
  assert_trees_close(s1.momentum, jax.tree.map(lambda x: 1e-3 * x, g), atol=0)
  _, s2 = step(g, s1)                                          # call 1: no feedback
  sub, s3 = step(g, s2)                                        # call 2: feedback
  before = jax.tree.map(lambda m, x: CFG.beta * m + 1e-3 * x, s2.momentum, g)
  assert_trees_close(jax.tree.map(jnp.add, decode_fn(layout)(sub), s3.momentum), before,
                     atol=1e-7)
  assert int(s3.count) == 3


def test_whole_chunk_without_quantisation_is_dense_sign_sgd_on_the_momentum():
  cfg = dataclasses.replace(CFG, topk=1 << 14, quantize=False)
  params = random_tree(SMALL, 0)
  layout = demo.make_layout(params, cfg, n_pages=2)
  assert all(t.k == t.chunk_len for t in layout.tensors)
  g, state = random_tree(SMALL, 1), warm_state(2)
  sub, new = step_fn(layout, cfg)(g, state)
  m = jax.tree.map(lambda m, g: cfg.beta * m + 1e-3 * g, state.momentum, g)
  assert_trees_close(new.momentum, jax.tree.map(jnp.zeros_like, m), atol=1e-8)
  lr_t = 4e-4
  for norm in ("chunk", "tensor", "none"):
    c = dataclasses.replace(cfg, normalisation=norm)
    d = aggregate_fn(layout, c)(S.stack([sub]), np.array([True]))
    theta = demo.outer_step(params, d, lr_t, c)
    for p, m_, t in zip(jax.tree.leaves(params), jax.tree.leaves(m), jax.tree.leaves(theta)):
      clear = np.abs(np.asarray(m_)) > 1e-7          # sign of exact near-zeros is float noise
      want = np.asarray(p) - lr_t * np.sign(np.asarray(m_))
      np.testing.assert_allclose(np.asarray(t)[clear], want[clear], rtol=0, atol=1e-9)
      assert clear.mean() > 0.999


def test_whole_chunk_peers_average_then_sign():
  cfg = dataclasses.replace(CFG, topk=1 << 14, quantize=False, normalisation="none")
  layout = demo.make_layout(random_tree(SMALL, 0), cfg, n_pages=2)
  bufs = [random_tree(SMALL, 10 + i) for i in range(3)]
  subs = S.stack([encode_fn(layout, cfg)(b) for b in bufs])
  d = aggregate_fn(layout, cfg)(subs, np.array([True, False, True]))
  mean = jax.tree.map(lambda a, c: (a + c) / 2, bufs[0], bufs[2])
  for x, y in zip(jax.tree.leaves(d), jax.tree.leaves(mean)):
    clear = np.abs(np.asarray(y)) > 1e-5
    np.testing.assert_array_equal(np.asarray(x)[clear], np.sign(np.asarray(y))[clear])


# --------------------------------------------------------------------------- aggregate

def handmade_submissions(layout, rng, G):
  """Unquantised submissions whose chunks pick from a small pool, so peers overlap."""
  subs = []
  for _ in range(G):
    idx, val = {}, {}
    for t in layout.tensors:
      rows = math.prod(t.idx_shape[:-1])
      pool = min(t.chunk_len, t.k + 3)
      idx[t.name] = np.stack([rng.choice(pool, t.k, replace=False) for _ in range(rows)]
                             ).reshape(t.idx_shape).astype(np.int16)
      val[t.name] = rng.standard_normal(t.idx_shape).astype(np.float32)
    subs.append(S.Submission(idx, val, {}, {}, {}, np.int32(0), np.int32(0),
                             np.zeros(layout.n_pages, np.int32)))
  return subs


def numpy_aggregate(subs, valid, layout, cfg):
  out = []
  for t in layout.tensors:
    rows = math.prod(t.batch_shape) * t.n_chunks
    total, count = np.zeros((rows, t.chunk_len)), np.zeros((rows, t.chunk_len))
    for sub, ok in zip(subs, valid):
      if not ok:
        continue
      v = sub.val[t.name].astype(np.float64)
      if cfg.normalisation == "chunk":
        v = v / (np.linalg.norm(v, axis=-1, keepdims=True) + cfg.norm_eps)
      elif cfg.normalisation == "tensor":
        v = v / (np.sqrt((v ** 2).sum(axis=(-2, -1), keepdims=True)) + cfg.norm_eps)
      v, idx = v.reshape(rows, t.k), sub.idx[t.name].reshape(rows, t.k)
      for r in range(rows):
        for i, x in zip(idx[r], v[r]):
          total[r, i] += x
          count[r, i] += 1
    coef = total
    if cfg.collision == "mean":
      coef = np.where(count > 0, total / np.maximum(count, 1), 0)
    coef = coef.reshape(math.prod(t.batch_shape), t.n_chunks, t.chunk_len)
    dense = np.stack([numpy_idct_chunks(c, t) for c in coef]).reshape(t.shape)
    out.append(np.sign(dense) if cfg.apply_sign else dense)
  return layout.treedef.unflatten(out)


AGG_SHAPES = {"embed": {"embedding": (67, 64)}, "layers": {"wq": {"kernel": (2, 128, 96)},
              "attn_norm": {"scale": (2, 128)}}}


@pytest.mark.parametrize("norm,collision", [("chunk", "mean"), ("tensor", "mean"),
                                            ("none", "sum")])
def test_scatter_mean_equals_a_handmade_average_where_peers_overlap(norm, collision):
  cfg = dataclasses.replace(CFG, quantize=False, normalisation=norm, collision=collision,
                            apply_sign=False)
  layout = demo.make_layout(random_tree(AGG_SHAPES, 0), cfg, n_pages=1)
  subs = handmade_submissions(layout, np.random.default_rng(3), G=4)
  valid = np.array([True, True, False, True])
  got = aggregate_fn(layout, cfg)(S.stack(subs), valid)
  want = numpy_aggregate(subs, valid, layout, cfg)
  assert_trees_close(got, want, atol=1e-5, rtol=1e-5)
  signed = aggregate_fn(layout, dataclasses.replace(cfg, apply_sign=True))(S.stack(subs), valid)
  jax.tree.map(lambda s, w: np.testing.assert_array_equal(
      np.asarray(s)[np.abs(w) > 1e-5], np.sign(w)[np.abs(w) > 1e-5]), signed, want)


def test_aggregate_ignores_invalid_peers_even_with_garbage():
  cfg = dataclasses.replace(CFG, quantize=False)
  layout = demo.make_layout(random_tree(AGG_SHAPES, 0), cfg, n_pages=1)
  subs = handmade_submissions(layout, np.random.default_rng(4), G=2)
  bad = subs[1]._replace(idx={n: np.full_like(i, -7) for n, i in subs[1].idx.items()},
                         val={n: np.full_like(v, np.nan) for n, v in subs[1].val.items()})
  both = aggregate_fn(layout, cfg)(S.stack([subs[0], bad]), np.array([True, False]))
  alone = aggregate_fn(layout, cfg)(S.stack([subs[0]]), np.array([True]))
  assert_trees_close(both, alone, atol=0)


def test_decode_one_is_the_unnormalised_single_peer_aggregate():
  layout = demo.make_layout(random_tree(SMALL, 0), CFG, n_pages=2)
  sub = encode_fn(layout, CFG)(random_tree(SMALL, 5))
  cfg = dataclasses.replace(CFG, normalisation="none", apply_sign=False)
  assert_trees_close(decode_fn(layout)(sub),
                     aggregate_fn(layout, cfg)(S.stack([sub]), np.array([True])), atol=0)


def test_outer_step_applies_weight_decay_then_the_signed_step():
  cfg = dataclasses.replace(CFG, weight_decay=0.1)
  p = {"w": jnp.array([1.0, -2.0, 3.0])}
  d = {"w": jnp.array([1.0, 0.0, -1.0])}
  got = demo.outer_step(p, d, 0.5, cfg)["w"]
  np.testing.assert_allclose(got, np.array([1.0, -2.0, 3.0]) * 0.95 - 0.5 * np.array([1, 0, -1]))


# --------------------------------------------------------------------------- peers, devices

def peer_inputs(P):
  grads = [random_tree(SMALL, 20 + i) for i in range(P)]
  states = [warm_state(30 + i, count=3 + i) for i in range(P)]   # straddles warm-up
  stack = lambda trees: jax.tree.map(lambda *x: jnp.stack(x), *trees)
  return grads, states, stack(grads), stack(states)


def test_peers_in_parallel_equal_a_python_loop():
  P = 3
  layout = demo.make_layout(random_tree(SMALL, 0), CFG, n_pages=2)
  grads, states, grads_P, states_P = peer_inputs(P)
  step = step_fn(layout, CFG)
  loop = [step(g, s) for g, s in zip(grads, states)]
  want = jax.tree.map(lambda *x: jnp.stack(x), *loop)
  vm = jax.jit(jax.vmap(lambda g, s: demo.compress(g, s, 1e-3, layout, CFG)))(grads_P, states_P)
  assert_trees_close(vm, want)
  for batch in (1, 2):
    cfg = dataclasses.replace(CFG, peer_batch=batch)
    mapped = peers_fn(layout, cfg)(grads_P, states_P)
    assert_trees_close(mapped, want)


@skip_if_not_enough_devices(4)
def test_one_and_four_devices_give_the_same_numbers():
  P = 4
  layout = demo.make_layout(random_tree(SMALL, 0), CFG, n_pages=2)
  _, _, grads_P, states_P = peer_inputs(P)
  one = peers_fn(layout, CFG)(grads_P, states_P)
  mesh = jax.make_mesh((4,), ("peer",), devices=jax.devices()[:4])
  sharded = jax.jit(jax.shard_map(
      lambda g, s: demo.compress_peers(g, s, 1e-3, layout, CFG),
      mesh=mesh, in_specs=(PS("peer"), PS("peer")), out_specs=PS("peer")))
  put = lambda x: jax.device_put(x, NamedSharding(mesh, PS("peer")))
  four = sharded(jax.tree.map(put, grads_P), jax.tree.map(put, states_P))
  assert len(jax.tree.leaves(four)[0].sharding.device_set) == 4
  assert_trees_close(four, one, atol=0, rtol=0)
  subs = one[0]
  agg1 = aggregate_fn(layout, CFG)(subs, np.ones(P, bool))
  agg4 = aggregate_fn(layout, CFG)(jax.tree.map(put, subs), np.ones(P, bool))
  assert_trees_close(agg4, agg1, atol=0, rtol=0)



# --------------------------------------------------------------------------- schedule

def torch_like_schedule(cfg, steps):
  """PyTorch SequentialLR(LinearLR(0.1), CosineAnnealingWarmRestarts) stepped by hand."""
  eta, eta_min = cfg.lr, cfg.lr * cfg.min_lr_factor
  out, t_cur, t_i = [], 0, cfg.t0
  for step in range(steps):
    if step < cfg.warmup:
      out.append(eta * (0.1 + 0.9 * step / cfg.warmup))
      continue
    out.append(eta_min + (eta - eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2)
    t_cur += 1
    if t_cur >= t_i:
      t_cur, t_i = t_cur - t_i, t_i * cfg.t_mult
  return np.array(out)


def test_lr_schedule_known_values():
  lr = jax.jit(lambda s: demo.demo_lr(s, CFG))
  eta = CFG.lr
  for step, factor in [(0, 0.1), (125, 0.55), (249, 0.1 + 0.9 * 249 / 250), (250, 1.0),
                       (250 + 10000, 0.55), (250 + 20000, 1.0), (250 + 40000, 0.55),
                       (250 + 60000, 1.0), (250 + 60000 + 40000, 0.55)]:
    np.testing.assert_allclose(float(lr(step)), eta * factor, rtol=1e-5, err_msg=str(step))


def test_lr_schedule_matches_stepped_pytorch_logic():
  cfg = dataclasses.replace(CFG, warmup=5, t0=3, t_mult=2)
  steps = 5 + 3 + 6 + 12 + 24 + 7
  got = jax.vmap(lambda s: demo.demo_lr(s, cfg))(jnp.arange(steps))
  np.testing.assert_allclose(got, torch_like_schedule(cfg, steps), rtol=1e-5)
  cfg1 = dataclasses.replace(cfg, t_mult=1)
  got1 = jax.vmap(lambda s: demo.demo_lr(s, cfg1))(jnp.arange(steps))
  np.testing.assert_allclose(got1, torch_like_schedule(cfg1, steps), rtol=1e-5)


# --------------------------------------------------------------------------- sizes, errors

def test_upload_size_for_the_1p2b_shapes():
  # the 1.2b config's parameters from jax.eval_shape (nothing allocated)
  params = jmodel.abstract_params(load_config(Path(__file__).parent.parent / "configs" / "1.2b.yaml").model)
  for quantize, lo, hi in [(True, 25e6, 32e6), (False, 50e6, 62e6)]:
    cfg = dataclasses.replace(CFG, quantize=quantize)
    layout = demo.make_layout(params, cfg, n_pages=6)
    sub, _ = jax.eval_shape(lambda g, s: demo.compress(g, s, 4e-4, layout, cfg),
                            params, jax.eval_shape(demo.init, params))
    nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(sub))
    kept = sum(x.size for x in jax.tree.leaves(sub.val))
    print(f"\n1.2b upload ({'8-bit' if quantize else 'fp32'} values): {nbytes / 1e6:.2f} MB, "
          f"{kept / 1e6:.3f} M values")
    assert nbytes == layout.upload_bytes()
    assert 9.3e6 < kept < 9.6e6                  # gauntlet.md §3.3: about 9.4 M values
    assert lo < nbytes < hi                      # about 28 MB (8-bit), 57 MB (fp32)


def test_make_layout_rejects_tensors_it_cannot_chunk():
  with pytest.raises(ValueError, match="w"):
    demo.make_layout({"w": jnp.zeros((2, 3, 4))}, CFG, n_pages=1)
  with pytest.raises(ValueError, match="int16"):
    demo.make_layout({"w": jnp.zeros((256, 256))}, dataclasses.replace(CFG, chunk=256), n_pages=1)


def test_block_row_map_size_does_not_change_results():
  """Many `lax.map` iterations (with a remainder) equal one iteration per leaf."""
  layout = demo.make_layout(random_tree(SMALL, 0), CFG, n_pages=2)
  g, state = random_tree(SMALL, 1), warm_state(2)

  def run(compress, decode, aggregate):
    sub, new = compress(g, state)
    return sub, new, decode(sub), aggregate(S.stack([sub, sub]), np.ones(2, bool))
  # The cached functions were traced with the default size: one iteration per small leaf.
  whole = run(step_fn(layout, CFG), decode_fn(layout), aggregate_fn(layout, CFG))
  assert layout.map_elements >= max(math.prod(t.shape) for t in layout.tensors)
  # embed: 67 one-row units in batches of 20 (remainder 7); wq: one block-row per iteration.
  layout = demo.make_layout(random_tree(SMALL, 0), dataclasses.replace(CFG, map_elements=20 * 64),
                            n_pages=2)
  fresh = run(jax.jit(lambda g, s: demo.compress(g, s, 1e-3, layout, CFG)),
              jax.jit(lambda s: demo.decode_one(s, layout)),
              jax.jit(lambda s, v: demo.aggregate(s, v, layout, CFG)))
  assert_trees_close(fresh, whole, atol=1e-7)
