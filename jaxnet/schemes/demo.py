"""DeMo (gauntlet.md §3.2, §5; jax.md §4.1-§4.2): the paper's scheme and jaxnet's default.

One peer, per parameter tensor (gauntlet.md §3.2, the order of the reference code):
  m <- beta*m + lr_t*g                        momentum with the learning rate inside
  C = DCT(m) per chunk                        orthonormal DCT-II, blocks of the largest
                                              divisor <= 64 of each dimension
  (I, v) = top-k of |C| per chunk             ties broken by lowest index (`topk_indices`)
  v_hat = deq(quant(v))                       optional 8-bit codes, 256 bins over 6 sigma
  m <- m - IDCT(scatter(I, v_hat))            error feedback, skipped for the first
                                              `ef_warmup` calls (§18 row 10b)
Aggregate of G peers (§5.1): dequantise, per-chunk L2 normalisation, scatter-mean over the
peers that picked each coefficient, IDCT, sign. Outer step (§5.2, §18 row 10c): weight
decay, then theta - lr_t * direction, with lr_t from `demo_lr` (§5.4). The validator's
eval step (§9.2 step 4): theta - lr_t * 0.2 * sign(decode_one(sub)).

Leaves whose leading axes are batch axes (the scanned layer stack) are handled slice by
slice with `vmap`: every slice is one tensor of the reference (own chunks, own quantisation
parameters). Chunk sizes and DCT bases are static, computed from shapes at trace time.
All per-peer functions are written for one peer; `compress_peers` lifts them over [P, ...].
`DemoScheme` (`SCHEME`) puts them behind the scheme seam (`jaxnet.schemes.base`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxnet.configbase import require, static_config
from jaxnet.schemes import base
from jaxnet.schemes.dct import dct_basis, dct_chunks, idct_chunks, unit_dct, unit_idct  # noqa: F401
from jaxnet.schemes.layout import (TensorLayout, batched, chunk_size, default_batch_axes,  # noqa: F401
                                   gather_leading, key_name, leaf_units, map_budget, map_units,
                                   scatter_add, tensor_layouts, units, zeros)
from jaxnet.schemes.quant import dequantize_mean_lut as dequantize  # noqa: F401
from jaxnet.schemes.quant import quantize_mean_lut as quantize
from jaxnet.schemes.topk import topk_indices
from jaxnet.submission import Layout, Submission


@static_config
class DemoConfig:
  """DeMo compressor and outer step (gauntlet.md §3.2, §5, §15.2; jax.md §4.1)."""
  beta: float = 0.999            # momentum_decay
  topk: int = 32                 # topk_compression, per chunk
  chunk: int = 64                # target_chunk: largest divisor <= 64 per dimension
  quantize: bool = True          # 8-bit values, 256 bins, 6 sigma (reference commit)
  quant_bins: int = 256          # quantization bins (uint8 only)
  quant_range: float = 6.0       # quantization range in standard deviations
  ef_warmup: int = 5             # first calls skip error feedback (§18 row 10b)
  weight_decay: float = 0.0      # lambda at the reference commit
  lr: float = 4e-4               # outer sign-SGD step size eta
  warmup: int = 250              # windows of linear warm-up from 0.1x (§5.4)
  t0: int = 20000                # cosine with warm restarts, first period (§5.4)
  t_mult: int = 2                # period multiplier of each restart (§5.4)
  min_lr_factor: float = 0.1     # cosine floor as a fraction of lr (§5.4)
  norm_eps: float = 1e-8         # per-chunk L2 normalisation epsilon (§5.1)
  normalisation: Literal["chunk", "tensor", "none"] = "chunk"  # L2 norm of peer values (§18 row 1)
  collision: Literal["mean", "sum"] = "mean"  # reduce of peers that hit one index (§18 row 1)
  apply_sign: bool = True        # sign of the aggregate in the outer step (§18 row 1)
  peer_batch: int = 1            # lax.map batch size over the peer axis (every scheme)
  map_elements: int = 0          # tensor elements per lax.map iteration of the chunk transforms;
                                 # 0 = by backend (2**18 on CPU, 2**24 on accelerators)

  def __post_init__(self):
    require(0 <= self.beta < 1, "demo.beta", "must be in [0, 1)")
    require(self.topk > 0, "demo.topk", "must be positive")
    require(self.chunk > 0, "demo.chunk", "must be positive")
    require(self.quant_bins == 256 or not self.quantize, "demo.quant_bins",
            "only 256 bins (uint8) are supported")
    require(self.peer_batch > 0, "demo.peer_batch", "must be positive")
    require(self.map_elements >= 0, "demo.map_elements", "must be >= 0")


def make_layout(params, cfg: DemoConfig, *, n_pages: int,
                batch_axes: Callable[[tuple[str, ...]], int] = default_batch_axes) -> Layout:
  """Static layout of DeMo submissions for a parameter tree (arrays or ShapeDtypeStructs).

  Raises:
    ValueError: a leaf is not 1-D or 2-D after its batch axes, or a chunk does not fit
      the int16 indices of gauntlet.md §3.2 step 4.
  """
  treedef, tensors = tensor_layouts(params, cfg.chunk, lambda _: cfg.topk, batch_axes=batch_axes)
  specs = {f: {} for f in ("idx", "val", "qmean", "qscale", "qlut")}
  for t in tensors:
    specs["idx"][t.name] = (t.idx_shape, np.int16)
    specs["val"][t.name] = (t.idx_shape, np.uint8 if cfg.quantize else np.float32)
    if cfg.quantize:
      specs["qmean"][t.name] = (t.batch_shape, np.float32)
      specs["qscale"][t.name] = (t.batch_shape, np.float32)
      specs["qlut"][t.name] = (t.batch_shape + (cfg.quant_bins,), np.float32)
  return Layout(treedef=treedef, tensors=tensors, n_pages=n_pages,
                fields=base.field_entries(specs), scheme="demo",
                map_elements=map_budget(cfg.map_elements), quantized=cfg.quantize,
                bins=cfg.quant_bins)


class DemoState(NamedTuple):
  """One peer's DeMo state (gauntlet.md §3.2): momentum per tensor and the call count."""
  momentum: Any          # float32 tree shaped like the parameters
  count: jax.Array       # int32 []: DeMo calls so far (error-feedback warm-up, §18 10b)


