"""Property tests of the DiLoCo and SparseLoCo math (schemes.md §2-§4; issue 11).

References are NumPy transcriptions of the spec's formulas, written from schemes.md.
"""
import dataclasses
import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import is_shape, random_tree
from jaxnet import model as jmodel
from jaxnet.config import load_config
from jaxnet.configbase import ConfigError, field_docs
from jaxnet.schemes import diloco as dl, inner, pack, quant, sparseloco as sl


# Chunk cases: prime rows (67 -> 1x64 chunks, an odd index count), a batched 1-D leaf and
# a batched 2-D leaf with 64x48 chunks (whole 64x64 chunks: the byte-count test).
SHAPES = {"embed": {"embedding": (67, 64)},
          "layers": {"attn_norm": {"scale": (2, 128)}, "wq": {"kernel": (2, 128, 96)}}}
CFG = sl.SparseLoCoConfig()
DENSE = dataclasses.replace(CFG, topk=sl.TOPK_PER, quantize=False)   # k = chunk, no quant
RAW = dataclasses.replace(CFG, topk=512, quantize=False)   # float32 values, 8 per 64x64 chunk


@functools.lru_cache(maxsize=None)
def layout_for(cfg):
  return sl.make_layout(jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), SHAPES,
                                     is_leaf=is_shape), cfg)


@functools.lru_cache(maxsize=None)
def encode_fn(cfg):
  lay = layout_for(cfg)
  return jax.jit(lambda d, e: sl.encode(d, e, lay, cfg))


@functools.lru_cache(maxsize=None)
def decode_fn(cfg):
  lay = layout_for(cfg)
  return jax.jit(lambda p: sl.decode(p, lay))


@functools.lru_cache(maxsize=None)
def aggregate_fn(cfg):
  lay = layout_for(cfg)
  return jax.jit(lambda p, v: sl.aggregate(p, v, lay))


def stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def leaves_np(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


# --------------------------------------------------------------------------- (a) quantiser

def np_lut_quant(v, bins=4, range_=6.0, offset=2.0):
  """schemes.md §3 step 5 in float32 NumPy, one tensor: (codes, mu, lut, decoded)."""
  f = np.float32
  v = np.asarray(v, f).reshape(-1)
  n = v.size
  mu = f(np.mean(v, dtype=f))
  c = v - mu
  var = f(np.sum(c * c, dtype=f) / f(n - 1)) if n > 1 else f(0)
  scale = f(range_) * np.sqrt(var) / f(bins)
  if not (np.isfinite(scale) and scale > 0):
    scale = f(1)
  q = np.clip(np.round(c / scale + f(offset)), 0, bins - 1).astype(np.uint8)  # half to even
  lut = np.array([c[q == b].mean(dtype=f) if np.any(q == b) else 0.0 for b in range(bins)], f)
  return q, mu, lut, lut[q] + mu


@functools.lru_cache(maxsize=None)
def lut_fn(offset, batch_ndim):
  return jax.jit(lambda v: quant.quantize_lut(v, offset=offset, batch_ndim=batch_ndim))


def check_against_numpy(v_BxN, offset, batch_ndim):
  got = lut_fn(offset, batch_ndim)(jnp.asarray(v_BxN))
  dec = np.asarray(quant.dequantize_lut(got.codes, got.mean, got.lut))
  flat = np.asarray(v_BxN, np.float32).reshape((-1,) + v_BxN.shape[batch_ndim:])
  for i, v in enumerate(flat):
    q, mu, lut, vhat = np_lut_quant(v, offset=offset)
    sl_ = np.unravel_index(i, v_BxN.shape[:batch_ndim])
    np.testing.assert_array_equal(np.asarray(got.codes)[sl_].reshape(-1), q)
    scale = max(float(np.max(np.abs(v - mu))), 1e-30)
    np.testing.assert_allclose(np.asarray(got.mean)[sl_], mu, rtol=1e-6, atol=1e-6 * scale)
    np.testing.assert_allclose(np.asarray(got.lut)[sl_], lut, rtol=1e-6, atol=1e-6 * scale)
    np.testing.assert_allclose(dec[sl_].reshape(-1), vhat, rtol=1e-6, atol=1e-6 * scale)
  return got


@pytest.mark.parametrize("offset", [2.0, 1.5])
@pytest.mark.parametrize("dist", ["normal", "student_t", "lognormal_signed", "constant",
                                  "two", "three"])
def test_lut_quantiser_matches_numpy_formula(dist, offset):
  rng = np.random.default_rng(hash(dist) % 2**32)
  n = {"two": 2, "three": 3}.get(dist, 600)
  v = {"normal": lambda: rng.normal(0.3, 2.0, n),
       "student_t": lambda: rng.standard_t(1.5, n),             # heavy tails, huge outliers
       "lognormal_signed": lambda: rng.lognormal(0, 2, n) * rng.choice([-1, 1], n),
       "constant": lambda: np.full(n, 0.75),   # exact mean, sigma 0: scale falls back to 1
       "two": lambda: rng.normal(size=n), "three": lambda: rng.normal(size=n)}[dist]()
  check_against_numpy(v.astype(np.float32), offset, 0)


def test_lut_quantiser_ties_round_half_to_even():
  """A tensor built so that mu = 0.25, sigma = 2, scale = 3 are exact: the values
  mu +- 1.5 and mu +- 4.5 land on code positions x.5 exactly."""
  base = ([1.5, -1.5] * 2 + [4.5, -4.5] * 2 + [0.0] * 2 + [1.0, -1.0] * 9 + [2.0, -2.0] * 3)
  rng = np.random.default_rng(0)
  for power in (0, -3, 5):
    unit = np.float32(2.0**power)
    c = rng.permutation(np.asarray(base, np.float32)) * unit
    v = c + np.float32(0.25) * unit
    got = check_against_numpy(v[None], 2.0, 1)
    codes = np.asarray(got.codes)[0]
    x = (v - np.float32(0.25) * unit) / (3 * unit) + 2      # exact in float32 here
    assert np.all(x[np.abs(c) == 1.5 * unit] % 1 == 0.5)
    # positions 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 3.5 -> 4 clamped to 3
    for cv, code in {-4.5: 0, -1.5: 2, 1.5: 2, 4.5: 3}.items():
      assert np.all(codes[c == cv * unit] == code), cv


def test_lut_quantiser_batched_slices_are_independent():
  rng = np.random.default_rng(1)
  v = (rng.standard_t(2.0, (3, 2, 50)) * np.array([1e-3, 1.0, 1e3])[:, None, None])
  check_against_numpy(v.astype(np.float32), 2.0, 2)


# --------------------------------------------------------------------------- (b) packing

def test_pack12_byte_layout_and_padding():
  b = np.asarray(pack.pack12(jnp.array([0xABC, 0x123, 0xFFF], jnp.int32)))
  # w = a | b << 12 little-endian; the odd third index is padded with 0.
  np.testing.assert_array_equal(b, [0xBC, 0x3A, 0x12, 0xFF, 0x0F, 0x00])
  np.testing.assert_array_equal(pack.unpack12(jnp.asarray(b), 3), [0xABC, 0x123, 0xFFF])
  c = np.asarray(pack.pack2(jnp.array([1, 2, 3, 0, 3], jnp.uint8)))
  np.testing.assert_array_equal(c, [1 | 2 << 2 | 3 << 4, 3])


def test_pack_round_trips():
  # Every count case (empty, odd, even, not a multiple of 4) with and without leading axes,
  # in one jitted call (one compile).
  rng = np.random.default_rng(11)
  shapes = [lead + (n,) for n in (0, 1, 2, 3, 4, 5, 7, 1001) for lead in ((), (2, 3))]
  idx = [rng.integers(0, 4096, s) for s in shapes]
  codes = [rng.integers(0, 4, s).astype(np.uint8) for s in shapes]
  idx[-1].reshape(-1)[:2] = [0, 4095]                      # both ends of the range

  @jax.jit
  def round_trip(idx, codes):
    p12, p2 = [pack.pack12(i) for i in idx], [pack.pack2(c) for c in codes]
    return (p12, [pack.unpack12(p, i.shape[-1]) for p, i in zip(p12, idx)],
            p2, [pack.unpack2(p, c.shape[-1]) for p, c in zip(p2, codes)])
  p12, idx_back, p2, codes_back = round_trip([jnp.asarray(i, jnp.int32) for i in idx],
                                             [jnp.asarray(c) for c in codes])
  for s, i, a, p, c, b in zip(shapes, idx, idx_back, p2, codes, codes_back):
    n = s[-1]
    assert p.dtype == jnp.uint8 and p.shape == s[:-1] + (pack.packed2_len(n),)
    np.testing.assert_array_equal(a, i)
    np.testing.assert_array_equal(b, c)
  for s, p in zip(shapes, p12):
    assert p.dtype == jnp.uint8 and p.shape == s[:-1] + (pack.packed12_len(s[-1]),)


def test_pack_is_jittable_over_leading_axes():
  idx = jnp.asarray(np.random.default_rng(2).integers(0, 4096, (2, 3, 7)), jnp.int32)
  f = jax.jit(lambda x: pack.unpack12(pack.pack12(x), 7))
  np.testing.assert_array_equal(f(idx), idx)
  np.testing.assert_array_equal(jax.vmap(pack.pack12)(idx), pack.pack12(idx))


# --------------------------------------------------------------------------- layout, config

def test_chunk_k_rule():
  assert sl.chunk_k(4096, 64) == 64 and sl.chunk_k(4096, 32) == 32      # templar, paper
  assert sl.chunk_k(2048, 64) == 32 and sl.chunk_k(64, 64) == 1 and sl.chunk_k(48, 64) == 1
  assert sl.chunk_k(3072, 64) == 48 and sl.chunk_k(1, 64) == 1
  assert all(sl.chunk_k(L, sl.TOPK_PER) == L for L in (1, 48, 64, 3072, 4096))
  lay = layout_for(CFG)
  assert [(t.name, t.blocks, t.k) for t in lay.tensors] == [
      ("embed/embedding", (1, 64), 1), ("layers/attn_norm/scale", (64,), 1),
      ("layers/wq/kernel", (64, 48), 48)]


def test_configs_defaults_validation_and_docs():
  c, d, i = sl.SparseLoCoConfig(), dl.DiLoCoConfig(), inner.InnerConfig()
  assert (i.steps, i.lr, i.warmup, i.b1, i.b2, i.weight_decay, i.grad_clip) == (
      15, 1e-3, 0, 0.9, 0.95, 0.1, 1.0)
  assert (c.ef_beta, c.topk, c.chunk, c.quant_bins, c.quant_range, c.quant_offset,
          c.outer_lr) == (0.95, 64, 64, 4, 6.0, 2.0, 1.0)
  assert (d.outer_lr, d.outer_momentum, d.nesterov, d.quantize, d.copy_topk) == (
      0.7, 0.9, True, "none", 64)
  with pytest.raises(ConfigError, match="inner.steps"):
    inner.InnerConfig(steps=0)
  for cls in (sl.SparseLoCoConfig, dl.DiLoCoConfig, inner.InnerConfig):
    docs = field_docs(cls)
    assert all(docs[f.name] for f in dataclasses.fields(cls)), docs
  for bad in ({"topk": 0}, {"topk": 4097}, {"chunk": 65}, {"quant_bins": 8}, {"ef_beta": 1.0}):
    with pytest.raises(ConfigError, match="sparseloco"):
      sl.SparseLoCoConfig(**bad)
  with pytest.raises(ConfigError, match="diloco.quantize"):
    dl.DiLoCoConfig(quantize="int4")
  hash(c), hash(d)   # static under jit


# --------------------------------------------------------------------------- (c) error feedback

@pytest.mark.parametrize("cfg", [CFG, RAW], ids=["2bit", "float32"])
def test_error_feedback_transmitted_plus_residual_is_buffer(cfg):
  lay = layout_for(cfg)
  # A zero buffer in makes the new buffer beta*0 + buf = buf bit for bit.
  buf, zeros = random_tree(SHAPES, 3), jax.tree.map(jnp.zeros_like, random_tree(SHAPES, 3))
  payload, new_ef = encode_fn(cfg)(buf, zeros)
  sent = decode_fn(cfg)(payload)
  for t, s, r, b in zip(lay.tensors, *(lay.treedef.flatten_up_to(x) for x in (sent, new_ef, buf))):
    s, r, b = np.asarray(s), np.asarray(r), np.asarray(b)
    if cfg.quantize:   # r = fl(b - s): s + r is b up to the rounding of two float32 ops
      assert np.all(np.abs(s + r - b) <= 2 * np.spacing(np.maximum(np.abs(b), np.abs(s))))
    else:
      np.testing.assert_array_equal(s + r, b)   # kept: b - b = 0; dropped: b - 0 = b
    np.testing.assert_array_equal(r[s == 0], b[s == 0])   # untransmitted entries stay
    # the transmitted set is the top-k magnitudes of every chunk
    chunks = np.asarray(sl.to_chunks(jnp.asarray(b), t)).reshape(-1, t.chunk_len)
    sent_c = np.asarray(sl.to_chunks(jnp.asarray(s), t)).reshape(-1, t.chunk_len)
    order = np.argsort(-np.abs(chunks), axis=-1, kind="stable")[:, :t.k]
    want = np.zeros_like(chunks, bool)
    np.put_along_axis(want, order, True, axis=-1)
    if cfg.quantize:
      assert np.all(sent_c[~want] == 0)
    else:
      np.testing.assert_array_equal(sent_c != 0, want)
  # With a buffer carried in, what is split is beta*e + delta (no learning rate inside).
  delta, ef = random_tree(SHAPES, 4), random_tree(SHAPES, 5, 0.1)
  payload, new_ef = encode_fn(cfg)(delta, ef)
  for s, r, e, d in zip(*map(leaves_np, (decode_fn(cfg)(payload), new_ef, ef, delta))):
    np.testing.assert_allclose(s + r, cfg.ef_beta * e + d, rtol=1e-6, atol=1e-6)


def test_encode_decode_round_trip_of_chunks():
  t = layout_for(CFG).tensors[2]
  x = jnp.arange(math.prod(t.shape), dtype=jnp.float32).reshape(t.shape)
  c = sl.to_chunks(x, t)
  assert c.shape == t.batch_shape + (t.n_chunks, t.chunk_len)
  # chunk 1 of layer 0 is rows 0..63, columns 48..95, row-major
  np.testing.assert_array_equal(c[0, 1].reshape(64, 48), x[0, :64, 48:96])
  np.testing.assert_array_equal(sl.from_chunks(c, t), x)


# --------------------------------------------------------------------------- (d) dense limit

def test_whole_chunk_without_quantisation_is_diloco_without_momentum():
  lay = layout_for(DENSE)
  assert all(t.k == t.chunk_len for t in lay.tensors)
  delta, params = random_tree(SHAPES, 5, 0.01), random_tree(SHAPES, 6)
  payload, new_ef = encode_fn(DENSE)(delta, jax.tree.map(jnp.zeros_like, delta))
  assert all(np.all(r == 0) for r in leaves_np(new_ef))
  agg = aggregate_fn(DENSE)(stack([payload]), jnp.array([True]))
  for a, d in zip(leaves_np(agg), leaves_np(delta)):
    np.testing.assert_array_equal(a, d)
  alpha = 0.7
  tx_s = sl.outer(dataclasses.replace(DENSE, outer_lr=alpha))
  dcfg = dl.DiLoCoConfig(outer_lr=alpha, outer_momentum=0.0)
  tx_d = dl.outer(dcfg)
  agg_d = dl.aggregate(stack([dl.encode(delta, dcfg)]), jnp.array([True]))
  up_s, _ = tx_s.update(agg, tx_s.init(params), params)
  up_d, _ = tx_d.update(agg_d, tx_d.init(params), params)
  for s, d, p, dd in zip(*map(leaves_np, (optax.apply_updates(params, up_s),
                                          optax.apply_updates(params, up_d), params, delta))):
    np.testing.assert_array_equal(s, d)
    np.testing.assert_allclose(s, p - alpha * dd, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- (e) aggregate

def np_aggregate(idx_G, v_G, valid):
  """Clip to the lower median norm of the valid peers, then scatter-mean ([G, rows, k])."""
  norms = np.sqrt(np.sum(v_G.astype(np.float64) ** 2, axis=(1, 2)))
  ok = sorted(norms[valid])
  med = ok[(len(ok) - 1) // 2]
  sums, counts = {}, {}
  for g in np.flatnonzero(valid):
    f = med / norms[g] if norms[g] > med else 1.0
    for r in range(idx_G.shape[1]):
      for i, v in zip(idx_G[g, r], v_G[g, r]):
        sums[r, i] = sums.get((r, i), 0.0) + f * float(v)
        counts[r, i] = counts.get((r, i), 0) + 1
  return {key: sums[key] / counts[key] for key in sums}, med


def test_aggregate_clips_to_median_norm_and_scatter_means_overlaps():
  cfg, lay = RAW, layout_for(RAW)
  rng = np.random.default_rng(7)
  # A shared large component makes peers pick overlapping coefficients; noise makes them
  # differ elsewhere. Peer 2 has a huge wq; peer 3 is invalid and full of NaNs.
  common = random_tree(SHAPES, 8, 3.0)
  deltas = [jax.tree.map(lambda c, n: c * (rng.random(c.shape) < 0.05) + n, common,
                         random_tree(SHAPES, 10 + g)) for g in range(4)]
  deltas[2] = dict(deltas[2], layers=dict(deltas[2]["layers"],
                                         wq={"kernel": deltas[2]["layers"]["wq"]["kernel"] * 1e3}))
  zeros = jax.tree.map(jnp.zeros_like, deltas[0])
  payloads = [encode_fn(cfg)(d, zeros)[0] for d in deltas]
  honest3 = payloads[3]
  payloads[3] = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan) if x.dtype == jnp.float32
                             else x, payloads[3])
  valid = np.array([True, True, True, False])
  agg = aggregate_fn(cfg)(stack(payloads), jnp.asarray(valid))
  norms = jax.jit(lambda p, v: sl.clip_norms(p, v, lay))(stack(payloads), jnp.asarray(valid))
  overlaps = 0
  for t, a in zip(lay.tensors, lay.treedef.flatten_up_to(agg)):
    got = np.asarray(sl.to_chunks(a, t)).reshape(-1, t.chunk_len)
    slices = math.prod(t.batch_shape)
    dec = [sl.decode_values(p, t) for p in payloads]
    idx_G = np.stack([np.asarray(i).reshape(slices, -1, t.k) for i, _ in dec])
    v_G = np.stack([np.asarray(v).reshape(slices, -1, t.k) for _, v in dec])
    want = np.zeros_like(got)
    for s in range(slices):
      ref, med = np_aggregate(idx_G[:, s], v_G[:, s], valid)
      np.testing.assert_allclose(np.asarray(norms[t.name]).reshape(-1)[s], med, rtol=1e-6)
      for (r, i), v in ref.items():
        want[s * idx_G.shape[2] + r, i] = v
    # summands of very different sizes (the clipped peer): tolerance relative to the largest
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6 * np.abs(want).max())
    overlaps += sum(len(set(a) & set(b)) for a, b in zip(idx_G[0].reshape(-1, t.k),
                                                         idx_G[1].reshape(-1, t.k)))
  assert overlaps > 0
  # The huge peer's wq is clipped to the median norm; the others are untouched.
  clip = jax.jit(lambda p, n: sl.eval_update(p, n, lay))
  t_wq = lay.tensors[2]
  assert t_wq.name == "layers/wq/kernel"
  for g in range(3):
    ev, dec = clip(payloads[g], norms), decode_fn(cfg)(payloads[g])
    e_wq, d_wq = ev["layers"]["wq"]["kernel"], dec["layers"]["wq"]["kernel"]
    if g == 2:
      np.testing.assert_allclose(np.sqrt(np.sum(np.square(e_wq), axis=(1, 2))),
                                 norms[t_wq.name], rtol=1e-5)
      assert np.all(np.sqrt(np.sum(np.square(d_wq), axis=(1, 2))) > 100 * norms[t_wq.name])
    else:
      np.testing.assert_array_equal(e_wq, d_wq)
  # An invalid peer changes nothing, whatever it sent.
  agg_honest = aggregate_fn(cfg)(stack(payloads[:3] + [honest3]), jnp.asarray(valid))
  for a, b in zip(leaves_np(agg), leaves_np(agg_honest)):
    np.testing.assert_array_equal(a, b)


