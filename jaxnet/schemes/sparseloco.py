"""SparseLoCo (schemes.md §3): H inner AdamW steps, error feedback, chunk top-k, 2-bit values.

One peer k, round t (schemes.md §3 steps 1-7), per parameter tensor:
  theta_k = H inner AdamW steps from theta^{t-1}        `inner_steps` (shared with DiLoCo)
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
as in jaxnet.demo: own chunks, own quantiser, own clip norm. All functions are pure and
written for one peer; lift them over a leading peer axis with `jax.vmap` or `lax.map`.

Imports: `jaxnet.config` will import this module for `SparseLoCoConfig`, and jaxnet.demo,
jaxnet.model and jaxnet.train import `jaxnet.config`, so those are imported inside the
functions that use them (a module-level import would be a cycle).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxnet.configbase import require, static_config
from jaxnet.schemes import pack, quant
from jaxnet.submission import TensorLayout

INDEX_BITS = 12                  # schemes.md §3 step 6: indices within a chunk fit 0..4095
MAX_CHUNK_LEN = 1 << INDEX_BITS  # so a chunk holds at most 64x64 coefficients
TOPK_PER = 4096                  # `topk` counts kept coefficients per 4096 (a 64x64 chunk), §3 step 4


@static_config
class SparseLoCoConfig:
  """SparseLoCo local steps, compressor and outer step (schemes.md §3)."""
  inner_steps: int = 15          # H inner AdamW steps per round (CCLoco 512M; templar 72B: 30)
  inner_lr: float = 1e-3         # inner AdamW learning rate (CCLoco 512M; templar 72B: 1.17e-4)
  inner_warmup: int = 0          # linear inner-lr warm-up from 0 over this many inner steps,
                                 #   counted across rounds (CCLoco 512M: 500; 0 = constant lr)
  inner_b1: float = 0.9          # inner AdamW beta1 (templar, CCLoco)
  inner_b2: float = 0.95         # inner AdamW beta2 (templar, CCLoco)
  inner_weight_decay: float = 0.1  # inner AdamW decoupled weight decay, not on norm scales
  inner_grad_clip: float = 1.0   # global-norm clip of every inner gradient (templar, CCLoco)
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
    require(self.inner_steps > 0, "sparseloco.inner_steps", "must be positive")
    require(self.inner_lr > 0, "sparseloco.inner_lr", "must be positive")
    require(self.inner_warmup >= 0, "sparseloco.inner_warmup", "must be >= 0")
    require(0 <= self.inner_b1 < 1 and 0 <= self.inner_b2 < 1, "sparseloco.inner_b1",
            "inner betas must be in [0, 1)")
    require(self.inner_grad_clip > 0, "sparseloco.inner_grad_clip", "must be positive")
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
  opt_state: Any   # inner AdamW state, kept across rounds (as DiLoCo §2)
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

def chunk_k(chunk_len: int, topk: int) -> int:
  """Kept coefficients of a chunk of `chunk_len` (schemes.md §3 step 4).

  round(L*topk/4096) (Python's round: half to even), at least 1, at most L: 64 of a
  64x64 chunk at topk 64, every coefficient at topk 4096.
  """
  return min(chunk_len, max(1, round(chunk_len * topk / TOPK_PER)))


def make_layout(params, cfg: SparseLoCoConfig,
                batch_axes: Callable[[tuple[str, ...]], int] | None = None) -> ChunkLayout:
  """Chunk layout of a parameter tree (arrays or ShapeDtypeStructs), DeMo's chunking.

  Names, batch axes (default: one under the top-level 'layers') and blocks are DeMo's
  (`jaxnet.demo.make_layout`); k follows `chunk_k`.
  Raises:
    ValueError: a leaf is not 1-D or 2-D after its batch axes, or a chunk has more than
      4096 coefficients (12-bit indices).
  """
  from jaxnet import demo
  from jaxnet.config import DemoConfig
  kw = {} if batch_axes is None else {"batch_axes": batch_axes}
  base = demo.make_layout(params, DemoConfig(chunk=cfg.chunk, quantize=False), n_pages=0, **kw)
  tensors = []
  for t in base.tensors:
    if t.chunk_len > MAX_CHUNK_LEN:
      raise ValueError(f"{t.name}: chunk of {t.chunk_len} coefficients overflows 12-bit indices")
    tensors.append(dataclasses.replace(t, k=chunk_k(t.chunk_len, cfg.topk)))
  return ChunkLayout(base.treedef, tuple(tensors))


def to_chunks(x, t: TensorLayout):
  """[*batch, *tensor_shape] -> [*batch, n_chunks, chunk_len]: row-major blocks, each
  flattened row-major (DeMo's order, without the DCT)."""
  b, nb = t.batch_shape, t.batch_ndim
  if len(t.blocks) == 2:
    (h, w), (gy, gx) = t.blocks, t.grid
    x = jnp.swapaxes(x.reshape(b + (gy, h, gx, w)), nb + 1, nb + 2)
  return x.reshape(b + (t.n_chunks, t.chunk_len))


def from_chunks(c, t: TensorLayout):
  """Inverse of `to_chunks`."""
  b, nb = t.batch_shape, t.batch_ndim
  if len(t.blocks) == 2:
    (h, w), (gy, gx) = t.blocks, t.grid
    c = jnp.swapaxes(c.reshape(b + (gy, gx, h, w)), nb + 1, nb + 2)
  return c.reshape(t.shape)


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


# --------------------------------------------------------------------------- inner steps

def _decay_mask(params):
  # No weight decay on RMSNorm scales, the rule of train.make_optimizer.
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) != "scale", params)


