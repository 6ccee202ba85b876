"""`jaxnet data prepare` on JSONL and Parquet: same tokens as text, errors, bounded memory."""
from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxnet.config import DataConfig
from jaxnet.data import (DOC_SEP, ByteTokenizer, DataError, load_corpus, load_tokenizer,
                         open_shards, prepare_main, prepare_shards, split_documents,
                         write_shards)
from jaxnet.data import formats, writer
from jaxnet.data.formats import Inputs, file_format

pa = pytest.importorskip("pyarrow")   # in the dev extra: CI always runs these
pq = pytest.importorskip("pyarrow.parquet")

ROOT = Path(__file__).resolve().parent.parent
TOK = ByteTokenizer()


def _docs(n=40):
  """Documents with inner newlines, tabs, multi-byte characters; none starts or ends in a
  newline (the text format strips those), none is blank."""
  return [f"Doc {i}: é—😀\n\n\t" + " ".join(str(j) * (i % 5 + 1) for j in range(i % 13)) + "."
          for i in range(n)]


def _stream(docs, tok=TOK):
  return np.concatenate([np.append(tok.encode(d), tok.eos_id) for d in docs]).astype(np.int64)


def _write_jsonl(path, rows):
  data = "".join(json.dumps(r) + "\n" for r in rows).encode()
  if path.name.endswith(".gz"):
    data = gzip.compress(data)
  path.write_bytes(data)
  return path


def _write_parquet(path, texts, *, row_group_size=None, text_type=None, **more):
  cols = {"id": pa.array(range(len(texts)), pa.int64()),
          "text": pa.array(texts, text_type or pa.string())}
  cols.update(more)
  pq.write_table(pa.table(cols), path, row_group_size=row_group_size)
  return path


def _meta(out):
  return json.loads((Path(out) / "meta.json").read_text())


def _prepare(capsys, *argv):
  """(exit status, stdout, stderr) of `jaxnet data prepare ARGV`."""
  rc = prepare_main([str(a) for a in argv])
  got = capsys.readouterr()
  return rc, got.out, got.err


def _one_line_error(capsys, *argv) -> str:
  rc, _, err = _prepare(capsys, *argv)
  assert rc == 2, err
  assert err.count("\n") == 1 and err.startswith("jaxnet data prepare: error: "), err
  assert "Traceback" not in err
  return err.strip()


def test_file_format_by_suffix():
  assert [file_format(n) for n in ("a.jsonl", "B.JSONL", "a.jsonl.gz", "x.parquet",
                                   "a.txt", "a.json", "a.gz", "parquet")] == \
      ["jsonl", "jsonl", "jsonl", "parquet", "text", "text", "text", "text"]


# ------------------------------------------------------------------------------ same tokens

def test_same_documents_give_the_same_shards_in_every_format(tmp_path, capsys):
  docs = _docs()
  text = tmp_path / "docs.txt"
  text.write_text(f"\n{DOC_SEP}\n".join(docs) + "\n", encoding="utf-8")
  rows = [{"id": i, "text": d, "url": f"https://example.org/{i}"} for i, d in enumerate(docs)]
  inputs = {
      "text": [text],
      "jsonl": [_write_jsonl(tmp_path / "docs.jsonl", rows)],
      "jsonl.gz": [_write_jsonl(tmp_path / "docs.jsonl.gz", rows)],
      # several row groups, and the large_string / dictionary encodings pyarrow may produce
      "parquet": [_write_parquet(tmp_path / "docs.parquet", docs, row_group_size=7)],
      "large": [_write_parquet(tmp_path / "large.parquet", docs, text_type=pa.large_string())],
      "dict": [_write_parquet(tmp_path / "dict.parquet", docs,
                              text_type=pa.dictionary(pa.int32(), pa.string()))],
      # documents split across files of different formats, in the order given
      "mixed": [_write_jsonl(tmp_path / "head.jsonl", rows[:15]),
                _write_parquet(tmp_path / "tail.parquet", docs[15:30]),
                _write_text(tmp_path / "rest.txt", docs[30:])],
  }
  want = _stream(docs)
  metas = {}
  for name, paths in inputs.items():
    out = tmp_path / f"out-{name}"
    rc, stdout, err = _prepare(capsys, *paths, "--out", out, "--shard-tokens", 997)
    assert rc == 0, err
    stream = open_shards(out, TOK)
    assert np.array_equal(stream.read(0, stream.n_tokens), want), name
    metas[name] = meta = _meta(out)
    assert meta["n_documents"] == len(docs) and len(meta["shards"]) > 1
    assert meta["sources"] == [p.name for p in paths]
    if name == "text":
      assert "rows_read" not in meta and "read " not in stdout   # text meta is unchanged
    else:
      n_rows = {"mixed": 30}.get(name, len(docs))
      assert (meta["text_field"], meta["rows_read"], meta["rows_skipped_empty"]) == \
          ("text", n_rows, 0)
      assert f"read {n_rows} rows (field 'text'); skipped 0" in stdout
  digests = {name: [s["sha256"] for s in m["shards"]] for name, m in metas.items()}
  assert all(d == digests["text"] for d in digests.values()), digests
  assert metas["mixed"]["source_rows"] == [
      {"file": "head.jsonl", "format": "jsonl", "rows_read": 15, "rows_skipped_empty": 0},
      {"file": "tail.parquet", "format": "parquet", "rows_read": 15, "rows_skipped_empty": 0}]
  # The Python API reads the same formats.
  api = prepare_shards(inputs["parquet"], tmp_path / "api", TOK, shard_tokens=997)
  assert [s["sha256"] for s in _meta(api)["shards"]] == digests["text"]


