"""Input files of `jaxnet data prepare`: UTF-8 text, JSONL (plain or gzipped) and Parquet.

The format is chosen by the file's suffix (`file_format`):

  .jsonl, .jsonl.gz  one JSON object per line; the document is its text field
  .parquet           one row per document, the text field a string column (pyarrow,
                     imported only when a Parquet file is given: the `data` extra)
  anything else      UTF-8 text split into documents on U+001E (`writer.read_documents`)

JSONL and Parquet texts are taken verbatim. A row whose text is "", null or only whitespace
is skipped and counted (the text format drops such documents too); blank JSONL lines are not
rows. The field name defaults to "text", as in FineWeb and the Hugging Face datasets.

Memory stays bounded whatever the file's size: text is read in chunks, one document held at
a time (`writer.read_documents`); JSONL is read line by line, a line over
`MAX_LINE_BYTES` being an error instead of a read without end; Parquet is read one row
group at a time (only the text column, decoded `PARQUET_BATCH_ROWS` rows at a time), after
its footer length has been checked against the file's size and `MAX_FOOTER_BYTES`. A
whole-file `iter_batches` would not do: pyarrow then reads ahead through every row group
(peak Arrow memory the size of the file, measured with pyarrow 26). Every malformed input
is a one-line DataError naming the file (and, for JSONL, the 1-based line).
"""
from __future__ import annotations

import gzip
import json
import re
import zlib
from pathlib import Path
from typing import Iterator, Sequence

from jaxnet.data.errors import DataError, optional_package
from jaxnet.data.writer import read_documents

MAX_LINE_BYTES = 64 << 20        # one JSONL row; a longer line is malformed, not read whole
MAX_FOOTER_BYTES = 256 << 20     # Parquet metadata; real files' footers are a few MB at most
PARQUET_BATCH_ROWS = 1024        # rows of the text column decoded at once
_MAGIC = b"PAR1"
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")   # a JSON escape in U+D800..U+DFFF
_NAMES = {"text": "text", "jsonl": "JSONL", "parquet": "Parquet"}


def file_format(path: str | Path) -> str:
  """"jsonl", "parquet" or "text", from the file's suffix (case-insensitive)."""
  name = Path(path).name.lower()
  if name.endswith((".jsonl", ".jsonl.gz")):
    return "jsonl"
  if name.endswith(".parquet"):
    return "parquet"
  return "text"


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return (text.splitlines()[0] if text else type(e).__name__)[:300]


def _json_type(value) -> str:
  names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
           float: "number", type(None): "null"}
  return names.get(type(value), type(value).__name__)


def _fields(row: dict) -> str:
  keys = [repr(str(k)[:40]) for k in list(row)[:8]]
  return ", ".join(keys) + (", ..." if len(row) > 8 else "") if keys else "none"


# ------------------------------------------------------------------------------ JSONL

def jsonl_texts(path: Path, field: str) -> Iterator[str | None]:
  """The text field of every row of a JSONL file, in order (None for a null)."""
  opener = gzip.open if path.name.lower().endswith(".gz") else open
  with opener(path, "rb") as f:
    n = 0
    while True:
      try:
        line = f.readline(MAX_LINE_BYTES + 1)
      except (OSError, EOFError, zlib.error) as e:   # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: line {n + 1}: unreadable gzip data ({_first_line(e)})") from None
      if not line:
        return
      n += 1
      if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
        raise DataError(f"{path}: line {n}: longer than {MAX_LINE_BYTES} bytes, the limit "
                        "of one JSONL row")
      if line.isspace():                 # a blank line (e.g. a trailing one) is not a row
        continue
      try:
        row = json.loads(line)
      except UnicodeDecodeError as e:
        raise DataError(f"{path}: line {n}: not UTF-8 (byte {e.start})") from None
      except json.JSONDecodeError as e:
        what = e.msg.removesuffix(" at")           # "Invalid control character at"
        raise DataError(f"{path}: line {n}: invalid JSON ({what} at column {e.colno})") from None
      except RecursionError:
        raise DataError(f"{path}: line {n}: invalid JSON (nested too deeply)") from None
      if not isinstance(row, dict):
        raise DataError(f"{path}: line {n}: a JSON {_json_type(row)}, not an object")
      if field not in row:
        raise DataError(f"{path}: line {n}: no {field!r} field (fields: {_fields(row)}; "
                        "choose one with --text-field)")
      text = row[field]
      if text is not None and not isinstance(text, str):
        raise DataError(f"{path}: line {n}: field {field!r} is a JSON {_json_type(text)}, "
                        "not a string")
      if text and _SURROGATE.search(line):  # paired escapes decode to one character; lone ones
        try:                                # would stop the tokenizer with no file named
          text.encode("utf-8")
        except UnicodeEncodeError:
          raise DataError(f"{path}: line {n}: field {field!r} holds an unpaired UTF-16 "
                          "surrogate escape, not text") from None
      yield text


# ------------------------------------------------------------------------------ Parquet