def test_lower_median_of_valid_entries():
  x = jnp.array([3.0, 1.0, 4.0, 2.0, 100.0])
  assert float(sl.lower_median(x, jnp.array([1, 1, 1, 1, 0], bool))) == 2.0   # torch.median
  assert float(sl.lower_median(x, jnp.array([1, 1, 1, 0, 1], bool))) == 3.0
  assert float(sl.lower_median(x, jnp.array([0, 0, 0, 0, 1], bool))) == 100.0
  assert float(sl.lower_median(x, jnp.zeros(5, bool))) == 0.0
  np.testing.assert_array_equal(
      sl.lower_median(jnp.array([[1.0, 5.0], [2.0, 4.0], [3.0, 3.0]]), jnp.ones(3, bool)),
      [2.0, 4.0])


# --------------------------------------------------------------------------- (f) P peers

def test_peers_vmapped_equal_a_python_loop():
  cfg, lay = CFG, layout_for(CFG)
  deltas = [random_tree(SHAPES, 20 + p) for p in range(3)]
  efs = [random_tree(SHAPES, 30 + p, 0.1) for p in range(3)]
  enc_P = jax.jit(jax.vmap(lambda d, e: sl.encode(d, e, lay, cfg)))
  dec_P = jax.jit(jax.vmap(lambda p: sl.decode(p, lay)))
  pay_P, ef_P = enc_P(stack(deltas), stack(efs))
  dense_P = dec_P(pay_P)
  for p in range(3):
    pay, ef = encode_fn(cfg)(deltas[p], efs[p])
    one = lambda tree: jax.tree.map(lambda x: x[p], tree)  # noqa: E731
    for a, b in zip(leaves_np(one(pay_P)), leaves_np(pay)):
      np.testing.assert_array_equal(a, b)
    for a, b in zip(leaves_np(one(ef_P)) + leaves_np(one(dense_P)),
                    leaves_np(ef) + leaves_np(decode_fn(cfg)(pay))):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- (g) DiLoCo

