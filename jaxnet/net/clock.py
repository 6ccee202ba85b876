"""Real-clock windows on the store's clock, and the `run-start` object that fixes them.

Window w of a run is [T_w, T_{w+1}) with T_w = t0 + w * net.window_s (gauntlet.md §1.1).
The launcher opens a run with the object `run-launch` (JSON: run id, window and put
window, config digest) and, once every process it started is ready (has compiled: its
`ready-...` object is in the store) or `net.warmup_s` has passed, writes `run-start`, the
same with `t0` (whole seconds on the store's clock), once. A process reads them when it
starts: it refuses to join a run that was never launched, or whose config digest differs
from its own (`config_digest`: every field but where files live and how the store is
reached), before it compiles anything; then it waits for `run-start`.

The clock is the store's, since it stamps every upload (§1.3): an S3 store is read through
`S3Storage.clock()` (LastModified of a probe object, whole seconds); a few probes bound the
offset of this machine's clock to it (`Clock.error`). The local backends keep the time an
uploader claims, so their clock is this machine's.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time

from jaxnet.config import Config, to_dict
from jaxnet.sim.storage import ObjectTooLarge, Storage, StorageUnavailable, make_storage

RUN_LAUNCH, RUN_START = "run-launch", "run-start"
RUN_START_BYTES = 4096
# fields that say where this process keeps its files or how it reaches the store: they may
# differ between the processes of one run
LOCAL_FIELDS = ("train.out_dir", "checkpoint.", "sim.storage", "net.timeout_s",
                "net.retries", "net.workers")


class NetError(RuntimeError):
  """A process that cannot join or run the network as asked; the message is one line."""


def config_digest(cfg: Config) -> str:
  """SHA-256 of the config without `LOCAL_FIELDS`: equal in every process of one run."""
  flat = {}

  def walk(tree, prefix):
    for k, v in tree.items():
      if isinstance(v, dict):
        walk(v, f"{prefix}{k}.")
      elif not any((prefix + k).startswith(f) for f in LOCAL_FIELDS):
        flat[prefix + k] = v
  walk(to_dict(cfg), "")
  return hashlib.sha256(json.dumps(flat, sort_keys=True, default=list).encode()).hexdigest()


def open_store(spec: str, run_id: str, cfg: Config) -> Storage:
  """The run's shared store; "memory" is refused (no other process could see it)."""
  if spec == "memory":
    raise NetError("storage 'memory' lives in one process; a network of processes needs "
                   "--storage s3://bucket/prefix or a directory every process can reach")
  net = cfg.net
  try:
    return make_storage(spec, run_id, timeout_s=net.timeout_s, retries=net.retries,
                        workers=net.workers)
  except ValueError as e:   # a malformed spec or run id
    raise NetError(str(e)) from None


@dataclasses.dataclass(frozen=True)
class RunStart:
  """What `run-launch` (t0 None: not fixed yet) and `run-start` hold: the run's windows and
  the digest of its config."""
  run_id: str
  t0: float | None
  window_s: float
  put_window_s: float
  digest: str

  def to_bytes(self) -> bytes:
    return json.dumps(dataclasses.asdict(self)).encode()

  @classmethod
  def from_bytes(cls, data: bytes, name: str) -> "RunStart":
    try:
      d = json.loads(data)
      t0 = None if d["t0"] is None and name == RUN_LAUNCH else float(d["t0"])
      out = cls(str(d["run_id"]), t0, float(d["window_s"]), float(d["put_window_s"]),
                str(d["digest"]))
    except (ValueError, KeyError, TypeError) as e:
      raise NetError(f"{name}: not a {name} object ({type(e).__name__})") from None
    if not math.isfinite(out.t0 or 0.0) or not out.window_s > 0:
      raise NetError(f"{name}: bad t0 {out.t0} or window_s {out.window_s}")
    return out


def ready_name(role: str, uid: int | None = None) -> str:
  """The object a process puts once it has compiled: `ready-validator`, `ready-peer-{uid}`."""
  return f"ready-{role}" + ("" if uid is None else f"-{uid}")


def _run(cfg: Config, store: Storage, t0: float | None) -> RunStart:
  return RunStart(store.run_id, t0, cfg.net.window_s, cfg.net.put_window_s, config_digest(cfg))


