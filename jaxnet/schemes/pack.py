"""Bit packing of SparseLoCo payloads (schemes.md §3 steps 5-6), jittable over leading axes.

12-bit indices (step 6: a chunk has at most 64x64 = 4096 coefficients, so an index fits
in 0..4095): two indices a, b become the 24-bit little-endian word w = a | b << 12 stored
as 3 bytes w[0:8], w[8:16], w[16:24], i.e.
  byte0 = a & 0xFF,  byte1 = (a >> 8) | (b & 0xF) << 4,  byte2 = b >> 4
(the low nibble of byte1 is a's high nibble). templar packs two indices into 3 bytes the
same way. An odd count is padded with one index 0 (dropped by `unpack12`).

2-bit codes (step 5: 4 bins): four codes c0..c3 become one byte c0 | c1 << 2 | c2 << 4 |
c3 << 6 (first code in the low bits); a count not divisible by 4 is padded with code 0.

All functions pack/unpack along the last axis; leading axes are batch axes. Unpacking
needs the static count n, since the padding is not recorded.
"""
from __future__ import annotations

import jax.numpy as jnp


def packed12_len(n: int) -> int:
  """Bytes of n packed 12-bit indices: 3 per pair, an odd count padded."""
  return 3 * ((n + 1) // 2)


def packed2_len(n: int) -> int:
  """Bytes of n packed 2-bit codes: 4 per byte, padded."""
  return (n + 3) // 4


def _pad_last(x, multiple: int):
  pad = -x.shape[-1] % multiple
  if pad:
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
  return x


def pack12(idx):
  """[..., n] integers in 0..4095 -> uint8 [..., packed12_len(n)].

  Only the low 12 bits of each index are kept (callers pass in-range indices).
  """
  x = _pad_last(idx.astype(jnp.uint32) & 0xFFF, 2)
  x = x.reshape(x.shape[:-1] + (x.shape[-1] // 2, 2))    # explicit sizes: n may be 0
  w = x[..., 0] | (x[..., 1] << 12)                     # 24-bit little-endian word
  b = jnp.stack([w & 0xFF, (w >> 8) & 0xFF, w >> 16], axis=-1)
  return b.astype(jnp.uint8).reshape(b.shape[:-2] + (3 * b.shape[-2],))


def unpack12(packed, n: int):
  """Inverse of `pack12`: uint8 [..., packed12_len(n)] -> int32 [..., n] in 0..4095."""
  b = packed.astype(jnp.uint32).reshape(packed.shape[:-1] + (packed.shape[-1] // 3, 3))
  w = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
  x = jnp.stack([w & 0xFFF, w >> 12], axis=-1).reshape(b.shape[:-2] + (2 * b.shape[-2],))
  return x[..., :n].astype(jnp.int32)


def pack2(codes):
  """[..., n] codes in 0..3 -> uint8 [..., packed2_len(n)] (low 2 bits kept)."""
  x = _pad_last(codes.astype(jnp.uint8) & 0x3, 4)
  x = x.reshape(x.shape[:-1] + (x.shape[-1] // 4, 4))
  return x[..., 0] | (x[..., 1] << 2) | (x[..., 2] << 4) | (x[..., 3] << 6)


def unpack2(packed, n: int):
  """Inverse of `pack2`: uint8 [..., packed2_len(n)] -> uint8 [..., n] in 0..3."""
  p = packed.astype(jnp.uint8)[..., None]
  x = (p >> jnp.arange(0, 8, 2, dtype=jnp.uint8)) & 0x3
  return x.reshape(packed.shape[:-1] + (4 * packed.shape[-1],))[..., :n]