# --------------------------------------------------------------------------- one peer

def init(params) -> DemoState:
  """Zero momentum (float32) and call count 0 for one peer (gauntlet.md §3.2)."""
  return DemoState(jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params),
                   jnp.zeros((), jnp.int32))


def dequantize_values(sub: Submission, t: TensorLayout):
  """Float32 values [*batch, n_chunks, k] of one tensor of one submission."""
  v = sub.val[t.name]
  if not sub.quantized:
    return v.astype(jnp.float32)
  return batched(dequantize, t.batch_ndim)(v, sub.qmean[t.name], sub.qlut[t.name])


def _encode_leaf(xs: tuple, buffer: Callable, t: TensorLayout, cfg: DemoConfig, budget: int):
  """Top-k of the chunked DCT of buffer(*units), then quantisation per tensor slice.

  Returns:
    (idx int16, val, (mean, scale, lut) or None, v_hat float32 [units, chunks, k]).
  """
  def unit(*xs):
    coef = unit_dct(buffer(*xs), t)
    idx = topk_indices(jnp.abs(coef), t.k)
    return idx, jnp.take_along_axis(coef, idx, axis=-1)
  idx_u, v_u = map_units(unit, xs, t, budget)
  idx, v = idx_u.reshape(t.idx_shape), v_u.reshape(t.idx_shape)
  if not cfg.quantize:
    return idx.astype(jnp.int16), v, None, v_u
  q, mean, scale, lut = batched(lambda v: quantize(v, cfg.quant_bins, cfg.quant_range),
                                 t.batch_ndim)(v)
  vhat = batched(dequantize, t.batch_ndim)(q, mean, lut)
  return idx.astype(jnp.int16), q, (mean, scale, lut), vhat.reshape(v_u.shape)


def _submission(leaves: list, layout: Layout) -> Submission:
  fields = {f: {} for f in ("idx", "val", "qmean", "qscale", "qlut")}
  for t, (idx, val, qp) in zip(layout.tensors, leaves):
    fields["idx"][t.name], fields["val"][t.name] = idx, val
    if qp is not None:
      fields["qmean"][t.name], fields["qscale"][t.name], fields["qlut"][t.name] = qp
  return base.empty_submission(layout, fields)


def encode(buffers, layout: Layout, cfg: DemoConfig) -> Submission:
  """DCT, per-chunk top-k and optional quantisation of a tree (no momentum, no EF).

  The metadata is zero; set it with `submission.with_meta`.
  """
  leaves = []
  for t, x in zip(layout.tensors, layout.treedef.flatten_up_to(buffers)):
    idx, val, qp, _ = _encode_leaf((leaf_units(x.astype(jnp.float32), t),), lambda u: u, t, cfg,
                                  layout.map_elements)
    leaves.append((idx, val, qp))
  return _submission(leaves, layout)


