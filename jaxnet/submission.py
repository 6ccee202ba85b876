"""DeMo submissions: the typed pytree a peer uploads, its file format and its checks.

A submission is one peer's compressed pseudo-gradient for one round (gauntlet.md §3.2-§3.3):
for every parameter tensor, the chunk-local top-k indices (int16) and their values (float32,
or uint8 codes with per-tensor quantisation parameters), plus the metadata (uid, window,
pages). `Layout` is the static description of what a well-formed submission looks like for
one parameter tree; `jaxnet.demo.make_layout` builds it.

File format: safetensors (DESIGN.md: never unpickle a peer's upload). Tensor names are
`<field>/<tensor name>` (e.g. `idx/layers/wq/kernel`); uid, window and pages live in the
header's `__metadata__` as JSON strings. Every malformed input raises `SubmissionError`
with a `reason` from `REASONS`; the validator turns it into a penalty (gauntlet.md §7.4,
§14). Value checks that need the data also exist as the jittable `check_values`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

FORMAT = "jaxnet-demo-submission/1"
# Every reason `load_submission` can give (one exception type, many reasons).
REASONS = ("missing", "oversize", "truncated", "corrupt", "bad_metadata", "unknown_tensor",
           "missing_tensor", "wrong_dtype", "wrong_shape", "wrong_k", "index_range",
           "nonfinite")
FIELDS = ("idx", "val", "qmean", "qscale", "qlut")
HEADER_SLACK = 1 << 20      # bytes allowed for the JSON header beyond the tensor data
_INT32_MAX = 2**31 - 1


class SubmissionError(ValueError):
  """A malformed submission; `reason` is one of `REASONS`, the message names the problem."""

  def __init__(self, reason: str, message: str):
    if reason not in REASONS:
      raise ValueError(f"unknown submission error reason {reason!r}")
    super().__init__(f"{reason}: {message}")
    self.reason = reason


class Submission(NamedTuple):
  """One peer's upload for one round (gauntlet.md §3.3); a pytree, stackable as [P, ...].

  The per-tensor fields are flat dicts keyed by `TensorLayout.name`. Unquantised
  submissions carry float32 values and empty `qmean`/`qscale`/`qlut` dicts.
  """
  idx: dict[str, Any]       # int16 [*batch, n_chunks, k], chunk-local (§3.2 step 4)
  val: dict[str, Any]       # float32, or uint8 codes (§3.2 step 5), same shape as idx
  qmean: dict[str, Any]     # float32 [*batch]: mean mu of the kept values
  qscale: dict[str, Any]    # float32 [*batch]: bin width 6*sigma/256
  qlut: dict[str, Any]      # float32 [*batch, bins]: mean centred value of each bin
  uid: Any                  # int32 []
  window: Any               # int32 []
  pages: Any                # int32 [n_pages]: the data pages the peer used (§2.2)

  @property
  def quantized(self) -> bool:
    return bool(self.qlut)


@dataclasses.dataclass(frozen=True)
class TensorLayout:
  """Static compression layout of one parameter leaf (gauntlet.md §3.2 steps 3-4).

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


@dataclasses.dataclass(frozen=True)
class Layout:
  """Static description of a well-formed submission for one parameter tree (hashable)."""
  treedef: Any                        # PyTreeDef of the parameters
  tensors: tuple[TensorLayout, ...]   # in the treedef's leaf order
  quantized: bool
  bins: int
  n_pages: int

  def field_specs(self) -> dict[str, dict[str, tuple[tuple[int, ...], np.dtype]]]:
    """{field: {tensor name: (shape, dtype)}} of the per-tensor fields."""
    specs = {f: {} for f in FIELDS}
    for t in self.tensors:
      specs["idx"][t.name] = (t.idx_shape, np.dtype(np.int16))
      specs["val"][t.name] = (t.idx_shape, np.dtype(np.uint8 if self.quantized else np.float32))
      if self.quantized:
        specs["qmean"][t.name] = (t.batch_shape, np.dtype(np.float32))
        specs["qscale"][t.name] = (t.batch_shape, np.dtype(np.float32))
        specs["qlut"][t.name] = (t.batch_shape + (self.bins,), np.dtype(np.float32))
    return specs

  def abstract(self) -> Submission:
    """The submission as a tree of `jax.ShapeDtypeStruct` (the template)."""
    specs = self.field_specs()
    per = {f: {n: jax.ShapeDtypeStruct(s, d) for n, (s, d) in specs[f].items()} for f in FIELDS}
    i32 = jnp.int32
    return Submission(**per, uid=jax.ShapeDtypeStruct((), i32),
                      window=jax.ShapeDtypeStruct((), i32),
                      pages=jax.ShapeDtypeStruct((self.n_pages,), i32))

  def upload_bytes(self) -> int:
    """Bytes of tensor data in one submission (gauntlet.md §3.3: about 28 MB at 1.2B)."""
    return sum(math.prod(s.shape) * s.dtype.itemsize for s in jax.tree.leaves(self.abstract()))


