"""S3Storage (jaxnet.net.s3) against a loopback S3 server: moto's ThreadedMotoServer on
127.0.0.1, dummy credentials set for this module only. The same Storage contract is then
checked on every backend: memory, local directory and S3."""
import os
import sys
import time

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from jaxnet.net.s3 import S3Storage
from jaxnet.sim.storage import (LocalDirStorage, MemoryStorage, ObjectTooLarge,
                                StorageUnavailable, make_storage)
from s3_server import BUCKET, endpoint, free_port  # noqa: F401 (endpoint: a fixture)

PREFIX = "tests"


def store(endpoint, run_id=None, prefix=PREFIX, **kw) -> S3Storage:
  kw = {"timeout_s": 5.0, "retries": 2, **kw}
  return S3Storage(BUCKET, prefix, run_id, endpoint_url=endpoint, region="us-east-1", **kw)


class Spy:
  """A boto3 client that records (operation, key, kwargs) of every call; keys ending in a
  `fail` suffix fail (a refused connection, or HTTP 500 for a suffix starting 'e500'), and
  `before[op]` runs before that operation."""

  def __init__(self, client, fail=(), before=None):
    self.client, self.fail, self.before, self.calls = client, tuple(fail), before or {}, []

  def __getattr__(self, op):
    method = getattr(self.client, op)

    def call(*args, **kw):
      key = kw.get("Key", "")
      self.calls.append((op, key, kw))
      if op in self.before:
        self.before[op](key)
      for suffix in self.fail:
        if key.endswith(suffix):
          if suffix.startswith("e500"):
            raise ClientError({"Error": {"Code": "InternalError", "Message": "boom"},
                               "ResponseMetadata": {"HTTPStatusCode": 500}}, op)
          raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
      return method(*args, **kw)
    return call


def spied(endpoint, **kw):
  s = store(endpoint)
  s.client = spy = Spy(s.client, **kw)
  return s, spy


def test_round_trip_names_and_runs_never_mix(endpoint):
  a, b = store(endpoint, "run-a"), store(endpoint, "run-b")
  data = os.urandom(3000)
  a.put("gradient-1-0", data, 0.0)
  a.put("debug-1-0", b"dbg", 0.0)
  b.put("gradient-1-1", b"other", 0.0)
  assert a.get("gradient-1-0")[0] == data
  assert a.get("gradient-1-0", max_bytes=3000)[0] == data
  assert a.get("gradient-1-1") is None and b.get("gradient-1-0") is None
  # the key layout is prefix/run/name; keys deeper in the run are not objects of it
  assert a.client.head_object(Bucket=BUCKET, Key="tests/run-a/gradient-1-0")["ContentLength"] == 3000
  a.client.put_object(Bucket=BUCKET, Key="tests/run-a/nested/x", Body=b"")
  assert a.names() == ["debug-1-0", "gradient-1-0"]
  assert b.names() == ["gradient-1-1"]
  # no prefix: run/name at the bucket's root; a fresh run id when none is given
  root = store(endpoint, "run-root", prefix="")
  root.put("gradient-2-0", b"r", 0.0)
  assert root.client.get_object(Bucket=BUCKET, Key="run-root/gradient-2-0")["Body"].read() == b"r"
  fresh = store(endpoint)
  assert fresh.run_id not in ("run-a", "run-b", "run-root") and fresh.names() == []


def test_timestamp_is_the_stores_not_the_claimed_one(endpoint):
  s = store(endpoint)
  before = time.time()
  s.put("gradient-1-0", b"x", 1.0)          # an absurd claimed time
  _, t1 = s.get("gradient-1-0")
  assert t1 != 1.0 and before - 2 <= t1 <= time.time() + 2
  assert s.get("gradient-1-0", max_bytes=10)[1] == t1
  head = s.client.head_object(Bucket=BUCKET, Key=f"{PREFIX}/{s.run_id}/gradient-1-0")
  assert head["Metadata"] == {"claimed-time": "1.0"}   # kept for debugging only
  s.put("gradient-1-1", b"y", 1e12)         # claimed far in the future, uploaded later
  _, t2 = s.get("gradient-1-1")
  assert t1 <= t2 <= time.time() + 2
  clock = s.clock()
  assert t2 <= clock <= time.time() + 2 and s.names() == ["gradient-1-0", "gradient-1-1"]


def test_oversize_is_refused_before_any_download(endpoint):
  s, spy = spied(endpoint)
  s.put("gradient-1-0", b"a" * 100, 0.0)
  key = f"{PREFIX}/{s.run_id}/gradient-1-0"
  spy.calls.clear()
  with pytest.raises(ObjectTooLarge) as e:
    s.get("gradient-1-0", max_bytes=99)
  assert (e.value.size, e.value.max_bytes) == (100, 99)
  assert abs(e.value.timestamp - time.time()) < 5
  assert [(op, k) for op, k, _ in spy.calls] == [("head_object", key)]   # no get_object
  # at the limit: one ranged GET of at most max_bytes + 1 bytes
  spy.calls.clear()
  assert s.get("gradient-1-0", max_bytes=100)[0] == b"a" * 100
  assert [(op, kw.get("Range")) for op, _, kw in spy.calls] == [
      ("head_object", None), ("get_object", "bytes=0-100")]
  # an empty object has no byte range: still read
  s.put("gradient-1-1", b"", 0.0)
  assert s.get("gradient-1-1", max_bytes=0)[0] == b""


