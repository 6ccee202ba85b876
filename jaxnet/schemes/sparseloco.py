"""SparseLoCo (schemes.md §3): H inner AdamW steps, error feedback, chunk top-k, 2-bit values.

One peer k, round t (schemes.md §3 steps 1-7), per parameter tensor:
  theta_k = H inner AdamW steps from theta^{t-1}        `inner.inner_steps` (shared with DiLoCo)
  delta   = theta^{t-1} - theta_k                        `pseudo_gradient`
  e      <- beta*e + delta                               no learning rate inside (templar HEAD)
  (I, v)  = top-k of |e| per chunk                       chunks: largest divisor <= 64 per
                                                         dimension, no DCT; lowest index wins ties
  v_hat   = LUT[q] + mu                                  2-bit quantiser per tensor (quant.py)
  e      <- e - scatter(I, v_hat)                        what was transmitted, decoded
Aggregate of G gathered peers (step 8): decode, clip each peer's values per tensor to the
(lower) median of that tensor's value norms over the valid peers, scatter-mean over the
peers that picked each coefficient. Outer (step 9): theta <- theta - alpha * aggregate.
The validator's eval step (§4) applies clip_median(decode(delta_k)) scaled by alpha * 0.2.

Leaves whose leading axes are batch axes (the scanned layer stack) are one tensor per slice,
as in jaxnet.schemes.demo: own chunks, own quantiser, own clip norm. All functions are pure and
written for one peer; lift them over a leading peer axis with `jax.vmap` or `lax.map`.

`SparseLoCoScheme` (`SCHEME`) puts them behind the scheme seam: a Submission carries the
packed indices in `idx`, the packed codes (or float32 values) in `val`, mu in `qmean` and
the LUT in `qlut`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxnet.configbase import require, static_config
from jaxnet.schemes import base, inner, pack, quant
from jaxnet.schemes.inner import InnerConfig
from jaxnet.schemes.layout import (TOPK_PER, TensorLayout, chunk_k, default_batch_axes,
                                   from_chunks, gather_leading, scatter_add, tensor_layouts, to_chunks)
from jaxnet.schemes.topk import topk_indices
from jaxnet.submission import Layout, Submission

INDEX_BITS = 12                  # schemes.md §3 step 6: indices within a chunk fit 0..4095
MAX_CHUNK_LEN = 1 << INDEX_BITS  # so a chunk holds at most 64x64 coefficients


@static_config
class SparseLoCoConfig:
  """SparseLoCo local steps, compressor and outer step (schemes.md §3)."""
  ef_beta: float = 0.95          # error-feedback decay beta (templar momentum_decay, §3 step 3)
  topk: int = 64                 # kept coefficients per 4096 (templar 72B topk_compression 64 =
                                 #   1.5625%; the paper's 512M run: 32); a chunk of L
                                 #   coefficients keeps round(L*topk/4096), at least 1
  chunk: int = 64                # target_chunk: largest divisor <= chunk per dimension (<= 64)
  quantize: bool = True          # 2-bit LUT values (§3 step 5); false sends float32 values
  quant_bins: int = 4            # quantization_bins (2-bit codes on the wire)
  quant_range: float = 6.0       # quantization_range in standard deviations
  quant_offset: float = 2.0      # code offset: 2 = templar (asymmetric), 1.5 = symmetric ablation
  outer_lr: float = 1.0          # outer SGD step alpha (paper 1; templar 1.0 annealed to 0.4)

  def __post_init__(self):
    require(0 <= self.ef_beta < 1, "sparseloco.ef_beta", "must be in [0, 1)")
    require(1 <= self.topk <= TOPK_PER, "sparseloco.topk", f"must be in 1..{TOPK_PER}")
    require(1 <= self.chunk <= 64, "sparseloco.chunk", "must be in 1..64 (12-bit indices)")
    require(self.quant_bins == 4, "sparseloco.quant_bins", "only 4 bins (2-bit codes) are packed")
    require(self.quant_range > 0, "sparseloco.quant_range", "must be positive")
    require(0 <= self.quant_offset <= self.quant_bins - 1, "sparseloco.quant_offset",
            "must be in [0, bins - 1]")
    require(self.outer_lr > 0, "sparseloco.outer_lr", "must be positive")


class SparseLoCoState(NamedTuple):
  """One peer's state across rounds (schemes.md §3)."""
  opt_state: Any   # inner AdamW state (`inner.optimizer`), kept across rounds (as DiLoCo §2)
  ef: Any          # error-feedback buffer e_k, float32 shaped like the parameters


