"""What every process of the network shares: joining a run, reading the store with
retries, one-writer locks, JSONL records and the digest of θ."""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Callable


from jaxnet.checkpoint import digests
from jaxnet.config import Config
from jaxnet.net.clock import (RUN_LAUNCH, RUN_START, Clock, NetError, RunStart, open_store,
                              read_run, ready_name)
from jaxnet.rundir import read_metrics
from jaxnet.sim.storage import GetResult, Storage, StorageUnavailable

POLL_S = 0.25   # how often a process looks again for an object it waits for


class Joined:
  """A process's view of a run: the shared store, then (after `ready`) the run's start and
  the store's clock."""

  def __init__(self, cfg: Config, run_id: str):
    """Opens the store of `cfg.sim.storage`; a run that has started already must have been
    launched with this config (checked before anything is compiled)."""
    self.cfg = cfg
    self.store = open_store(cfg.sim.storage, run_id, cfg)
    self.start: RunStart | None = read_run(self.store, cfg, RUN_START)
    self.clock: Clock | None = None
    if self.start is None and read_run(self.store, cfg, RUN_LAUNCH, wait_s=2.0) is None:
      raise NetError(f"run {run_id} was never launched (no {RUN_LAUNCH} object in "
                     f"{cfg.sim.storage}): check --run-id and --storage, or start it with "
                     "`jaxnet launch`")

  def ready(self, role: str, uid: int | None, log: logging.Logger) -> Clock:
    """Says this process is ready (compiled), waits for the run's start and measures the
    store's clock."""
    name = ready_name(role, uid)
    keep_trying(lambda: self.store.put(name, b"", time.time()), name, log)
    wait = self.cfg.net.warmup_s + 60.0
    self.start = self.start or read_run(self.store, self.cfg, RUN_START, wait)
    if self.start is None:
      raise NetError(f"run {self.store.run_id} did not start within {wait:.0f} s (no "
                     f"{RUN_START} object): did its launcher stop?")
    self.clock = Clock.of_store(self.store, self.start)
    return self.clock


def with_storage(cfg: Config, spec: str | None) -> Config:
  """The config with `sim.storage` set to `--storage SPEC` (when given)."""
  return cfg if spec is None else cfg.replace(sim=dataclasses.replace(cfg.sim, storage=spec))


def lock(path: Path, what: str):
  """An exclusive lock on `path` (held while the returned file is open): one process per
  role and directory."""
  path.parent.mkdir(parents=True, exist_ok=True)
  f = open(path, "a")
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    f.close()
    raise NetError(f"{path.parent}: another {what} runs there; one per directory (use "
                   "another train.out_dir)") from None
  return f


class JsonlLog:
  """Appends one JSON record per line, flushed at once. Opened to resume, it keeps only the
  records with `step` <= `keep_upto` (those of the checkpoint it resumes from; a torn last
  line is dropped); 0 starts afresh."""

  def __init__(self, path: Path, keep_upto: int = 0):
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = read_metrics(path, upto=keep_upto) if keep_upto else []
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)   # a kill here leaves the old file or the new one
    self.path = path
    self._f = path.open("a")

  def write(self, record: dict) -> None:
    self._f.write(json.dumps(record) + "\n")
    self._f.flush()

  def close(self) -> None:
    self._f.close()


def theta_digest(params) -> str:
  """One SHA-256 over every leaf's digest: equal θ on two nodes, bit for bit."""
  return hashlib.sha256(json.dumps(digests(params), sort_keys=True).encode()).hexdigest()


def outer_step(net, params, outer, subs_N, valid_N):
  """The simulator's step of every honest node (`Network.outer_step`) -> (params, outer)."""
  return net.outer_step(params, outer, subs_N, valid_N)[:2]


def fetch_all(store: Storage, names: list[str], max_bytes: int, retries: int | None,
              log: logging.Logger) -> list[GetResult]:
  """`get_many` (sizes checked before download, in parallel on S3); the names the store
  could not serve are asked again, up to `retries` attempts in all (None: until it
  serves them). What still fails comes back as its StorageUnavailable."""
  out = list(store.get_many(names, max_bytes))
  attempt = 1
  while retries is None or attempt < retries:
    bad = [i for i, g in enumerate(out) if isinstance(g, StorageUnavailable)]
    if not bad:
      break
    log.warning("store: %d of %d objects unreadable (%s); attempt %d", len(bad), len(names),
                out[bad[0]].reason, attempt + 1)
    time.sleep(min(POLL_S * attempt, 2.0))
    for i, g in zip(bad, store.get_many([names[i] for i in bad], max_bytes)):
      out[i] = g
    attempt += 1
  return out


def keep_trying(call: Callable, what: str, log: logging.Logger, until: float | None = None,
                clock: Clock | None = None):
  """`call()` until the store answers; a StorageUnavailable is logged and retried (never
  the end of the process). With `until` (store time), gives up then and returns None."""
  warned = 0.0
  while True:
    try:
      return call()
    except StorageUnavailable as e:
      if time.monotonic() - warned > 10.0:
        log.warning("store unavailable for %s: %s; retrying", what, e.reason)
        warned = time.monotonic()
    if until is not None and clock.now() > until:
      return None
    time.sleep(POLL_S)


def setup_logging(role: str) -> None:
  """Lines `time role message` on stderr (the launcher streams them into files); for the
  process commands only (it replaces the process's logging set-up)."""
  logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s {role} %(message)s",
                      datefmt="%H:%M:%S", force=True)   # the process is ours: replace any
  logging.getLogger("jaxnet").setLevel(logging.INFO)      # libraries stay at warnings
