"""Chunking shared by every scheme (gauntlet.md §3.2 steps 3-4; schemes.md §3 step 4).

A parameter leaf is one tensor, or a stack of tensors on leading batch axes (the scanned
layer stack): every slice is one tensor of the reference, with its own chunks and its own
quantisation parameters. Each 1-D or 2-D tensor is cut into blocks of the largest divisor
<= `chunk` (64) of each dimension; a block flattened row-major is a chunk. `TensorLayout`
is the static description of one leaf; `tensor_layouts` builds them for a tree.

Also here: the `lax.map` units the chunk transforms iterate over (bounded temporaries, a
memory budget that is an argument, never a global) and the scatter-add every decoder uses.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as PS

TOPK_PER = 4096   # schemes.md §3 step 4: k is counted per 4096 coefficients (a 64x64 chunk)


@dataclasses.dataclass(frozen=True)
class TensorLayout:
  """Static chunk layout of one parameter leaf (gauntlet.md §3.2 steps 3-4).

  The leading `batch_ndim` axes of `shape` are batch axes (e.g. the scanned layer axis):
  each slice is one tensor of the reference, with its own chunks and quantisation.
  """
  name: str                  # '/'-joined key path, e.g. 'layers/wq/kernel'
  shape: tuple[int, ...]     # full leaf shape, batch axes first
  batch_ndim: int
  blocks: tuple[int, ...]    # chunk size per tensor dimension (1 or 2 entries)
  k: int                     # kept coefficients per chunk, clamped to [1, chunk_len]

  @property
  def batch_shape(self) -> tuple[int, ...]:
    return self.shape[:self.batch_ndim]

  @property
  def tensor_shape(self) -> tuple[int, ...]:
    return self.shape[self.batch_ndim:]

  @property
  def grid(self) -> tuple[int, ...]:
    return tuple(d // b for d, b in zip(self.tensor_shape, self.blocks))

  @property
  def n_chunks(self) -> int:
    return math.prod(self.grid)

  @property
  def chunk_len(self) -> int:
    return math.prod(self.blocks)

  @property
  def idx_shape(self) -> tuple[int, ...]:
    return self.batch_shape + (self.n_chunks, self.k)


def chunk_size(d: int, target: int) -> int:
  """Largest divisor of `d` that is <= `target` (gauntlet.md §3.2 step 3; prime d -> 1)."""
  return max(c for c in range(1, min(d, target) + 1) if d % c == 0)


def chunk_k(chunk_len: int, topk: int) -> int:
  """Kept coefficients of a chunk of `chunk_len` at `topk` per 4096 (schemes.md §3 step 4).

  round(L*topk/4096) (Python's round: half to even), at least 1, at most L: 64 of a
  64x64 chunk at topk 64, every coefficient at topk 4096.
  """
  return min(chunk_len, max(1, round(chunk_len * topk / TOPK_PER)))


def key_name(k) -> str:
  """One key of a pytree path as a string (dict key, attribute name or sequence index)."""
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def default_batch_axes(path: tuple[str, ...]) -> int:
  """Leading batch axes of a leaf: 1 under the top-level 'layers' (the scanned layer stack).

  `path` is the leaf's key path as strings, e.g. ('layers', 'wq', 'kernel'). Pass another
  rule to `tensor_layouts(batch_axes=...)` for other parameter layouts.
  """
  return 1 if path and path[0] == "layers" else 0


def tensor_layouts(params, chunk: int, k_of: Callable[[int], int], *,
                   batch_axes: Callable[[tuple[str, ...]], int] = default_batch_axes,
                   max_chunk_len: int = np.iinfo(np.int16).max, index_name: str = "int16"):
  """(treedef, TensorLayouts) of a parameter tree (arrays or ShapeDtypeStructs).

  `k_of(chunk_len)` gives the kept coefficients per chunk (clamped to [1, chunk_len]).
  Raises:
    ValueError: a leaf is not 1-D or 2-D after its batch axes, a chunk has more than
      `max_chunk_len` coefficients (the index width), or two leaves share a name.
  """
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  tensors = []
  for path, leaf in flat:
    keys = tuple(key_name(k) for k in path)
    name, shape = "/".join(keys), tuple(int(d) for d in leaf.shape)
    nb = batch_axes(keys)
    if not 1 <= len(shape) - nb <= 2:
      raise ValueError(f"{name}: shape {shape} with {nb} batch axes is not a 1-D or 2-D tensor")
    blocks = tuple(chunk_size(d, chunk) for d in shape[nb:])
    chunk_len = math.prod(blocks)
    if chunk_len > max_chunk_len:
      raise ValueError(f"{name}: chunk of {chunk_len} coefficients overflows {index_name} "
                       "indices")
    tensors.append(TensorLayout(name, shape, nb, blocks, max(1, min(k_of(chunk_len), chunk_len))))
  if len({t.name for t in tensors}) != len(tensors):
    raise ValueError("parameter key paths do not give unique tensor names")
  return treedef, tuple(tensors)


def to_chunks(x, t: TensorLayout):
  """[*batch, *tensor_shape] -> [*batch, n_chunks, chunk_len]: row-major blocks, each
  flattened row-major (DeMo's coefficient order, without the DCT)."""
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


def batched(fn: Callable, n: int) -> Callable:
  """Lifts a one-tensor-slice function over `n` leading batch axes (small arrays only)."""
  for _ in range(n):
    fn = jax.vmap(fn)
  return fn


# --------------------------------------------------------------------------- units
# A 2-D tensor is processed one block-row ([h, C]: nx blocks) at a time and a 1-D tensor
# whole, with `lax.map` over these units. Blocks are independent, so this is the same
# math as a whole-tensor einsum, but the temporaries are a few MiB that each iteration
# reuses instead of several copies of the tensor (2-core CPU, one 150m MLP stack: DeMo's
# compress 1.9x and decode 3.3x faster than whole-tensor einsums), and peak memory stays
# bounded.

def map_budget(elements: int) -> int:
  """Tensor elements per `lax.map` iteration (`demo.map_elements`); 0 picks by backend:
  2**18 (1 MiB, cache sized) on CPU, 2**24 on accelerators, where each iteration costs
  kernel launches. Fixed into the `Layout` when it is built, never read from a global."""
  if elements:
    return elements
  return 1 << 18 if jax.default_backend() == "cpu" else 1 << 24


def units(t: TensorLayout) -> tuple[int, tuple[int, ...], int]:
  """(number of units, shape of one unit, chunks per unit) of a leaf."""
  n = math.prod(t.batch_shape)
  if len(t.blocks) == 1:
    return n, t.tensor_shape, t.n_chunks
  return n * t.grid[0], (t.blocks[0], t.tensor_shape[1]), t.grid[1]


def map_units(fn: Callable, xs: tuple, t: TensorLayout, budget: int):
  """`lax.map` of fn over the leading unit axis of xs, about `budget` elements per iteration."""
  n, shape, _ = units(t)
  batch = max(1, min(n, budget // math.prod(shape)))
  return lax.map(lambda a: fn(*a), xs, batch_size=batch)


def leaf_units(x, t: TensorLayout):
  """A leaf [*batch, *tensor_shape] -> its units [n, *unit_shape]."""
  n, shape, _ = units(t)
  return x.reshape((n,) + shape)


def scatter_add(sums, counts, idx, v, ok=True):
  """Adds entries (idx, v: [chunks, k]) into dense (sums, counts) [chunks, chunk_len].

  Out-of-range indices and masked entries are dropped, so unchecked input cannot fault.
  """
  L = sums.shape[-1]
  idx = idx.astype(jnp.int32)
  keep = (idx >= 0) & (idx < L) & ok
  idx = jnp.where(keep, idx, L)                 # index L is out of bounds: dropped
  rows = jnp.arange(idx.shape[0])[:, None]
  sums = sums.at[rows, idx].add(jnp.where(keep, v, 0.0), mode="drop")
  counts = counts.at[rows, idx].add(keep.astype(jnp.int32), mode="drop")
  return sums, counts


def zeros(rows: int, t: TensorLayout):
  """Empty (sums float32, counts int32) [rows, chunk_len] for `scatter_add`."""
  return jnp.zeros((rows, t.chunk_len), jnp.float32), jnp.zeros((rows, t.chunk_len), jnp.int32)


def gather_leading(x):
  """Replicates a leading axis sharded on an Explicit mesh (e.g. 'peer'), as `lax.scan`
  over the gathered peers needs (G is small: <= 15, gauntlet.md §4)."""
  x = jnp.asarray(x)
  sharding = getattr(jax.typeof(x), "sharding", None)
  spec = getattr(sharding, "spec", ())
  if len(spec) and spec[0] is not None:
    return jax.sharding.reshard(x, NamedSharding(sharding.mesh, PS(None, *spec[1:])))
  return x
