"""Untrusted uploads: no upload can stop a validator round.

The parser bounds every input before parsing (header size, JSON depth, number length,
duplicate keys, types, declared shapes); the validator's parse path turns any exception
into that uid's penalty; storage reads are bounded and namespaced by run. A structure-aware
fuzzer sends headers and mutated bytes through whole validator rounds.
"""
import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from jaxnet import data as jdata
from jaxnet.schemes import demo
from jaxnet import model as jmodel
from jaxnet import submission as S
from jaxnet.config import load_config
from jaxnet.gauntlet import collect, fast
from jaxnet.gauntlet.validator import init_state
from jaxnet.sim.storage import (LocalDirStorage, MemoryStorage, ObjectTooLarge, gradient_name,
                                make_storage)

TINY = Path(__file__).parent.parent / "configs" / "tiny.yaml"
N_HONEST = 3
FUZZED = (3, 4)          # uids that upload fuzzed bytes in the round tests
N = N_HONEST + len(FUZZED)
FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def pool():
  """Tiny model, N uids with valid uploads (window 0) and a positive record each."""
  cfg = load_config(TINY, ["--gauntlet.sample_rate", "0.5", "--gauntlet.gather_size", "8",
                           "--gauntlet.minimum_peers", "2"])
  corpus = jdata.load_corpus(cfg.data)
  params = jmodel.init_params(cfg.model, jax.random.key(0))
  layout = demo.make_layout(params, cfg.demo, n_pages=cfg.data.pages_per_window)
  encode = jax.jit(lambda g: demo.encode(g, layout, cfg.demo))
  uploads = []
  for u in range(N):            # honest-looking: DeMo encodings of random directions
    keys = jax.random.split(jax.random.key(100 + u), len(jax.tree.leaves(params)))
    grads = jax.tree.unflatten(jax.tree.structure(params), [
        jax.random.normal(k, p.shape) for k, p in zip(keys, jax.tree.leaves(params))])
    sub = S.with_meta(encode(grads), u, 0, corpus.pages(u, 0))
    uploads.append(S.to_bytes(jax.tree.map(np.asarray, sub), layout))
  probe = np.asarray(fast.sync_probe(params, layout))
  own, rand = collect.round_batches(corpus, N, 0, cfg.gauntlet.sample_rate, 0)
  data = {"own": own, "rand": rand, "probes": np.tile(probe, (N, 1)),
          "probe_present": np.ones(N, bool), "stake": np.zeros(N, np.float32)}
  state = init_state(N, cfg.gauntlet)
  sc = state.scores._replace(final=jnp.full((N,), 2.0), bma=jnp.full((N,), 0.5),
                             ever_evaluated=jnp.ones((N,), bool),
                             waiting=jnp.ones((N,), jnp.int32))
  state = state._replace(scores=sc, last_upload=jnp.full((N,), -1, jnp.int32))
  validator = collect.Validator(cfg, layout, N)
  return {"layout": layout, "uploads": uploads, "params": params, "data": data,
          "state": state, "validator": validator}


def run_round(pool, replace: dict):
  uploads = list(pool["uploads"])
  for u, b in replace.items():
    uploads[u] = b
  _, report = collect.validator_round(
      pool["state"], uploads, np.full(N, 2.0, np.float32), pool["params"], pool["data"],
      jax.random.key(0), validator=pool["validator"], window=0, lr_t=2e-3)
  return report


def split(data: bytes):
  """(header text without its padding, tensor data) of safetensors bytes."""
  n = int.from_bytes(data[:8], "little")
  return data[8:8 + n].decode().rstrip(" "), data[8 + n:]


def join(header: str, body: bytes) -> bytes:
  raw = header.encode("utf-8", "surrogatepass")
  return struct.pack("<Q", len(raw)) + raw + body


def reason(data, layout, **kw):
  with pytest.raises(S.SubmissionError) as e:
    S.from_bytes(data, layout, **kw)
  assert e.value.reason in S.REASONS
  return e.value.reason


# --------------------------------------------------------------------------- the repros

