"""Token shards on disk: one EOS-separated token stream, cut into `.bin` files, read by memmap.

Layout of a shard directory (written by jaxnet/data/writer.py):

  shard_00000.bin ...  raw little-endian token ids, uint16 (uint32 if vocab > 65535)
  meta.json            {"format", "tokenizer" (fingerprint), "dtype", "n_tokens",
                        "n_documents", "shards": [{"file", "n_tokens", "sha256", "max_id"}],
                        "sources"; for JSONL/Parquet inputs also "text_field", "rows_read",
                        "rows_skipped_empty", "source_rows": [{"file", "format", "rows_read",
                        "rows_skipped_empty"}]}

Verification (`open_shards`): every shard's sha256 and largest token id (< the tokenizer's
vocab_size in meta.json; `max_id`, absent in older directories, must agree) are checked in
one read. The result is cached per file, keyed by (device, inode, size, mtime_ns, ctime_ns),
in-process and under `$JAXNET_CACHE/verified/`, so reopening an unchanged shard does not
rehash it. Any write changes ctime, which utime (touch, cp -p) cannot set back, so a changed file never
matches an entry. A file changed within `_RACY_NS` of its hash is not cached, because a
second write inside one filesystem timestamp tick would leave its stat unchanged.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from jaxnet.data.errors import DataError

DOC_SEP = "\x1e"                 # ASCII RS: the document delimiter in files and the embedded corpus
META = "meta.json"
FORMAT = "jaxnet-shards/1"
_SCAN_TOKENS = 1 << 20           # tokens per hash/max step: stays in cache between the two
_RACY_NS = 2_000_000_000         # 2 s: above any filesystem's timestamp granularity (FAT: 2 s)


class TokenStream:
  """The concatenated token stream of a shard directory (memory-mapped, read-only)."""

  def __init__(self, arrays: list[np.ndarray], meta: dict, directory: Path):
    self.arrays, self.meta, self.directory = arrays, meta, directory
    sizes = np.asarray([a.size for a in arrays], np.int64)
    self.offsets = np.concatenate([[0], np.cumsum(sizes)])   # shard s covers [off[s], off[s+1])
    self.n_tokens = int(self.offsets[-1])
    self.tokenizer = meta["tokenizer"]

  def __len__(self) -> int:
    return self.n_tokens

  def read(self, start: int, length: int) -> np.ndarray:
    """tokens[start:start+length] as int32, across shard boundaries."""
    if start < 0 or start + length > self.n_tokens:
      raise DataError(f"{self.directory}: read [{start}, {start + length}) outside "
                      f"{self.n_tokens} tokens")
    parts, pos, end = [], start, start + length
    s = int(np.searchsorted(self.offsets, start, side="right")) - 1
    while pos < end:
      lo = pos - self.offsets[s]
      hi = min(end, self.offsets[s + 1]) - self.offsets[s]
      parts.append(self.arrays[s][lo:hi])
      pos += hi - lo
      s += 1
    return np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)

  def gather(self, starts: np.ndarray, length: int) -> np.ndarray:
    """Rows tokens[starts[i] : starts[i]+length] -> int32[len(starts), length]."""
    starts = np.asarray(starts, np.int64).reshape(-1)
    if starts.size and (starts.min() < 0 or starts.max() + length > self.n_tokens):
      raise DataError(f"{self.directory}: rows outside the {self.n_tokens}-token stream")
    out = np.empty((starts.size, length), np.int32)
    shard = np.searchsorted(self.offsets, starts, side="right") - 1
    inside = starts + length <= self.offsets[shard + 1]
    cols = np.arange(length, dtype=np.int64)
    for s in np.unique(shard[inside]):       # one fancy-indexed read per shard
      rows = np.nonzero(inside & (shard == s))[0]
      out[rows] = self.arrays[s][(starts[rows] - self.offsets[s])[:, None] + cols]
    for r in np.nonzero(~inside)[0]:          # rare rows that straddle two shards
      out[r] = self.read(int(starts[r]), length)
    return out


def _same_tok(fp: dict) -> dict:
  return {k: v for k, v in fp.items() if k != "file"}   # a moved/renamed file is the same


def _describe(fp: dict) -> str:
  name = fp.get("kind", "?") + (f" {fp['file']} sha256 {str(fp.get('sha256', ''))[:12]}"
                                 if "file" in fp else "")
  return f"{name} (vocab {fp.get('vocab_size')}, eos {fp.get('eos_id')})"


def _fail(path: Path, msg: str):
  raise DataError(f"{path}: {msg}")


def check_tokenizer(fp: dict, tokenizer, where: str | Path) -> None:
  """DataError unless `tokenizer` is the one the shards were written with (fingerprint `fp`)."""
  if _same_tok(tokenizer.fingerprint()) != _same_tok(fp):
    _fail(where, f"shards were tokenized with {_describe(fp)}, but the tokenizer given is "
                 f"{_describe(tokenizer.fingerprint())} (set data.tokenizer to match)")


# ------------------------------------------------------------------------------ verification

_verified: dict[tuple, tuple] = {}   # (dev, ino) -> (identity, sha256, max_id), this process


def _identity(st: os.stat_result) -> tuple:
  # ctime is in the key because every write updates it and utime/cp -p cannot restore it.
  return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _now_ns() -> int:
  return time.time_ns()


def _cache_entry(ident: tuple) -> Path | None:
  from jaxnet.data.embedded import cache_dir   # embedded imports this module
  try:
    return cache_dir() / "verified" / f"{ident[0]:x}-{ident[1]:x}.json"
  except (OSError, RuntimeError):             # no home directory to put a cache in
    return None


def _cached(ident: tuple) -> tuple[str, int] | None:
  """(sha256, max_id) recorded for exactly this file state, or None."""
  hit = _verified.get(ident[:2])
  if hit is not None and hit[0] == ident:
    return hit[1:]
  entry = _cache_entry(ident)
  if entry is None:
    return None
  try:
    rec = json.loads(entry.read_text())
    if rec["id"] == list(ident) and isinstance(rec["sha256"], str) and type(rec["max_id"]) is int:
      _verified[ident[:2]] = (ident, rec["sha256"], rec["max_id"])
      return rec["sha256"], rec["max_id"]
  except (OSError, ValueError, KeyError, TypeError):
    pass                                        # no entry, or unreadable: hash the file
  return None


def _remember(ident: tuple, digest: str, max_id: int) -> None:
  _verified[ident[:2]] = (ident, digest, max_id)
  entry = _cache_entry(ident)
  if entry is None:
    return
  tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
  try:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps({"id": list(ident), "sha256": digest, "max_id": max_id}))
    os.replace(tmp, entry)
  except OSError:                               # a read-only cache only costs a rehash
    tmp.unlink(missing_ok=True)


def _scan(arr: np.ndarray) -> tuple[str, int]:
  """sha256 of the shard's bytes and its largest token id, in one pass over the memmap."""
  h, top = hashlib.sha256(), 0
  for lo in range(0, arr.size, _SCAN_TOKENS):
    part = arr[lo:lo + _SCAN_TOKENS]
    h.update(part)
    top = max(top, int(part.max()))
  return h.hexdigest(), top


