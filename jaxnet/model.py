"""LLaMA-style decoder in Flax NNX (gauntlet.md §2.1): RMSNorm, RoPE, SwiGLU, causal attention.

The NNX module is the container; the hot path is pure functions of `(graphdef, params)`
under `jax.jit` (jax.md §2.5, style rule 3). Layer weights are stacked on a leading
`[n_layers, ...]` axis and the forward pass scans over them, so compile time does not
grow with depth (jax.md §2.8).

Parameter layout (plain nested dict after `split`; DeMo treats the leading layer axis of
every leaf under 'layers' as a batch axis):

  embed/embedding [V, D]          layers/attn_norm/scale [L, D]
  layers/w{q,k,v,o}/kernel [L, D, D]   layers/mlp_norm/scale [L, D]
  layers/w_gate/kernel, w_up/kernel [L, D, F]   layers/w_down/kernel [L, F, D]
  final_norm/scale [D]            lm_head/kernel [D, V]   (untied, as in the 1.2B run)
"""
from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxnet.config import ModelConfig

Params = dict[str, Any]


class _Kernel(nnx.Module):
  def __init__(self, shape, std: float, rngs: nnx.Rngs):
    self.kernel = nnx.Param(jax.random.normal(rngs.params(), shape, jnp.float32) * std)


class _Scale(nnx.Module):
  def __init__(self, shape):
    self.scale = nnx.Param(jnp.ones(shape, jnp.float32))


class _Embed(nnx.Module):
  def __init__(self, shape, std: float, rngs: nnx.Rngs):
    self.embedding = nnx.Param(jax.random.normal(rngs.params(), shape, jnp.float32) * std)


class _Blocks(nnx.Module):
  """All decoder blocks, each weight stacked on a leading layer axis."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    L, D, F, std = cfg.n_layers, cfg.d_model, cfg.d_ff, cfg.init_std
    self.attn_norm = _Scale((L, D))
    self.wq = _Kernel((L, D, D), std, rngs)
    self.wk = _Kernel((L, D, D), std, rngs)
    self.wv = _Kernel((L, D, D), std, rngs)
    self.wo = _Kernel((L, D, D), std, rngs)
    self.mlp_norm = _Scale((L, D))
    self.w_gate = _Kernel((L, D, F), std, rngs)
    self.w_up = _Kernel((L, D, F), std, rngs)
    self.w_down = _Kernel((L, F, D), std, rngs)


class Decoder(nnx.Module):
  """The LLaMA-style decoder. `Decoder(cfg, rngs)(tokens_BxL) -> logits_BxLxV`."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    D, V = cfg.d_model, cfg.vocab_size
    self.embed = _Embed((V, D), cfg.init_std, rngs)
    self.layers = _Blocks(cfg, rngs)
    self.final_norm = _Scale((D,))
    self.lm_head = _Kernel((D, V), cfg.init_std, rngs)

  def __call__(self, tokens_BxL: jax.Array) -> jax.Array:
    params = nnx.to_pure_dict(nnx.state(self, nnx.Param))
    return forward(params, tokens_BxL, self.cfg)


# ----------------------------------------------------------------------- pure functions

def rms_norm(x, scale, eps):
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (y * scale).astype(x.dtype)