def test_3000_nested_brackets_are_a_penalty_not_a_recursion_error(pool):
  layout = pool["layout"]
  with pytest.raises(RecursionError):        # what json.loads alone does with them
    json.loads("[" * 3000 + "]" * 3000)
  bare = struct.pack("<Q", 3000) + b"[" * 3000
  _, present, ok, reasons = collect.parse_uploads([bare], layout, 0)
  assert present.tolist() == [True] and ok.tolist() == [False] and reasons == ["corrupt"]
  assert reason(bare, layout) == "corrupt"
  # balanced, inside an otherwise valid header and within the size limit
  header, body = split(pool["uploads"][0])
  deep = header.replace('"shape":', '"shape":' + "[" * 3000 + "]" * 3000 + ',"x":', 1)
  assert len(deep) <= S.header_limit(layout)
  assert reason(join(deep, body), layout) == "corrupt"
  objs = header[:-1] + ',"y":' + '{"a":' * 1500 + "0" + "}" * 1500 + "}"
  assert len(objs) <= S.header_limit(layout)
  assert reason(join(objs, body), layout) == "corrupt"
  # brackets inside strings are not nesting: a quoted run of them is only an unknown name
  quoted = header[:-1] + ',"' + "[" * 3000 + '\\"' + "{" * 50 + '":{"dtype":"F32","shape":[],' \
      '"data_offsets":[0,0]}}'
  assert reason(join(quoted, body), layout) == "unknown_tensor"


def test_4301_digit_integers_in_header_and_metadata(pool):
  layout = pool["layout"]
  big = "1" * 4301
  with pytest.raises(ValueError, match="4300"):   # what json.loads alone does with it
    json.loads(big)
  header, body = split(pool["uploads"][0])
  in_offsets = header.replace('"data_offsets":[0,', f'"data_offsets":[{big},', 1)
  assert in_offsets != header and len(in_offsets) <= S.header_limit(layout)
  assert reason(join(in_offsets, body), layout) == "corrupt"
  in_shape = header.replace('"shape":[', f'"shape":[-{big},', 1)
  assert reason(join(in_shape, body), layout) == "corrupt"
  meta = json.loads(header)["__metadata__"]
  for key in ("uid", "window", "pages"):
    value = big if key != "pages" else f"[{big}, 0]"
    bad = header.replace(json.dumps(meta[key]), json.dumps(value), 1)
    assert bad != header
    assert reason(join(bad, body), layout) in ("corrupt", "bad_metadata")
  # digits spelled as JSON escapes only become digits inside the metadata string: the
  # metadata parser bounds them again
  escaped = header.replace(json.dumps(meta["uid"]), '"' + "\\u0031" * 1200 + '"', 1)
  assert len(escaped) <= S.header_limit(layout)
  assert reason(join(escaped, body), layout) == "bad_metadata"
  for data, why in [(join(in_offsets, body), "corrupt"), (join(escaped, body), "bad_metadata")]:
    assert collect.parse_uploads([data], layout, 0)[3] == [why]


@pytest.mark.parametrize("value,want", [
    ("NaN", "corrupt"), ("Infinity", "corrupt"), ("-Infinity", "corrupt"), ("1e999", "corrupt"),
    ("0.0", "corrupt"), ("-1", "corrupt"), ("true", "corrupt"), ('"0"', "corrupt"),
    ("18446744073709551616", "corrupt")])
def test_non_integer_offsets_are_corrupt(pool, value, want):
  header, body = split(pool["uploads"][0])
  bad = header.replace('"data_offsets":[0,', f'"data_offsets":[{value},', 1)
  assert reason(join(bad, body), pool["layout"]) == want


def test_duplicate_keys_are_rejected_before_two_parsers_can_disagree(pool):
  layout = pool["layout"]
  header, body = split(pool["uploads"][0])
  entries = json.loads(header)
  name = next(k for k in entries if k != "__metadata__")
  # the first copy is what another parser might keep; Python's json keeps the last
  twice = header[:-1] + "," + json.dumps(name) + ":" + json.dumps(entries[name]) + "}"
  assert json.loads(twice) == entries
  assert reason(join(twice, body), layout) == "corrupt"
  meta_twice = header[:-1] + ',"__metadata__":' + json.dumps(entries["__metadata__"]) + "}"
  assert reason(join(meta_twice, body), layout) == "corrupt"
  inner = header.replace('"dtype":', '"dtype":"I32","dtype":', 1)
  assert reason(join(inner, body), layout) == "corrupt"


