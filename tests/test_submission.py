"""Submission format: round trip, one exception type per malformed class, jittable checks."""
import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from hypothesis import HealthCheck, given, settings, strategies as st

from jaxnet.schemes import demo
from jaxnet import submission as S
from jaxnet.config import DemoConfig

SHAPES = {"embed": {"embedding": (67, 64)}, "final_norm": {"scale": (64,)},
          "layers": {"wq": {"kernel": (2, 64, 128)}, "attn_norm": {"scale": (2, 64)}}}
N_PAGES = 3


def params(seed=0):
  leaves, treedef = jax.tree.flatten(SHAPES, is_leaf=lambda x: isinstance(x, tuple))
  rng = np.random.default_rng(seed)
  return treedef.unflatten([jnp.asarray(rng.standard_normal(s), jnp.float32) for s in leaves])


@functools.lru_cache(maxsize=None)
def setup(quantize=True):
  """(layout, a valid submission with metadata, its bytes)."""
  cfg = DemoConfig(quantize=quantize)
  layout = demo.make_layout(params(), cfg, n_pages=N_PAGES)
  sub = jax.jit(lambda b: demo.encode(b, layout, cfg))(params(1))
  sub = jax.tree.map(np.asarray, S.with_meta(sub, 7, 123, [4, 0, 99]))
  return layout, sub, S.to_bytes(sub, layout)


def parts(data):
  """(tensors, metadata) of safetensors bytes, to tamper with."""
  n = int.from_bytes(data[:8], "little")
  return dict(safetensors.numpy.load(data)), json.loads(data[8:8 + n])["__metadata__"]


def reason(data, layout, **kw):
  with pytest.raises(S.SubmissionError) as e:
    S.from_bytes(data, layout, **kw)
  return e.value.reason


@pytest.mark.parametrize("quantize", [True, False])
def test_round_trip_save_load_equals(tmp_path, quantize):
  layout, sub, _ = setup(quantize)
  path = tmp_path / "sub.safetensors"
  S.save_submission(path, sub, layout)
  back = S.load_submission(path, layout, uid=7, window=123)
  assert jax.tree.structure(back) == jax.tree.structure(sub)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b) or None, back, sub)
  jax.tree.map(lambda a, b: (a.dtype, a.shape) == (b.dtype, b.shape) or pytest.fail(), back,
               layout.abstract())
  assert back.quantized == quantize
  size = path.stat().st_size
  assert size <= S.max_upload_bytes(layout)
  # the header bound comes from the layout: a real header is well inside it, but not tiny
  n = int.from_bytes(path.read_bytes()[:8], "little")
  assert n <= S.header_limit(layout) < 3 * n + 4096 + 256
  data_bytes = sum(np.prod(shp, dtype=int) * d.itemsize
                   for spec in layout.field_specs().values() for shp, d in spec.values())
  assert size == 8 + n + data_bytes
  assert not list(tmp_path.glob("*.tmp"))


def test_missing_and_oversize_files(tmp_path):
  layout, _, data = setup()
  with pytest.raises(S.SubmissionError) as e:
    S.load_submission(tmp_path / "absent", layout)
  assert e.value.reason == "missing"
  big = tmp_path / "big"
  big.write_bytes(data + b" " * (S.max_upload_bytes(layout) - len(data) + 1))
  with pytest.raises(S.SubmissionError) as e:
    S.load_submission(big, layout)
  assert e.value.reason == "oversize"
  exact = tmp_path / "exact"               # one byte less: read, and rejected as corrupt
  exact.write_bytes(data + b" " * (S.max_upload_bytes(layout) - len(data)))
  with pytest.raises(S.SubmissionError) as e:
    S.load_submission(exact, layout)
  assert e.value.reason == "corrupt"