def _scan_all(paths: list[Path], arrays: list[np.ndarray], idents: list[tuple]) -> list:
  """`_scan` of each shard (threads: hashlib and numpy release the GIL); caches the results."""
  start = _now_ns()
  if len(arrays) > 1:
    with ThreadPoolExecutor(min(len(arrays), os.cpu_count() or 1, 8)) as pool:
      found = list(pool.map(_scan, arrays))
  else:
    found = [_scan(a) for a in arrays]
  for p, ident, (digest, top) in zip(paths, idents, found):
    # Cache only a file that held still while read and was last changed well before it.
    try:
      still = _identity(p.stat()) == ident
    except OSError:
      still = False
    if still and max(ident[3], ident[4]) < start - _RACY_NS:
      _remember(ident, digest, top)
  return found


# ------------------------------------------------------------------------------ open

def _read_meta(d: Path) -> tuple[dict, np.dtype, int, list, list, list, list]:
  mpath = d / META
  if not mpath.is_file():
    _fail(mpath, "missing (not a shard directory, or prepare was interrupted)")
  try:
    meta = json.loads(mpath.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    _fail(mpath, f"not valid JSON ({e})")
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    _fail(mpath, f"format is not {FORMAT!r}")
  try:
    dtype = np.dtype(meta["dtype"])
    records = meta["shards"]
    total = int(meta["n_tokens"])
    fp = dict(meta["tokenizer"])
    vocab = int(fp["vocab_size"])
    names = [str(r["file"]) for r in records]
    counts = [int(r["n_tokens"]) for r in records]
    hashes = [str(r["sha256"]) for r in records]
    max_ids = [None if r.get("max_id") is None else int(r["max_id"]) for r in records]
  except (KeyError, TypeError, ValueError, AttributeError) as e:
    _fail(mpath, f"malformed ({type(e).__name__}: {e})")
  if dtype not in (np.dtype(np.uint16), np.dtype(np.uint32)):
    _fail(mpath, f"dtype {dtype} is not uint16 or uint32")
  if not 0 < vocab <= np.iinfo(dtype).max + 1:
    _fail(mpath, f"tokenizer vocab_size {vocab} does not fit dtype {dtype.name}")
  if not records or sum(counts) != total or min(counts) <= 0:
    _fail(mpath, f"shard token counts {counts} do not add up to n_tokens={total}")
  for name, digest in zip(names, hashes):
    if len(digest) != 64 or digest.strip("0123456789abcdef"):
      _fail(mpath, f"malformed sha256 {digest[:70]!r} for {name}")
  return meta, dtype, vocab, names, counts, hashes, max_ids


def open_shards(directory: str | Path, tokenizer=None, verify: bool = True) -> TokenStream:
  """Memory-maps a shard directory after checking meta.json, file sizes and contents.

  `tokenizer`: if given, its fingerprint must equal the one the shards were written with.
  `verify` (default): every shard's sha256 must match meta.json and its ids be < the
  vocab_size there (cached per unchanged file, see the module docstring). False checks
  only meta.json and file sizes.
  """
  d = Path(directory)
  if not d.is_dir():
    _fail(d, "shard directory not found")
  mpath = d / META
  meta, dtype, vocab, names, counts, hashes, max_ids = _read_meta(d)
  if tokenizer is not None:
    check_tokenizer(meta["tokenizer"], tokenizer, mpath)
  arrays, idents, found = [], [], []
  for name, count, recorded in zip(names, counts, max_ids):
    p = d / name
    if Path(name).name != name or not p.is_file():
      _fail(p, "shard file missing")
    if recorded is not None and recorded >= vocab:
      _fail(p, f"meta.json records token id {recorded} >= vocab_size {vocab}")
    with open(p, "rb") as f:                  # the memmap keeps its own handle
      ident = _identity(os.fstat(f.fileno()))
      want = count * dtype.itemsize
      if ident[2] != want:
        _fail(p, f"size {ident[2]} bytes, meta.json says {want} "
                 f"({count} tokens of {dtype.name}); truncated or overwritten")
      arrays.append(np.memmap(f, dtype=dtype.newbyteorder("<"), mode="r", shape=(count,)))
    idents.append(ident)
    found.append(_cached(ident) if verify else None)
  if verify:
    todo = [i for i, hit in enumerate(found) if hit is None]
    for i, hit in zip(todo, _scan_all([d / names[i] for i in todo], [arrays[i] for i in todo],
                                      [idents[i] for i in todo])):
      found[i] = hit
    for name, digest, recorded, (got, top) in zip(names, hashes, max_ids, found):
      p = d / name
      if got != digest:
        _fail(p, "sha256 does not match meta.json (corrupted, or changed after prepare)")
      if top >= vocab:
        _fail(p, f"token id {top} >= vocab_size {vocab} of the tokenizer in meta.json")
      if recorded is not None and top != recorded:
        _fail(p, f"largest token id is {top}, meta.json says {recorded}")
  return TokenStream(arrays, meta, d)