def edit_entry(header: str, change) -> str:
  entries = json.loads(header)
  name = next(k for k in entries if k.startswith("idx/"))
  change(entries[name])
  return json.dumps(entries, separators=(",", ":"))


@pytest.mark.parametrize("change,want", [
    (lambda e: e.update(data_offsets=["0", e["data_offsets"][1]]), "corrupt"),
    (lambda e: e.update(data_offsets=[e["data_offsets"][1], e["data_offsets"][0]]), "corrupt"),
    (lambda e: e.update(data_offsets=e["data_offsets"] + [0]), "corrupt"),
    (lambda e: e.update(dtype=16), "corrupt"),
    (lambda e: e.update(dtype="I32"), "wrong_dtype"),
    (lambda e: e.update(dtype="no such dtype"), "wrong_dtype"),
    (lambda e: e.update(shape=[-1] + e["shape"][1:]), "corrupt"),
    (lambda e: e.update(shape=[2**31] + e["shape"][1:]), "corrupt"),
    (lambda e: e.update(shape=[True] + e["shape"][1:]), "corrupt"),
    (lambda e: e.update(shape=[[1]] * 2), "corrupt"),
    (lambda e: e.update(shape={"0": 1}), "corrupt"),
    (lambda e: e.update(shape=[1] * 9), "corrupt"),
    # huge declared shapes: 2^93 elements, refused by comparison, never allocated
    (lambda e: e.update(shape=[2**31 - 1] * 3), "wrong_shape"),
    (lambda e: e.update(shape=e["shape"][:-1] + [2**31 - 1]), "wrong_k"),
    (lambda e: e.pop("dtype"), "corrupt"),
    (lambda e: e.update(extra=1), "corrupt"),
    (lambda e: e.update(data_offsets=[e["data_offsets"][0] + 2, e["data_offsets"][1] + 2]),
     "corrupt"),
])
def test_wrong_types_and_shapes_in_an_entry(pool, change, want):
  header, body = split(pool["uploads"][0])
  assert reason(join(edit_entry(header, change), body), pool["layout"]) == want


def test_wrong_offsets_are_corrupt(pool):
  """Offsets that overlap, or leave a gap, are caught from the header alone."""
  layout = pool["layout"]
  header, body = split(pool["uploads"][0])
  entries = json.loads(header)
  names = [k for k in entries if k != "__metadata__"]
  for a, b in [(names[0], names[1]), (names[1], names[0]), (names[2], names[-1])]:
    overlap = dict(entries)
    overlap[b] = {**entries[b], "data_offsets": list(entries[a]["data_offsets"])}
    assert reason(join(json.dumps(overlap), body), layout) == "corrupt"
  gap = dict(entries)
  last = max(names, key=lambda k: entries[k]["data_offsets"])
  lo, hi = entries[last]["data_offsets"]
  gap[last] = {**entries[last], "data_offsets": [lo + 1, hi + 1]}
  assert reason(join(json.dumps(gap), body + b"\0"), layout) == "corrupt"


def test_header_bound_comes_from_the_layout(pool):
  layout = pool["layout"]
  header, body = split(pool["uploads"][0])
  limit = S.header_limit(layout)
  assert len(header) < limit < 3 * len(header) + 8192
  padded = header + " " * (limit - len(header))
  S.from_bytes(join(padded, body), layout)                  # at the limit: accepted
  assert reason(join(padded + " ", body), layout) == "oversize"
  # a length prefix far beyond the data is refused from the 8 bytes alone
  assert reason(struct.pack("<Q", 2**63) + b"{}", layout) == "oversize"
  assert reason(pool["uploads"][0] + b"\0" * (S.max_upload_bytes(layout)), layout) == "oversize"
  assert reason(pool["uploads"][0] + b"\0", layout) == "corrupt"


# --------------------------------------------------------------------------- totality

@pytest.mark.parametrize("exc", [RecursionError("deep"), MemoryError(), KeyError("x"),
                                 ValueError("int digits"), OverflowError("big")])