class Payload(NamedTuple):
  """One peer's upload (schemes.md §3 steps 4-6); dicts keyed by `TensorLayout.name`.

  Per tensor slice, the n = n_chunks*k kept coefficients in chunk order (indices ascending
  within a chunk). Unquantised payloads carry float32 values and empty `mean`/`lut`.
  """
  idx: dict[str, Any]    # uint8 [*batch, packed12_len(n)]: chunk-local 12-bit indices
  val: dict[str, Any]    # uint8 [*batch, packed2_len(n)] 2-bit codes, or float32 [*batch, n]
  mean: dict[str, Any]   # float32 [*batch]: mu of the kept values
  lut: dict[str, Any]    # float32 [*batch, bins]: decoded centred value of each code

  @property
  def quantized(self) -> bool:
    return bool(self.lut)


@dataclasses.dataclass(frozen=True)
class ChunkLayout:
  """Static chunking of a parameter tree (hashable: a static argument under jit)."""
  treedef: Any                        # PyTreeDef of the parameters
  tensors: tuple[TensorLayout, ...]   # in the treedef's leaf order; k by `chunk_k`


# --------------------------------------------------------------------------- layout

def make_layout(params, cfg: SparseLoCoConfig,
                batch_axes: Callable[[tuple[str, ...]], int] = default_batch_axes) -> ChunkLayout:
  """Chunk layout of a parameter tree (arrays or ShapeDtypeStructs): DeMo's chunking
  (`layout.tensor_layouts`), k by `chunk_k`.

  Raises:
    ValueError: a leaf is not 1-D or 2-D after its batch axes, or a chunk has more than
      4096 coefficients (12-bit indices).
  """
  treedef, tensors = tensor_layouts(params, cfg.chunk, lambda n: chunk_k(n, cfg.topk),
                                    batch_axes=batch_axes, max_chunk_len=MAX_CHUNK_LEN,
                                    index_name="12-bit")
  return ChunkLayout(treedef, tensors)


def wire_bytes(layout: ChunkLayout, cfg: SparseLoCoConfig) -> dict[str, int]:
  """Bytes of a payload's arrays: {'idx', 'val', 'side'} (side = mu and LUT, float32)."""
  out = {"idx": 0, "val": 0, "side": 0}
  for t in layout.tensors:
    slices, n = math.prod(t.batch_shape), t.n_chunks * t.k
    out["idx"] += slices * pack.packed12_len(n)
    if cfg.quantize:
      out["val"] += slices * pack.packed2_len(n)
      out["side"] += slices * 4 * (1 + cfg.quant_bins)
    else:
      out["val"] += slices * 4 * n
  return out


# --------------------------------------------------------------------------- one peer

def init(params, inner_cfg: InnerConfig) -> SparseLoCoState:
  """Fresh inner AdamW state and a zero error-feedback buffer for one peer."""
  return SparseLoCoState(inner.optimizer(inner_cfg).init(params),
                         jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params))


def _flat_rows(x):
  """[*batch, n_chunks, m] -> [rows, m] (one row per chunk of every slice)."""
  return x.reshape(-1, x.shape[-1])


def _dense(idx, v, t: TensorLayout, ok=True):
  """Scatter-mean of (idx, v) [*batch, n_chunks, k] into zeros -> [*batch, n_chunks, L]."""
  rows = math.prod(t.batch_shape) * t.n_chunks
  sums = jnp.zeros((rows, t.chunk_len), jnp.float32)
  counts = jnp.zeros((rows, t.chunk_len), jnp.int32)
  sums, counts = scatter_add(sums, counts, _flat_rows(idx), _flat_rows(v), ok)
  return (sums / jnp.maximum(counts, 1)).reshape(t.batch_shape + (t.n_chunks, t.chunk_len))


def _encode_leaf(e, t: TensorLayout, cfg: SparseLoCoConfig):
  """Top-k and quantisation of one buffer leaf -> (idx, val, mean, lut, transmitted dense)."""
  b, n = t.batch_shape, t.n_chunks * t.k
  c = to_chunks(e, t)
  idx = topk_indices(jnp.abs(c), t.k)                       # [*b, N, k] ascending
  v = jnp.take_along_axis(c, idx, axis=-1)
  if cfg.quantize:
    q = quant.quantize_lut(v.reshape(b + (n,)), bins=cfg.quant_bins, range_=cfg.quant_range,
                           offset=cfg.quant_offset, batch_ndim=t.batch_ndim)
    vhat = quant.dequantize_lut(q.codes, q.mean, q.lut).reshape(v.shape)
    val, mean, lut = pack.pack2(q.codes), q.mean, q.lut
  else:
    vhat, val, mean, lut = v, v.reshape(b + (n,)), None, None
  # Indices within a chunk are distinct, so a plain set places every decoded value;
  # bit-identical to `decode` (each mean there is one value / 1).
  rows = jnp.arange(math.prod(b) * t.n_chunks)[:, None]
  sent = jnp.zeros((rows.shape[0], t.chunk_len), jnp.float32).at[
      rows, _flat_rows(idx)].set(_flat_rows(vhat), unique_indices=True)
  sent = from_chunks(sent.reshape(c.shape), t)
  return pack.pack12(idx.reshape(b + (n,))), val, mean, lut, sent