@pytest.fixture(scope="module")
def tiny():
  model_cfg = load_config(Path(__file__).parents[1] / "configs" / "tiny.yaml").model
  params = jmodel.init_params(model_cfg, jax.random.key(0))
  rng = np.random.default_rng(0)
  H, B, L = 15, 4, 32
  toks = rng.integers(0, 256, (B, L + 1))
  one = {"inputs": toks[:, :-1], "targets": toks[:, 1:], "mask": np.ones((B, L), np.float32)}
  batches = {k: jnp.broadcast_to(jnp.asarray(v), (H,) + v.shape) for k, v in one.items()}
  return model_cfg, params, batches


def test_diloco_inner_steps_reduce_loss_and_int8_error_is_half_a_step(tiny):
  model_cfg, params, batches = tiny
  cfg = dl.DiLoCoConfig()
  rnd = jax.jit(lambda p, s, b: dl.peer_round(p, s, b, model_cfg, cfg, inner.InnerConfig()))
  payload, state, m = rnd(params, dl.init(params, inner.InnerConfig()), batches)
  loss = np.asarray(m["loss"])
  assert loss.shape == (15,) and loss[-1] < loss[0] - 0.1, loss
  assert np.all(np.isfinite(np.asarray(m["grad_norm"])))
  # the inner AdamW state is carried: its step count continues in the next round
  assert int(optax.tree_utils.tree_get(state.opt_state, "count")) == 15
  _, state, _ = rnd(params, state, batches)
  assert int(optax.tree_utils.tree_get(state.opt_state, "count")) == 30
  delta = dl.decode(payload)                 # float32 payload: the pseudo-gradient itself
  assert all(float(jnp.max(jnp.abs(d))) > 0 for d in jax.tree.leaves(delta))
  q = dl.encode(delta, dl.DiLoCoConfig(quantize="int8"))
  assert q.scale["layers"]["wq"]["kernel"].shape == (model_cfg.n_layers,)   # per layer slice
  for d, h, s, v in zip(*map(jax.tree.leaves, (delta, dl.decode(q), q.scale, q.val))):
    assert v.dtype == jnp.int8
    s = np.asarray(s).reshape(s.shape + (1,) * (d.ndim - s.ndim))
    d = np.asarray(d)   # half a step, plus the float32 rounding of q*scale
    assert np.all(np.abs(np.asarray(h) - d) <= s / 2 + 2 * np.spacing(np.abs(d)))