def _check_footer(path: Path) -> None:
  """Refuses a file that cannot be Parquet before pyarrow allocates its footer."""
  size = path.stat().st_size
  if size < 12:
    raise DataError(f"{path}: not a Parquet file ({size} bytes)")
  with open(path, "rb") as f:
    head = f.read(4)
    f.seek(size - 8)
    tail = f.read(8)
  if tail[4:] == b"PARE":
    raise DataError(f"{path}: encrypted Parquet files are not supported")
  if head != _MAGIC or tail[4:] != _MAGIC:
    raise DataError(f"{path}: not a Parquet file (no PAR1 marker at its start and end)")
  n = int.from_bytes(tail[:4], "little")
  if n > size - 12:
    raise DataError(f"{path}: corrupt Parquet file (footer of {n} bytes in a {size}-byte file)")
  if n > MAX_FOOTER_BYTES:
    raise DataError(f"{path}: Parquet footer of {n} bytes is over the "
                    f"{MAX_FOOTER_BYTES >> 20} MiB limit")


def _is_text_type(pa, t) -> bool:
  if pa.types.is_dictionary(t):
    return _is_text_type(pa, t.value_type)
  view = getattr(pa.types, "is_string_view", lambda _: False)
  return pa.types.is_string(t) or pa.types.is_large_string(t) or view(t)


def open_parquet(path: Path, field: str):
  """`pyarrow.parquet.ParquetFile` of `path` once its footer and text column are checked."""
  _check_footer(path)
  pa = optional_package("pyarrow.parquet", f"{path}: reading Parquet", "pip install -e '.[data]'")
  try:
    pf = pa.parquet.ParquetFile(path)
    schema = pf.schema_arrow
  except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... on bad metadata
    raise DataError(f"{path}: corrupt Parquet file ({_first_line(e)})") from None
  try:
    names = schema.names
    if field not in names:
      shown = ", ".join(repr(c) for c in names[:12]) + (", ..." if len(names) > 12 else "")
      raise DataError(f"{path}: no column {field!r} (columns: {shown or 'none'}; choose one "
                      "with --text-field)")
    if names.count(field) > 1:
      raise DataError(f"{path}: column {field!r} appears {names.count(field)} times")
    kind = schema.field(field).type
    if not _is_text_type(pa, kind):
      raise DataError(f"{path}: column {field!r} is of type {kind}, not a string column")
  except DataError:
    pf.close()
    raise
  return pf


def parquet_texts(path: Path, field: str) -> Iterator[str | None]:
  """The text column of a Parquet file, row by row (None for a null), one row group at a time."""
  pf = open_parquet(path, field)
  row = 0
  try:
    for group in range(pf.metadata.num_row_groups):
      batches = pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group],
                                columns=[field], use_threads=False)
      while True:
        try:
          batch = next(batches, None)
          texts = [] if batch is None else batch.column(0).to_pylist()
        except Exception as e:  # noqa: BLE001 - a damaged page, or a string that is not UTF-8
          raise DataError(f"{path}: corrupt Parquet data in row group {group}, after row "
                          f"{row} ({_first_line(e)})") from None
        if batch is None:
          break
        row += len(texts)
        yield from texts
  finally:
    pf.close()


# ------------------------------------------------------------------------------ all formats

class Inputs:
  """The documents of input files of any format, in order; iterable more than once.

  Construction checks what is cheap before any output is touched: every file exists, and a
  Parquet file's footer and text column. Each pass reads the files again (BPE training is a
  pass of its own) and recounts the JSONL/Parquet rows, which `meta` reports.
  """

  def __init__(self, paths: Sequence[str | Path], text_field: str = "text"):
    self.paths = [Path(p) for p in paths]
    self.formats = [file_format(p) for p in self.paths]
    self.text_field = text_field
    self.rows: list[dict] = []
    if not text_field:
      raise DataError("--text-field: must not be empty")
    for p, fmt in zip(self.paths, self.formats):
      if not p.is_file():
        raise DataError(f"{p}: input {_NAMES[fmt]} file not found")
      if fmt == "parquet":
        open_parquet(p, text_field).close()

  @property
  def sources(self) -> list[str]:
    return [p.name for p in self.paths]

  def __iter__(self) -> Iterator[str]:
    self.rows = []
    for p, fmt in zip(self.paths, self.formats):
      if fmt == "text":
        yield from read_documents([p])
        continue
      rec = {"file": p.name, "format": fmt, "rows_read": 0, "rows_skipped_empty": 0}
      self.rows.append(rec)
      read = jsonl_texts if fmt == "jsonl" else parquet_texts
      for text in read(p, self.text_field):
        rec["rows_read"] += 1
        if not text or text.isspace():
          rec["rows_skipped_empty"] += 1
        else:
          yield text

  def meta(self) -> dict:
    """Keys for meta.json after a pass: the text field and rows read/skipped (JSONL, Parquet)."""
    if not self.rows:
      return {}
    return {"text_field": self.text_field,
            "rows_read": sum(r["rows_read"] for r in self.rows),
            "rows_skipped_empty": sum(r["rows_skipped_empty"] for r in self.rows),
            "source_rows": [dict(r) for r in self.rows]}