def compress(grads, state: DemoState, lr_t, layout: Layout,
             cfg: DemoConfig) -> tuple[Submission, DemoState]:
  """One peer's DeMo step (gauntlet.md §3.2 steps 2-6; weight decay is in `outer_step`).

  Args:
    grads: the peer's averaged gradient, shaped like the parameters.
    state: its `DemoState`.
    lr_t: the round's learning rate `demo_lr(step, cfg)` (inside the momentum).
  Returns:
    (submission with zero metadata, new state). `decode_one(submission)` is exactly what
    was subtracted from the momentum once the warm-up is over.
  """
  lr_t = jnp.asarray(lr_t, jnp.float32)
  beta = jnp.float32(cfg.beta)
  feedback = state.count >= cfg.ef_warmup   # §18 row 10b: skip EF for the first calls
  buffer = lambda m, g: beta * m + lr_t * g.astype(jnp.float32)   # step 2, recomputed per pass
  leaves, moms = [], []
  for t, m, g in zip(layout.tensors, layout.treedef.flatten_up_to(state.momentum),
                     layout.treedef.flatten_up_to(grads)):
    xs = (leaf_units(m, t), leaf_units(g, t))
    idx, val, qp, vhat_u = _encode_leaf(xs, buffer, t, cfg, layout.map_elements)
    idx_u = idx.reshape(vhat_u.shape)

    def residual(m, g, i, v, t=t):
      # Step 6: the transmitted part has distinct indices per chunk, so a plain set
      # suffices; bit-identical to `decode_one` (each mean there is one value / 1).
      rows = jnp.arange(i.shape[0])[:, None]
      dense = jnp.zeros((i.shape[0], t.chunk_len), jnp.float32).at[rows, i.astype(jnp.int32)].set(
          v, unique_indices=True)
      return buffer(m, g) - jnp.where(feedback, unit_idct(dense, t), 0.0)
    moms.append(map_units(residual, xs + (idx_u, vhat_u), t, layout.map_elements)
                .reshape(t.shape))
    leaves.append((idx, val, qp))
  return _submission(leaves, layout), DemoState(layout.treedef.unflatten(moms), state.count + 1)


def compress_peers(grads_P, state_P: DemoState, lr_t, layout: Layout,
                   cfg: DemoConfig) -> tuple[Submission, DemoState]:
  """`compress` for P peers stacked on a leading axis, `lax.map` in batches of peer_batch."""
  return lax.map(lambda gs: compress(gs[0], gs[1], lr_t, layout, cfg), (grads_P, state_P),
                 batch_size=cfg.peer_batch)


def decode_one(sub: Submission, layout: Layout):
  """Dense float32 tree of one submission: dequantise, scatter-mean, IDCT (no norm, no sign).

  The validator's evaluation step is theta - lr_t*e*sign(decode_one(sub)) (§9.2 step 4).
  """
  out = []
  for t in layout.tensors:
    n, _, per = units(t)
    vhat = dequantize_values(sub, t).reshape(n, per, t.k)

    def unit(i, v, t=t, per=per):
      sums, counts = scatter_add(*zeros(per, t), i, v)
      return unit_idct(sums / jnp.maximum(counts, 1), t)
    idx = sub.idx[t.name].reshape(n, per, t.k)
    out.append(map_units(unit, (idx, vhat), t, layout.map_elements).reshape(t.shape))
  return layout.treedef.unflatten(out)


# --------------------------------------------------------------------------- G peers

def _normalise(v_GxBxNxK, t: TensorLayout, cfg: DemoConfig):
  """Per-chunk (default), per-tensor or no L2 normalisation of each peer's values (§5.1)."""
  if cfg.normalisation == "none":
    return v_GxBxNxK
  axes = (-1,) if cfg.normalisation == "chunk" else tuple(range(1 + t.batch_ndim, v_GxBxNxK.ndim))
  norm = jnp.sqrt(jnp.sum(v_GxBxNxK * v_GxBxNxK, axis=axes, keepdims=True))
  return v_GxBxNxK / (norm + cfg.norm_eps)