def _write_text(path, docs):
  path.write_text(f"\n{DOC_SEP}\n".join(docs), encoding="utf-8")
  return path


def test_text_field_option(tmp_path, capsys):
  docs = _docs(5)
  jl = _write_jsonl(tmp_path / "a.jsonl", [{"body": d, "text": 1} for d in docs])
  pqf = _write_parquet(tmp_path / "a.parquet", [None] * 5, body=pa.array(docs))
  for src in (jl, pqf):
    out = tmp_path / f"out-{src.suffix}"
    rc, _, err = _prepare(capsys, src, "--out", out, "--text-field", "body")
    assert rc == 0, err
    assert np.array_equal(open_shards(out).read(0, _meta(out)["n_tokens"]), _stream(docs))
    assert _meta(out)["text_field"] == "body"


# ------------------------------------------------------------------------------ empty text

def test_empty_text_rows_are_skipped_and_counted(tmp_path, capsys):
  rows = [{"text": "first"}, {"text": ""}, {"text": None}, {"text": " \n\t "},
          {"text": "second"}]
  jl = tmp_path / "e.jsonl"
  # blank lines are not rows: neither read nor skipped
  jl.write_text("\n".join(json.dumps(r) for r in rows[:3]) + "\n\n  \n"
                + "\n".join(json.dumps(r) for r in rows[3:]) + "\n\n")
  pqf = _write_parquet(tmp_path / "e.parquet", [None, "third", "", "fourth"])
  out = tmp_path / "out"
  rc, stdout, err = _prepare(capsys, jl, pqf, "--out", out)
  assert rc == 0, err
  meta = _meta(out)
  kept = ["first", "second", "third", "fourth"]
  assert meta["n_documents"] == 4
  assert np.array_equal(open_shards(out).read(0, meta["n_tokens"]), _stream(kept))
  assert (meta["rows_read"], meta["rows_skipped_empty"]) == (9, 5)
  per_file = [(r["rows_read"], r["rows_skipped_empty"]) for r in meta["source_rows"]]
  assert per_file == [(5, 3), (4, 2)]
  assert "read 9 rows (field 'text'); skipped 5 with empty text" in stdout
  # Nothing but empty rows: no documents, an error and no shard directory.
  only = _write_jsonl(tmp_path / "only.jsonl", [{"text": ""}, {"text": None}])
  line = _one_line_error(capsys, only, "--out", tmp_path / "o2")
  assert "no documents" in line
  assert not (tmp_path / "o2" / "meta.json").exists()


# ------------------------------------------------------------------------------ JSONL errors

GOOD = json.dumps({"text": "fine row"}).encode() + b"\n"


