"""`jaxnet launch`: one validator and N peer processes on this machine, over a shared store.

The launcher opens the run (`run-launch`), writes the resolved config
(`<train.out_dir>/config.yaml`, which every child reads), starts `jaxnet validator` and one `jaxnet peer --uid U` per uid of `sim.peers`
(honest peers only) with their output streamed into `<train.out_dir>/logs/`, and waits
until every child has compiled (its `ready-...` object is in the store) or `net.warmup_s`
has passed; then it writes the run's `run-start`: window 0 starts START_LEAD_S later on
the store's clock, so slow compiles never eat into the first windows. It waits for the
validator to finish `sim.rounds` rounds, gives the peers a window to finish theirs and
stops the rest. A child that dies is recorded (`launch.jsonl`) and the network goes on
without it; a validator that fails ends the run. `processes.json` lists the children
(role, uid, pid, log).

Children share a persistent compilation cache (`<train.out_dir>/jax-cache` unless
JAX_COMPILATION_CACHE_DIR is set): the validator and peer 0 start first, the other peers
once peer 0 is ready (or half of `net.warmup_s` has passed), so that they load its
programs rather than all compile the same ones at once; a restarted peer loads them too.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from jaxnet.config import Config, to_yaml
from jaxnet.net.clock import (NetError, open_store, ready_name, store_offset,
                              write_run_launch, write_run_start)
from jaxnet.sim.storage import ObjectTooLarge, StorageUnavailable, new_run_id

STOP_GRACE_S = 10.0   # a stopped child is killed when still running this much later
START_LEAD_S = 3.0    # from run-start to window 0: every child reads it and its clock


def check_processes(cfg: Config) -> list[str]:
  """The uids' behaviours; only honest peers run as processes."""
  behaviours = cfg.sim.behaviours()
  other = sorted({b for b in behaviours if b != "honest"})
  if other:
    raise NetError(f"sim.peers: a network of processes runs honest peers only, not "
                   f"{', '.join(other)} (those live in `jaxnet simulate`)")
  return behaviours


def child_command(role: str, config: Path, run_id: str, spec: str, uid: int | None = None):
  cmd = [sys.executable, "-m", "jaxnet.cli", role, "--config", str(config), "--run-id", run_id,
         "--storage", spec]
  return cmd + (["--uid", str(uid)] if uid is not None else [])


