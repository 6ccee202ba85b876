"""Submissions: the typed pytree a peer uploads, its file format and its checks.

A submission is one peer's encoded update for one round (gauntlet.md §3.2-§3.3,
schemes.md §1): per parameter tensor, up to five arrays in fixed slots (`idx`, `val`,
`qmean`, `qscale`, `qlut`) whose shapes and dtypes the scheme chooses (DeMo: int16
top-k indices and uint8 codes with 8-bit LUTs; SparseLoCo: 12-bit packed indices and
2-bit packed codes with mean and 4-entry LUT; DiLoCo: dense float32 or int8 values with
a scale), plus the metadata (uid, window, pages). `Layout` is the static description of
what a well-formed submission looks like for one parameter tree and scheme;
`Scheme.make_layout` builds it.

File format: safetensors (DESIGN.md: never unpickle a peer's upload). Tensor names are
`<field>/<tensor name>` (e.g. `idx/layers/wq/kernel`); uid, window and pages live in the
header's `__metadata__` as JSON strings. Every malformed input raises `SubmissionError`
with a `reason` from `REASONS`; the validator turns it into a penalty (gauntlet.md §7.4,
§14). Value checks that decode the data are the scheme's (`Scheme.check_values`): this
module imports no scheme.

The bytes come from untrusted peers, so every input is bounded before it is parsed: the
file and header sizes (`max_upload_bytes`, `header_limit`, derived from the layout), the
JSON nesting depth and number lengths (before `json.loads`, which would otherwise raise
RecursionError or Python's int-digit ValueError), duplicate keys, and every header entry's
types, dtype, shape and offsets (before safetensors allocates anything).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from jaxnet.schemes.layout import TensorLayout

# Every reason `load_submission` can give (one exception type, many reasons).
REASONS = ("missing", "oversize", "truncated", "corrupt", "bad_metadata", "unknown_tensor",
           "missing_tensor", "wrong_dtype", "wrong_shape", "wrong_k", "index_range",
           "nonfinite")
FIELDS = ("idx", "val", "qmean", "qscale", "qlut")
_INT32_MAX = 2**31 - 1
# safetensors dtype names of the dtypes a submission uses
_ST_DTYPES = {np.dtype(np.int16): "I16", np.dtype(np.float32): "F32", np.dtype(np.uint8): "U8",
               np.dtype(np.int8): "I8"}
_MAX_DEPTH = 3        # header object > tensor entry > shape / data_offsets list
_MAX_DIGITS = 20      # longest digit run accepted (2**64 has 20 digits)
_MAX_NDIM = 8
_ENTRY_KEYS = frozenset(("dtype", "shape", "data_offsets"))


class SubmissionError(ValueError):
  """A malformed submission; `reason` is one of `REASONS`, the message names the problem."""

  def __init__(self, reason: str, message: str):
    if reason not in REASONS:
      raise ValueError(f"unknown submission error reason {reason!r}")
    super().__init__(f"{reason}: {message}")
    self.reason = reason


class Submission(NamedTuple):
  """One peer's upload for one round (gauntlet.md §3.3); a pytree, stackable as [P, ...].

  The per-tensor fields are flat dicts keyed by `TensorLayout.name`; a field a scheme
  does not use is an empty dict. The comments give DeMo's use of each slot; the other
  schemes' are in their modules.
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
class Layout:
  """Static description of a well-formed submission for one parameter tree (hashable).

  Built by a scheme (`Scheme.make_layout`): `fields` lists every per-tensor array the
  scheme uploads as (field, tensor name, shape, dtype name); `scheme` names the scheme,
  so validators dispatch on the layout alone (`jaxnet.schemes.of_layout`).
  """
  treedef: Any                        # PyTreeDef of the parameters
  tensors: tuple[TensorLayout, ...]   # in the treedef's leaf order
  n_pages: int
  fields: tuple[tuple[str, str, tuple[int, ...], str], ...]   # (field, name, shape, dtype)
  scheme: str = "demo"
  map_elements: int = 1 << 18         # compute budget of the per-chunk maps (not on the wire)
  quantized: bool = False             # DeMo: 8-bit values
  bins: int = 0                       # DeMo: quantisation bins

  @property
  def format(self) -> str:
    """The `format` tag of this scheme's files: an upload for another scheme is refused."""
    return f"jaxnet-{self.scheme}-submission/1"

  def field_specs(self) -> dict[str, dict[str, tuple[tuple[int, ...], np.dtype]]]:
    """{field: {tensor name: (shape, dtype)}} of the per-tensor fields (all of FIELDS)."""
    specs = {f: {} for f in FIELDS}
    for f, name, shape, dtype in self.fields:
      specs[f][name] = (tuple(shape), np.dtype(dtype))
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