def with_meta(sub: Submission, uid, window, pages) -> Submission:
  """Sets the metadata (broadcasts nothing: pass [P]-shaped arrays for stacked subs)."""
  return sub._replace(uid=jnp.asarray(uid, jnp.int32), window=jnp.asarray(window, jnp.int32),
                      pages=jnp.asarray(pages, jnp.int32))


def stack(subs: list[Submission]) -> Submission:
  """Stacks single submissions into one with a leading peer axis [P, ...] (jax arrays)."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *subs)


# --------------------------------------------------------------------------- files

def to_bytes(sub: Submission) -> bytes:
  """Serialises one submission to safetensors bytes (no pickle)."""
  tensors = {f"{f}/{n}": np.array(a, order="C")  # not ascontiguousarray: keeps 0-d
             for f in FIELDS for n, a in getattr(sub, f).items()}
  pages = [int(p) for p in np.asarray(sub.pages).reshape(-1)]
  meta = {"format": FORMAT, "uid": json.dumps(int(np.asarray(sub.uid))),
          "window": json.dumps(int(np.asarray(sub.window))), "pages": json.dumps(pages)}
  return safetensors.numpy.save(tensors, metadata=meta)


def save_submission(path: str | os.PathLike, sub: Submission) -> None:
  """Writes a submission atomically (temporary file, then rename)."""
  path = Path(path)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_bytes(to_bytes(sub))
  os.replace(tmp, path)


def _data_end(entry) -> int:
  """End offset of one header entry's data (0 when malformed: safetensors rejects it)."""
  off = entry.get("data_offsets") if isinstance(entry, dict) else None
  ok = isinstance(off, list) and len(off) == 2 and type(off[1]) is int
  return off[1] if ok else 0