def encode(delta, ef, layout: ChunkLayout,
           cfg: SparseLoCoConfig) -> tuple[Payload, Any]:
  """One peer's compression with error feedback (schemes.md §3 steps 3-7).

  Args:
    delta: the pseudo-gradient, shaped like the parameters.
    ef: the peer's error-feedback buffer (float32, same tree).
  Returns:
    (payload, new buffer). `decode(payload)` is exactly what was subtracted from
    beta*ef + delta.
  """
  fields = {f: {} for f in Payload._fields}
  new_ef = []
  for t, d, e in zip(layout.tensors, layout.treedef.flatten_up_to(delta),
                     layout.treedef.flatten_up_to(ef)):
    buf = cfg.ef_beta * e.astype(jnp.float32) + d.astype(jnp.float32)
    idx, val, mean, lut, sent = _encode_leaf(buf, t, cfg)
    fields["idx"][t.name], fields["val"][t.name] = idx, val
    if cfg.quantize:
      fields["mean"][t.name], fields["lut"][t.name] = mean, lut
    new_ef.append(buf - sent)
  return Payload(**fields), layout.treedef.unflatten(new_ef)


def decode_values(payload: Payload, t: TensorLayout):
  """(idx int32, values float32), both [*batch, n_chunks, k], of one tensor of a payload."""
  n, shape = t.n_chunks * t.k, t.idx_shape
  idx = pack.unpack12(payload.idx[t.name], n).reshape(shape)
  if not payload.quantized:
    return idx, payload.val[t.name].astype(jnp.float32).reshape(shape)
  codes = pack.unpack2(payload.val[t.name], n)
  v = quant.dequantize_lut(codes, payload.mean[t.name], payload.lut[t.name])
  return idx, v.reshape(shape)


def decode(payload: Payload, layout: ChunkLayout):
  """Dense float32 tree of one payload (no clipping): dequantise, scatter, un-chunk.

  A repeated index (only a malformed payload has one) is averaged; indices past the
  chunk are dropped, so unchecked input cannot fault.
  """
  out = []
  for t in layout.tensors:
    idx, v = decode_values(payload, t)
    out.append(from_chunks(_dense(idx, v, t), t))
  return layout.treedef.unflatten(out)


# --------------------------------------------------------------------------- G peers

def value_norms(payload: Payload, layout: ChunkLayout) -> dict[str, Any]:
  """L2 norm of each tensor slice's decoded values {name: [*batch]} (templar
  `compute_peer_val_norms`, one peer)."""
  out = {}
  for t in layout.tensors:
    _, v = decode_values(payload, t)
    out[t.name] = jnp.sqrt(jnp.sum(v * v, axis=(-2, -1)))
  return out


