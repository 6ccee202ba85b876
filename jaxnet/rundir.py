"""A run directory: one writer, one resolved config, one run id, exact metrics.

Every mode (train, decentralised train, simulate) keeps its outputs in `train.out_dir`:

  run.json       the manifest: run id (it namespaces storage), mode, name, creation time, and
                 one entry per session (start or resume): command line, git commit, package
                 versions, devices, start/end time and steps (`manifest`, printed by `report`)
  config.yaml    the resolved config of the run; a resume refuses any other config
  metrics.jsonl  one JSON record per step, complete up to the last checkpoint after any kill
  .lock          held (flock) by the one live writer

Only process 0 writes (under `jax.distributed` every process runs the same program); the
run id is decided by process 0 and broadcast, so every process namespaces storage alike.

Resume rules: a run directory that holds a run is resumed only with the same config,
except for fields that only extend the run or say where its files live (`EXTEND_ONLY`).
Extending `train.steps` stretches the AdamW cosine schedule from the resumed step on.
"""
from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import yaml

__all__ = ["RunError", "RunDir", "read_metrics", "EXTEND_ONLY"]

# Fields a resume may change: the length of the run, evaluation and checkpoint cadence,
# and where the run's files live (a copied run directory can be resumed elsewhere; tracking
# can be turned on for a run already going).
EXTEND_ONLY = ("train.steps", "sim.rounds", "train.eval_every", "checkpoint.every",
               "checkpoint.keep", "checkpoint.resume", "train.out_dir", "checkpoint.dir",
               "log.tensorboard")
_MAX_METRICS_BYTES = 1 << 30   # a metrics file is ours, but bound what resume reads anyway


class RunError(RuntimeError):
  """A run directory that cannot be used as asked; the message is one line."""


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = list(v) if isinstance(v, tuple) else v
  return out


def config_diff(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
  """Changed fields (dotted name, old, new) outside `EXTEND_ONLY`, sorted by name. A field
  the old config lacks (added by a later jaxnet) is unchanged while it keeps its default."""
  from jaxnet.config import Config, to_dict
  a, b, default = _flatten(old), _flatten(new), _flatten(to_dict(Config()))
  return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
          if k not in EXTEND_ONLY and a.get(k, default.get(k)) != b.get(k)]


def read_metrics(path: str | os.PathLike, *, upto: int | None = None) -> list[dict]:
  """Records of a metrics JSONL file. A torn LAST line (a kill mid-write) is dropped; any
  other unreadable line is a RunError naming it. `upto` keeps records with step <= upto."""
  path = Path(path)
  if not path.exists():
    return []
  if path.stat().st_size > _MAX_METRICS_BYTES:
    raise RunError(f"{path}: {path.stat().st_size} bytes is larger than a metrics file can be")
  lines = path.read_bytes().split(b"\n")
  recs = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      rec = json.loads(line)
      if not isinstance(rec, dict):
        raise ValueError("not a JSON object")
    except ValueError as e:
      if i == len(lines) - 1:   # no newline after it: the write was cut short
        break
      raise RunError(f"{path}:{i + 1}: unreadable metrics record ({type(e).__name__})") from None
    recs.append(rec)
  if upto is not None:
    recs = [r for r in recs if r.get("step", 0) <= upto]
  return recs


def _broadcast_from_main(payload: str) -> str:
  """Process 0's string on every process (identity for a single process)."""
  if jax.process_count() == 1:
    return payload
  from jax.experimental import multihost_utils
  buf = np.zeros(256, np.uint8)
  raw = payload.encode()[:256]
  buf[:len(raw)] = np.frombuffer(raw, np.uint8)
  out = np.asarray(multihost_utils.broadcast_one_to_all(buf))
  return bytes(out[out != 0].astype(np.uint8)).decode()