def rope_tables(seq_len: int, head_dim: int, theta: float):
  """cos/sin tables [L, head_dim] in the HF LLaMA layout (halves, not interleaved)."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  freqs_LxH2 = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv_freq[None, :]
  emb_LxH = jnp.concatenate([freqs_LxH2, freqs_LxH2], axis=-1)
  return jnp.cos(emb_LxH), jnp.sin(emb_LxH)


def apply_rope(x_BxLxNxH, cos_LxH, sin_LxH):
  half = x_BxLxNxH.shape[-1] // 2
  x1, x2 = x_BxLxNxH[..., :half], x_BxLxNxH[..., half:]
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  cos, sin = cos_LxH[None, :, None, :], sin_LxH[None, :, None, :]
  return (x_BxLxNxH * cos + rotated * sin).astype(x_BxLxNxH.dtype)


def _block(x_BxLxD, p, cos, sin, cfg: ModelConfig):
  # Matmuls run on a 2-D [B*L, D] view: XLA:CPU turns a dot that contracts two batch-like
  # dimensions (the weight gradient of a [B, L, D] activation) into a slow loop, and the
  # reshape is free. Measured on `small`: MLP forward+backward 318 ms -> 180 ms.
  dt = jnp.dtype(cfg.compute_dtype)
  B, L, D = x_BxLxD.shape
  N, H = cfg.n_heads, cfg.head_dim
  h_TxD = rms_norm(x_BxLxD, p["attn_norm"]["scale"], cfg.norm_eps).reshape(B * L, D)
  q = (h_TxD @ p["wq"]["kernel"].astype(dt)).reshape(B, L, N, H)
  k = (h_TxD @ p["wk"]["kernel"].astype(dt)).reshape(B, L, N, H)
  v = (h_TxD @ p["wv"]["kernel"].astype(dt)).reshape(B, L, N, H)
  q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
  att_TxD = jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(B * L, D)
  x_TxD = x_BxLxD.reshape(B * L, D) + att_TxD @ p["wo"]["kernel"].astype(dt)
  h_TxD = rms_norm(x_TxD, p["mlp_norm"]["scale"], cfg.norm_eps)
  gate_TxF = jax.nn.silu(h_TxD @ p["w_gate"]["kernel"].astype(dt))
  up_TxF = h_TxD @ p["w_up"]["kernel"].astype(dt)
  x_TxD = x_TxD + (gate_TxF * up_TxF) @ p["w_down"]["kernel"].astype(dt)
  return x_TxD.reshape(B, L, D)


def forward(params: Params, tokens_BxL: jax.Array, cfg: ModelConfig) -> jax.Array:
  """Logits (float32) for int tokens [B, L]; layers run under `lax.scan`."""
  dt = jnp.dtype(cfg.compute_dtype)
  L = tokens_BxL.shape[1]
  cos, sin = rope_tables(L, cfg.head_dim, cfg.rope_theta)
  x_BxLxD = params["embed"]["embedding"].astype(dt)[tokens_BxL]

  def body(x, layer_params):
    return _block(x, layer_params, cos, sin, cfg), None

  if cfg.remat:
    body = jax.checkpoint(body)
  x_BxLxD, _ = jax.lax.scan(body, x_BxLxD, params["layers"])
  B, _, D = x_BxLxD.shape
  x_TxD = rms_norm(x_BxLxD, params["final_norm"]["scale"], cfg.norm_eps).reshape(B * L, D)
  logits_TxV = x_TxD @ params["lm_head"]["kernel"].astype(dt)
  return logits_TxV.reshape(B, L, -1).astype(jnp.float32)


def loss_sums(params: Params, batch: dict, cfg: ModelConfig) -> tuple[jax.Array, jax.Array]:
  """(sum of masked token cross-entropies, number of unmasked tokens).

  Sums, not means, so that micro-batches and data shards combine exactly.
  `batch` holds `inputs`/`targets` int32 [B, L] and `mask` float32 [B, L] (0 where the
  target is EOS/pad: EOS = pad in the reference run, gauntlet.md §2.2).
  """
  logits_BxLxV = forward(params, batch["inputs"], cfg)
  ce_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, batch["targets"])
  mask_BxL = batch["mask"].astype(jnp.float32)
  return jnp.sum(ce_BxL * mask_BxL), jnp.sum(mask_BxL)


def loss_fn(params: Params, batch: dict, cfg: ModelConfig) -> jax.Array:
  """Mean token cross-entropy over unmasked targets."""
  total, count = loss_sums(params, batch, cfg)
  return total / jnp.maximum(count, 1.0)


# ----------------------------------------------------------------------- construction

def init(cfg: ModelConfig, key: jax.Array) -> tuple[nnx.GraphDef, Params]:
  """Builds the NNX model and splits it once: (graphdef, params as a plain dict)."""
  model = Decoder(cfg, rngs=nnx.Rngs(params=key))
  graphdef, state = nnx.split(model, nnx.Param)
  return graphdef, nnx.to_pure_dict(state)


def init_params(cfg: ModelConfig, key: jax.Array) -> Params:
  return init(cfg, key)[1]


def apply(graphdef: nnx.GraphDef, params: Params, tokens_BxL: jax.Array) -> jax.Array:
  """Pure `(graphdef, params) -> logits`, the form jitted on the hot path."""
  return nnx.merge(graphdef, params)(tokens_BxL)


def abstract_params(cfg: ModelConfig) -> Params:
  """ShapeDtypeStruct tree of the parameters, without allocating (for 1.2B counts)."""
  return jax.eval_shape(partial(init_params, cfg), jax.random.key(0))


def count_params(tree) -> int:
  return int(sum(int(jnp.size(x)) if not hasattr(x, "shape") else int(_prod(x.shape))
                 for x in jax.tree.leaves(tree)))


def _prod(shape) -> int:
  n = 1
  for s in shape:
    n *= int(s)
  return n


def flops_per_token(cfg: ModelConfig, seq_len: int, training: bool = True) -> float:
  """Model FLOPs per token: matmuls plus full T x T attention (jax.md §6.4 convention).

  Forward = 2 * (matmul weights) + 4 * T * D per layer (QK^T and AV over the full
  causal square, as the spec's figures count it); training = 3x forward.
  """
  D, F, V, L = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.n_layers
  fwd = 2 * (L * (4 * D * D + 3 * D * F) + D * V) + L * 4 * seq_len * D
  return float(3 * fwd if training else fwd)