@pytest.mark.parametrize("bad, says", [
    (b'{"text": "unterminated\n', "invalid JSON (Invalid control character at column 23)"),
    (b'{"text": "a" "b"}\n', "invalid JSON (Expecting ',' delimiter at column 14)"),
    (b'{"text": "a"', "invalid JSON (Expecting ',' delimiter at column 13)"),
    (b'["text", "a list"]\n', "a JSON array, not an object"),
    (b'"just a string"\n', "a JSON string, not an object"),
    (b'{"body": "x", "id": 3}\n', "no 'text' field (fields: 'body', 'id'"),
    (b'{"text": 42}\n', "field 'text' is a JSON number, not a string"),
    (b'{"text": ["a", "b"]}\n', "field 'text' is a JSON array, not a string"),
    (b'{"text": "caf\xe9"}\n', "not UTF-8"),
    (b'{"text": "a \\ud800 b"}\n', "field 'text' holds an unpaired UTF-16 surrogate"),
    (b"[" * 100_000 + b"\n", "invalid JSON"),
])
def test_malformed_jsonl_row_is_one_line_naming_file_and_line(tmp_path, capsys, monkeypatch,
                                                             bad, says):
  # 300 good rows first: shards are written (tiny buffer) before the bad row is reached.
  monkeypatch.setattr(writer, "_ROW_BUF", 16)
  src = tmp_path / "rows.jsonl"
  src.write_bytes(GOOD * 300 + bad + GOOD)
  out = tmp_path / "out"
  line = _one_line_error(capsys, src, "--out", out, "--shard-tokens", 64)
  assert f"{src}: line 301: " in line and says in line, line
  # No partial shard directory is left behind to be mistaken for data.
  assert not (out / "meta.json").exists() and not list(out.glob("shard_*.bin"))