def test_any_parser_exception_is_that_uids_penalty(pool, monkeypatch, exc):
  layout, good = pool["layout"], pool["uploads"][1]

  def from_bytes(data, *a, **kw):
    if data == b"boom":
      raise exc
    return S.from_bytes(data, *a, **kw)
  monkeypatch.setattr(collect, "from_bytes", from_bytes)
  sub, why, msg = collect.parse_upload(b"boom", layout, 0, 0)
  assert sub is None and why == "corrupt" and type(exc).__name__ in msg
  _, present, ok, reasons = collect.parse_uploads([b"boom", good], layout, 0)
  assert present.tolist() == [True, True] and ok.tolist() == [False, True]
  assert reasons == ["corrupt", ""]


def test_interrupts_are_not_swallowed(pool, monkeypatch):
  def interrupt(*a, **kw):
    raise KeyboardInterrupt
  monkeypatch.setattr(collect, "from_bytes", interrupt)
  with pytest.raises(KeyboardInterrupt):
    collect.parse_uploads([b"x"], pool["layout"], 0)


def test_fetch_errors_and_odd_objects_are_penalties(pool):
  layout = pool["layout"]
  too_big = S.SubmissionError("oversize", "storage refused 2 GiB")
  _, present, ok, reasons = collect.parse_uploads(
      [too_big, None, "not bytes", 12345, pool["uploads"][4]], layout, 0)
  assert present.tolist() == [True, False, True, True, True]
  assert ok.tolist() == [False, False, False, False, True]
  assert reasons == ["oversize", "missing", "corrupt", "corrupt", ""]


def test_oversize_fetch_is_a_malformed_penalty_in_a_round(pool):
  report = run_round(pool, {3: S.SubmissionError("oversize", "too big"), 4: None})
  assert report["reason"][3] == "oversize" and report["reason"][4] == "missing"
  assert report["final"][3] == 0.0 and report["weight"][3] == 0.0
  assert 0.0 < report["final"][4] < 2.0              # missing decays, it is not zeroed
  assert report["scored"][:N_HONEST].all()


# --------------------------------------------------------------------------- the fuzzer

DTYPES = ["F32", "I16", "U8", "I32", "F16", "BF16", "F64", "BOOL", "", "x" * 40]
SPECIAL = ["NaN", "Infinity", "-Infinity", "1e999", "-0.0", "1.5", "-1", "true", "null",
           '"0"', "[]", "{}", "18446744073709551616", "9" * 25]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=6),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
    max_leaves=6).map(json.dumps)


def nested(draw) -> str:
  d = draw(st.integers(2, 3000))
  inner = draw(st.sampled_from(["0", "", '"x"', "{}"]))
  if draw(st.booleans()):
    return "[" * d + inner + "]" * d
  return '{"a":' * d + (inner or "0") + "}" * d


def big_number(draw) -> str:
  n = draw(st.integers(21, 4400))
  return draw(st.sampled_from(["", "-"])) + draw(st.sampled_from(["1", "9"])) * n


def number(draw) -> str:
  kind = draw(st.integers(0, 2))
  if kind == 0:
    return big_number(draw)
  if kind == 1:
    return draw(st.sampled_from(SPECIAL))
  return str(draw(st.integers(-2**64, 2**66)))


def mutate_entry(draw, entry: dict) -> str:
  """One tensor entry as JSON text, with one field broken."""
  e = {k: json.dumps(v, separators=(",", ":")) for k, v in entry.items()}
  what = draw(st.sampled_from(["dtype", "shape", "offsets", "number", "type", "nest", "keys"]))
  if what == "dtype":
    e["dtype"] = json.dumps(draw(st.sampled_from(DTYPES)))
  elif what == "shape":      # huge, negative, wrong length
    e["shape"] = json.dumps(draw(st.lists(st.integers(-2, 2**40), max_size=5)))
  elif what == "offsets":    # valid-looking but wrong
    lo, hi = entry["data_offsets"]
    d = draw(st.integers(-64, 64))
    e["data_offsets"] = json.dumps(draw(st.sampled_from(
        [[lo + d, hi + d], [lo, hi + d], [hi, lo], [lo, lo], [0, hi - lo], [lo]])))
  elif what == "number":
    field, i = draw(st.sampled_from([("shape", 0), ("data_offsets", 0), ("data_offsets", 1)]))
    items = list(entry[field]) or [0]
    parts = [str(x) for x in items]
    parts[min(i, len(parts) - 1)] = number(draw)
    e[field] = "[" + ",".join(parts) + "]"
  elif what == "type":
    e[draw(st.sampled_from(sorted(e)))] = draw(json_values)
  elif what == "nest":
    e[draw(st.sampled_from(sorted(e)))] = nested(draw)
  else:
    e.pop(draw(st.sampled_from(sorted(e))))
    if draw(st.booleans()):
      e[draw(st.text(max_size=8))] = draw(json_values)
  return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in e.items()) + "}"


