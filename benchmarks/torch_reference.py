"""PyTorch port of the jaxnet model and of the reference validator's LossScore loop.

The reference for `benchmarks/peer_eval.py` (issue 5): the same LLaMA-style decoder as
`jaxnet.model` (gauntlet.md §2.1: RMSNorm, RoPE theta 1e4 in the HF half-split layout,
SwiGLU, causal attention, untied embeddings), loaded with the same float32 weights, and
the LossScore procedure as the reference validator runs it (gauntlet.md §9.2): for one
peer at a time, decode its submission, apply θ − η·e·sign(decode(Δ)) to the live weights
in place, run the forward passes, then copy the saved weights back.

Weights live in a flat dict keyed by the `jaxnet.schemes.demo` tensor names
('layers/wq/kernel', ...), in the jaxnet orientation (kernels [in, out], layers stacked on
a leading axis), so a peer's submission applies tensor by tensor. Everything is float32
(scoring paths are float32, DESIGN.md); the reference uses bf16 autocast.

  torch_params(params) -> {name: tensor}; forward(tp, tokens, cfg); loss(tp, batch, cfg)
  TorchDecoder(layout).decode(sub, name) -> dense tensor (dequantise, scatter-mean, IDCT)
  score_peers_sequential(tp, subs, own, rand, step_size, layout=, cfg=) -> dict of [P] arrays
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from jaxnet.schemes import demo
from jaxnet.config import ModelConfig
from jaxnet.submission import FIELDS, Layout, Submission


def _names(layout: Layout) -> list[str]:
  return [t.name for t in layout.tensors]


def torch_params(params, layout: Layout, device="cpu") -> dict[str, torch.Tensor]:
  """jaxnet parameter tree -> {tensor name: float32 torch tensor} (copies the weights)."""
  leaves = layout.treedef.flatten_up_to(params)
  return {t.name: torch.tensor(np.asarray(x, np.float32), device=device)
          for t, x in zip(layout.tensors, leaves)}


def torch_submissions(subs: Submission, device="cpu") -> dict[str, dict[str, torch.Tensor]]:
  """Stacked submissions [P, ...] -> {field: {name: tensor}} (the 'load the files' step)."""
  return {f: {n: torch.tensor(np.asarray(a), device=device) for n, a in getattr(subs, f).items()}
          for f in FIELDS}


def torch_batch(batch: dict, device="cpu") -> dict[str, torch.Tensor]:
  return {"inputs": torch.tensor(np.asarray(batch["inputs"]), device=device).long(),
          "targets": torch.tensor(np.asarray(batch["targets"]), device=device).long(),
          "mask": torch.tensor(np.asarray(batch["mask"], np.float32), device=device)}


# --------------------------------------------------------------------------- model

def rms_norm(x, scale, eps: float):
  return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * scale


def rope_tables(seq_len: int, head_dim: int, theta: float, device="cpu"):
  """cos/sin [L, head_dim], HF LLaMA half-split layout (as `jaxnet.model.rope_tables`)."""
  inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device)
                              / head_dim))
  freqs = torch.arange(seq_len, dtype=torch.float32, device=device)[:, None] * inv_freq[None, :]
  emb = torch.cat([freqs, freqs], dim=-1)
  return emb.cos(), emb.sin()


def apply_rope(x_BxNxLxH, cos_LxH, sin_LxH):
  half = x_BxNxLxH.shape[-1] // 2
  rotated = torch.cat([-x_BxNxLxH[..., half:], x_BxNxLxH[..., :half]], dim=-1)
  return x_BxNxLxH * cos_LxH + rotated * sin_LxH


def forward(tp: dict[str, torch.Tensor], tokens_BxL: torch.Tensor, cfg: ModelConfig,
            rope=None) -> torch.Tensor:
  """Logits [B, L, V] (float32), the same computation as `jaxnet.model.forward`."""
  B, L = tokens_BxL.shape
  N, H, D = cfg.n_heads, cfg.head_dim, cfg.d_model
  cos, sin = rope if rope is not None else rope_tables(L, H, cfg.rope_theta, tokens_BxL.device)
  x = F.embedding(tokens_BxL, tp["embed/embedding"])
  for l in range(cfg.n_layers):
    w = lambda name: tp[f"layers/{name}"][l]
    h = rms_norm(x, w("attn_norm/scale"), cfg.norm_eps)
    q = (h @ w("wq/kernel")).view(B, L, N, H).transpose(1, 2)
    k = (h @ w("wk/kernel")).view(B, L, N, H).transpose(1, 2)
    v = (h @ w("wv/kernel")).view(B, L, N, H).transpose(1, 2)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    att = F.scaled_dot_product_attention(q, k, v, is_causal=True)   # scale 1/sqrt(H), as JAX
    x = x + att.transpose(1, 2).reshape(B, L, D) @ w("wo/kernel")
    h = rms_norm(x, w("mlp_norm/scale"), cfg.norm_eps)
    x = x + (F.silu(h @ w("w_gate/kernel")) * (h @ w("w_up/kernel"))) @ w("w_down/kernel")
  x = rms_norm(x, tp["final_norm/scale"], cfg.norm_eps)
  return x @ tp["lm_head/kernel"]


def loss(tp, batch: dict, cfg: ModelConfig, rope=None) -> torch.Tensor:
  """Masked mean token cross-entropy (`jaxnet.model.loss_fn`)."""
  logits = forward(tp, batch["inputs"], cfg, rope)
  ce = F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), reduction="none")
  mask = batch["mask"].flatten()
  return (ce * mask).sum() / mask.sum().clamp_min(1.0)


# --------------------------------------------------------------------------- decode

class TorchDecoder:
  """DeMo decompression of one tensor of one submission (gauntlet.md §3.2, jax.md §4.1).

  As DeMo's `decompress`: dequantise (lut[q] + mean, per tensor slice), scatter the values
  into zeroed chunks with a mean over repeated indices (`scatter_reduce_`, 'mean',
  include_self=False), then the blockwise inverse DCT with precomputed orthonormal bases
  (`jaxnet.schemes.demo.dct_basis`, the same matrices). Chunk order is row-major over the block grid.
  """

  def __init__(self, layout: Layout, device="cpu"):
    self.layout, self.device = layout, device
    self.tensors = {t.name: t for t in layout.tensors}
    self.bases = {n: torch.tensor(demo.dct_basis(n), device=device)
                  for n in {b for t in layout.tensors for b in t.blocks}}

  def decode(self, sub: dict[str, dict[str, torch.Tensor]], name: str) -> torch.Tensor:
    """Dense float32 tensor (full leaf shape) of `name` in one peer's submission."""
    t = self.tensors[name]
    nb = math.prod(t.batch_shape)
    idx = sub["idx"][name].reshape(nb, t.n_chunks, t.k).long()
    val = sub["val"][name].reshape(nb, t.n_chunks * t.k)
    if self.layout.quantized:
      lut = sub["qlut"][name].reshape(nb, -1)
      v = torch.gather(lut, 1, val.long()) + sub["qmean"][name].reshape(nb, 1)
    else:
      v = val.float()
    dense = torch.zeros(nb, t.n_chunks, t.chunk_len, device=self.device)
    dense.scatter_reduce_(-1, idx, v.view(nb, t.n_chunks, t.k), reduce="mean", include_self=False)
    if len(t.blocks) == 1:
      (w,) = t.blocks
      return (dense.view(nb, t.n_chunks, w) @ self.bases[w]).reshape(t.shape)
    (h, w), (ny, nx) = t.blocks, t.grid
    c = dense.view(nb, ny, nx, h, w)
    x = self.bases[h].T @ c @ self.bases[w]                 # per block: B_h^T C B_w
    return x.permute(0, 1, 3, 2, 4).reshape(t.shape)