class Launch:
  def __init__(self, cfg: Config, run_id: str | None = None, say=print):
    self.cfg, self.say = cfg, say
    self.behaviours = check_processes(cfg)
    self.out = Path(cfg.train.out_dir)
    if (self.out / "launch.jsonl").exists():
      raise NetError(f"{self.out}: holds a launched network already; use another "
                     "train.out_dir")
    self.run_id = run_id or new_run_id()
    self.children = {}   # (role, uid) -> (Popen, log path)
    self.events = self.store = None

  def record(self, event: str, role: str, uid, proc, **more) -> None:
    rec = dict(time=round(time.time(), 3), event=event, role=role, uid=uid, pid=proc.pid,
               **more)
    self.events.write(json.dumps(rec) + "\n")
    self.events.flush()

  def spawn(self, role: str, uid: int | None, config: Path, env: dict) -> None:
    log = self.out / "logs" / (role + ("" if uid is None else f"-{uid}") + ".log")
    with open(log, "ab") as f:
      proc = subprocess.Popen(child_command(role, config, self.run_id, self.cfg.sim.storage, uid),
                              stdout=f, stderr=subprocess.STDOUT, env=env,
                              start_new_session=True)
    self.children[(role, uid)] = (proc, log)
    self.record("started", role, uid, proc, log=str(log))

  def await_ready(self, keys: list, until: float, seen: set) -> None:
    """Until every live child of `keys` ((role, uid)) has put its ready object, or `until`
    (monotonic); a validator that dies meanwhile ends the launch."""
    def ready(name):
      try:
        return self.store.get(name, max_bytes=0) is not None
      except (StorageUnavailable, ObjectTooLarge):
        return False
    while time.monotonic() < until:
      self.poll(seen)
      if ("validator", None) in seen:
        raise NetError("the validator exited before window 0; see "
                       f"{self.out / 'logs' / 'validator.log'}")
      if all(ready(ready_name(*k)) for k in keys if k not in seen):
        return
      time.sleep(0.5)
    self.say("not every process is ready after net.warmup_s; window 0 starts anyway")

  def start(self, seen: set) -> None:
    cfg, out = self.cfg, self.out
    self.store = store = open_store(cfg.sim.storage, self.run_id, cfg)
    write_run_launch(store, cfg, time.time())
    (out / "logs").mkdir(parents=True, exist_ok=True)
    config = out / "config.yaml"
    config.write_text(to_yaml(cfg))
    self.events = (out / "launch.jsonl").open("a")
    env = dict(os.environ)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str((out / "jax-cache").absolute()))
    until = time.monotonic() + cfg.net.warmup_s
    self.spawn("validator", None, config, env)
    self.spawn("peer", 0, config, env)
    self.await_ready([("peer", 0)], time.monotonic() + cfg.net.warmup_s / 2, seen)
    for uid in range(1, len(self.behaviours)):
      self.spawn("peer", uid, config, env)
    (out / "processes.json").write_text(json.dumps(
        [{"role": r, "uid": u, "pid": p.pid, "log": str(lg)}
         for (r, u), (p, lg) in self.children.items()], indent=1))
    self.await_ready(list(self.children), until, seen)
    offset, _ = store_offset(store)
    start = write_run_start(store, cfg, time.time() + offset, START_LEAD_S)
    (out / "run-start.json").write_text(start.to_bytes().decode())
    self.say(f"run {self.run_id}: window 0 starts in {start.t0 - time.time() - offset:.0f} s "
             f"({cfg.sim.rounds} windows of {cfg.net.window_s:g} s); logs in {out / 'logs'}")

  def poll(self, seen: set) -> None:
    """Records every child that exited since the last look."""
    for (role, uid), (proc, log) in self.children.items():
      if proc.poll() is not None and (role, uid) not in seen:
        seen.add((role, uid))
        self.record("exited", role, uid, proc, code=proc.returncode)
        if proc.returncode != 0:
          who = role if uid is None else f"peer {uid}"
          self.say(f"{who} (pid {proc.pid}) exited with code {proc.returncode}; "
                   f"{'the run ends' if uid is None else 'the network goes on'} (see {log})")

  def wait(self, seen: set) -> int:
    """Until the validator is done; then the peers get a window to finish. -> its code."""
    validator, _ = self.children[("validator", None)]
    while validator.poll() is None:
      self.poll(seen)
      time.sleep(0.5)
    self.poll(seen)
    deadline = time.monotonic() + (self.cfg.net.window_s + STOP_GRACE_S
                                   if validator.returncode == 0 else 0.0)
    while time.monotonic() < deadline and any(p.poll() is None for p, _ in self.children.values()):
      time.sleep(0.5)
    self.poll(seen)
    return validator.returncode

  def stop(self) -> None:
    """Stops the children still running: SIGTERM, then SIGKILL after STOP_GRACE_S."""
    alive = [(k, p) for k, (p, _) in self.children.items() if p.poll() is None]
    for _, p in alive:
      p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for (role, uid), p in alive:
      try:
        p.wait(max(0.0, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
      self.record("stopped", role, uid, p, code=p.returncode)
    if self.events is not None:
      self.events.close()


def launch(cfg: Config, run_id: str | None = None, say=print) -> dict:
  """Runs the network of processes to the end -> {run_id, validator code, out_dir}."""
  from jaxnet import tracking
  tracking.check(cfg)   # log.tensorboard without its package: one line here, not in a log
  run, seen = Launch(cfg, run_id, say), set()
  try:
    run.start(seen)
    code = run.wait(seen)
  finally:
    run.stop()
  if code != 0:
    raise NetError(f"the validator exited with code {code}; see {run.out / 'logs' / 'validator.log'}")
  return {"run_id": run.run_id, "out_dir": str(run.out)}