def _header(data: bytes) -> dict:
  """Parses the safetensors JSON header; raises SubmissionError('truncated'/'corrupt')."""
  if len(data) < 8:
    raise SubmissionError("truncated", f"{len(data)} bytes is shorter than a header")
  n = int.from_bytes(data[:8], "little")
  if n > len(data) - 8:
    raise SubmissionError("truncated", f"header of {n} bytes but only {len(data) - 8} follow")
  try:
    header = json.loads(data[8:8 + n].decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise SubmissionError("corrupt", f"header is not JSON ({e})") from None
  if not isinstance(header, dict):
    raise SubmissionError("corrupt", "header is not a JSON object")
  end = max([_data_end(e) for name, e in header.items() if name != "__metadata__"], default=0)
  if end > len(data) - 8 - n:
    raise SubmissionError("truncated", f"tensor data ends at {end} but only "
                          f"{len(data) - 8 - n} bytes follow the header")
  return header


def _int(meta: dict, key: str, lo: int = 0) -> int:
  try:
    v = json.loads(meta[key])
  except (KeyError, TypeError, json.JSONDecodeError):
    raise SubmissionError("bad_metadata", f"metadata '{key}' is missing or not JSON") from None
  if type(v) is not int or not lo <= v <= _INT32_MAX:
    raise SubmissionError("bad_metadata", f"metadata '{key}' = {v!r} is not an int32 >= {lo}")
  return v


def _metadata(header: dict, layout: Layout) -> tuple[int, int, np.ndarray]:
  meta = header.get("__metadata__")
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise SubmissionError("bad_metadata", f"header metadata lacks format {FORMAT!r}")
  uid, window = _int(meta, "uid"), _int(meta, "window")
  try:
    pages = json.loads(meta["pages"])
  except (KeyError, TypeError, json.JSONDecodeError):
    raise SubmissionError("bad_metadata", "metadata 'pages' is missing or not JSON") from None
  if (not isinstance(pages, list) or len(pages) != layout.n_pages
      or any(type(p) is not int or not 0 <= p <= _INT32_MAX for p in pages)):
    raise SubmissionError("bad_metadata",
                          f"metadata 'pages' must be {layout.n_pages} int32 >= 0, got {pages!r}")
  return uid, window, np.asarray(pages, np.int32).reshape(layout.n_pages)


def from_bytes(data: bytes, layout: Layout, *, uid: int | None = None,
               window: int | None = None, check: bool = True) -> Submission:
  """Parses and validates safetensors bytes against `layout`; host numpy arrays.

  Args:
    uid, window: when given, the metadata must match them ('bad_metadata').
    check: also run the host value checks (indices in [0, chunk_len), finite floats).
  Raises:
    SubmissionError: for every malformed input, with a reason from `REASONS`.
  """
  limit = layout.upload_bytes() + HEADER_SLACK
  if len(data) > limit:
    raise SubmissionError("oversize", f"{len(data)} bytes > limit {limit}")
  header = _header(data)
  meta_uid, meta_window, pages = _metadata(header, layout)
  if uid is not None and meta_uid != uid:
    raise SubmissionError("bad_metadata", f"uid {meta_uid} != expected {uid}")
  if window is not None and meta_window != window:
    raise SubmissionError("bad_metadata", f"window {meta_window} != expected {window}")
  specs = layout.field_specs()
  expected = {f"{f}/{n}": spec for f in FIELDS for n, spec in specs[f].items()}
  names = set(header) - {"__metadata__"}
  if unknown := sorted(names - set(expected)):
    raise SubmissionError("unknown_tensor", f"unexpected tensor {unknown[0]!r}")
  if missing := sorted(set(expected) - names):
    raise SubmissionError("missing_tensor", f"tensor {missing[0]!r} is absent")
  try:
    arrays = safetensors.numpy.load(data)
  except Exception as e:  # the parser's own error types differ between versions
    raise SubmissionError("corrupt", f"safetensors could not parse the data ({e})") from None
  for name, (shape, dtype) in expected.items():
    a = arrays[name]
    if a.dtype != dtype:
      raise SubmissionError("wrong_dtype", f"{name}: dtype {a.dtype}, expected {dtype}")
    if a.shape != shape:
      only_k = (name.startswith(("idx/", "val/")) and a.ndim == len(shape)
                and a.shape[:-1] == shape[:-1])
      raise SubmissionError("wrong_k" if only_k else "wrong_shape",
                            f"{name}: shape {a.shape}, expected {shape}")
  sub = Submission(**{f: {n: arrays[f"{f}/{n}"] for n in specs[f]} for f in FIELDS},
                   uid=np.int32(meta_uid), window=np.int32(meta_window), pages=pages)
  if check:
    _host_checks(sub, layout)
  return sub


def load_submission(path: str | os.PathLike, layout: Layout, **kwargs) -> Submission:
  """Reads and validates a submission file (see `from_bytes`); raises SubmissionError."""
  path = Path(path)
  try:
    size = path.stat().st_size
  except OSError:
    raise SubmissionError("missing", f"{path} does not exist") from None
  limit = layout.upload_bytes() + HEADER_SLACK
  if size > limit:  # before reading: a peer must not make the validator read gigabytes
    raise SubmissionError("oversize", f"{path}: {size} bytes > limit {limit}")
  try:
    data = path.read_bytes()
  except OSError as e:
    raise SubmissionError("missing", f"{path}: {e}") from None
  return from_bytes(data, layout, **kwargs)


def _host_checks(sub: Submission, layout: Layout) -> None:
  """NumPy version of the `check_values` index and finiteness flags (gauntlet.md §7.4)."""
  for t in layout.tensors:
    idx = sub.idx[t.name]
    if idx.size and (idx.min() < 0 or idx.max() >= t.chunk_len):
      raise SubmissionError("index_range",
                            f"idx/{t.name}: indices outside [0, {t.chunk_len})")
    for f in ("val", "qmean", "qscale", "qlut"):
      a = getattr(sub, f).get(t.name)
      if a is not None and a.dtype.kind == "f" and not np.isfinite(a).all():
        raise SubmissionError("nonfinite", f"{f}/{t.name} holds NaN or Inf")


# --------------------------------------------------------------------------- jittable checks

def check_values(sub: Submission, layout: Layout, decode: bool = True) -> dict[str, jax.Array]:
  """Value checks of one submission as scalar bool flags; jittable, vmap it over [P, ...].

  Flags (gauntlet.md §7.4): `idx_in_range`; `values_finite` (the dequantised values);
  `qparams_finite`; `decoded_finite` (the decoded dense gradient; with `decode=False` a
  sufficient bound instead: every decoded entry is at most the sum of |values| of its chunk,
  since orthonormal DCT basis entries are at most 1); `ok`, the conjunction of those four.
  `idx_unique` (no repeated index within a chunk) is informational and not part of `ok`:
  the reference does not check it, and repeated entries are averaged when decoding.
  """
  from jaxnet import demo  # demo imports this module; import here to avoid a cycle
  in_range, vals_ok, q_ok, bound_ok, unique = [], [], [], [], []
  for t in layout.tensors:
    idx = sub.idx[t.name].astype(jnp.int32)
    in_range.append(jnp.all((idx >= 0) & (idx < t.chunk_len)))
    vhat = demo.dequantize_values(sub, t)
    vals_ok.append(jnp.all(jnp.isfinite(vhat)))
    if sub.quantized:
      q_ok.append(jnp.all(jnp.stack([jnp.all(jnp.isfinite(getattr(sub, f)[t.name]))
                                     for f in ("qmean", "qscale", "qlut")])))
    bound_ok.append(jnp.all(jnp.isfinite(jnp.sum(jnp.abs(vhat), axis=-1))))
    srt = jnp.sort(idx, axis=-1)
    unique.append(jnp.all(srt[..., 1:] != srt[..., :-1]))
  flags = {"idx_in_range": jnp.all(jnp.stack(in_range)),
           "values_finite": jnp.all(jnp.stack(vals_ok)),
           "qparams_finite": jnp.all(jnp.stack(q_ok)) if q_ok else jnp.bool_(True),
           "idx_unique": jnp.all(jnp.stack(unique))}
  if decode:
    dense = demo.decode_one(sub, layout)
    flags["decoded_finite"] = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x))
                                                 for x in jax.tree.leaves(dense)]))
  else:
    flags["decoded_finite"] = jnp.all(jnp.stack(bound_ok))
  flags["ok"] = (flags["idx_in_range"] & flags["values_finite"] & flags["qparams_finite"]
                 & flags["decoded_finite"])
  return flags