def test_object_replaced_between_head_and_get_is_still_bounded(endpoint):
  s = store(endpoint)
  real = s.client
  grow = lambda key: real.put_object(Bucket=BUCKET, Key=key, Body=b"b" * 500)
  s.client = spy = Spy(real, before={"get_object": grow})
  s.put("gradient-1-0", b"a" * 10, 0.0)
  with pytest.raises(ObjectTooLarge) as e:
    s.get("gradient-1-0", max_bytes=50)     # HEAD saw 10 bytes, GET finds 500
  assert (e.value.size, e.value.max_bytes) == (500, 50) and e.value.timestamp is not None
  assert [kw.get("Range") for op, _, kw in spy.calls if op == "get_object"] == ["bytes=0-50"]


def test_missing_object_and_invalid_names(endpoint):
  s, spy = spied(endpoint)
  assert s.get("gradient-9-9") is None
  assert s.get("gradient-9-9", max_bytes=10) is None
  spy.calls.clear()
  for bad in ("../x", ".hidden", "a/b", "", "x.tmp"):
    with pytest.raises(ValueError):
      s.get(bad)
    with pytest.raises(ValueError):
      s.put(bad, b"", 0.0)
    with pytest.raises(ValueError):
      s.get_many(["gradient-1-0", bad])
  with pytest.raises(ValueError):
    s.get("gradient-1-0", max_bytes=-1)
  assert spy.calls == []                    # every check came before any request


def test_get_many_keeps_order_and_isolates_failures(endpoint):
  s, spy = spied(endpoint, fail=("gradient-1-3", "e500-1-4"))
  for i in range(12):
    s.put(f"gradient-2-{i}", bytes([i]) * (i + 1), 0.0)
  s.put("gradient-1-0", b"big" * 50, 0.0)
  names = ["gradient-2-11", "gradient-9-9", "gradient-1-0", "gradient-1-3", "e500-1-4"]
  names += [f"gradient-2-{i}" for i in range(11)]
  got = s.get_many(names, max_bytes=20)
  assert len(got) == len(names)
  assert got[0][0] == bytes([11]) * 12
  assert got[1] is None
  assert isinstance(got[2], ObjectTooLarge) and got[2].size == 150
  for slot, name in ((3, "gradient-1-3"), (4, "e500-1-4")):
    assert isinstance(got[slot], StorageUnavailable) and got[slot].name == name
  assert "InternalError" in str(got[4]) and "\n" not in str(got[4])
  assert [g[0] for g in got[5:]] == [bytes([i]) * (i + 1) for i in range(11)]
  assert s.get_many([]) == []


def test_unreachable_endpoint_fails_fast_and_clearly(endpoint):
  s = store(f"http://127.0.0.1:{free_port()}", timeout_s=0.5, retries=2)
  start = time.monotonic()
  for call in (lambda: s.get("gradient-1-0"), lambda: s.get("gradient-1-0", max_bytes=5),
               lambda: s.put("gradient-1-0", b"x", 0.0), s.names):
    with pytest.raises(StorageUnavailable) as e:
      call()
    assert "\n" not in str(e.value) and "Connect" in str(e.value)
  assert isinstance(s.get_many(["gradient-1-0"])[0], StorageUnavailable)
  assert time.monotonic() - start < 15


def test_make_storage_s3(endpoint, monkeypatch):
  monkeypatch.setenv("JAXNET_S3_ENDPOINT", endpoint)
  s = make_storage(f"s3://{BUCKET}/made", run_id="run-made")
  assert isinstance(s, S3Storage) and s.run_id == "run-made"
  s.put("gradient-1-0", b"made", 0.0)
  assert s.get("gradient-1-0")[0] == b"made"
  assert s.client.head_object(Bucket=BUCKET, Key="made/run-made/gradient-1-0")
  with pytest.raises(ValueError, match="bucket"):
    make_storage("s3:///prefix")
  # without boto3: one line that says what to install
  monkeypatch.setitem(sys.modules, "boto3", None)
  monkeypatch.delitem(sys.modules, "jaxnet.net.s3")
  with pytest.raises(ImportError, match=r"^s3 storage needs boto3: pip install -e '\.\[net\]'$"):
    make_storage(f"s3://{BUCKET}")


@pytest.fixture(params=["memory", "dir", "s3"])
def backend(request, tmp_path):
  if request.param == "memory":
    return MemoryStorage()
  if request.param == "dir":
    return LocalDirStorage(tmp_path)
  return store(request.getfixturevalue("endpoint"))


def test_storage_contract(backend):
  """What callers rely on, whatever stands behind the interface."""
  small, big = os.urandom(64), os.urandom(65)
  backend.put("gradient-1-1", small, 5.0)
  backend.put("gradient-1-0", big, 5.0)
  got = backend.get("gradient-1-1")
  assert got[0] == small and isinstance(got[1], float)
  assert backend.get("gradient-1-1", max_bytes=64) == got
  with pytest.raises(ObjectTooLarge) as e:
    backend.get("gradient-1-0", max_bytes=64)
  assert e.value.size == 65 and isinstance(e.value.timestamp, float)
  many = backend.get_many(["gradient-1-0", "gradient-7-7", "gradient-1-1"], max_bytes=64)
  assert isinstance(many[0], ObjectTooLarge) and many[1] is None and many[2] == got
  assert backend.get_many(["gradient-1-0"]) == [backend.get("gradient-1-0")]
  assert backend.get("gradient-7-7") is None
  assert backend.names() == ["gradient-1-0", "gradient-1-1"]
  with pytest.raises(ValueError):
    backend.get_many(["../gradient-1-0"])