def mutate_meta(draw, meta: dict) -> str:
  m = {k: json.dumps(v) for k, v in meta.items()}
  what = draw(st.sampled_from(["value", "type", "escaped", "nest", "random", "drop"]))
  key = draw(st.sampled_from(["uid", "window", "pages", "format"]))
  if what == "value":
    m[key] = json.dumps(draw(st.sampled_from(
        [big_number(draw), "-1", "2147483648", "1.5", "NaN", "[1,2]", "[" * 3000, "",
         "[0, " + big_number(draw) + "]", "null"])))
  elif what == "type":
    m[key] = draw(json_values)
  elif what == "escaped":    # digits or brackets spelled as \u escapes
    m[key] = '"' + draw(st.sampled_from(["\\u0031", "\\u005b"])) * draw(st.integers(1, 1200)) + '"'
  elif what == "nest":
    m[key] = nested(draw)
  elif what == "random":
    m = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=4))
  else:
    m.pop(key)
  return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in m.items()) + "}"


@st.composite
def fuzzed_header_upload(draw, valid: bytes) -> bytes:
  """A JSON header built from a valid one with 1-3 structural faults, wrapped in a length
  prefix (mostly the true one) and followed by the real data, cut or extended."""
  header, body = split(valid)
  entries = json.loads(header)
  pairs = [(json.dumps(k), json.dumps(v, separators=(",", ":"))) for k, v in entries.items()]
  names = [k for k in entries if k != "__metadata__"]
  for _ in range(draw(st.integers(1, 3))):
    op = draw(st.sampled_from(["entry", "entry", "meta", "dup", "drop", "rename", "add",
                               "nest", "top"]))
    i = draw(st.integers(0, len(pairs) - 1))
    key = json.loads(pairs[i][0])
    if op == "entry" and key in entries and key != "__metadata__":
      pairs[i] = (pairs[i][0], mutate_entry(draw, entries[key]))
    elif op == "meta" and key == "__metadata__":
      pairs[i] = (pairs[i][0], mutate_meta(draw, entries[key]))
    elif op == "dup":
      j = draw(st.integers(0, len(pairs) - 1))
      pairs.insert(draw(st.integers(0, len(pairs))), (pairs[i][0], pairs[j][1]))
    elif op == "drop" and len(pairs) > 1:
      pairs.pop(i)
    elif op == "rename":
      pairs[i] = (json.dumps(draw(st.sampled_from(names + ["__metadata__"]))
                             + draw(st.sampled_from(["", "x", "/", "\u00e9"]))), pairs[i][1])
    elif op == "add":
      pairs.insert(i, (json.dumps(draw(st.text(max_size=10))), draw(json_values)))
    elif op == "nest":
      pairs[i] = (pairs[i][0], nested(draw))
    elif op == "top":
      header_text = draw(st.sampled_from(["[]", "null", "0", '""', nested(draw)]))
      break
  else:
    header_text = "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"
  raw = header_text.encode("utf-8", "surrogatepass")
  prefix = draw(st.sampled_from(["true", "true", "true", "random", "off"]))
  n = len(raw)
  if prefix == "random":
    n = draw(st.integers(0, 2**64 - 1))
  elif prefix == "off":
    n = max(0, n + draw(st.integers(-8, 8)))
  tail = draw(st.sampled_from(["same", "same", "cut", "extend"]))
  if tail == "cut":
    body = body[:draw(st.integers(0, len(body)))]
  elif tail == "extend":
    body = body + draw(st.binary(min_size=1, max_size=64))
  return struct.pack("<Q", n) + raw + body