class RunDir:
  """Opens `out_dir` for one run of `mode`; the only writer of its metrics and run files.

  Usage: `rd = RunDir(cfg, mode)` (locks, checks the stored config, fixes the run id),
  then after restoring a checkpoint `rd.begin(start_step)`; `rd.log(record)` per step,
  `rd.sync()` before each checkpoint, `rd.close()` at the end (also a context manager).
  """

  def __init__(self, cfg, mode: str, *, fresh: bool = False):
    from jaxnet.config import to_dict, to_yaml
    self.dir = Path(cfg.train.out_dir)
    self.mode = mode
    self.main = jax.process_index() == 0
    self.config = to_dict(cfg)
    self.config_yaml = to_yaml(cfg)   # what --print-config shows; `--config` reads it back
    self._lock = self._log = self._last_step = None
    self.resumed = False
    verdict = "ok:"
    if self.main:
      try:
        self._lock_dir()
        self.run_id = self._check_existing(cfg.checkpoint.resume, fresh)
        verdict = "ok:" + self.run_id
      except (RunError, OSError) as e:
        verdict = "error:" + str(e)[:240]
        self._release()
        if jax.process_count() == 1:
          raise
    verdict = _broadcast_from_main(verdict)
    if verdict.startswith("error:"):
      raise RunError(verdict[6:] if self.main else f"process 0 refused {self.dir}: {verdict[6:]}")
    self.run_id = verdict[3:]

  # ------------------------------------------------------------------ opening
  def _lock_dir(self) -> None:
    import fcntl
    self.dir.mkdir(parents=True, exist_ok=True)
    f = open(self.dir / ".lock", "a+")
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      f.close()
      raise RunError(f"{self.dir}: in use by a live run ({holder}); one writer per run "
                     "directory, use another train.out_dir") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}")
    f.flush()
    self._lock = f

  def _check_existing(self, resume: str, fresh: bool) -> str:
    run_json, cfg_yaml = self.dir / "run.json", self.dir / "config.yaml"
    if not run_json.exists():
      stray = sorted(p.name for p in self.dir.iterdir()
                     if p.name in ("metrics.jsonl", "checkpoints", "config.yaml"))
      if stray:
        raise RunError(f"{self.dir}: holds {', '.join(stray)} but no run.json (not a jaxnet run "
                       "directory, or from an older version); use another train.out_dir")
      return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
    try:
      info = json.loads(run_json.read_text())
      old = yaml.safe_load(cfg_yaml.read_text())
      run_id, mode = str(info["run_id"]), info["mode"]
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as e:
      raise RunError(f"{self.dir}: run.json or config.yaml unreadable ({type(e).__name__}); "
                     "use another train.out_dir") from None
    if resume == "never" or fresh:
      raise RunError(f"{self.dir}: holds run {run_id} and checkpoint.resume=never; "
                     "use another train.out_dir")
    if mode != self.mode:
      raise RunError(f"{self.dir}: holds a {mode!r} run, not {self.mode!r}; use another train.out_dir")
    if diff := config_diff(old if isinstance(old, dict) else {}, self.config):
      name, was, now = diff[0]
      more = f" (and {len(diff) - 1} more)" if len(diff) > 1 else ""
      raise RunError(f"{self.dir}: run {run_id} was made with {name}={was!r}, the config now says "
                     f"{now!r}{more}; resume only extends a run (use another train.out_dir)")
    return run_id

  def begin(self, start: int) -> "RunDir":
    """Writes the run files (fresh) or keeps the metrics up to `start` (resume)."""
    self.resumed = start > 0
    if not self.main:
      return self
    path = self.dir / "metrics.jsonl"
    kept = read_metrics(path, upto=start) if start > 0 else []
    if [r.get("step") for r in kept] != list(range(1, start + 1)):
      raise RunError(f"{path}: records for steps 1..{start} are incomplete; the run directory "
                     "was damaged, use another train.out_dir")
    _atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept))
    _atomic_write(self.dir / "config.yaml", self.config_yaml)
    self._write_manifest(start)
    self._log = path.open("a")
    if start > 0:
      print(f"resumed run {self.run_id} from step {start}", flush=True)
    return self

  def _write_manifest(self, start: int) -> None:
    path = self.dir / "run.json"
    info = json.loads(path.read_text()) if path.exists() else {
        "run_id": self.run_id, "mode": self.mode, "name": self.dir.name, "created": _now()}
    info.setdefault("sessions", []).append(dict(session_facts(), start=_now(), end=None,
                                                from_step=start, to_step=None))
    _atomic_write(path, json.dumps(info, indent=1))

  def _end_session(self) -> None:
    """Closes this session's manifest entry (a killed run leaves end = null)."""
    path = self.dir / "run.json"
    info = json.loads(path.read_text())
    info["sessions"][-1].update(end=_now(), to_step=self._last_step)
    _atomic_write(path, json.dumps(info, indent=1))

  # ------------------------------------------------------------------ writing
  def log(self, record: dict) -> None:
    if self._log is not None:
      self._log.write(json.dumps(record) + "\n")
      self._log.flush()
      self._last_step = record.get("step")

  def sync(self) -> None:
    """Metrics on disk before a checkpoint claims their step (a kill loses neither)."""
    if self._log is not None:
      self._log.flush()
      os.fsync(self._log.fileno())

  def close(self) -> None:
    if self._log is not None:
      self.sync()
      self._log.close()
      self._log = None
      self._end_session()
    self._release()

  def _release(self) -> None:
    if self._lock is not None:
      self._lock.close()   # closing the file drops the flock
      self._lock = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _now() -> str:
  return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _git_commit() -> str:
  """HEAD of the checkout jaxnet runs from (+dirty with local changes), else a statement."""
  import subprocess
  root = Path(__file__).resolve().parent.parent
  if not (root / ".git").exists():
    return "not a git checkout"
  try:
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                          text=True, timeout=10).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "not a git checkout (git unavailable)"
  return (head + ("+dirty" if dirty else "")) if head else "not a git checkout"


