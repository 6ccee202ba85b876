"""DiLoCo (schemes.md §2; arXiv 2311.08105, MaxText diloco.py): dense pseudo-gradients.

One peer k, round t:
  theta_k = H inner AdamW steps from theta^{t-1}     `inner.inner_steps`, the inner
                                                     AdamW state kept across rounds
  delta   = theta^{t-1} - theta_k                    optionally int8 per tensor slice
Aggregate: mean of the decoded deltas over the valid gathered peers. Outer: SGD with
Nesterov momentum fed the mean as its gradient (theta - lr * nesterov(mean delta)). The
validator's eval step (§4) applies decode(delta_k) scaled by outer lr * 0.2.

Leaves under the top-level 'layers' carry the layer axis as a batch axis: int8 scales are
per layer slice, as every other scheme's per-tensor parameters. Pure functions for one
peer; lift them over a leading peer axis with `jax.vmap` or `lax.map`.
"""
from __future__ import annotations

import math
import dataclasses
from typing import Any, Callable, ClassVar, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnet.configbase import require, static_config
from jaxnet.schemes import base, inner, quant
from jaxnet.schemes.inner import InnerConfig
from jaxnet.schemes.layout import (TOPK_PER, chunk_k, default_batch_axes, gather_leading, key_name,
                                   tensor_layouts, to_chunks)
from jaxnet.schemes.topk import topk_indices
from jaxnet.submission import Layout, Submission

__all__ = ["DiLoCoConfig", "DiLoCoState", "DiLoCoPayload", "init", "encode", "decode",
           "aggregate", "outer", "eval_update", "peer_round", "wire_bytes", "SCHEME"]


@static_config
class DiLoCoConfig:
  """DiLoCo local steps, optional int8 payload and Nesterov outer step (schemes.md §2)."""
  outer_lr: float = 0.7          # outer Nesterov SGD learning rate (paper; MaxText: 0.3)
  outer_momentum: float = 0.9    # outer momentum (paper and MaxText); 0 = plain SGD
  nesterov: bool = True          # Nesterov momentum in the outer step (paper)
  quantize: Literal["none", "int8"] = "none"  # payload: float32 deltas, or int8 per tensor
                                 #   slice with scale max|delta|/127 (Streaming DiLoCo: 4 bits)
  copy_topk: int = 64            # the copy detector compares each peer's top-k |delta| per
                                 #   64x64 chunk, k per 4096 as sparseloco.topk (gauntlet.md §14)

  def __post_init__(self):
    require(self.outer_lr > 0, "diloco.outer_lr", "must be positive")
    require(0 <= self.outer_momentum < 1, "diloco.outer_momentum", "must be in [0, 1)")
    require(self.quantize in ("none", "int8"), "diloco.quantize", "must be 'none' or 'int8'")
    require(1 <= self.copy_topk <= TOPK_PER, "diloco.copy_topk", f"must be in 1..{TOPK_PER}")


class DiLoCoState(NamedTuple):
  """One peer's state across rounds (schemes.md §2: the inner optimizer state is kept)."""
  opt_state: Any   # inner AdamW state (`inner.optimizer`)


class DiLoCoPayload(NamedTuple):
  """One peer's upload: the pseudo-gradient, dense (schemes.md §2)."""
  val: Any     # tree like the parameters: float32, or int8 codes
  scale: Any   # None, or (int8) a tree of float32 [*batch] scales per tensor slice


def _batch_axes(params, batch_axes: Callable[[tuple[str, ...]], int] | None):
  """Tree of each leaf's number of leading batch axes (DeMo's rule by default)."""
  rule = batch_axes or default_batch_axes
  return jax.tree_util.tree_map_with_path(
      lambda path, _: rule(tuple(key_name(k) for k in path)), params)


def init(params, inner_cfg: InnerConfig) -> DiLoCoState:
  """Fresh inner AdamW state for one peer."""
  return DiLoCoState(inner.optimizer(inner_cfg).init(params))