@st.composite
def mutated_bytes(draw, valid: bytes) -> bytes:
  """A valid submission's bytes with byte-level damage, mostly inside the header."""
  buf = bytearray(valid)
  n = int.from_bytes(valid[:8], "little")
  for _ in range(draw(st.integers(1, 6))):
    op = draw(st.sampled_from(["flip", "flip", "insert", "delete", "cut", "splice"]))
    hi = max(1, min(len(buf), 8 + n + 64) if draw(st.booleans()) else len(buf))
    pos = draw(st.integers(0, hi - 1))
    if op == "flip" and buf:
      buf[pos % len(buf)] ^= draw(st.integers(1, 255))
    elif op == "insert":
      buf[pos:pos] = draw(st.sampled_from([b"[", b"{", b'"', b"\\", b"9" * 30, b",", b"\xff"]))
    elif op == "delete":
      del buf[pos:pos + draw(st.integers(1, 16))]
    elif op == "cut":
      del buf[pos:]
    else:
      buf[pos:pos] = draw(st.binary(max_size=32))
  return bytes(buf)


def fuzz_upload(valid: bytes):
  return st.one_of(fuzzed_header_upload(valid), mutated_bytes(valid))


def oracle(data, layout, uid):
  """The parser's verdict: a submission that passes every host check, or None. Anything
  but SubmissionError escaping here is a bug."""
  try:
    return S.from_bytes(data, layout, uid=uid, window=0, check=True)
  except S.SubmissionError as e:
    assert e.reason in S.REASONS
    return None


@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_fuzzed_bytes_only_ever_raise_submission_error(pool, data):
  layout = pool["layout"]
  blob = data.draw(fuzz_upload(pool["uploads"][FUZZED[0]]))
  sub = oracle(blob, layout, FUZZED[0])
  got, why, _ = collect.parse_upload(blob, layout, FUZZED[0], 0)
  assert (got is None) == bool(why)
  if sub is not None:        # fuzzing can (rarely) make a valid file: both agree on it
    assert why == ""
    jax.tree.map(np.testing.assert_array_equal, got, sub)
  elif got is None:
    assert why in S.REASONS


@settings(FUZZ, max_examples=50)
@given(data=st.data())
def test_fuzzed_uploads_through_whole_validator_rounds(pool, data):
  """Honest uids upload valid submissions, FUZZED uids damaged ones: the round completes,
  the damaged uploads get a reason and weight 0, the honest ones are still scored."""
  layout = pool["layout"]
  blobs = {u: data.draw(fuzz_upload(pool["uploads"][u])) for u in FUZZED}
  report = run_round(pool, blobs)
  honest = np.arange(N) < N_HONEST
  assert report["scored"][honest].all() and report["in_match"][honest].all()
  assert all(r == "" for r in report["reason"][honest])
  assert np.isfinite(report["weight"]).all() and np.isfinite(report["final"]).all()
  for u, blob in blobs.items():
    if oracle(blob, layout, u) is not None:
      continue                  # still a valid submission: nothing to penalise
    assert report["reason"][u] in S.REASONS + ("index_range", "nonfinite")
    assert report["reason"][u] != ""
    assert report["weight"][u] == 0.0 and report["final"][u] == 0.0
    assert not report["scored"][u]


# --------------------------------------------------------------------------- storage

def test_get_refuses_an_oversize_object_in_both_backends(tmp_path):
  for name, store in [("memory", MemoryStorage("r1")), ("local", LocalDirStorage(tmp_path, "r1"))]:
    store.put("gradient-0-1", b"x" * 1000, 12.5)
    with pytest.raises(ObjectTooLarge) as e:
      store.get("gradient-0-1", max_bytes=999)
    assert (e.value.size, e.value.max_bytes, e.value.timestamp) == (1000, 999, 12.5), name
    assert store.get("gradient-0-1", max_bytes=1000) == (b"x" * 1000, 12.5)
    assert store.get("gradient-0-1") == (b"x" * 1000, 12.5)
    assert store.get("gradient-0-2", max_bytes=10) is None
    with pytest.raises(ValueError):
      store.get("gradient-0-1", max_bytes=-1)