def inner_optimizer(cfg) -> optax.GradientTransformation:
  """Inner AdamW (schemes.md §3 step 1) from a section with the `inner_*` fields.

  Built like `jaxnet.train.make_optimizer`: global-norm clip, then AdamW with decoupled
  weight decay off the norm scales; constant lr after an optional linear warm-up.
  """
  lr = (optax.linear_schedule(0.0, cfg.inner_lr, cfg.inner_warmup) if cfg.inner_warmup
        else cfg.inner_lr)
  return optax.chain(
      optax.clip_by_global_norm(cfg.inner_grad_clip),
      optax.adamw(lr, b1=cfg.inner_b1, b2=cfg.inner_b2, weight_decay=cfg.inner_weight_decay,
                  mask=_decay_mask))


def inner_steps(params, opt_state, batches_HxBxL: dict, model_cfg, cfg):
  """H inner AdamW steps with `lax.scan` (schemes.md §2, §3 step 1).

  Args:
    params: the round's starting parameters theta^{t-1}.
    opt_state: the peer's inner AdamW state (`inner_optimizer(cfg).init`), kept across rounds.
    batches_HxBxL: `inputs`/`targets`/`mask` [H, B, L], one batch per inner step; [H, M, B, L]
      splits each step's batch into M micro-batches (summed gradients, same result).
    model_cfg: the ModelConfig of `jaxnet.model.loss_sums`.
    cfg: SparseLoCoConfig or DiLoCoConfig (only the `inner_*` fields are read).
  Returns:
    (theta_k, new opt_state, metrics): `loss` [H] the mean token loss of each step's batch
    before its update, `grad_norm` [H] before clipping.
  """
  from jaxnet.train import accumulate_grads
  tx = inner_optimizer(cfg)

  def step(carry, batch):
    params, opt_state = carry
    mb = batch if batch["inputs"].ndim == 3 else jax.tree.map(lambda x: x[None], batch)
    total, count, grads = accumulate_grads(params, mb, model_cfg)
    denom = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), (total / denom,
                                                               optax.tree.norm(grads))

  (params, opt_state), (loss_H, gnorm_H) = lax.scan(step, (params, opt_state), batches_HxBxL)
  return params, opt_state, {"loss": loss_H, "grad_norm": gnorm_H}


def pseudo_gradient(start, end):
  """delta = theta^{t-1} - theta_k, float32 (schemes.md §2, §3 step 2)."""
  return jax.tree.map(lambda a, b: a.astype(jnp.float32) - b.astype(jnp.float32), start, end)


# --------------------------------------------------------------------------- one peer

def init(params, cfg: SparseLoCoConfig) -> SparseLoCoState:
  """Fresh inner AdamW state and a zero error-feedback buffer for one peer."""
  return SparseLoCoState(inner_optimizer(cfg).init(params),
                         jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params))


def _flat_rows(x):
  """[*batch, n_chunks, m] -> [rows, m] (one row per chunk of every slice)."""
  return x.reshape(-1, x.shape[-1])


def _dense(idx, v, t: TensorLayout, ok=True):
  """Scatter-mean of (idx, v) [*batch, n_chunks, k] into zeros -> [*batch, n_chunks, L]."""
  from jaxnet.demo import _scatter_add
  rows = math.prod(t.batch_shape) * t.n_chunks
  sums = jnp.zeros((rows, t.chunk_len), jnp.float32)
  counts = jnp.zeros((rows, t.chunk_len), jnp.int32)
  sums, counts = _scatter_add(sums, counts, _flat_rows(idx), _flat_rows(v), ok)
  return (sums / jnp.maximum(counts, 1)).reshape(t.batch_shape + (t.n_chunks, t.chunk_len))


def _encode_leaf(e, t: TensorLayout, cfg: SparseLoCoConfig):
  """Top-k and quantisation of one buffer leaf -> (idx, val, mean, lut, transmitted dense)."""
  from jaxnet.demo import topk_indices
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
  from jaxnet.demo import _scatter_add
  valid_G = jnp.asarray(valid_G, bool)
  med = clip_norms(payloads_G, valid_G, layout)
  out = []
  for t in layout.tensors:
    idx_G, v_G = jax.vmap(lambda p, t=t: decode_values(p, t))(payloads_G)
    norm_G = jnp.sqrt(jnp.sum(v_G * v_G, axis=(-2, -1)))
    v_G = jax.vmap(_clip, in_axes=(0, 0, None))(v_G, norm_G, med[t.name])

    def add(acc, xs):
      i, v, ok = xs
      return _scatter_add(*acc, _flat_rows(i), _flat_rows(v), ok), None
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
               model_cfg, cfg: SparseLoCoConfig) -> tuple[Payload, SparseLoCoState, dict]:
  """One peer's round (schemes.md §3 steps 1-7): inner steps, pseudo-gradient, encode.

  Returns (payload, new state, inner-step metrics); the peer restarts the next round
  from the new global theta with its inner AdamW state and error feedback kept.
  """
  end, opt_state, metrics = inner_steps(params, state.opt_state, batches_HxBxL, model_cfg, cfg)
  payload, ef = encode(pseudo_gradient(params, end), state.ef, layout, cfg)
  return payload, SparseLoCoState(opt_state, ef), metrics