def to_bytes(sub: Submission, layout: Layout) -> bytes:
  """Serialises one submission to safetensors bytes (no pickle), tagged `layout.format`."""
  tensors = {f"{f}/{n}": np.array(a, order="C")  # not ascontiguousarray: keeps 0-d
             for f in FIELDS for n, a in getattr(sub, f).items()}
  pages = [int(p) for p in np.asarray(sub.pages).reshape(-1)]
  meta = {"format": layout.format, "uid": json.dumps(int(np.asarray(sub.uid))),
          "window": json.dumps(int(np.asarray(sub.window))), "pages": json.dumps(pages)}
  return safetensors.numpy.save(tensors, metadata=meta)


def save_submission(path: str | os.PathLike, sub: Submission, layout: Layout) -> None:
  """Writes a submission atomically (temporary file, then rename)."""
  path = Path(path)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_bytes(to_bytes(sub, layout))
  os.replace(tmp, path)


@functools.lru_cache(maxsize=32)
def _expected(layout: Layout) -> dict[str, tuple[str, tuple[int, ...], int]]:
  """{tensor name: (safetensors dtype, shape, bytes)} of a well-formed submission."""
  specs = layout.field_specs()
  return {f"{f}/{n}": (_ST_DTYPES[d], s, math.prod(s) * d.itemsize)
          for f in FIELDS for n, (s, d) in specs[f].items()}


@functools.lru_cache(maxsize=32)
def header_limit(layout: Layout) -> int:
  """Most JSON header bytes accepted: twice the header of a well-formed submission with
  the widest metadata and offsets, plus 4 KiB (room for another writer's whitespace)."""
  total = layout.upload_bytes()
  entries = {n: {"dtype": d, "shape": list(s), "data_offsets": [total, total]}
             for n, (d, s, _) in _expected(layout).items()}
  widest = json.dumps(_INT32_MAX)
  meta = {"format": layout.format, "uid": widest, "window": widest,
          "pages": json.dumps([_INT32_MAX] * layout.n_pages)}
  size = len(json.dumps({"__metadata__": meta, **entries}, separators=(",", ":")))
  return 2 * (size + 8) + 4096


def max_upload_bytes(layout: Layout) -> int:
  """Largest acceptable upload: length prefix, `header_limit`, tensor data. Pass it as the
  storage read bound so no larger object is ever read."""
  return 8 + header_limit(layout) + layout.upload_bytes()


class _Reject(ValueError):
  """A JSON value the untrusted-JSON loader refuses (raised from json.loads hooks)."""


def _no_duplicates(pairs):
  # Python's json keeps the last duplicate, other parsers may keep the first: reject
  out = {}
  for k, v in pairs:
    if k in out:
      raise _Reject(f"duplicate key {k[:64]!r}")
    out[k] = v
  return out


def _short_int(text: str) -> int:
  if len(text.lstrip("-")) > _MAX_DIGITS:
    raise _Reject(f"integer of {len(text)} characters")
  return int(text)


def _no_float(text: str):
  raise _Reject(f"non-integer number {text[:32]!r}")


_TOKENS = re.compile(r'[\[\]{}"\\]')
_LONG_DIGITS = re.compile(r"[0-9]{%d,}" % (_MAX_DIGITS + 1))


def _depth(text: str, limit: int) -> int:
  """Bracket depth of JSON text outside strings; stops as soon as it exceeds `limit`.

  Visits only brackets, quotes and backslashes (a regex finds them), so it is linear and
  never recurses, whatever the nesting.
  """
  depth = top = 0
  in_string, escaped_at = False, -1
  for m in _TOKENS.finditer(text):
    i, c = m.start(), m.group()
    if i == escaped_at:
      continue
    if in_string:
      if c == "\\":
        escaped_at = i + 1
      elif c == '"':
        in_string = False
    elif c == '"':
      in_string = True
    elif c in "[{":
      depth += 1
      top = max(top, depth)
      if top > limit:
        break
    elif c in "]}":
      depth -= 1
  return top


def _loads(text: str, max_depth: int, reason: str, what: str):
  """json.loads for untrusted text: bounded depth and numbers, integers only, no
  NaN/Infinity, no duplicate keys. Raises SubmissionError(reason)."""
  if _LONG_DIGITS.search(text):
    raise SubmissionError(reason, f"{what} holds a number longer than {_MAX_DIGITS} digits")
  if (depth := _depth(text, max_depth)) > max_depth:
    raise SubmissionError(reason, f"{what} nests deeper than {max_depth} (at least {depth})")
  try:
    return json.loads(text, parse_int=_short_int, parse_float=_no_float,
                      parse_constant=_no_float, object_pairs_hook=_no_duplicates)
  except (ValueError, RecursionError) as e:  # JSONDecodeError and _Reject are ValueErrors
    raise SubmissionError(reason, f"{what} is not acceptable JSON ({e})") from None