def test_int8_round_trip_bounds_and_zero_tensor():
  rng = np.random.default_rng(9)
  x = jnp.asarray(rng.standard_t(2.0, (3, 40, 7)) * np.array([1e-4, 1.0, 1e4])[:, None, None],
                  jnp.float32)
  c = quant.quantize_int8(x, batch_ndim=1)
  np.testing.assert_allclose(c.scale, np.abs(np.asarray(x)).max(axis=(1, 2)) / 127, rtol=1e-6)
  err = np.abs(np.asarray(quant.dequantize_int8(c.q, c.scale)) - np.asarray(x))
  assert np.all(err <= np.asarray(c.scale)[:, None, None] / 2 + 2 * np.spacing(np.abs(x)))
  assert int(np.abs(np.asarray(c.q)).max()) == 127
  z = quant.quantize_int8(jnp.zeros((5, 3)))
  np.testing.assert_array_equal(quant.dequantize_int8(z.q, z.scale), 0.0)


def test_diloco_aggregate_is_mean_over_valid_peers():
  d = [random_tree(SHAPES, 40 + g) for g in range(3)]
  cfg = dl.DiLoCoConfig()
  pays = stack([dl.encode(x, cfg) for x in d[:2]] + [dl.encode(
      jax.tree.map(lambda x: x * jnp.nan, d[2]), cfg)])
  agg = dl.aggregate(pays, jnp.array([True, True, False]))
  for a, x, y in zip(*map(leaves_np, (agg, d[0], d[1]))):
    np.testing.assert_allclose(a, (x + y) / 2, rtol=1e-6)