RSS_PROBE = textwrap.dedent("""
  import os, resource, sys
  from jaxnet.sim import storage
  s = storage.LocalDirStorage(sys.argv[1], "big")
  s.put("gradient-0-7", b"x", 3.0)
  with open(s.directory / "gradient-0-7", "r+b") as f:
    f.truncate(1 << 30)                        # 1 GiB, sparse: costs no disk
  def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  out = []
  base = peak()
  try:
    s.get("gradient-0-7", max_bytes=4096)
  except storage.ObjectTooLarge as e:
    out.append(e.size)
  # a file that grew after its size was taken: the read itself stops at max_bytes + 1
  real = os.fstat
  storage.os.fstat = lambda fd: os.stat_result((0,) * 6 + (10,) + (0,) * 3)
  try:
    s.get("gradient-0-7", max_bytes=4096)
  except storage.ObjectTooLarge as e:
    out.append(e.size)
  storage.os.fstat = real
  print(out[0], out[1], peak() - base)
""")


def test_a_1gib_upload_is_never_read(tmp_path):
  out = subprocess.run([sys.executable, "-c", RSS_PROBE, str(tmp_path)], capture_output=True,
                       text=True, timeout=120, cwd=Path(__file__).parent.parent)
  assert out.returncode == 0, out.stderr
  size, grown, rss = map(int, out.stdout.split())
  assert size == 1 << 30                  # known from the stat, before reading
  assert grown == 4097                    # the read stopped at max_bytes + 1
  assert rss < 64 << 20, rss              # far below the 1 GiB a full read takes


@pytest.mark.parametrize("kind", ["memory", "local"])
def test_a_run_never_sees_another_runs_objects(tmp_path, kind):
  shared = {}
  make = (lambda r: MemoryStorage(r, shared)) if kind == "memory" else \
      (lambda r: LocalDirStorage(tmp_path, r))
  old, new = make("run-1"), make("run-2")
  old.put(gradient_name(0, 3), b"last run's upload", 5.0)   # the free rider's old object
  assert new.get(gradient_name(0, 3)) is None
  assert new.get(gradient_name(0, 3), max_bytes=1 << 20) is None
  assert new.names() == [] and old.names() == [gradient_name(0, 3)]
  new.put(gradient_name(0, 3), b"this run", 7.0)
  assert old.get(gradient_name(0, 3)) == (b"last run's upload", 5.0)
  assert new.get(gradient_name(0, 3)) == (b"this run", 7.0)
  assert make("run-1").get(gradient_name(0, 3)) == (b"last run's upload", 5.0)  # reopened


def test_make_storage_namespaces_by_run(tmp_path):
  a = make_storage(str(tmp_path), run_id="r-a")
  a.put("gradient-1-2", b"abc", 1.0)
  assert make_storage(str(tmp_path), run_id="r-b").get("gradient-1-2") is None
  assert make_storage(str(tmp_path), run_id="r-a").get("gradient-1-2") == (b"abc", 1.0)
  # without a run id each storage is a fresh run: a reused directory shows nothing old
  fresh1, fresh2 = make_storage(str(tmp_path)), make_storage(str(tmp_path))
  assert fresh1.run_id != fresh2.run_id
  fresh1.put("gradient-1-2", b"x", 2.0)
  assert fresh2.get("gradient-1-2") is None and fresh2.names() == []
  assert make_storage("memory", run_id="r-a").get("gradient-1-2") is None
  assert (tmp_path / "r-a" / "gradient-1-2").read_bytes() == b"abc"


@pytest.mark.parametrize("run_id", ["", ".", "..", "../x", "a/b", "a b", ".hidden", "x" * 129,
                                    "r\x00", "é"])
def test_run_ids_are_plain(tmp_path, run_id):
  with pytest.raises(ValueError):
    make_storage(str(tmp_path), run_id=run_id)
  with pytest.raises(ValueError):
    MemoryStorage(run_id)


@pytest.mark.parametrize("name", ["", "..", "../gradient-0-1", "a/b", ".time", "x.time", "x.tmp",
                                  "/etc/passwd"])
def test_object_names_are_plain(tmp_path, name):
  for store in (MemoryStorage("r"), LocalDirStorage(tmp_path, "r")):
    with pytest.raises(ValueError):
      store.put(name, b"x", 0.0)
    with pytest.raises(ValueError):
      store.get(name)