def encode(delta, cfg: DiLoCoConfig,
           batch_axes: Callable[[tuple[str, ...]], int] | None = None) -> DiLoCoPayload:
  """The payload of a pseudo-gradient: float32 as is, or int8 per tensor slice (§2)."""
  delta = jax.tree.map(lambda d: d.astype(jnp.float32), delta)
  if cfg.quantize == "none":
    return DiLoCoPayload(delta, None)
  leaves, treedef = jax.tree.flatten(delta)
  codes = [quant.quantize_int8(d, batch_ndim=nb)
           for d, nb in zip(leaves, treedef.flatten_up_to(_batch_axes(delta, batch_axes)))]
  return DiLoCoPayload(treedef.unflatten([c.q for c in codes]),
                       treedef.unflatten([c.scale for c in codes]))


def decode(payload: DiLoCoPayload):
  """Dense float32 tree of one payload (int8: q * scale per slice)."""
  if payload.scale is None:
    return jax.tree.map(lambda v: v.astype(jnp.float32), payload.val)
  return jax.tree.map(quant.dequantize_int8, payload.val, payload.scale)


def aggregate(payloads_G: DiLoCoPayload, valid_G):
  """Mean of the decoded deltas over the valid gathered peers (schemes.md §2); zero when
  none is valid. Invalid peers contribute nothing, NaNs included."""
  valid_G = jnp.asarray(valid_G, bool)
  n = jnp.maximum(jnp.sum(valid_G.astype(jnp.float32)), 1.0)

  def mean(d_G):
    ok = valid_G.reshape((-1,) + (1,) * (d_G.ndim - 1))
    return jnp.sum(jnp.where(ok, d_G, 0.0), axis=0) / n
  return jax.tree.map(mean, jax.vmap(decode)(payloads_G))


def outer(cfg: DiLoCoConfig) -> optax.GradientTransformation:
  """Outer SGD with Nesterov momentum on the mean pseudo-gradient (schemes.md §2).

  optax.sgd: buf <- mu*buf + g; update = -lr*(g + mu*buf) with Nesterov, -lr*buf without
  (PyTorch's SGD form). Feed `aggregate`'s output as the gradient.
  """
  return optax.sgd(cfg.outer_lr, momentum=cfg.outer_momentum or None, nesterov=cfg.nesterov)


def eval_update(payload: DiLoCoPayload):
  """What the validator applies for one peer before scaling: decode(delta_k) (§4); the
  caller applies theta - (outer_lr * 0.2) * this."""
  return decode(payload)


def wire_bytes(params, cfg: DiLoCoConfig,
               batch_axes: Callable[[tuple[str, ...]], int] | None = None) -> int:
  """Bytes of a payload's arrays for a parameter tree (arrays or ShapeDtypeStructs)."""
  leaves = jax.tree.leaves(params)
  if cfg.quantize == "none":
    return sum(4 * math.prod(p.shape) for p in leaves)
  nbs = jax.tree.leaves(_batch_axes(params, batch_axes))
  return sum(math.prod(p.shape) + 4 * math.prod(p.shape[:nb]) for p, nb in zip(leaves, nbs))


def peer_round(params, state: DiLoCoState, batches_HxBxL: dict, model_cfg, cfg: DiLoCoConfig,
               inner_cfg: InnerConfig,
               batch_axes: Callable[[tuple[str, ...]], int] | None = None):
  """One peer's round (schemes.md §2): inner steps, pseudo-gradient, encode.

  Returns (payload, new state, inner-step metrics).
  """
  end, opt_state, metrics = inner.inner_steps(params, state.opt_state, batches_HxBxL,
                                              model_cfg, inner_cfg)
  return (encode(inner.pseudo_gradient(params, end), cfg, batch_axes), DiLoCoState(opt_state),
          metrics)


# --------------------------------------------------------------------------- the seam

def payload_of(sub: Submission, layout: Layout) -> DiLoCoPayload:
  """The DiLoCo payload a Submission carries: `val` per tensor, int8 scales in `qscale`."""
  val = layout.treedef.unflatten([sub.val[t.name] for t in layout.tensors])
  if not sub.qscale:
    return DiLoCoPayload(val, None)
  return DiLoCoPayload(val, layout.treedef.unflatten([sub.qscale[t.name] for t in layout.tensors]))