def test_diloco_nesterov_outer_step_by_hand():
  cfg = dl.DiLoCoConfig()
  lr, mu = cfg.outer_lr, cfg.outer_momentum
  theta = {"w": jnp.array([1.0, 2.0, -3.0])}
  g1, g2 = np.array([0.5, -1.0, 0.25]), np.array([0.25, 0.5, -2.0])
  tx = dl.outer(cfg)
  s = tx.init(theta)
  u1, s = tx.update({"w": jnp.asarray(g1, jnp.float32)}, s, theta)
  u2, s = tx.update({"w": jnp.asarray(g2, jnp.float32)}, s, theta)
  # PyTorch-style Nesterov SGD: buf = mu*buf + g; step = -lr*(g + mu*buf)
  buf1 = g1
  buf2 = mu * buf1 + g2
  np.testing.assert_allclose(u1["w"], -lr * (g1 + mu * buf1), rtol=1e-6)
  np.testing.assert_allclose(u2["w"], -lr * (g2 + mu * buf2), rtol=1e-6)
  plain = dl.outer(dataclasses.replace(cfg, nesterov=False))
  s = plain.init(theta)
  _, s = plain.update({"w": jnp.asarray(g1, jnp.float32)}, s, theta)
  u2p, _ = plain.update({"w": jnp.asarray(g2, jnp.float32)}, s, theta)
  np.testing.assert_allclose(u2p["w"], -lr * buf2, rtol=1e-6)


