"""The one host loop of every mode: run directory, resume, progress, metrics, NaN check,
checkpoints, final save and asynchronous dispatch, with hooks (Levanter's habit).

A mode (centralised training, decentralised training, the network simulation) describes
itself as a `Task`: its state, how to dispatch one step, how to turn that step's outputs
into a host record, and what to checkpoint. `run` does the rest the same way for all, so
the modes cannot drift apart:

  * step t+1 is dispatched before step t's outputs are read on the host (JAX's
    asynchronous dispatch keeps the device busy while Python writes metrics), except that
    a step whose checkpoint is due has its record written and synced first, so a kill at
    any point leaves the metrics complete up to the checkpoint a resume starts from;
  * every record passes the NaN check on the task's loss key;
  * one checkpoint cadence (`checkpoint.every`; 0 = at the end only) and one final save;
  * on process 0, the optional tracker (`log.tensorboard`, jaxnet.tracking) as one more
    hook, flushed at every checkpoint and closed at the end.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jaxnet import tracking
from jaxnet.checkpoint import Checkpointer, CheckpointError
from jaxnet.rundir import RunDir

__all__ = ["Task", "run"]


@dataclasses.dataclass
class Task:
  """What a mode gives the loop. Steps are numbered 1..total; step s consumes index s-1."""
  state: Any                                     # initial state, also the restore target
  total: int                                     # steps of the whole run
  step: Callable[[Any, int], tuple[Any, Any]]    # (state, index) -> (state, device outputs)
  host: Callable[[int, Any], dict]               # (step, outputs) -> record (may block)
  loss_key: str = "loss"                         # NaN check on this record entry
  unit: str = "step"                             # progress-bar unit
  tokens_per_step: int = 0                       # > 0 adds tokens_per_s to each record
  to_checkpoint: Callable[[Any], Any] = lambda s: s       # state -> saved tree
  from_checkpoint: Callable[[Any], Any] = lambda t: t     # restored tree -> state
  place: Callable[[Any], Any] = lambda s: s               # commit a fresh or restored state
  postfix: Callable[[dict], dict] = lambda r: {}          # progress-bar fields of a record
  hooks: list[Callable[[dict], None]] = dataclasses.field(default_factory=list)  # per record
  meta: dict = dataclasses.field(default_factory=dict)    # extra checkpoint metadata


def _checkpointer(cfg, compat: dict) -> Checkpointer:
  directory = cfg.checkpoint.dir or Path(cfg.train.out_dir) / "checkpoints"
  return Checkpointer(directory, every=cfg.checkpoint.every, keep=cfg.checkpoint.keep,
                      compat=compat)


def _progress(enabled: bool, start: int, total: int, desc: str, unit: str):
  if not enabled:
    return None
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=start, desc=desc, unit=unit, dynamic_ncols=True)


def run(cfg, mode: str, build: Callable[[str], Task], *, compat: dict, progress: bool = True,
        stop_after: int | None = None) -> dict:
  """Runs (or resumes) the task `build(run_id)` in `cfg.train.out_dir`.

  `stop_after` ends this call after that many steps (as if killed, having checkpointed),
  which the resume tests use. Returns the final state, this call's records, the step range
  and the run id; `rd` (the RunDir, closed) tells hooks run afterwards whether they are the
  main process.
  """
  tracking.check(cfg)   # a missing package fails every process before any work
  with RunDir(cfg, mode) as rd:
    task = build(rd.run_id)
    ckpt = _checkpointer(cfg, compat)
    tracker = None
    try:
      state, start = task.state, 0
      latest = ckpt.start_step(cfg.checkpoint.resume)
      if latest is not None:
        restored, meta = ckpt.restore(latest, task.to_checkpoint(state))
        if meta.get("data_position") != latest:
          raise CheckpointError(f"{ckpt.directory}/{latest}: data position "
                                f"{meta.get('data_position')} does not match step {latest}")
        state, start = task.from_checkpoint(restored), latest
      rd.begin(start)
      tracker = tracking.open_tracker(cfg, main=rd.main, start=start)
      if tracker is not None:
        task = dataclasses.replace(task, hooks=[*task.hooks, tracker])
      state = task.place(state)
      end = task.total if stop_after is None else min(task.total, start + stop_after)
      state, history = _steps(task, rd, ckpt, state, start, end, progress, mode, tracker)
    finally:
      ckpt.close()
      if tracker is not None:
        tracker.close()
  return {"state": state, "history": history, "start": start, "end": end, "run_id": rd.run_id,
          "main": rd.main}


def _steps(task: Task, rd: RunDir, ckpt: Checkpointer, state, start: int, end: int,
           progress: bool, desc: str, tracker: tracking.Tracker | None = None):
  bar = _progress(progress and rd.main, start, task.total, desc, task.unit)
  history, pending, t_last = [], None, time.perf_counter()

  def flush():
    nonlocal pending, t_last
    step, outputs = pending
    pending = None
    rec = task.host(step, outputs)
    value = rec.get(task.loss_key)
    if value is not None and not np.isfinite(value):
      raise FloatingPointError(f"{task.loss_key} is {value} at step {step}")
    now = time.perf_counter()
    if task.tokens_per_step:
      rec["tokens_per_s"] = task.tokens_per_step / max(now - t_last, 1e-9)
    rec.update(step=step, time=now)
    t_last = now
    history.append(rec)
    rd.log(rec)
    if rd.main:
      for hook in task.hooks:
        hook(rec)
    if bar is not None:
      bar.update(1)
      bar.set_postfix(**task.postfix(rec))

  def save(step: int):
    rd.sync()   # the records up to `step` are on disk before the checkpoint claims it
    if tracker is not None:   # and their events, so a kill after it loses none
      tracker.flush()
    ckpt.save(step, task.to_checkpoint(state), dict(task.meta, data_position=step))

  try:
    for i in range(start, end):
      state, outputs = task.step(state, i)
      if pending is not None:   # read step i's predecessor while step i runs
        flush()
      pending = (i + 1, outputs)
      if ckpt.should_save(i + 1) and i + 1 < end:
        flush()
        save(i + 1)
    if pending is not None:
      flush()
    if end > start or ckpt.latest_step() != end:
      save(end)
  finally:
    if bar is not None:
      bar.close()
  return state, history
