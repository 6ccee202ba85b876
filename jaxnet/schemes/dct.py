"""Chunked orthonormal DCT-II (gauntlet.md §3.2 step 3; jax.md §4.1).

Coefficients of a chunk are its block's 1-D or separable 2-D DCT, flattened row-major.
A unit (`layout.units`) is one block-row of a 2-D tensor or one whole 1-D tensor.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnet.schemes.layout import TensorLayout, units

HIGHEST = lax.Precision.HIGHEST   # the DCT must be exact float32: TF32 would break EF


@functools.lru_cache(maxsize=None)
def dct_basis(n: int) -> np.ndarray:
  """Orthonormal DCT-II matrix B [n, n] (float32): coef = B @ x, and x = B.T @ coef.

  B[f, i] = sqrt(2/n) c_f cos(pi (2i + 1) f / 2n), c_0 = 1/sqrt(2): scipy's
  `dct(norm='ortho')` applied to the identity, as DeMo precomputes it (jax.md §4.1).
  """
  f, i = np.arange(n)[:, None], np.arange(n)[None, :]
  b = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * f / (2 * n))
  b[0] /= np.sqrt(2.0)
  return b.astype(np.float32)


def unit_dct(x, t: TensorLayout):
  """One unit -> its chunks' DCT-II coefficients [chunks, chunk_len] (row-major blocks)."""
  if len(t.blocks) == 1:
    (w,), (nx,) = t.blocks, t.grid
    return jnp.einsum("xw,bw->xb", x.reshape(nx, w), dct_basis(w), precision=HIGHEST)
  (h, w), nx = t.blocks, t.grid[1]
  c = jnp.einsum("hxw,ah,bw->xab", x.reshape(h, nx, w), dct_basis(h), dct_basis(w),
                 precision=HIGHEST)
  return c.reshape(nx, h * w)


def unit_idct(c, t: TensorLayout):
  """Inverse of `unit_dct`: [chunks, chunk_len] -> one unit."""
  if len(t.blocks) == 1:
    (w,) = t.blocks
    return jnp.einsum("xb,bw->xw", c, dct_basis(w), precision=HIGHEST).reshape(t.tensor_shape)
  (h, w), nx = t.blocks, t.grid[1]
  x = jnp.einsum("xab,ah,bw->hxw", c.reshape(nx, h, w), dct_basis(h), dct_basis(w),
                 precision=HIGHEST)
  return x.reshape(h, nx * w)


def _one_tensor(t: TensorLayout) -> TensorLayout:
  return dataclasses.replace(t, shape=t.tensor_shape, batch_ndim=0)


def dct_chunks(x, t: TensorLayout):
  """One tensor [*tensor_shape] (no batch axes) -> coefficients [n_chunks, chunk_len]."""
  n, shape, _ = units(_one_tensor(t))
  return jax.vmap(lambda u: unit_dct(u, t))(x.reshape((n,) + shape)).reshape(
      t.n_chunks, t.chunk_len)


def idct_chunks(c, t: TensorLayout):
  """Inverse of `dct_chunks`: [n_chunks, chunk_len] -> one tensor [*tensor_shape]."""
  n, _, per = units(_one_tensor(t))
  return jax.vmap(lambda u: unit_idct(u, t))(c.reshape(n, per, t.chunk_len)).reshape(
      t.tensor_shape)