def write_run_launch(store: Storage, cfg: Config, clock_now: float) -> None:
  """Opens a new run (its config digest, no t0 yet); a run id is launched once."""
  for name in (RUN_LAUNCH, RUN_START):
    if store.get(name, max_bytes=RUN_START_BYTES) is not None:
      raise NetError(f"run {store.run_id} was launched already (it has a {name} object); "
                     "launch with a new run id")
  store.put(RUN_LAUNCH, _run(cfg, store, None).to_bytes(), clock_now)


def write_run_start(store: Storage, cfg: Config, clock_now: float, lead_s: float) -> RunStart:
  """Fixes t0 = the next whole second `lead_s` from now (store clock), once."""
  if store.get(RUN_START, max_bytes=RUN_START_BYTES) is not None:
    raise NetError(f"run {store.run_id} has started already (it has a {RUN_START} object)")
  start = _run(cfg, store, float(math.ceil(clock_now + lead_s)))
  store.put(RUN_START, start.to_bytes(), clock_now)
  return start


def read_run(store: Storage, cfg: Config, name: str = RUN_START,
             wait_s: float = 0.0) -> RunStart | None:
  """The run's `run-start` (or `run-launch`), waiting up to `wait_s` for it (None when it
  is not there by then); a NetError when its config digest is not this process's."""
  deadline = time.monotonic() + wait_s
  while True:
    try:
      got = store.get(name, max_bytes=RUN_START_BYTES)
    except (StorageUnavailable, ObjectTooLarge):
      got = None
    if got is not None or time.monotonic() > deadline:
      break
    time.sleep(0.25)
  if got is None:
    return None
  start = RunStart.from_bytes(got[0], name)
  mine = config_digest(cfg)
  if start.digest != mine:
    raise NetError(f"run {store.run_id} was launched with another config (digest "
                   f"{start.digest[:12]}, this process has {mine[:12]}); start with the "
                   "config the launcher wrote (<train.out_dir>/config.yaml)")
  return start


def store_offset(store: Storage, probes: int = 4, spacing_s: float = 0.27):
  """(offset, error): store time = time.time() + offset, to within +- error seconds.

  A probe stamped `s` (whole seconds, truncated) between local times a and b says the
  offset lies in [s - b, s + 1 - a]; probes at different fractions of a second narrow it.
  """
  probe = getattr(store, "clock", None)
  if probe is None:   # a local backend: uploads carry this machine's time
    return 0.0, 0.0
  lo, hi = -math.inf, math.inf
  for i in range(probes):
    a = time.time()
    stamp = probe()
    b = time.time()
    lo, hi = max(lo, stamp - b), min(hi, stamp + 1.0 - a)
    if i + 1 < probes:
      time.sleep(spacing_s)
  if lo > hi:   # the store's clock moved between probes: trust the widest bounds
    lo, hi = hi, lo
  return (lo + hi) / 2, (hi - lo) / 2


class Clock:
  """The run's windows on the store's clock, as seen from this process."""

  MARGIN_S = 0.05   # kept from the edges of the put window beyond the clock's error

  def __init__(self, start: RunStart, offset: float = 0.0, error: float = 0.0):
    self.start, self.offset, self.error = start, offset, error

  @classmethod
  def of_store(cls, store: Storage, start: RunStart) -> "Clock":
    return cls(start, *store_offset(store))

  def now(self) -> float:
    return time.time() + self.offset

  def boundary(self, w: int) -> float:
    """T_w: the start of window w (and the end of window w - 1)."""
    return self.start.t0 + w * self.start.window_s

  def window(self, t: float | None = None) -> int:
    """The window holding store time `t` (now by default); negative before t0."""
    return math.floor(((self.now() if t is None else t) - self.start.t0) / self.start.window_s)

  def upload_at(self, w: int) -> float:
    """Earliest time to upload round w: its LastModified (truncated to whole seconds on S3)
    must not fall before T_{w+1}."""
    return math.ceil(self.boundary(w + 1) - 1e-9) + self.error + self.MARGIN_S

  def upload_by(self, w: int) -> float:
    """Latest time to upload round w: the end of its put window, less the clock's error."""
    return self.boundary(w + 1) + self.start.put_window_s - self.error - self.MARGIN_S

  def read_at(self, w: int, delay_s: float) -> float:
    """When a reader of round w starts: `delay_s` after its put window, as the store sees it."""
    return self.boundary(w + 1) + self.start.put_window_s + delay_s + self.error

  def sleep_until(self, t: float) -> None:
    delay = t - self.now()
    if delay > 0:
      time.sleep(delay)
