"""Object storage for uploads: put/get with timestamps (DESIGN.md: one small interface).

Object names follow templar (gauntlet.md §1.2): `gradient-{w}-{uid}`, `debug-{w}-{uid}`.
The timestamp is the storage's LastModified, set by the (simulated) clock at upload.

Every storage belongs to one run (`run_id`): objects of another run, e.g. a previous run
that used the same directory, are never listed or returned, so they cannot be scored in
this run. Readers of untrusted objects pass `max_bytes`: the size is known before any
byte is read, and the read stops at `max_bytes + 1` bytes even if the object grows.

Backends: memory, a local directory, and an S3-compatible object store
(`jaxnet.net.s3.S3Storage`, spec `s3://bucket/prefix`), whose timestamps are the store's
own LastModified, never the one the uploader claims. `get_many` reads many objects at once
(in parallel on S3): one bad object is returned as its exception and never stops the rest.
"""
from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path
from typing import Protocol

# plain names only: no '/', no leading '.', so never '..' or a path out of the run
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SIDECARS = (".time", ".tmp")   # suffixes the local backend keeps for itself
_TIME_BYTES = 64                # a timestamp sidecar is one JSON float


class ObjectTooLarge(Exception):
  """`get(name, max_bytes)` found an object larger than `max_bytes`; nothing was returned.

  `size` is the size seen (at least `max_bytes + 1`), `timestamp` the object's upload time.
  """

  def __init__(self, name: str, size: int, max_bytes: int, timestamp: float | None):
    super().__init__(f"object {name!r}: {size} bytes > limit {max_bytes}")
    self.name, self.size, self.max_bytes, self.timestamp = name, size, max_bytes, timestamp


class StorageUnavailable(Exception):
  """The store could not be reached or refused the request (after the backend's own
  retries); `reason` is one line."""

  def __init__(self, name: str, reason: str):
    self.name, self.reason = name, " ".join(str(reason).split())
    super().__init__(f"storage unavailable for {name!r}: {self.reason}")


# what `get_many` returns for one name: `get`'s result, or the error that one object met
GetResult = tuple[bytes, float] | ObjectTooLarge | StorageUnavailable | None


class Storage(Protocol):
  run_id: str

  def put(self, name: str, data: bytes, timestamp: float) -> None: ...
  def get(self, name: str, max_bytes: int | None = None) -> tuple[bytes, float] | None: ...
  def get_many(self, names: list[str], max_bytes: int | None = None) -> list[GetResult]: ...
  def names(self) -> list[str]: ...


def check_run_id(run_id: str) -> str:
  if not isinstance(run_id, str) or not _PLAIN.fullmatch(run_id):
    raise ValueError(f"run id {run_id!r} must be 1-128 of [A-Za-z0-9._-], starting with a "
                     "letter or digit")
  return run_id


def check_name(name: str) -> str:
  if not isinstance(name, str) or not _PLAIN.fullmatch(name) or name.endswith(_SIDECARS):
    raise ValueError(f"storage object name {name!r} must be a plain name of [A-Za-z0-9._-], "
                     f"starting with a letter or digit and not ending in {_SIDECARS}")
  return name


def new_run_id() -> str:
  return "run-" + uuid.uuid4().hex[:16]


def check_bound(max_bytes: int | None) -> None:
  if max_bytes is not None and (type(max_bytes) is not int or max_bytes < 0):
    raise ValueError(f"max_bytes must be an int >= 0 or None, got {max_bytes!r}")


def get_or_error(storage: Storage, name: str, max_bytes: int | None) -> GetResult:
  """`storage.get(name, max_bytes)`, with ObjectTooLarge / StorageUnavailable returned."""
  try:
    return storage.get(name, max_bytes)
  except (ObjectTooLarge, StorageUnavailable) as e:
    return e


def check_many(names: list[str], max_bytes: int | None) -> list[str]:
  """The arguments of `get_many`, checked before any read: a bad name is the caller's bug
  (a ValueError), not one object's failure."""
  check_bound(max_bytes)
  return [check_name(n) for n in names]


def get_each(storage: Storage, names: list[str], max_bytes: int | None) -> list[GetResult]:
  """`get_many` of a local backend: one name after another, results in the order of
  `names`; ObjectTooLarge / StorageUnavailable come back in their slot, never raised."""
  return [get_or_error(storage, n, max_bytes) for n in check_many(names, max_bytes)]