def peer_slice(subs_t: dict, k: int) -> dict:
  """Peer k's submission from stacked torch submissions (views, no copy)."""
  return {f: {n: a[k] for n, a in d.items()} for f, d in subs_t.items()}


# --------------------------------------------------------------------------- LossScore

def _sync(device) -> None:
  if str(device).startswith("cuda"):
    torch.cuda.synchronize()


@torch.inference_mode()
def score_peers_sequential(tp: dict[str, torch.Tensor], subs_t: dict, own_t: dict,
                           rand_t: dict, step_size: float, *, layout: Layout,
                           cfg: ModelConfig, decoder: TorchDecoder | None = None) -> dict:
  """The reference validator's LossScore loop (gauntlet.md §9.2), one peer at a time.

  `tp` (the live weights) is modified in place and restored after every peer from a copy
  saved once per round. L(θ; R) is computed once per round (§9.1). Per peer: L(θ; D_k);
  decode and apply per tensor; L(θ'_k; D_k), L(θ'_k; R); restore.

  Args:
    subs_t: `torch_submissions` of P stacked submissions.
    own_t: each peer's batch, tensors [P, B, L] (`torch_batch`); rand_t: shared [B, L].
  Returns:
    {own_before, own_after, rand_after, r_own, r_rand: float32 [P], rand_before: float}.
  """
  device = next(iter(tp.values())).device
  decoder = decoder or TorchDecoder(layout, device)
  L = rand_t["inputs"].shape[1]
  rope = rope_tables(L, cfg.head_dim, cfg.rope_theta, device)
  saved = {n: p.clone() for n, p in tp.items()}
  n_peers = own_t["inputs"].shape[0]
  out = np.zeros((3, n_peers), np.float32)
  rand_before = loss(tp, rand_t, cfg, rope)
  for k in range(n_peers):
    own_k = {key: x[k] for key, x in own_t.items()}
    sub_k = peer_slice(subs_t, k)
    own_before = loss(tp, own_k, cfg, rope)
    for name in _names(layout):
      tp[name].add_(torch.sign(decoder.decode(sub_k, name)), alpha=-step_size)
    own_after = loss(tp, own_k, cfg, rope)
    rand_after = loss(tp, rand_t, cfg, rope)
    for name, p in tp.items():
      p.copy_(saved[name])
    out[:, k] = torch.stack([own_before, own_after, rand_after]).cpu().numpy()
  _sync(device)
  rb = float(rand_before)
  own_before, own_after, rand_after = out
  return {"own_before": own_before, "own_after": own_after, "rand_before": np.float32(rb),
          "rand_after": rand_after,
          "r_own": (own_before - own_after) / np.maximum(own_before, 1e-12),
          "r_rand": (rb - rand_after) / max(rb, 1e-12)}

