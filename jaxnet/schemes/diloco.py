"""DiLoCo (schemes.md §2; arXiv 2311.08105, MaxText diloco.py): dense pseudo-gradients.

One peer k, round t:
  theta_k = H inner AdamW steps from theta^{t-1}     `sparseloco.inner_steps`, the inner
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
from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxnet.configbase import require, static_config
from jaxnet.schemes import quant
from jaxnet.schemes.sparseloco import inner_optimizer, inner_steps, pseudo_gradient

__all__ = ["DiLoCoConfig", "DiLoCoState", "DiLoCoPayload", "inner_steps", "pseudo_gradient",
           "init", "encode", "decode", "aggregate", "outer", "eval_update", "peer_round",
           "wire_bytes"]


@static_config
class DiLoCoConfig:
  """DiLoCo local steps, optional int8 payload and Nesterov outer step (schemes.md §2)."""
  inner_steps: int = 15          # H inner AdamW steps per round (the SparseLoCo comparison's H;
                                 #   the paper: 500 at scale, MaxText sync period 36)
  inner_lr: float = 1e-3         # inner AdamW learning rate (as sparseloco.inner_lr)
  inner_warmup: int = 0          # linear inner-lr warm-up from 0 over this many inner steps,
                                 #   counted across rounds (0 = constant lr)
  inner_b1: float = 0.9          # inner AdamW beta1 (as sparseloco)
  inner_b2: float = 0.95         # inner AdamW beta2 (as sparseloco)
  inner_weight_decay: float = 0.1  # inner AdamW decoupled weight decay, not on norm scales
  inner_grad_clip: float = 1.0   # global-norm clip of every inner gradient
  outer_lr: float = 0.7          # outer Nesterov SGD learning rate (paper; MaxText: 0.3)
  outer_momentum: float = 0.9    # outer momentum (paper and MaxText); 0 = plain SGD
  nesterov: bool = True          # Nesterov momentum in the outer step (paper)
  quantize: Literal["none", "int8"] = "none"  # payload: float32 deltas, or int8 per tensor
                                 #   slice with scale max|delta|/127 (Streaming DiLoCo: 4 bits)

  def __post_init__(self):
    require(self.inner_steps > 0, "diloco.inner_steps", "must be positive")
    require(self.inner_lr > 0, "diloco.inner_lr", "must be positive")
    require(self.inner_warmup >= 0, "diloco.inner_warmup", "must be >= 0")
    require(0 <= self.inner_b1 < 1 and 0 <= self.inner_b2 < 1, "diloco.inner_b1",
            "inner betas must be in [0, 1)")
    require(self.inner_grad_clip > 0, "diloco.inner_grad_clip", "must be positive")
    require(self.outer_lr > 0, "diloco.outer_lr", "must be positive")
    require(0 <= self.outer_momentum < 1, "diloco.outer_momentum", "must be in [0, 1)")
    require(self.quantize in ("none", "int8"), "diloco.quantize", "must be 'none' or 'int8'")


class DiLoCoState(NamedTuple):
  """One peer's state across rounds (schemes.md §2: the inner optimizer state is kept)."""
  opt_state: Any   # inner AdamW state (`sparseloco.inner_optimizer`)


class DiLoCoPayload(NamedTuple):
  """One peer's upload: the pseudo-gradient, dense (schemes.md §2)."""
  val: Any     # tree like the parameters: float32, or int8 codes
  scale: Any   # None, or (int8) a tree of float32 [*batch] scales per tensor slice


def _batch_axes(params, batch_axes: Callable[[tuple[str, ...]], int] | None):
  """Tree of each leaf's number of leading batch axes (DeMo's rule by default)."""
  from jaxnet import demo
  rule = batch_axes or demo.default_batch_axes
  return jax.tree_util.tree_map_with_path(
      lambda path, _: rule(tuple(demo._key_name(k) for k in path)), params)


def init(params, cfg: DiLoCoConfig) -> DiLoCoState:
  """Fresh inner AdamW state for one peer."""
  return DiLoCoState(inner_optimizer(cfg).init(params))


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
               batch_axes: Callable[[tuple[str, ...]], int] | None = None):
  """One peer's round (schemes.md §2): inner steps, pseudo-gradient, encode.

  Returns (payload, new state, inner-step metrics).
  """
  end, opt_state, metrics = inner_steps(params, state.opt_state, batches_HxBxL, model_cfg, cfg)
  return encode(pseudo_gradient(params, end), cfg, batch_axes), DiLoCoState(opt_state), metrics