def lower_median(x_G, valid_G):
  """Median over the valid entries of the leading axis; the lower middle value for an
  even count (torch.median, which templar's `compute_peer_val_norms` uses); 0 if none."""
  G = x_G.shape[0]
  ok = jnp.asarray(valid_G, bool).reshape((G,) + (1,) * (x_G.ndim - 1))
  s = jnp.sort(jnp.where(ok, x_G, jnp.inf), axis=0)
  n = jnp.sum(jnp.asarray(valid_G, jnp.int32))
  med = lax.dynamic_index_in_dim(s, jnp.maximum(n - 1, 0) // 2, axis=0, keepdims=False)
  return jnp.where(n > 0, med, 0.0)


def clip_norms(payloads_G: Payload, valid_G, layout: ChunkLayout) -> dict[str, Any]:
  """Per-tensor clip norm {name: [*batch]}: the lower median of the valid gathered peers'
  value norms (schemes.md §3 step 8, §4)."""
  norms_G = jax.vmap(lambda p: value_norms(p, layout))(payloads_G)
  return {name: lower_median(n_G, valid_G) for name, n_G in norms_G.items()}


def _clip(v, norm, med):
  # factor min(1, med/norm): a peer at or below the median is left exactly as it was.
  factor = jnp.where(norm > med, med / jnp.where(norm > med, norm, 1.0), 1.0)
  return v * factor[..., None, None]


def aggregate(payloads_G: Payload, valid_G, layout: ChunkLayout):
  """Dense aggregate of G stacked payloads (schemes.md §3 step 8).

  Per tensor slice: decode every peer's values; scale a peer's values down to the lower
  median of the valid peers' value norms where its norm exceeds it; scatter-mean over
  the valid peers that picked each coefficient (a coefficient no valid peer picked is 0).
  Peers are accumulated one after another (`lax.scan`): each peer's indices within a
  chunk are distinct, so the sums are deterministic on every backend. Invalid peers
  (valid_G False) contribute nothing, NaNs included.
  """
  valid_G = jnp.asarray(valid_G, bool)
  med = clip_norms(payloads_G, valid_G, layout)
  out = []
  for t in layout.tensors:
    idx_G, v_G = jax.vmap(lambda p, t=t: decode_values(p, t))(payloads_G)
    norm_G = jnp.sqrt(jnp.sum(v_G * v_G, axis=(-2, -1)))
    v_G = jax.vmap(_clip, in_axes=(0, 0, None))(v_G, norm_G, med[t.name])

    def add(acc, xs):
      i, v, ok = xs
      return scatter_add(*acc, _flat_rows(i), _flat_rows(v), ok), None
    rows = math.prod(t.batch_shape) * t.n_chunks
    zeros = (jnp.zeros((rows, t.chunk_len), jnp.float32), jnp.zeros((rows, t.chunk_len), jnp.int32))
    (sums, counts), _ = lax.scan(add, zeros, (idx_G, v_G, valid_G))
    dense = (sums / jnp.maximum(counts, 1)).reshape(t.batch_shape + (t.n_chunks, t.chunk_len))
    out.append(from_chunks(dense, t))
  return layout.treedef.unflatten(out)


def outer(cfg: SparseLoCoConfig) -> optax.GradientTransformation:
  """Outer step theta <- theta - alpha * aggregate (schemes.md §3 step 9): plain SGD, no
  sign, no momentum; feed `aggregate`'s output as the gradient."""
  return optax.sgd(cfg.outer_lr)


def eval_update(payload: Payload, clip_norm: dict[str, Any], layout: ChunkLayout):
  """What the validator applies for one peer, before scaling (schemes.md §4).

  clip_median(decode(delta_k)): the peer's values clipped per tensor to `clip_norm`
  (`clip_norms` of the gathered peers), scattered densely; the caller applies
  theta - (outer_lr * 0.2) * this. Equals `aggregate` of this peer alone when its
  norms are at most `clip_norm`.
  """
  out = []
  for t in layout.tensors:
    idx, v = decode_values(payload, t)
    v = _clip(v, jnp.sqrt(jnp.sum(v * v, axis=(-2, -1))), clip_norm[t.name])
    out.append(from_chunks(_dense(idx, v, t), t))
  return layout.treedef.unflatten(out)


def peer_round(params, state: SparseLoCoState, batches_HxBxL: dict, layout: ChunkLayout,
               model_cfg, cfg: SparseLoCoConfig,
               inner_cfg: InnerConfig) -> tuple[Payload, SparseLoCoState, dict]:
  """One peer's round (schemes.md §3 steps 1-7): inner steps, pseudo-gradient, encode.

  Returns (payload, new state, inner-step metrics); the peer restarts the next round
  from the new global theta with its inner AdamW state and error feedback kept.
  """
  end, opt_state, metrics = inner.inner_steps(params, state.opt_state, batches_HxBxL,
                                              model_cfg, inner_cfg)
  payload, ef = encode(inner.pseudo_gradient(params, end), state.ef, layout, cfg)
  return payload, SparseLoCoState(opt_state, ef), metrics


# --------------------------------------------------------------------------- the seam

def payload_of(sub: Submission) -> Payload:
  """The SparseLoCo payload a Submission carries (idx, val, qmean as mu, qlut as LUT)."""
  return Payload(sub.idx, sub.val, sub.qmean, sub.qlut)


def _spec_shapes(t: TensorLayout, cfg: SparseLoCoConfig) -> dict:
  b, n = t.batch_shape, t.n_chunks * t.k
  specs = {"idx": (b + (pack.packed12_len(n),), jnp.uint8)}
  if cfg.quantize:
    specs["val"] = (b + (pack.packed2_len(n),), jnp.uint8)
    specs["qmean"] = (b, jnp.float32)
    specs["qlut"] = (b + (cfg.quant_bins,), jnp.float32)
  else:
    specs["val"] = (b + (n,), jnp.float32)
  return specs


@dataclasses.dataclass(frozen=True)
class SparseLoCoScheme(inner.LocalSGDScheme):
  """SparseLoCo behind the scheme seam (schemes.md §3, §4)."""
  name: ClassVar[str] = "sparseloco"

  def make_layout(self, params, *, n_pages: int, batch_axes=default_batch_axes) -> Layout:
    cl = make_layout(params, self.section, batch_axes)
    specs = {f: {} for f in ("idx", "val", "qmean", "qscale", "qlut")}
    for t in cl.tensors:
      for f, spec in _spec_shapes(t, self.section).items():
        specs[f][t.name] = spec
    return Layout(treedef=cl.treedef, tensors=cl.tensors, n_pages=n_pages,
                  fields=base.field_entries(specs), scheme=self.name)

  def init(self, params) -> SparseLoCoState:
    return init(params, self.cfg.inner)

  def local(self, params, state, batch_SxL, lr_t, layout):
    """Inner steps on the peer's pages split into H batches; the loss is the mean of the
    H inner batches' losses, each before its own step."""
    payload, state, m = peer_round(params, state, self.inner_batches(batch_SxL), layout,
                                   self.cfg.model, self.section, self.cfg.inner)
    return self._submission(payload, layout), state, jnp.mean(m["loss"])

  def _submission(self, payload: Payload, layout: Layout) -> Submission:
    return base.empty_submission(layout, {"idx": payload.idx, "val": payload.val,
                                          "qmean": payload.mean, "qlut": payload.lut})

  def encode_direction(self, dense, layout):
    zero = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), dense)
    return self._submission(encode(dense, zero, layout, self.section)[0], layout)

  def aggregate(self, subs_G, valid_G, layout):
    subs_G = jax.tree.map(gather_leading, subs_G)
    return aggregate(payload_of(subs_G), gather_leading(jnp.asarray(valid_G, bool)), layout)

  def outer(self):
    return outer(self.section)

  @classmethod
  def decode(cls, sub, layout):
    return decode(payload_of(sub), layout)

  @classmethod
  def check_values(cls, sub, layout, decode=True):
    """§7.4 for SparseLoCo: 12-bit indices inside their chunk, finite mu/LUT and values.
    There is no transform, so the decoded entries are the values themselves: finite
    values are finite decoded entries, and `decode` changes nothing."""
    payload = payload_of(sub)
    in_range, vals_ok, q_ok, unique = [], [], [], []
    for t in layout.tensors:
      idx, v = decode_values(payload, t)
      in_range.append(jnp.all(idx < t.chunk_len))
      vals_ok.append(jnp.all(jnp.isfinite(v)))
      if payload.quantized:
        q_ok.append(jnp.all(jnp.isfinite(payload.mean[t.name]))
                    & jnp.all(jnp.isfinite(payload.lut[t.name])))
      unique.append(base.unique_sorted(idx))
    return base.chunk_flags(in_range, vals_ok, q_ok, vals_ok, unique)

  @classmethod
  def indices(cls, sub, layout):
    return {t.name: decode_values(payload_of(sub), t)[0] for t in layout.tensors}

  @classmethod
  def coefficients(cls, sub, layout):
    return {t.name: decode_values(payload_of(sub), t) for t in layout.tensors}

  @classmethod
  def eval_context(cls, subs_N, gathered_N, layout):
    """Per-tensor clip norms: the median value norm of the gathered peers (schemes.md §4)."""
    return clip_norms(payload_of(subs_N), gathered_N, layout)

  @classmethod
  def eval_update(cls, sub, context, layout, apply_sign=True):
    """clip_median(decode(delta_k)), raw values and no sign (schemes.md §4)."""
    return eval_update(payload_of(sub), context, layout)

  @classmethod
  def out_of_range(cls, sub, layout):
    t = layout.tensors[0]
    if t.chunk_len + 5 >= MAX_CHUNK_LEN:   # 12 bits cannot point past a 64x64 chunk
      return None
    n = t.n_chunks * t.k
    bad = pack.pack12(jnp.full(t.batch_shape + (n,), t.chunk_len + 5, jnp.int32))
    return sub._replace(idx={**sub.idx, t.name: np.asarray(bad)})


SCHEME = SparseLoCoScheme