def aggregate(subs_G: Submission, valid_G, layout: Layout, cfg: DemoConfig):
  """Outer direction from G stacked submissions (gauntlet.md §5.1; §18 row 1 knobs).

  Per tensor: dequantise; normalise (cfg.normalisation, eps cfg.norm_eps); scatter the
  (index, value) pairs with a mean over the valid peers that picked each coefficient
  (cfg.collision 'mean'; 'sum' adds them); IDCT; sign (cfg.apply_sign; exact zeros stay 0,
  §18 row 10a). Peers are accumulated one after another (`lax.scan`); an honest peer's
  indices within a chunk are distinct, so the result is deterministic on every backend.
  Invalid peers (valid_G False) contribute nothing; out-of-range indices are dropped.
  A peer axis sharded on an Explicit mesh is gathered first (G is small: <= 15, §4).
  """
  subs_G = jax.tree.map(gather_leading, subs_G)
  valid_G = gather_leading(jnp.asarray(valid_G, bool))
  G = valid_G.shape[0]
  out = []
  for t in layout.tensors:
    n, _, per = units(t)
    vhat = jax.vmap(lambda s: dequantize_values(s, t))(subs_G)
    vhat = jnp.where(valid_G.reshape((G,) + (1,) * (vhat.ndim - 1)), vhat, 0.0)
    vhat = _normalise(vhat, t, cfg).reshape(G, n, per, t.k).swapaxes(0, 1)
    idx = subs_G.idx[t.name].reshape(G, n, per, t.k).swapaxes(0, 1)

    def unit(i_G, v_G, t=t, per=per):
      def add(acc, xs):
        return scatter_add(*acc, *xs), None
      (sums, counts), _ = lax.scan(add, zeros(per, t), (i_G, v_G, valid_G))
      coef = sums / jnp.maximum(counts, 1) if cfg.collision == "mean" else sums
      dense = unit_idct(coef, t)
      return jnp.sign(dense) if cfg.apply_sign else dense
    out.append(map_units(unit, (idx, vhat), t, layout.map_elements).reshape(t.shape))
  return layout.treedef.unflatten(out)


def outer_step(params, direction, lr_t, cfg: DemoConfig):
  """theta <- (1 - lr_t*lambda) theta - lr_t * direction (gauntlet.md §5.2, §18 row 10c).

  `direction` is `aggregate`'s output (already signed when cfg.apply_sign).
  """
  decay = 1.0 - lr_t * cfg.weight_decay
  return jax.tree.map(lambda p, d: (p * decay - lr_t * d).astype(p.dtype), params, direction)


# --------------------------------------------------------------------------- value checks

def check_values(sub: Submission, layout: Layout, decode: bool = True) -> dict[str, jax.Array]:
  """Value checks of one submission as scalar bool flags; jittable, vmap it over [P, ...].

  Flags (gauntlet.md §7.4): `idx_in_range`; `values_finite` (the dequantised values);
  `qparams_finite`; `decoded_finite` (the decoded dense gradient; with `decode=False` a
  sufficient bound instead: every decoded entry is at most the sum of |values| of its chunk,
  since orthonormal DCT basis entries are at most 1); `ok`, the conjunction of those four.
  `idx_unique` (no repeated index within a chunk) is informational and not part of `ok`:
  the reference does not check it, and repeated entries are averaged when decoding.
  """
  in_range, vals_ok, q_ok, bound_ok, unique = [], [], [], [], []
  for t in layout.tensors:
    idx = sub.idx[t.name].astype(jnp.int32)
    in_range.append(jnp.all((idx >= 0) & (idx < t.chunk_len)))
    vhat = dequantize_values(sub, t)
    vals_ok.append(jnp.all(jnp.isfinite(vhat)))
    if sub.quantized:
      q_ok.append(jnp.all(jnp.stack([jnp.all(jnp.isfinite(getattr(sub, f)[t.name]))
                                     for f in ("qmean", "qscale", "qlut")])))
    bound_ok.append(jnp.all(jnp.isfinite(jnp.sum(jnp.abs(vhat), axis=-1))))
    srt = jnp.sort(idx, axis=-1)
    unique.append(jnp.all(srt[..., 1:] != srt[..., :-1]))
  flags = {"idx_in_range": jnp.all(jnp.stack(in_range)),
           "values_finite": jnp.all(jnp.stack(vals_ok)),
           "qparams_finite": jnp.all(jnp.stack(q_ok)) if q_ok else jnp.bool_(True),
           "idx_unique": jnp.all(jnp.stack(unique))}
  if decode:
    dense = decode_one(sub, layout)
    flags["decoded_finite"] = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x))
                                                 for x in jax.tree.leaves(dense)]))
  else:
    flags["decoded_finite"] = jnp.all(jnp.stack(bound_ok))
  flags["ok"] = (flags["idx_in_range"] & flags["values_finite"] & flags["qparams_finite"]
                 & flags["decoded_finite"])
  return flags