def _is_int(x, lo: int = 0, hi: int = 2**64 - 1) -> bool:
  return type(x) is int and lo <= x <= hi


def _check_entry(name: str, entry) -> None:
  """Types of one tensor entry: {dtype: str, shape: [int32 >= 0], data_offsets: [a <= b]}."""
  if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS:
    raise SubmissionError("corrupt", f"header entry {name[:64]!r} is not "
                          "{dtype, shape, data_offsets}")
  shape, off = entry["shape"], entry["data_offsets"]
  if not isinstance(entry["dtype"], str):
    raise SubmissionError("corrupt", f"{name[:64]!r}: dtype is not a string")
  if (not isinstance(shape, list) or len(shape) > _MAX_NDIM
      or not all(_is_int(d, 0, _INT32_MAX) for d in shape)):
    raise SubmissionError("corrupt", f"{name[:64]!r}: shape is not a list of int32 >= 0")
  if (not isinstance(off, list) or len(off) != 2 or not all(_is_int(o) for o in off)
      or off[0] > off[1]):
    raise SubmissionError("corrupt", f"{name[:64]!r}: data_offsets is not [begin <= end]")


def parse_header(text: str) -> dict:
  """A safetensors JSON header from an untrusted file: bounded JSON (`_loads`), an object
  whose every tensor entry is {dtype: str, shape: [int32 >= 0], data_offsets: [begin <=
  end]}. Raises SubmissionError('corrupt'). Also reads the checkpoints `model.init_from`
  imports (jaxnet.hf)."""
  header = _loads(text, _MAX_DEPTH, "corrupt", "header")
  if not isinstance(header, dict):
    raise SubmissionError("corrupt", "header is not a JSON object")
  for name, entry in header.items():
    if name != "__metadata__":
      _check_entry(name, entry)
  return header


def _header(data: bytes, layout: Layout) -> tuple[dict, int]:
  """Parses and type-checks the safetensors JSON header -> (header, bytes of data after it).

  Raises SubmissionError('truncated'/'oversize'/'corrupt').
  """
  if len(data) < 8:
    raise SubmissionError("truncated", f"{len(data)} bytes is shorter than a header")
  n = int.from_bytes(data[:8], "little")
  if n > (limit := header_limit(layout)):
    raise SubmissionError("oversize", f"header of {n} bytes > limit {limit}")
  if n > len(data) - 8:
    raise SubmissionError("truncated", f"header of {n} bytes but only {len(data) - 8} follow")
  try:
    text = bytes(data[8:8 + n]).decode("utf-8")
  except UnicodeDecodeError as e:
    raise SubmissionError("corrupt", f"header is not UTF-8 ({e})") from None
  header = parse_header(text)
  avail = len(data) - 8 - n
  end = max([e["data_offsets"][1] for k, e in header.items() if k != "__metadata__"],
            default=0)
  if end > avail:
    raise SubmissionError("truncated", f"tensor data ends at {end} but only {avail} bytes "
                          "follow the header")
  return header, avail


def _int(meta: dict, key: str, lo: int = 0) -> int:
  if not isinstance(meta.get(key), str):
    raise SubmissionError("bad_metadata", f"metadata '{key}' is missing or not a string")
  v = _loads(meta[key], 0, "bad_metadata", f"metadata '{key}'")
  if type(v) is not int or not lo <= v <= _INT32_MAX:
    raise SubmissionError("bad_metadata", f"metadata '{key}' = {v!r} is not an int32 >= {lo}")
  return v


def _metadata(header: dict, layout: Layout) -> tuple[int, int, np.ndarray]:
  meta = header.get("__metadata__")
  if not isinstance(meta, dict) or meta.get("format") != layout.format:
    raise SubmissionError("bad_metadata", f"header metadata lacks format {layout.format!r}")
  if not all(isinstance(v, str) for v in meta.values()):
    raise SubmissionError("bad_metadata", "metadata values must be strings")
  uid, window = _int(meta, "uid"), _int(meta, "window")
  if not isinstance(meta.get("pages"), str):
    raise SubmissionError("bad_metadata", "metadata 'pages' is missing or not a string")
  pages = _loads(meta["pages"], 1, "bad_metadata", "metadata 'pages'")
  if (not isinstance(pages, list) or len(pages) != layout.n_pages
      or any(type(p) is not int or not 0 <= p <= _INT32_MAX for p in pages)):
    raise SubmissionError("bad_metadata", f"metadata 'pages' must be {layout.n_pages} "
                          f"int32 >= 0, got {str(pages)[:200]}")
  return uid, window, np.asarray(pages, np.int32).reshape(layout.n_pages)