def session_facts() -> dict:
  """What produced a session of a run: command line, code, packages, devices."""
  import platform
  import sys
  from importlib.metadata import PackageNotFoundError, version
  packages = {"python": platform.python_version()}
  for name in ("jaxnet", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy",
               "openskill"):
    try:
      packages[name] = version(name)
    except PackageNotFoundError:
      packages[name] = "not installed"
  devices = jax.devices()
  return {"command": list(sys.argv), "git_commit": _git_commit(), "packages": packages,
          "devices": {"platform": devices[0].platform, "count": len(devices),
                      "kind": devices[0].device_kind, "processes": jax.process_count()}}


def manifest_lines(run_dir: Path) -> list[str]:
  """A run's manifest in a few lines (`jaxnet report`); [] when the directory has none."""
  path = Path(run_dir) / "run.json"
  if not path.exists():
    return []
  try:
    info = json.loads(path.read_text())
    sessions = info.get("sessions", [])
  except (OSError, ValueError, AttributeError):
    return [f"{path}: unreadable manifest"]
  lines = [f"run {info.get('run_id')} ({info.get('mode')}, {info.get('name')}), created "
           f"{info.get('created')}, {len(sessions)} session(s)"]
  for i, s in enumerate(sessions):
    pk, dv = s.get("packages", {}), s.get("devices", {})
    lines.append(f"  session {i}: steps {s.get('from_step')}..{s.get('to_step')}, {s.get('start')} -> "
                 f"{s.get('end') or 'no clean end (killed or running)'}; commit {s.get('git_commit')}; "
                 f"jax {pk.get('jax')} python {pk.get('python')}; {dv.get('count')} {dv.get('platform')} "
                 f"device(s) x {dv.get('processes')} process(es); command: "
                 f"{' '.join(s.get('command', []))[:160]}")
  return lines


def _atomic_write(path: Path, text: str) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