@dataclasses.dataclass(frozen=True)
class DiLoCoScheme(inner.LocalSGDScheme):
  """DiLoCo behind the scheme seam (schemes.md §2, §4): dense pseudo-gradients."""
  name: ClassVar[str] = "diloco"

  def make_layout(self, params, *, n_pages: int, batch_axes=default_batch_axes) -> Layout:
    # chunks only for the copy detector: k of every 4096 largest |delta| (`copy_topk`)
    treedef, tensors = tensor_layouts(params, 64, lambda n: chunk_k(n, self.section.copy_topk),
                                      batch_axes=batch_axes)
    int8 = self.section.quantize == "int8"
    specs = {f: {} for f in ("idx", "val", "qmean", "qscale", "qlut")}
    for t in tensors:
      specs["val"][t.name] = (t.shape, np.int8 if int8 else np.float32)
      if int8:
        specs["qscale"][t.name] = (t.batch_shape, np.float32)
    return Layout(treedef=treedef, tensors=tensors, n_pages=n_pages,
                  fields=base.field_entries(specs), scheme=self.name)

  def init(self, params) -> DiLoCoState:
    return init(params, self.cfg.inner)

  def _submission(self, payload: DiLoCoPayload, layout: Layout) -> Submission:
    names = [t.name for t in layout.tensors]
    fields = {"val": dict(zip(names, layout.treedef.flatten_up_to(payload.val)))}
    if payload.scale is not None:
      fields["qscale"] = dict(zip(names, layout.treedef.flatten_up_to(payload.scale)))
    return base.empty_submission(layout, fields)

  def local(self, params, state, batch_SxL, lr_t, layout):
    """Inner steps on the peer's pages split into H batches; the loss is the mean of the
    H inner batches' losses, each before its own step."""
    rule = {t.name: t.batch_ndim for t in layout.tensors}
    payload, state, m = peer_round(params, state, self.inner_batches(batch_SxL), self.cfg.model,
                                   self.section, self.cfg.inner,
                                   batch_axes=lambda path: rule["/".join(path)])
    return self._submission(payload, layout), state, jnp.mean(m["loss"])

  def encode_direction(self, dense, layout):
    rule = {t.name: t.batch_ndim for t in layout.tensors}
    return self._submission(encode(dense, self.section, lambda path: rule["/".join(path)]),
                            layout)

  def aggregate(self, subs_G, valid_G, layout):
    subs_G = jax.tree.map(gather_leading, subs_G)
    return aggregate(payload_of(subs_G, layout), gather_leading(jnp.asarray(valid_G, bool)))

  def outer(self):
    return outer(self.section)

  @classmethod
  def decode(cls, sub, layout):
    return decode(payload_of(sub, layout))

  @classmethod
  def check_values(cls, sub, layout, decode=True):
    """§7.4 for DiLoCo: finite values and scales (no indices; the decoded delta is the
    values times a finite scale, checked directly when `decode`)."""
    vals = [jnp.all(jnp.isfinite(sub.val[t.name].astype(jnp.float32))) for t in layout.tensors]
    scales = [jnp.all(jnp.isfinite(sub.qscale[t.name])) for t in layout.tensors if sub.qscale]
    decoded = [base.tree_finite(cls.decode(sub, layout))] if decode else vals + scales
    return base.chunk_flags([], vals, scales, decoded, [])

  @classmethod
  def indices(cls, sub, layout):
    """The top-k |delta| of every 64x64 chunk (`diloco.copy_topk`): a dense upload has no
    indices, so the copy detector compares where each peer's largest entries are."""
    dense = layout.treedef.flatten_up_to(cls.decode(sub, layout))
    return {t.name: topk_indices(jnp.abs(to_chunks(d, t)), t.k)
            for t, d in zip(layout.tensors, dense)}


SCHEME = DiLoCoScheme