def test_container_damage():
  layout, _, data = setup()
  assert reason(data[:5], layout) == "truncated"
  assert reason(data[:len(data) // 2], layout) == "truncated"
  assert reason(data[:40], layout) == "truncated"
  n = int.from_bytes(data[:8], "little")
  assert reason(data[:8] + b"{not json" + data[17:], layout) == "corrupt"
  assert reason(data[:8] + b"[" + b" " * (n - 2) + b"]" + data[8 + n:], layout) == "corrupt"


def rebuild(tensors, meta):
  return safetensors.numpy.save(tensors, metadata=meta)


@pytest.mark.parametrize("key,value", [("uid", "-1"), ("uid", "true"), ("uid", "1.5"),
                                       ("window", "x"), ("pages", "[1, 2]"),
                                       ("pages", "[1, 2, -3]"), ("pages", "7"),
                                       ("format", "other/1"), ("uid", None)])
def test_bad_metadata(key, value):
  layout, _, data = setup()
  tensors, meta = parts(data)
  if value is None:
    del meta[key]
  else:
    meta[key] = value
  assert reason(rebuild(tensors, meta), layout) == "bad_metadata"


def test_metadata_must_match_the_expected_uid_and_window():
  layout, _, data = setup()
  assert reason(data, layout, uid=8) == "bad_metadata"
  assert reason(data, layout, window=124) == "bad_metadata"


def tampered(quantize, change):
  layout, _, data = setup(quantize)
  tensors, meta = parts(data)
  change(tensors)
  return rebuild(tensors, meta), layout


NAME = "layers/wq/kernel"
MALFORMED = {
    "unknown_tensor": (True, lambda t: t.update({"idx/layers/extra": t[f"idx/{NAME}"]})),
    "missing_tensor": (True, lambda t: t.pop(f"qlut/{NAME}")),
    "unquantised_in_quantised": (True, lambda t: [t.pop(k) for k in list(t) if k.startswith("q")]),
    "wrong_dtype": (True, lambda t: t.update({f"idx/{NAME}": t[f"idx/{NAME}"].astype(np.int32)})),
    "float_values": (True, lambda t: t.update({f"val/{NAME}": t[f"val/{NAME}"].astype("f4")})),
    "wrong_shape": (True, lambda t: t.update({f"idx/{NAME}": t[f"idx/{NAME}"][:, :-1]})),
    "wrong_lut": (True, lambda t: t.update({f"qlut/{NAME}": t[f"qlut/{NAME}"][:, :255]})),
    "wrong_k": (True, lambda t: t.update({f"idx/{NAME}": t[f"idx/{NAME}"][..., :31]})),
    "index_range": (True, lambda t: t[f"idx/{NAME}"].__setitem__((1, 0, 3), 64 * 64)),
    "negative_index": (True, lambda t: t[f"idx/{NAME}"].__setitem__((0, 1, 0), -1)),
    "nonfinite": (True, lambda t: t[f"qlut/{NAME}"].__setitem__((1, 5), np.nan)),
    "nonfinite_mean": (True, lambda t: t[f"qmean/{NAME}"].__setitem__(0, np.inf)),
    "nonfinite_values": (False, lambda t: t[f"val/{NAME}"].__setitem__((0, 0, 0), -np.inf)),
}
WANT = {"unquantised_in_quantised": "missing_tensor", "float_values": "wrong_dtype",
        "wrong_lut": "wrong_shape", "negative_index": "index_range",
        "nonfinite_mean": "nonfinite", "nonfinite_values": "nonfinite"}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_every_malformed_class_raises_submission_error_with_its_reason(case):
  data, layout = tampered(*MALFORMED[case])
  got = reason(data, layout)
  assert got == WANT.get(case, case)
  assert issubclass(S.SubmissionError, ValueError)


def test_unknown_reason_is_rejected():
  with pytest.raises(ValueError, match="unknown"):
    S.SubmissionError("nope", "x")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cut=st.integers(0, 10**6), flips=st.lists(st.tuples(st.integers(0, 10**6),
                                                           st.integers(1, 255)), max_size=4))
def test_damaged_bytes_never_raise_anything_but_submission_error(cut, flips):
  layout, _, data = setup()
  buf = bytearray(data[:len(data) - cut % len(data)] if cut % 3 == 0 else data)
  for pos, x in flips:
    if buf:
      buf[pos % min(len(buf), 2000)] ^= x       # mostly inside the header
  try:
    sub = S.from_bytes(bytes(buf), layout)
  except S.SubmissionError:
    return
  jax.tree.map(lambda a, b: (a.dtype, a.shape) == (b.dtype, b.shape) or pytest.fail(), sub,
               layout.abstract())


# --------------------------------------------------------------------------- check_values

def bad_variants(sub, layout):
  """Submissions that pass the structure checks but fail a value check."""
  t = next(t for t in layout.tensors if t.name == "final_norm/scale")
  idx = dict(sub.idx)
  idx[t.name] = idx[t.name].copy()
  idx[t.name][0, 0] = t.chunk_len
  lut = dict(sub.qlut)
  lut[t.name] = lut[t.name].copy()
  lut[t.name][sub.val[t.name][0, 0]] = np.nan
  dup = dict(sub.idx)
  dup[t.name] = dup[t.name].copy()
  dup[t.name][0, 1] = dup[t.name][0, 0]
  return {"ok": sub, "idx": sub._replace(idx=idx), "nan": sub._replace(qlut=lut),
          "dup": sub._replace(idx=dup)}


def test_check_values_flags_over_stacked_submissions():
  layout, sub, _ = setup()
  variants = bad_variants(sub, layout)
  stacked = S.stack(list(variants.values()))
  check = jax.jit(jax.vmap(lambda s: demo.check_values(s, layout)))
  flags = {k: np.asarray(v) for k, v in check(stacked).items()}
  assert flags["ok"].tolist() == [True, False, False, True]
  assert flags["idx_in_range"].tolist() == [True, False, True, True]
  assert flags["values_finite"].tolist() == [True, True, False, True]
  assert flags["qparams_finite"].tolist() == [True, True, False, True]
  assert flags["decoded_finite"].tolist() == [True, True, False, True]
  assert flags["idx_unique"].tolist() == [True, True, True, False]
  mapped = jax.jit(lambda s: jax.lax.map(lambda x: demo.check_values(x, layout, decode=False), s))
  assert np.asarray(mapped(stacked)["ok"]).tolist() == [True, False, False, True]
  for name, v in variants.items():                  # the file loader agrees
    if name in ("ok", "dup"):
      S.from_bytes(S.to_bytes(v, layout), layout)
    else:
      assert reason(S.to_bytes(v, layout), layout) == {"idx": "index_range", "nan": "nonfinite"}[name]


def test_decoded_overflow_is_caught_only_after_decoding():
  layout, sub, _ = setup(quantize=False)
  t = next(t for t in layout.tensors if t.name == "final_norm/scale")
  idx, val = dict(sub.idx), dict(sub.val)
  idx[t.name] = np.arange(32, dtype=np.int16)[None]
  val[t.name] = np.full((1, 32), 3e38, np.float32)   # finite values, infinite sum
  bad = sub._replace(idx=idx, val=val)
  S.from_bytes(S.to_bytes(bad, layout), layout)                # finite values pass the file checks
  for decode in (True, False):
    flags = jax.jit(lambda s: demo.check_values(s, layout, decode=decode))(bad)
    assert bool(flags["values_finite"]) and not bool(flags["decoded_finite"])
    assert not bool(flags["ok"])


def test_layout_abstract_is_what_encode_produces():
  layout, sub, _ = setup()
  assert jax.tree.map(lambda a: (a.shape, a.dtype), layout.abstract()) == \
      jax.tree.map(lambda a: (a.shape, a.dtype), sub)
  cfg = dataclasses.replace(DemoConfig(), quantize=False)
  plain = demo.make_layout(params(), cfg, n_pages=N_PAGES)
  assert plain.abstract().qlut == {} and plain.abstract().val[NAME].dtype == jnp.float32
