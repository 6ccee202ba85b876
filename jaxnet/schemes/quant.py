"""Per-tensor quantisers of the schemes (schemes.md §2, §3 step 5).

`quantize_lut`: templar's LUT quantiser (schemes.md §3 step 5), per tensor slice
  mu = mean(v); sigma = sqrt(sum((v - mu)^2) / (n - 1)); scale = range*sigma/bins
  q = clamp(round((v - mu)/scale + offset), 0, bins - 1)
  LUT[b] = mean of (v - mu) over the values with code b (0 for an empty bin)
  decoded v_hat = LUT[q] + mu
with bins 4, range 6, offset 2 (templar, asymmetric) or offset 1.5 (symmetric ablation).
`jnp.round` rounds half to even, as torch.round does, so ties at .5 match the reference.

`quantize_mean_lut`: DeMo's 8-bit quantiser (gauntlet.md §3.2 step 5): 256 bins over 6
sigma centred on the mean, the LUT holding each bin's mean centred value.

`quantize_int8`: symmetric per-tensor int8 for DiLoCo (schemes.md §2 leaves the format
open): scale = max|x|/127, q = round(x/scale) in [-127, 127], x_hat = q*scale. Symmetric
with no zero point because pseudo-gradients are centred near 0, so one float per tensor
suffices and the error is at most scale/2 per entry (no value is clipped: |x| <= 127 scale).

Both work over `batch_ndim` leading axes: every slice is one tensor with its own
parameters (the scanned layer stack, as in jaxnet.schemes.demo). A zero or non-finite scale falls
back to 1 (as DeMo's quantiser), so a constant or all-zero slice round-trips exactly.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


class LutCodes(NamedTuple):
  """A quantised tensor (schemes.md §3 step 5): codes and what decodes them."""
  codes: jax.Array   # uint8 [*batch, *rest]: bin of every value, 0..bins-1
  mean: jax.Array    # float32 [*batch]: mu of each slice
  lut: jax.Array     # float32 [*batch, bins]: mean centred value of each bin


class Int8Codes(NamedTuple):
  """An int8-quantised tensor (schemes.md §2): x_hat = q * scale."""
  q: jax.Array       # int8 [*batch, *rest]
  scale: jax.Array   # float32 [*batch]: max|x| / 127 (1 for an all-zero slice)


def _safe(scale):
  # A zero/NaN/inf scale (constant slice, n = 1) would poison every code: use 1 instead.
  return jnp.where(jnp.isfinite(scale) & (scale > 0), scale, 1.0).astype(jnp.float32)


def _lut_one(v, bins: int, range_: float, offset: float):
  """`quantize_lut` of one slice (any shape): (codes uint8, mu [], lut [bins])."""
  v = v.astype(jnp.float32)
  n = v.size
  mu = jnp.mean(v)
  c = v - mu
  # n - 1 (Bessel) as torch.std; a single value has sigma 0 -> scale falls back to 1.
  var = jnp.sum(c * c) / (n - 1) if n > 1 else jnp.float32(0.0)
  scale = _safe(range_ * jnp.sqrt(var) / bins)
  q = jnp.clip(jnp.round(c / scale + offset), 0, bins - 1).astype(jnp.int32)
  # One masked sum per bin (bins is small and static): deterministic on every backend,
  # where a scatter-add into `bins` slots would use atomics on GPU.
  sums = jnp.stack([jnp.sum(jnp.where(q == b, c, 0.0)) for b in range(bins)])
  counts = jnp.stack([jnp.sum(q == b) for b in range(bins)]).astype(jnp.float32)
  lut = jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), 0.0)
  return q.astype(jnp.uint8), mu, lut


def _over_batch(fn, batch_ndim: int):
  for _ in range(batch_ndim):
    fn = jax.vmap(fn)
  return fn


def quantize_lut(v, *, bins: int = 4, range_: float = 6.0, offset: float = 2.0,
                 batch_ndim: int = 0) -> LutCodes:
  """LUT quantiser of schemes.md §3 step 5 per slice of the first `batch_ndim` axes.

  Defaults are templar's (`quantization_bins 4`, `quantization_range 6`, offset 2);
  offset 1.5 is the symmetric ablation. Requires bins <= 256 (uint8 codes).
  """
  if not 1 < bins <= 256:
    raise ValueError(f"bins must be in 2..256, got {bins}")
  return LutCodes(*_over_batch(lambda x: _lut_one(x, bins, range_, offset), batch_ndim)(v))


def dequantize_lut(codes, mean, lut):
  """v_hat = LUT[q] + mu (schemes.md §3 step 5), over any leading batch axes of mean.

  Codes outside the LUT are clamped to its last bin, so unchecked input cannot fault.
  """
  bins = lut.shape[-1]
  q = jnp.clip(codes.astype(jnp.int32), 0, bins - 1)
  nb = mean.ndim
  flat_q = q.reshape(q.shape[:nb] + (-1,))
  vals = jnp.take_along_axis(lut.astype(jnp.float32), flat_q, axis=-1)
  return (vals + mean.astype(jnp.float32)[..., None]).reshape(q.shape)


def quantize_int8(x, *, batch_ndim: int = 0) -> Int8Codes:
  """Symmetric per-slice int8: scale = max|x|/127, q = round(x/scale) (module docstring)."""
  x = x.astype(jnp.float32)
  axes = tuple(range(batch_ndim, x.ndim))
  scale = _safe(jnp.max(jnp.abs(x), axis=axes) / 127.0)
  s = scale.reshape(scale.shape + (1,) * len(axes))
  q = jnp.clip(jnp.round(x / s), -127, 127).astype(jnp.int8)
  return Int8Codes(q, scale)


def dequantize_int8(q, scale):
  """x_hat = q * scale per slice (scale has the batch axes of q)."""
  s = scale.astype(jnp.float32)
  return q.astype(jnp.float32) * s.reshape(s.shape + (1,) * (q.ndim - s.ndim))



def quantize_mean_lut(v, bins: int, sigmas: float):
  """DeMo's 8-bit codes of one tensor's kept values (gauntlet.md §3.2 step 5).

  mu = mean(v), sigma = ||v - mu|| / sqrt(n - 1), scale = sigmas*sigma/bins,
  q = clip(round((v - mu)/scale + bins/2), 0, bins - 1); lut[b] = mean of the centred
  values in bin b (0 if empty). A zero or non-finite scale falls back to 1, as the
  reference does, so a constant tensor still round-trips.
  Returns:
    (q uint8 like v, mean [], scale [], lut [bins]), all float32 but q.
  """
  n = v.size
  mean = jnp.mean(v)
  c = v - mean
  std = jnp.sqrt(jnp.sum(c * c)) / math.sqrt(n - 1) if n > 1 else jnp.float32(0.0)
  scale = _safe(sigmas * std / bins)
  q = jnp.clip(jnp.round(c / scale + bins // 2), 0, bins - 1).astype(jnp.int32)
  # Scatter-add into 256 bins: deterministic on CPU/TPU; only the sender computes it.
  sums = jnp.zeros(bins, jnp.float32).at[q.reshape(-1)].add(c.reshape(-1))
  counts = jnp.zeros(bins, jnp.float32).at[q.reshape(-1)].add(1.0)
  lut = jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), 0.0)
  return q.astype(jnp.uint8), mean, scale, lut


def dequantize_mean_lut(q, mean, lut):
  """v_hat = lut[q] + mu for one tensor (gauntlet.md §3.2 step 5)."""
  return jnp.take(lut, q.astype(jnp.int32), mode="clip") + mean