def demo_lr(step, cfg: DemoConfig):
  """Outer learning rate at round `step` (gauntlet.md §5.4); jittable, float32.

  PyTorch LinearLR(start 0.1) over cfg.warmup windows, then CosineAnnealingWarmRestarts
  (T_0 = cfg.t0, T_mult = cfg.t_mult, eta_min = cfg.min_lr_factor * cfg.lr) on
  t' = step - warmup.
  """
  step = jnp.asarray(step, jnp.int32)
  eta, eta_min = cfg.lr, cfg.lr * cfg.min_lr_factor
  warm = eta * (0.1 + 0.9 * step.astype(jnp.float32) / max(cfg.warmup, 1))
  t = jnp.maximum(step - cfg.warmup, 0)
  if cfg.t_mult == 1:
    t_cur, t_i = (t % cfg.t0).astype(jnp.float32), jnp.float32(cfg.t0)
  else:
    # Restart n begins at t0 (m^n - 1)/(m - 1); static table, capped to int32.
    starts = [min(cfg.t0 * (cfg.t_mult**n - 1) // (cfg.t_mult - 1), 2**31 - 1) for n in range(32)]
    n = jnp.sum(t >= jnp.asarray(starts[1:], jnp.int32))
    t_cur = (t - jnp.asarray(starts, jnp.int32)[n]).astype(jnp.float32)
    t_i = cfg.t0 * jnp.float32(cfg.t_mult) ** n.astype(jnp.float32)
  cosine = eta_min + (eta - eta_min) * (1 + jnp.cos(jnp.pi * t_cur / t_i)) / 2
  return jnp.where(step < cfg.warmup, warm, cosine).astype(jnp.float32)


def outer(cfg: DemoConfig) -> optax.GradientTransformation:
  """The outer step on an aggregated direction as optax (gauntlet.md §5.2, §18 row 10c).

  updates = -eta_t * (direction + lambda * theta), eta_t = `demo_lr(count)` (§5.4), so
  `optax.apply_updates(theta, updates)` is `outer_step`: bit-identical with the default
  lambda = 0, equal up to float rounding otherwise (optax adds the decay to the update
  instead of scaling theta first). Usable outside jaxnet as any optax transformation.
  """
  parts = [optax.add_decayed_weights(cfg.weight_decay)] if cfg.weight_decay else []
  parts.append(optax.scale_by_learning_rate(lambda count: demo_lr(count, cfg)))
  return optax.chain(*parts)


# --------------------------------------------------------------------------- the seam

@dataclasses.dataclass(frozen=True)
class DemoScheme(base.Scheme):
  """DeMo behind the scheme seam: one gradient per round, DCT top-k, sign-SGD outer step."""
  name: ClassVar[str] = "demo"

  def make_layout(self, params, *, n_pages: int, batch_axes=default_batch_axes) -> Layout:
    return make_layout(params, self.section, n_pages=n_pages, batch_axes=batch_axes)

  def init(self, params) -> DemoState:
    return init(params)

  def local(self, params, state, batch_SxL, lr_t, layout):
    grads, loss = base.mean_grads(params, batch_SxL, self.cfg)
    sub, state = compress(grads, state, lr_t, layout, self.section)
    return sub, state, loss

  def encode_direction(self, dense, layout):
    return encode(dense, layout, self.section)

  def aggregate(self, subs_G, valid_G, layout):
    return aggregate(subs_G, valid_G, layout, self.section)

  def outer(self):
    return outer(self.section)

  def step_size(self, window):
    return demo_lr(window, self.section)

  @classmethod
  def decode(cls, sub, layout):
    return decode_one(sub, layout)

  @classmethod
  def check_values(cls, sub, layout, decode=True):
    return check_values(sub, layout, decode)

  @classmethod
  def indices(cls, sub, layout):
    return {t.name: sub.idx[t.name].astype(jnp.int32) for t in layout.tensors}

  @classmethod
  def coefficients(cls, sub, layout):
    """The DCT coefficients as sent: indices and dequantised values (before the scatter-mean)."""
    return {t.name: (sub.idx[t.name].astype(jnp.int32), dequantize_values(sub, t))
            for t in layout.tensors}

  @classmethod
  def eval_update(cls, sub, context, layout, apply_sign=True):
    """sign(decode(sub)) (gauntlet.md §9.2 step 4); the raw decode with apply_sign off."""
    d = decode_one(sub, layout)
    return jax.tree.map(jnp.sign, d) if apply_sign else d

  @classmethod
  def out_of_range(cls, sub, layout):
    t = layout.tensors[0]
    return sub._replace(idx={**sub.idx, t.name: np.full_like(sub.idx[t.name], t.chunk_len + 5)})


SCHEME = DemoScheme