def test_overlong_and_gzip_errors(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(formats, "MAX_LINE_BYTES", 100)
  src = tmp_path / "long.jsonl"
  ok = json.dumps({"text": "x" * 88}).encode() + b"\n"      # exactly 100 bytes + newline
  assert len(ok) == 101
  src.write_bytes(ok + ok + json.dumps({"text": "x" * 89}).encode() + b"\n")
  line = _one_line_error(capsys, src, "--out", tmp_path / "o1")
  assert f"{src}: line 3: longer than 100 bytes" in line
  src.write_bytes(ok + json.dumps({"text": "x" * 89}).encode())   # last line, no newline
  assert "line 2: longer than 100 bytes" in _one_line_error(capsys, src, "--out", tmp_path / "o2")
  # A truncated or non-gzip .jsonl.gz names the file and where it stopped.
  gz = tmp_path / "cut.jsonl.gz"
  gz.write_bytes(gzip.compress(GOOD * 50)[:-12])
  line = _one_line_error(capsys, gz, "--out", tmp_path / "o3")
  assert str(gz) in line and "unreadable gzip data" in line
  gz.write_bytes(GOOD)
  line = _one_line_error(capsys, gz, "--out", tmp_path / "o4")
  assert f"{gz}: line 1: unreadable gzip data" in line


def test_missing_inputs_are_found_before_the_output_is_touched(tmp_path, capsys):
  out = prepare_shards([_write_text(tmp_path / "a.txt", _docs(3))], tmp_path / "out", TOK)
  before = _meta(out)
  for missing, says in (("gone.jsonl", "input JSONL file not found"),
                        ("gone.parquet", "input Parquet file not found")):
    line = _one_line_error(capsys, tmp_path / "a.txt", tmp_path / missing, "--out", out,
                           "--force")
    assert f"{tmp_path / missing}: {says}" in line
  # A Parquet file without the column is refused at the start too: --force overwrote nothing.
  _write_parquet(tmp_path / "p.parquet", ["x"])
  line = _one_line_error(capsys, tmp_path / "p.parquet", "--out", out, "--force",
                         "--text-field", "content")
  assert "no column 'content'" in line
  assert _meta(out) == before and open_shards(out, TOK).n_tokens == before["n_tokens"]


# ------------------------------------------------------------------------------ Parquet errors

def _parquet_bytes(tmp_path) -> bytes:
  docs = [f"document {i} " * 20 for i in range(200)]
  p = tmp_path / "src.parquet"
  pq.write_table(pa.table({"text": docs}), p, row_group_size=50, compression="snappy")
  return p.read_bytes()


def test_parquet_errors_name_file_and_column(tmp_path, capsys, monkeypatch):
  def err(name, *more):
    return _one_line_error(capsys, tmp_path / name, "--out", tmp_path / f"out-{name}", *more)

  _write_parquet(tmp_path / "cols.parquet", ["a"], title=pa.array(["t"]))
  line = err("cols.parquet", "--text-field", "body")
  assert f"{tmp_path / 'cols.parquet'}: no column 'body' (columns: 'id', 'text', 'title'" in line
  line = err("cols.parquet", "--text-field", "id")
  assert f"{tmp_path / 'cols.parquet'}: column 'id' is of type int64, not a string column" in line
  _write_parquet(tmp_path / "bin.parquet", [b"bytes"], text_type=pa.binary())
  assert "column 'text' is of type binary" in err("bin.parquet")

  (tmp_path / "junk.parquet").write_bytes(b"id,text\n1,this is a CSV file\n")
  assert f"{tmp_path / 'junk.parquet'}: not a Parquet file" in err("junk.parquet")
  (tmp_path / "tiny.parquet").write_bytes(b"PAR1")
  assert "not a Parquet file (4 bytes)" in err("tiny.parquet")

  raw = _parquet_bytes(tmp_path)
  (tmp_path / "cut.parquet").write_bytes(raw[: len(raw) // 2])
  assert "not a Parquet file" in err("cut.parquet")
  footer = int.from_bytes(raw[-8:-4], "little")
  absurd = bytearray(raw)
  absurd[-8:-4] = (2**31 + 5).to_bytes(4, "little")     # footer length past the file
  (tmp_path / "absurd.parquet").write_bytes(bytes(absurd))
  assert f"footer of {2**31 + 5} bytes in a {len(raw)}-byte file" in err("absurd.parquet")
  garbled = bytearray(raw)
  garbled[-8 - footer:-8] = b"\xff" * footer            # footer bytes pyarrow cannot parse
  (tmp_path / "garbled.parquet").write_bytes(bytes(garbled))
  assert f"{tmp_path / 'garbled.parquet'}: corrupt Parquet file (" in err("garbled.parquet")
  pages = bytearray(raw)
  pages[200:2000] = b"\x07" * 1800                       # inside row group 0's pages
  (tmp_path / "pages.parquet").write_bytes(bytes(pages))
  assert "corrupt Parquet data in row group 0" in err("pages.parquet")
  raw_bytes = pa.array([b"fine", b"caf\xe9"], pa.binary())   # a string column that is not UTF-8
  not_utf8 = pa.Array.from_buffers(pa.string(), len(raw_bytes), raw_bytes.buffers())
  pq.write_table(pa.table({"text": not_utf8}), tmp_path / "latin1.parquet")
  assert "corrupt Parquet data in row group 0, after row 0" in err("latin1.parquet")
  monkeypatch.setattr(formats, "MAX_FOOTER_BYTES", footer - 1)
  (tmp_path / "big-footer.parquet").write_bytes(raw)
  assert f"Parquet footer of {footer} bytes is over the" in err("big-footer.parquet")


def test_without_pyarrow_parquet_says_how_to_install(tmp_path, capsys, monkeypatch):
  _write_parquet(tmp_path / "a.parquet", ["x"])
  monkeypatch.setitem(sys.modules, "pyarrow", None)     # import pyarrow raises ImportError
  monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
  line = _one_line_error(capsys, tmp_path / "a.parquet", "--out", tmp_path / "out")
  assert f"{tmp_path / 'a.parquet'}: reading Parquet needs" in line
  assert "pip install -e '.[data]'" in line


def test_pyarrow_is_imported_only_for_parquet(tmp_path):
  src = _write_jsonl(tmp_path / "a.jsonl", [{"text": "hi"}])
  code = ("import sys\nfrom jaxnet.data import prepare_main\n"
          f"assert prepare_main([{str(src)!r}, '--out', {str(tmp_path / 'o')!r}]) == 0\n"
          "assert 'pyarrow' not in sys.modules, 'pyarrow imported for JSONL'\n")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        cwd=ROOT, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]


# ------------------------------------------------------------------------------ bounded memory

@settings(max_examples=150, deadline=None)
@given(text=st.text(st.sampled_from("ab é😀\x1e\r\n\t"), max_size=40),
       chunk=st.integers(1, 9), bad=st.one_of(st.none(), st.integers(0, 60)))
def test_text_streamed_in_chunks_splits_as_the_whole_file(tmp_path_factory, text, chunk, bad):
  """read_documents (chunked) == split_documents of the whole file, and a byte that is not
  UTF-8 is reported at the offset the whole-file decode gives."""
  data = text.encode()
  if bad is not None:
    data = data[:bad] + b"\xff" + data[bad:]
  src = tmp_path_factory.mktemp("chunks") / "t.txt"
  src.write_bytes(data)
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(writer, "_READ_CHUNK", chunk)
    try:
      want = split_documents(data.decode("utf-8"))
    except UnicodeDecodeError as e:
      with pytest.raises(DataError, match=f"t.txt: not UTF-8 text \\(byte {e.start}\\)$"):
        list(writer.read_documents([src]))
    else:
      assert list(writer.read_documents([src])) == want

@pytest.mark.parametrize("name", ["big.jsonl", "big.txt"])
def test_files_are_read_a_line_or_chunk_at_a_time(tmp_path, monkeypatch, name):
  """Peak Python memory while reading a 6 MB file stays under 5% of it."""
  monkeypatch.setattr(writer, "_READ_CHUNK", 1 << 16)
  doc = "word " * 120
  src = tmp_path / name
  with open(src, "w") as f:
    for i in range(10_000):
      f.write(json.dumps({"id": i, "text": f"{i} {doc}"}) + "\n" if name.endswith(".jsonl")
              else f"{i} {doc}\n{DOC_SEP}\n")
  size = src.stat().st_size
  assert size > 6_000_000
  tracemalloc.start()
  try:
    n = sum(1 for _ in Inputs([src]))
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert n == 10_000
  assert peak < size / 20, (peak, size)


def test_parquet_is_read_a_row_group_and_a_few_rows_at_a_time(tmp_path, monkeypatch):
  docs = [f"row {i}" for i in range(400)]
  src = _write_parquet(tmp_path / "g.parquet", docs, row_group_size=100,
                       other=pa.array(["y" * 50] * 400))
  monkeypatch.setattr(formats, "PARQUET_BATCH_ROWS", 16)
  calls, sizes = [], []
  real = pq.ParquetFile.iter_batches

  def spy(self, *args, **kw):
    calls.append(kw)
    for batch in real(self, *args, **kw):
      sizes.append((batch.num_rows, batch.schema.names))
      yield batch

  monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
  it = iter(Inputs([src]))
  assert next(it) == "row 0"
  # Lazy: one row group opened, one batch decoded, for the first document.
  assert len(calls) == 1 and sizes == [(16, ["text"])]
  assert list(it) == docs[1:]
  assert [c["row_groups"] for c in calls] == [[0], [1], [2], [3]]
  assert all(c["columns"] == ["text"] and c["batch_size"] == 16 for c in calls)
  assert max(n for n, _ in sizes) == 16 and {tuple(names) for _, names in sizes} == {("text",)}


def test_write_shards_writes_as_documents_arrive(tmp_path, monkeypatch):
  """Shards are flushed while the document iterator is still running (no list of it)."""
  monkeypatch.setattr(writer, "_ROW_BUF", 64)
  out = tmp_path / "out"
  seen = []

  def documents():
    for i in range(2000):
      if i == 1500:    # 1500 documents of >= 10 bytes: the first 1000-token shard is done
        first = out / "shard_00000.bin"
        seen.append(first.is_file() and first.stat().st_size == 1000 * 2)
      yield f"document {i:05d}"

  write_shards(documents(), out, TOK, shard_tokens=1000)
  assert seen == [True]
  assert _meta(out)["n_documents"] == 2000


@pytest.mark.slow
def test_peak_rss_stays_bounded_on_a_big_file(tmp_path):
  """~540 MB of text as text, JSONL and Parquet (17 MB row groups): the prepare process peaks
  far below the input's size: measured about 80 MB for text and JSONL and 200 MB for Parquet,
  of which 85 MB are Python with pyarrow imported; the rest scales with a row group."""
  rng = np.random.default_rng(0)
  words = np.array([f"w{k}" for k in range(3000)])
  txt, jl, pqf = tmp_path / "big.txt", tmp_path / "big.jsonl", tmp_path / "big.parquet"
  writer = pq.ParquetWriter(pqf, pa.schema([("text", pa.string())]))
  with open(jl, "w") as f, open(txt, "w") as t:
    for _ in range(32):
      chunk = [" ".join(words[rng.integers(0, 3000, 1500)]) for _ in range(2000)]
      f.writelines(json.dumps({"text": d}) + "\n" for d in chunk)
      t.writelines(d + DOC_SEP for d in chunk)
      writer.write_table(pa.table({"text": chunk}))
  writer.close()
  assert jl.stat().st_size > 500e6 and pqf.stat().st_size > 250e6
  # VmHWM, the peak RSS of this process image: ru_maxrss would carry over this big parent's
  # peak through fork and exec.
  code = ("import re, sys\nfrom jaxnet.data import prepare_main\n"
          "assert prepare_main(sys.argv[1:]) == 0\n"
          "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1])\n")
  for src in (txt, jl, pqf):
    argv = [sys.executable, "-c", code, str(src), "--out", str(tmp_path / src.suffix)]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    peak_mb = int(done.stdout.split()[-1]) / 1024
    print(src.name, f"{src.stat().st_size / 1e6:.0f} MB: peak RSS {peak_mb:.0f} MB")
    assert peak_mb < 256, (src.name, peak_mb)     # the text alone is 540 MB


# ------------------------------------------------------------------------------ tokenizers

def test_pretrained_tokenizer_json_on_parquet(tmp_path, capsys):
  """A tokenizer.json made elsewhere (here: tokenizers, BPE with `</s>`), as downloaded."""
  tk = pytest.importorskip("tokenizers")
  docs = _docs(60)
  tok = tk.Tokenizer(tk.models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = tk.pre_tokenizers.Whitespace()
  trainer = tk.trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<pad>", "</s>"])
  tok.train_from_iterator(docs, trainer=trainer)
  path = tmp_path / "tokenizer.json"
  tok.save(str(path))
  src = _write_parquet(tmp_path / "d.parquet", docs + [""], row_group_size=16)
  out = tmp_path / "out"
  rc, _, err = _prepare(capsys, src, "--out", out, "--tokenizer", path)
  assert rc == 0, err
  loaded = load_tokenizer(str(path))
  assert loaded.eos_id == tok.token_to_id("</s>") == 2
  want = np.concatenate([np.append(tok.encode(d, add_special_tokens=False).ids, 2) for d in docs])
  stream = open_shards(out, loaded)
  assert np.array_equal(stream.read(0, stream.n_tokens), want)
  meta = _meta(out)
  assert meta["tokenizer"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
  assert (meta["rows_read"], meta["rows_skipped_empty"]) == (61, 1)
  corpus = load_corpus(DataConfig(shards=str(out), tokenizer=str(path), seq_len=16,
                                  page_size=2, pages_per_window=2))
  assert corpus.vocab_size == loaded.vocab_size and corpus.n_tokens == len(want)
  # --bpe-vocab trains on the Parquet rows (one pass) and writes them (another): counted once.
  rc, _, err = _prepare(capsys, src, "--out", tmp_path / "bpe", "--bpe-vocab", "300")
  assert rc == 0, err
  trained = load_tokenizer(str(tmp_path / "bpe" / "tokenizer.json"))
  stream = open_shards(tmp_path / "bpe", trained)
  assert np.array_equal(stream.read(0, stream.n_tokens), _stream(docs, trained))
  assert _meta(tmp_path / "bpe")["rows_read"] == 61


# ------------------------------------------------------------------------------ every mode

def test_parquet_shards_load_as_a_corpus(tmp_path, capsys):
  """What `--data.shards DIR` gives every mode: load_corpus on the prepared directory."""
  docs = _docs(200)
  src = _write_parquet(tmp_path / "fw.parquet", docs, row_group_size=64)
  out = tmp_path / "fw"
  rc, stdout, err = _prepare(capsys, src, "--out", out)
  assert rc == 0, err
  assert f"--data.shards {out} --data.tokenizer byte" in stdout
  cfg = DataConfig(shards=str(out), seq_len=32, page_size=2, pages_per_window=2, seed=1)
  corpus = load_corpus(cfg)
  want = _stream(docs)
  assert corpus.n_tokens == len(want) and corpus.n_pages >= 2
  batch = corpus.train_batches(0, 4)
  seq = corpus.train_seq_ids(0, 4)
  for row, j in enumerate(seq):
    assert np.array_equal(batch["inputs"][row], want[j * 32:j * 32 + 32])
    assert np.array_equal(batch["targets"][row], want[j * 32 + 1:j * 32 + 33])
  assert corpus.val_batch(1)["inputs"].shape == (1, 32)
  with pytest.raises(DataError, match="tokenized with byte"):
    open_shards(out, _OtherTokenizer())


class _OtherTokenizer(ByteTokenizer):
  def fingerprint(self):
    return {**super().fingerprint(), "kind": "other"}