# --------------------------------------------------------------------------- (h) bytes

def test_compression_ratio_146x_for_64x64_chunks():
  shape = (256, 512)                       # 4 x 8 chunks of 64 x 64
  params = {"w": jax.ShapeDtypeStruct(shape, jnp.float32)}
  lay = sl.make_layout(params, CFG)
  (t,) = lay.tensors
  assert t.blocks == (64, 64) and t.k == 64
  payload, _ = jax.eval_shape(lambda d, e: sl.encode(d, e, lay, CFG), params, params)
  nbytes = {f: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(getattr(payload, f)))
            for f in sl.Payload._fields}
  wire = sl.wire_bytes(lay, CFG)
  kept = t.n_chunks * t.k
  assert nbytes["idx"] == wire["idx"] == kept * 12 // 8 == 3072
  assert nbytes["val"] == wire["val"] == kept * 2 // 8 == 512
  assert nbytes["mean"] + nbytes["lut"] == wire["side"] == 4 * (1 + 4)
  dense = math.prod(shape) * 4
  assert dense * 14 == (wire["idx"] + wire["val"]) * 32 * 64        # 32*64/(2+12)
  assert dense / (wire["idx"] + wire["val"]) == pytest.approx(146.29, abs=0.01)
  assert dl.wire_bytes(params, dl.DiLoCoConfig()) == dense
  assert dl.wire_bytes(params, dl.DiLoCoConfig(quantize="int8")) == dense // 4 + 4
