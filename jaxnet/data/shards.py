"""Token shards on disk: one EOS-separated token stream, cut into `.bin` files, read by memmap.

Layout of a shard directory (written by `write_shards` / `prepare_shards`):

  shard_00000.bin ...  raw little-endian token ids, uint16 (uint32 if vocab > 65535)
  meta.json            {"format", "tokenizer" (fingerprint), "dtype", "n_tokens",
                        "n_documents", "shards": [{"file", "n_tokens", "sha256", "max_id"}],
                        "sources"; for JSONL/Parquet inputs also "text_field", "rows_read",
                        "rows_skipped_empty", "source_rows": [{"file", "format", "rows_read",
                        "rows_skipped_empty"}]}

Documents (formats.py reads JSONL and Parquet too): every text file is split on the ASCII
record separator U+001E (`DOC_SEP`); a file without one is one document. Surrounding
newlines are stripped and empty documents dropped. Files are read `_READ_CHUNK` bytes at a
time, so only the current document is held, never the whole file.
Each document is followed by EOS, so the stream is `doc0 EOS doc1 EOS ...` (gauntlet.md §2.2
packing); shards cut the stream at fixed token counts, so a document may span two shards.
`meta.json` is written last: a directory without it is incomplete. Documents are consumed
as a stream (encoded 256 at a time, written once about `_ROW_BUF` tokens are buffered), so
inputs larger than memory work; if reading them fails, the shard files written so far are
removed.

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
from typing import Callable, Iterable, Sequence

import numpy as np

from jaxnet.data.errors import DataError

DOC_SEP = "\x1e"                 # ASCII RS: the document delimiter in files and the embedded corpus
META = "meta.json"
FORMAT = "jaxnet-shards/1"
DEFAULT_SHARD_TOKENS = 1 << 24   # 16 Mi tokens = 32 MiB of uint16 per shard
_ROW_BUF = 1 << 20               # tokens buffered before a write
_READ_CHUNK = 1 << 20            # bytes of a text file read at a time
_SCAN_TOKENS = 1 << 20           # tokens per hash/max step: stays in cache between the two
_RACY_NS = 2_000_000_000         # 2 s: above any filesystem's timestamp granularity (FAT: 2 s)


def split_documents(text: str) -> list[str]:
  """Documents of one file: split on `DOC_SEP`, strip newlines, drop empty ones."""
  docs = (d.strip("\r\n") for d in text.split(DOC_SEP))
  return [d for d in docs if d.strip()]


def token_dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class _ShardWriter:
  """Appends token arrays to `shard_NNNNN.bin` files of exactly `shard_tokens` tokens."""

  def __init__(self, out_dir: Path, dtype: np.dtype, shard_tokens: int):
    self.out_dir, self.dtype, self.shard_tokens = out_dir, dtype, shard_tokens
    self.records: list[dict] = []
    self._f = None
    self._hash = None
    self._n = self._max = 0

  def _open(self):
    name = f"shard_{len(self.records):05d}.bin"
    self._f = open(self.out_dir / name, "wb")  # noqa: SIM115 - closed in _close
    self._hash, self._n, self._max = hashlib.sha256(), 0, 0
    self.records.append({"file": name, "n_tokens": 0, "sha256": "", "max_id": 0})

  def _close(self):
    self._f.close()
    self.records[-1].update(n_tokens=self._n, sha256=self._hash.hexdigest(), max_id=self._max)
    self._f = None

  def add(self, ids: np.ndarray) -> None:
    data = np.ascontiguousarray(ids, dtype=self.dtype.newbyteorder("<"))
    while data.size:
      if self._f is None:
        self._open()
      take = min(data.size, self.shard_tokens - self._n)
      chunk = data[:take].tobytes()
      self._f.write(chunk)
      self._hash.update(chunk)
      self._n += take
      self._max = max(self._max, int(data[:take].max()))
      data = data[take:]
      if self._n == self.shard_tokens:
        self._close()

  def finish(self) -> list[dict]:
    if self._f is not None:
      self._close()
    return self.records

  def abort(self) -> None:
    """Closes and deletes every shard file written (inputs failed half-way)."""
    if self._f is not None:
      self._f.close()
      self._f = None
    for rec in self.records:
      (self.out_dir / rec["file"]).unlink(missing_ok=True)


def write_shards(documents: Iterable[str], out_dir: str | Path, tokenizer, *,
                 shard_tokens: int = DEFAULT_SHARD_TOKENS, sources: Sequence[str] = (),
                 overwrite: bool = False, extra_meta: Callable[[], dict] | None = None) -> Path:
  """Tokenizes `documents` (EOS after each) into shards + meta.json under `out_dir`.

  `documents` may be any iterable, read once and lazily. `extra_meta`, called once they are
  consumed, gives keys added to meta.json (the row counts of `formats.Inputs.meta`).
  """
  if shard_tokens <= 0:
    raise DataError(f"shard_tokens {shard_tokens}: must be positive")
  out = Path(out_dir)
  if (out / META).exists() and not overwrite:
    raise DataError(f"{out / META}: already exists (pass overwrite=True / --force)")
  out.mkdir(parents=True, exist_ok=True)
  for old in out.glob("shard_*.bin"):
    old.unlink()
  (out / META).unlink(missing_ok=True)
  dtype = token_dtype(tokenizer.vocab_size)
  eos = np.asarray([tokenizer.eos_id], np.int64)
  writer = _ShardWriter(out, dtype, shard_tokens)
  n_docs = n_tokens = 0
  buf: list[np.ndarray] = []
  buffered = 0

  def flush():
    nonlocal buf, buffered
    if buf:
      writer.add(np.concatenate(buf))
    buf, buffered = [], 0

  batch: list[str] = []

  def encode_pending():
    nonlocal n_docs, n_tokens, buffered
    for ids in tokenizer.encode_batch(batch):
      if ids.size and (ids.min() < 0 or ids.max() >= tokenizer.vocab_size):
        raise DataError(f"{out}: tokenizer produced id {int(ids.max())} outside "
                        f"[0, {tokenizer.vocab_size})")
      buf.extend((ids, eos))
      buffered += ids.size + 1
      n_docs += 1
      n_tokens += ids.size + 1
    batch.clear()
    if buffered >= _ROW_BUF:
      flush()

  try:
    for doc in documents:
      batch.append(doc)
      if len(batch) >= 256:        # encode_batch amortises the BPE call overhead
        encode_pending()
    encode_pending()
    flush()
  except BaseException:
    writer.abort()                 # no half-written directory that looks like shards
    raise
  if n_tokens == 0:
    raise DataError(f"{out}: no documents to write (inputs are empty)")
  meta = {"format": FORMAT, "tokenizer": tokenizer.fingerprint(), "dtype": dtype.name,
          "n_tokens": n_tokens, "n_documents": n_docs, "shards": writer.finish(),
          "sources": list(sources)}
  if extra_meta is not None:
    meta.update(extra_meta())
  tmp = out / (META + ".tmp")
  tmp.write_text(json.dumps(meta, indent=1))
  os.replace(tmp, out / META)      # meta.json appears only once every shard is complete
  return out


def _raw_documents(f) -> Iterable[tuple[int, bytes]]:
  """(file offset, bytes) of each piece between `DOC_SEP`s, read `_READ_CHUNK` at a time."""
  sep = DOC_SEP.encode()         # one byte that never occurs inside a multi-byte character
  held: list[bytes] = []         # the current piece so far: joined once, never re-copied
  offset = 0
  while chunk := f.read(_READ_CHUNK):
    *done, rest = chunk.split(sep)
    for part in done:
      piece = b"".join(held + [part])
      yield offset, piece
      offset += len(piece) + len(sep)
      held = []
    held.append(rest)
  yield offset, b"".join(held)


def read_documents(paths: Sequence[str | Path]) -> Iterable[str]:
  """Documents of UTF-8 text files, in order: exactly `split_documents` of each file's text,
  but streamed, holding one document at a time rather than the file."""
  for p in map(Path, paths):
    if not p.is_file():
      raise DataError(f"{p}: input text file not found")
    with open(p, "rb") as f:
      for offset, raw in _raw_documents(f):
        try:
          doc = raw.decode("utf-8").strip("\r\n")
        except UnicodeDecodeError as e:
          raise DataError(f"{p}: not UTF-8 text (byte {offset + e.start})") from None
        if doc and not doc.isspace():
          yield doc


def prepare_shards(paths: Sequence[str | Path], out_dir: str | Path, tokenizer, *,
                   shard_tokens: int = DEFAULT_SHARD_TOKENS, overwrite: bool = False,
                   text_field: str = "text") -> Path:
  """Tokenizes input files into a shard directory: UTF-8 text (documents split on
  `DOC_SEP`), or JSONL / Parquet rows' `text_field` (by suffix, see formats.py)."""
  from jaxnet.data.formats import Inputs   # formats imports this module
  if not paths:
    raise DataError("prepare_shards: no input files")
  inputs = Inputs(paths, text_field)
  return write_shards(inputs, out_dir, tokenizer, shard_tokens=shard_tokens,
                      sources=inputs.sources, overwrite=overwrite, extra_meta=inputs.meta)


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
