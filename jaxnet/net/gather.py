"""The gather list the lead validator publishes for every round (gauntlet.md §4, §13), and
how a peer applies a round from it.

`gather-{w}` is JSON: the round, the lead validator, its weights [N], the gather uids whose
uploads it used (`gather_valid`), the SHA-256 of each of those uploads as it read them and
the digest of its θ after the round's outer step. A peer downloads exactly those uploads,
checks each digest (an object replaced after the validator read it is not used: logged),
parses them with the validator's parser into the same [N] slots, and aggregates with the
same jitted functions: every honest node's θ stays identical, and each peer checks its θ
against the validator's after every round.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math

import numpy as np

from jaxnet.gauntlet import collect
from jaxnet.net.node import fetch_all, outer_step
from jaxnet.sim.storage import ObjectTooLarge, Storage, gradient_name
from jaxnet.submission import max_upload_bytes

_HEX = set("0123456789abcdef")


def gather_name(window: int) -> str:
  return f"gather-{window}"


def sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def _is_digest(x) -> bool:
  return isinstance(x, str) and len(x) == 64 and set(x) <= _HEX


@dataclasses.dataclass(frozen=True)
class GatherList:
  window: int
  validator: int
  weights: tuple[float, ...]     # [N] the lead validator's weights of the round
  gather: tuple[int, ...]        # uids whose uploads enter the aggregate (gather_valid)
  sha256: dict[int, str]         # uid -> digest of the upload the validator used
  theta: str                     # digest of the validator's θ after the round

  def to_bytes(self) -> bytes:
    d = dataclasses.asdict(self)
    d["sha256"] = {str(u): h for u, h in self.sha256.items()}
    return json.dumps(d).encode()

  @classmethod
  def from_bytes(cls, data: bytes, n: int, window: int) -> "GatherList":
    """Parses and checks every field; a ValueError (one line) for anything else."""
    d = json.loads(data)   # ValueError for non-JSON
    if not isinstance(d, dict) or set(d) != {f.name for f in dataclasses.fields(cls)}:
      raise ValueError("not a gather list")
    if d["window"] != window or type(d["validator"]) is not int:
      raise ValueError(f"window {d['window']!r}, expected {window}")
    w, g, h = d["weights"], d["gather"], d["sha256"]
    if not (isinstance(w, list) and len(w) == n and all(
        type(x) in (int, float) and math.isfinite(x) for x in w)):
      raise ValueError(f"weights must be {n} finite numbers")
    if not (isinstance(g, list) and all(type(u) is int and 0 <= u < n for u in g)
            and len(set(g)) == len(g)):
      raise ValueError(f"gather must be distinct uids in [0, {n})")
    if not (isinstance(h, dict) and set(h) == {str(u) for u in g}
            and all(map(_is_digest, h.values())) and _is_digest(d["theta"])):
      raise ValueError("digests must be SHA-256 hex, one per gather uid")
    return cls(window, d["validator"], tuple(float(x) for x in w), tuple(g),
               {int(u): x for u, x in h.items()}, d["theta"])


def gather_limit(n: int) -> int:
  """Bound on a gather list's size: [N] weights, N digests and some keys."""
  return 1024 + 200 * n


def read_gather(store: Storage, window: int, n: int, log: logging.Logger):
  """The round's gather list, or None when absent yet (raises StorageUnavailable). An
  oversize or malformed object is logged and read as absent: the reader retries."""
  try:
    got = store.get(gather_name(window), max_bytes=gather_limit(n))
  except ObjectTooLarge as e:
    log.warning("gather list of round %d refused: %s", window, e)
    return None
  if got is None:
    return None
  try:
    return GatherList.from_bytes(got[0], n, window)
  except (ValueError, TypeError, RecursionError) as e:
    log.warning("gather list of round %d is malformed (%s); waiting for a valid one", window,
                " ".join(str(e).split())[:200])
    return None


def apply_round(net, store: Storage, params, outer, listing: GatherList, log: logging.Logger):
  """θ and outer state after round `listing.window`, aggregated from the gathered uploads
  (read from the store until it serves them, checked against the validator's digests) ->
  (params, outer, used uids, problems {uid: why})."""
  w, n = listing.window, net.n
  got = fetch_all(store, [gradient_name(w, u) for u in listing.gather],
                  max_upload_bytes(net.layout), None, log)
  uploads, problems = [None] * n, {}
  for u, g in zip(listing.gather, got):
    if not isinstance(g, tuple):
      problems[u] = "missing" if g is None else type(g).__name__
    elif sha256(g[0]) != listing.sha256[u]:
      problems[u] = "changed since the validator read it"
    else:
      uploads[u] = g[0]
  subs, _, ok, reasons = collect.parse_uploads(uploads, net.layout, w)
  for u in listing.gather:
    if u not in problems and not ok[u]:
      problems[u] = reasons[u]
  if problems:
    log.warning("round %d: gathered uploads not used (θ will differ from the validator's): %s",
                w, problems)
  params, outer = outer_step(net, params, outer, subs, ok)
  return params, outer, [int(u) for u in np.flatnonzero(ok)], problems
