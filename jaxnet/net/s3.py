"""An S3-compatible object store (AWS S3, Cloudflare R2, MinIO, moto) behind `Storage`.

Objects live at `{prefix}/{run_id}/{name}` in one bucket (no prefix: `{run_id}/{name}`).
The time of an object is the store's `LastModified`, as templar's put window used R2's:
whatever time an uploader claims is never its upload time. `LastModified` comes from the
HTTP `Last-Modified` header, so it has a resolution of one second (truncated).

Every request has connect/read timeouts and boto3's standard retries; a store that still
fails raises `StorageUnavailable` (one line), never a botocore traceback. Credentials come
from boto3's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, profiles, roles).
"""
from __future__ import annotations

import re
import uuid
from concurrent.futures import ThreadPoolExecutor

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from jaxnet.sim.storage import (GetResult, ObjectTooLarge, StorageUnavailable, check_bound,
                                check_many, check_name, check_run_id, get_or_error,
                                new_run_id)

__all__ = ["S3Storage", "ObjectTooLarge", "StorageUnavailable"]

_MISSING = {"404", "NoSuchKey", "NotFound"}
_TOTAL = re.compile(r"bytes \d+-\d+/(\d+)")   # Content-Range of a ranged GET


def _reason(e: Exception) -> str:
  if isinstance(e, ClientError):
    err = e.response.get("Error", {})
    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return f"{err.get('Code', '?')} (HTTP {status}): {err.get('Message', '')}".rstrip(": ")
  return f"{type(e).__name__}: {e}"


def _missing(e: Exception) -> bool:
  return isinstance(e, ClientError) and e.response.get("Error", {}).get("Code") in _MISSING


class S3Storage:
  """`Storage` over one bucket of an S3-compatible store; thread-safe (one boto3 client).

  `put`'s `timestamp` is not the object's time: the store stamps every upload itself, and
  `get` returns that `LastModified`. The claimed time is kept only as the metadata
  `x-amz-meta-claimed-time`, for debugging.
  """

  def __init__(self, bucket: str, prefix: str = "", run_id: str | None = None,
               endpoint_url: str | None = None, region: str | None = None,
               timeout_s: float = 10.0, retries: int = 3, workers: int = 16, client=None):
    self.run_id = check_run_id(new_run_id() if run_id is None else run_id)
    self.bucket, self.workers = bucket, max(1, int(workers))
    self._base = "/".join(p for p in (prefix.strip("/"), self.run_id) if p) + "/"
    if client is None:
      config = Config(connect_timeout=timeout_s, read_timeout=timeout_s,
                      retries={"max_attempts": retries, "mode": "standard"},
                      max_pool_connections=max(self.workers, 10),
                      # a custom endpoint (R2, MinIO, moto) is reached by path, not by a
                      # bucket subdomain it may not resolve
                      s3={"addressing_style": "path"} if endpoint_url else None)
      client = boto3.session.Session().client("s3", endpoint_url=endpoint_url,
                                              region_name=region, config=config)
    self.client = client

  def _key(self, name: str) -> str:
    return self._base + check_name(name)

  def _call(self, what: str, method, missing_ok: bool = False, **kwargs):
    """`method(Bucket=..., **kwargs)`; None for an absent key when `missing_ok`, any other
    failure (after boto3's retries) a StorageUnavailable about `what`."""
    try:
      return method(Bucket=self.bucket, **kwargs)
    except (ClientError, BotoCoreError) as e:
      if missing_ok and _missing(e):
        return None
      raise StorageUnavailable(what, _reason(e)) from None

  def put(self, name: str, data: bytes, timestamp: float | None = None) -> None:
    """Uploads `data`; the store stamps it (`timestamp` is only kept as metadata)."""
    meta = {} if timestamp is None else {"claimed-time": repr(float(timestamp))}
    self._call(name, self.client.put_object, Key=self._key(name), Body=bytes(data),
               Metadata=meta)

  def get(self, name: str, max_bytes: int | None = None) -> tuple[bytes, float] | None:
    """(data, LastModified in seconds since the epoch), or None when absent. With
    `max_bytes`, the size is read first (HEAD): a larger object raises ObjectTooLarge
    before any byte of it is downloaded, and at most `max_bytes + 1` bytes are ever read
    (the object may be replaced between HEAD and GET)."""
    check_bound(max_bytes)
    key = self._key(name)
    if max_bytes is not None:
      head = self._call(name, self.client.head_object, missing_ok=True, Key=key)
      if head is None:
        return None
      if head["ContentLength"] > max_bytes:
        raise ObjectTooLarge(name, head["ContentLength"], max_bytes,
                             head["LastModified"].timestamp())
    # an empty object has no byte range (HTTP 416): read it whole, still bounded below
    ranged = max_bytes is not None and head["ContentLength"] > 0
    got = self._call(name, self.client.get_object, missing_ok=True, Key=key,
                     **({"Range": f"bytes=0-{max_bytes}"} if ranged else {}))
    if got is None:   # deleted since the HEAD
      return None
    timestamp = got["LastModified"].timestamp()
    body = got["Body"]
    try:
      data = body.read() if max_bytes is None else body.read(max_bytes + 1)
    except (BotoCoreError, OSError) as e:
      raise StorageUnavailable(name, _reason(e)) from None
    finally:
      body.close()
    if max_bytes is not None and len(data) > max_bytes:
      total = _TOTAL.fullmatch(got.get("ContentRange") or "")
      raise ObjectTooLarge(name, int(total[1]) if total else len(data), max_bytes, timestamp)
    return data, timestamp

  def get_many(self, names: list[str], max_bytes: int | None = None) -> list[GetResult]:
    """`get` of every name on `workers` threads, results in the order of `names`; an
    ObjectTooLarge or StorageUnavailable is returned in its slot, so one bad object never
    stops the others."""
    names = check_many(names, max_bytes)
    if not names:
      return []
    with ThreadPoolExecutor(min(self.workers, len(names))) as pool:
      return list(pool.map(lambda n: get_or_error(self, n, max_bytes), names))

  def names(self) -> list[str]:
    """The plain names of this run's objects, sorted (keys deeper under the run, or not
    plain names, are not this interface's objects and are left out)."""
    out = []
    pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                  Prefix=self._base)
    try:
      for page in pages:
        for obj in page.get("Contents", []):
          name = obj["Key"][len(self._base):]
          try:
            out.append(check_name(name))
          except ValueError:
            pass
    except (ClientError, BotoCoreError) as e:
      raise StorageUnavailable(self._base, _reason(e)) from None
    return sorted(out)

  def clock(self) -> float:
    """The store's current time (seconds since the epoch, one-second resolution): the
    LastModified of a tiny probe object put under this run, then deleted. Processes align
    their windows with it, since it is the clock that stamps every upload."""
    name = f"clock-probe-{uuid.uuid4().hex}"
    self.put(name, b"")
    try:
      head = self._call(name, self.client.head_object, Key=self._key(name))
      return head["LastModified"].timestamp()
    finally:
      self._call(name, self.client.delete_object, Key=self._key(name))