def _check_layout(header: dict, avail: int, size: int, layout: Layout) -> None:
  """Header entries against the layout: names, dtypes, shapes, then contiguous offsets that
  cover the data exactly (all before safetensors reads or allocates anything)."""
  expected = _expected(layout)
  names = set(header) - {"__metadata__"}
  if unknown := sorted(names - set(expected)):
    raise SubmissionError("unknown_tensor", f"unexpected tensor {unknown[0][:64]!r}")
  if missing := sorted(set(expected) - names):
    raise SubmissionError("missing_tensor", f"tensor {missing[0]!r} is absent")
  for name, (dtype, shape, _) in expected.items():
    got = header[name]
    if got["dtype"] != dtype:
      raise SubmissionError("wrong_dtype", f"{name}: dtype {got['dtype'][:16]!r}, "
                            f"expected {dtype!r}")
    if tuple(got["shape"]) != shape:
      only_k = (name.startswith(("idx/", "val/")) and len(got["shape"]) == len(shape)
                and tuple(got["shape"][:-1]) == shape[:-1])
      raise SubmissionError("wrong_k" if only_k else "wrong_shape",
                            f"{name}: shape {tuple(got['shape'])}, expected {shape}")
  pos = 0
  for name in sorted(expected, key=lambda k: header[k]["data_offsets"]):
    begin, end = header[name]["data_offsets"]
    if begin != pos or end - begin != expected[name][2]:
      raise SubmissionError("corrupt", f"{name}: data_offsets [{begin}, {end}] do not "
                            f"follow on at {pos} with {expected[name][2]} bytes")
    pos = end
  if pos != avail:
    raise SubmissionError("oversize" if size > max_upload_bytes(layout) else "corrupt",
                          f"{avail - pos} bytes follow the last tensor")


def from_bytes(data: bytes, layout: Layout, *, uid: int | None = None,
               window: int | None = None, check: bool = True) -> Submission:
  """Parses and validates safetensors bytes against `layout`; host numpy arrays.

  Args:
    uid, window: when given, the metadata must match them ('bad_metadata').
    check: also run the host value checks (indices in [0, chunk_len), finite floats).
  Raises:
    SubmissionError: for every malformed input, with a reason from `REASONS`.
  """
  # No size check first: the header read is bounded by `header_limit`, and the data after
  # it must match the layout exactly, so an upload with a wrong dtype gets 'wrong_dtype',
  # not 'oversize'. Readers bound the bytes they read with `max_upload_bytes`.
  header, avail = _header(data, layout)
  meta_uid, meta_window, pages = _metadata(header, layout)
  if uid is not None and meta_uid != uid:
    raise SubmissionError("bad_metadata", f"uid {meta_uid} != expected {uid}")
  if window is not None and meta_window != window:
    raise SubmissionError("bad_metadata", f"window {meta_window} != expected {window}")
  _check_layout(header, avail, len(data), layout)
  try:
    arrays = safetensors.numpy.load(bytes(data))
  except Exception as e:  # the parser's own error types differ between versions
    raise SubmissionError("corrupt", f"safetensors could not parse the data ({e})") from None
  # the header was checked with Python's json; safetensors parsed it again with its own:
  # they must agree on every tensor (a disagreement is an attack on one of them)
  expected = _expected(layout)
  if set(arrays) != set(expected) or any(
      (_ST_DTYPES.get(arrays[k].dtype), arrays[k].shape) != (d, s)
      for k, (d, s, _) in expected.items()):
    raise SubmissionError("corrupt", "safetensors read other tensors than the header names")
  specs = layout.field_specs()
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
  limit = max_upload_bytes(layout)
  if size > limit:  # before reading: a peer must not make the validator read gigabytes
    raise SubmissionError("oversize", f"{path}: {size} bytes > limit {limit}")
  try:
    with open(path, "rb") as f:
      data = f.read(limit + 1)    # bounded even if the file grew since the stat
  except OSError as e:
    raise SubmissionError("missing", f"{path}: {e}") from None
  return from_bytes(data, layout, **kwargs)


def _host_checks(sub: Submission, layout: Layout) -> None:
  """NumPy version of the scheme's index and finiteness flags (gauntlet.md §7.4); indices
  are checked where they travel unpacked (int16), packed ones by the scheme's check."""
  for t in layout.tensors:
    idx = sub.idx.get(t.name)
    if idx is not None and idx.dtype == np.int16 and idx.size and (
        idx.min() < 0 or idx.max() >= t.chunk_len):
      raise SubmissionError("index_range",
                            f"idx/{t.name}: indices outside [0, {t.chunk_len})")
    for f in ("val", "qmean", "qscale", "qlut"):
      a = getattr(sub, f).get(t.name)
      if a is not None and a.dtype.kind == "f" and not np.isfinite(a).all():
        raise SubmissionError("nonfinite", f"{f}/{t.name} holds NaN or Inf")