class MemoryStorage:
  """Objects in a dict keyed by (run id, name); `objects` may be shared between runs."""

  def __init__(self, run_id: str | None = None,
               objects: dict[tuple[str, str], tuple[bytes, float]] | None = None):
    self.run_id = check_run_id(new_run_id() if run_id is None else run_id)
    self._objects = {} if objects is None else objects

  def put(self, name: str, data: bytes, timestamp: float) -> None:
    self._objects[(self.run_id, check_name(name))] = (bytes(data), float(timestamp))

  def get(self, name: str, max_bytes: int | None = None) -> tuple[bytes, float] | None:
    check_bound(max_bytes)
    got = self._objects.get((self.run_id, check_name(name)))
    if got is not None and max_bytes is not None and len(got[0]) > max_bytes:
      raise ObjectTooLarge(name, len(got[0]), max_bytes, got[1])
    return got

  def get_many(self, names: list[str], max_bytes: int | None = None) -> list[GetResult]:
    return get_each(self, names, max_bytes)

  def names(self) -> list[str]:
    return sorted(n for r, n in self._objects if r == self.run_id)


class LocalDirStorage:
  """`directory/<run id>/<name>` per object plus a `.time` sidecar; writes are atomic
  (temp file + rename)."""

  def __init__(self, directory: str | Path, run_id: str | None = None):
    self.run_id = check_run_id(new_run_id() if run_id is None else run_id)
    self.directory = Path(directory) / self.run_id
    self.directory.mkdir(parents=True, exist_ok=True)

  def _path(self, name: str) -> Path:
    return self.directory / check_name(name)

  def put(self, name: str, data: bytes, timestamp: float) -> None:
    path = self._path(name)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    meta = path.with_name(path.name + ".time")
    meta.write_text(json.dumps(float(timestamp)))

  def _timestamp(self, path: Path) -> float | None:
    try:
      with open(path.with_name(path.name + ".time"), "rb") as f:
        return float(json.loads(f.read(_TIME_BYTES)))
    except (OSError, ValueError, TypeError):
      return None

  def get(self, name: str, max_bytes: int | None = None) -> tuple[bytes, float] | None:
    check_bound(max_bytes)
    path = self._path(name)
    timestamp = self._timestamp(path)
    if timestamp is None:
      return None
    try:
      with open(path, "rb") as f:
        if max_bytes is None:
          return f.read(), timestamp
        size = os.fstat(f.fileno()).st_size      # known before a byte is read
        if size > max_bytes:
          raise ObjectTooLarge(name, size, max_bytes, timestamp)
        data = f.read(max_bytes + 1)             # bounded even if the file grew
    except FileNotFoundError:
      return None
    if len(data) > max_bytes:
      raise ObjectTooLarge(name, len(data), max_bytes, timestamp)
    return data, timestamp

  def get_many(self, names: list[str], max_bytes: int | None = None) -> list[GetResult]:
    return get_each(self, names, max_bytes)

  def names(self) -> list[str]:
    return sorted(p.name for p in self.directory.iterdir()
                  if not p.name.endswith(_SIDECARS))


def make_storage(spec: str, run_id: str | None = None, **s3_options) -> Storage:
  """"memory", `s3://bucket[/prefix]` for an S3-compatible store, or a directory for the
  local backend; objects live under `run_id` (a fresh unique id when None, so nothing from
  an earlier run is ever visible). `s3_options` (timeout_s, retries, workers) go to
  `S3Storage` and are ignored by the local backends.

  S3: the endpoint is `JAXNET_S3_ENDPOINT` (else `AWS_ENDPOINT_URL`; unset: AWS itself),
  the region `AWS_REGION` / `AWS_DEFAULT_REGION` (default us-east-1), credentials boto3's
  usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, profiles, roles).
  """
  if spec == "memory":
    return MemoryStorage(run_id)
  if spec.startswith("s3://"):
    bucket, _, prefix = spec[len("s3://"):].partition("/")
    if not bucket:
      raise ValueError(f"storage spec {spec!r}: needs a bucket, s3://bucket[/prefix]")
    try:
      from jaxnet.net.s3 import S3Storage   # here: boto3 is needed for S3 only
    except ImportError as e:
      if e.name not in ("boto3", "botocore"):
        raise
      raise ImportError("s3 storage needs boto3: pip install -e '.[net]'") from None
    env = os.environ.get
    return S3Storage(bucket, prefix, run_id,
                     endpoint_url=env("JAXNET_S3_ENDPOINT") or env("AWS_ENDPOINT_URL") or None,
                     region=env("AWS_REGION") or env("AWS_DEFAULT_REGION") or "us-east-1",
                     **s3_options)
  return LocalDirStorage(spec, run_id)


def gradient_name(window: int, uid: int) -> str:
  return f"gradient-{window}-{uid}"


def debug_name(window: int, uid: int) -> str:
  return f"debug-{window}-{uid}"
