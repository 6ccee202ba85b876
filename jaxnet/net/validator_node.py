"""`jaxnet validator`: the Gauntlet validator as its own process (gauntlet.md §15.1).

After each round's put window closes (plus `net.read_delay_s`), it reads every uid's
gradient and debug objects from the shared store in two `get_many` calls (sizes checked
before download, parallel, retried), runs the simulator's validator round on them
(`Network.validator_inputs`, `validator_randomness`, `validators.round`; the put-window
check uses the store's LastModified against `net.put_window_s`), publishes `gather-{w}`
(weights, gather uids, digests), applies the same aggregate and outer step to its θ and
appends the round to `<train.out_dir>/metrics.jsonl` with the simulator's keys (and, with
`log.tensorboard`, to TensorBoard as the simulator's scalars, flushed every round).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet import tracking
from jaxnet.config import Config
from jaxnet.gauntlet import fast
from jaxnet.net.gather import GatherList, gather_name, sha256
from jaxnet.net.node import (JsonlLog, Joined, fetch_all, keep_trying, lock, outer_step,
                             setup_logging, theta_digest)
from jaxnet.sim import network
from jaxnet.sim.storage import (MemoryStorage, ObjectTooLarge, StorageUnavailable,
                                debug_name, get_or_error, gradient_name)
from jaxnet.submission import max_upload_bytes

_ROUND_OF = re.compile(r"(?:gradient|debug)-(\d+)-\d+")


class WindowView:
  """The shared store as `Network.validator_inputs` reads it: one window's objects fetched
  at once, their times moved onto the simulator's clock (T_{w+1} = (w+1) * WINDOW_S) so
  that an offset from the window boundary is the store's own. An object the store could
  not serve after the retries reads as absent (logged)."""

  def __init__(self, joined: Joined, log):
    self.joined, self.store, self.log = joined, joined.store, log
    self.run_id = self.store.run_id
    self._cache = {}

  def prefetch(self, w: int, n: int, limits: dict[str, int], retries: int) -> None:
    self._cache = {}
    for kind, name_of in (("gradient", gradient_name), ("debug", debug_name)):
      names = [name_of(w, u) for u in range(n)]
      self._cache.update(zip(names, fetch_all(self.store, names, limits[kind], retries,
                                              self.log)))

  def _time(self, name: str, t):
    m = _ROUND_OF.fullmatch(name)
    if t is None or m is None:
      return t
    w = int(m[1])
    return (w + 1) * network.WINDOW_S + (t - self.joined.clock.boundary(w + 1))

  def get(self, name: str, max_bytes: int | None = None):
    got = self._cache[name] if name in self._cache else get_or_error(self.store, name, max_bytes)
    if isinstance(got, ObjectTooLarge):
      raise ObjectTooLarge(got.name, got.size, got.max_bytes, self._time(name, got.timestamp))
    if isinstance(got, StorageUnavailable):
      self.log.warning("%s unreadable, counted as absent: %s", name, got.reason)
      return None
    return None if got is None else (got[0], self._time(name, got[1]))

  def data(self, name: str) -> bytes | None:
    got = self._cache.get(name)
    return got[0] if isinstance(got, tuple) else None


class ValidatorNode:
  def __init__(self, cfg: Config, run_id: str):
    self.log = logging.getLogger("jaxnet.net.validator")
    self.joined = Joined(cfg, run_id)
    out = Path(cfg.train.out_dir)
    self._lock = lock(out / "validator.lock", "validator")
    # the put window on the store's clock is net.put_window_s (the simulator's is
    # gauntlet.put_window_s on its abstract clock)
    gauntlet = dataclasses.replace(cfg.gauntlet, put_window_s=cfg.net.put_window_s)
    self.cfg = cfg
    self.net = net = network.Network(cfg.replace(gauntlet=gauntlet), run_id=run_id)
    self.view = WindowView(self.joined, self.log)
    self.limits = {"gradient": max_upload_bytes(net.layout),
                   "debug": 4 * fast.probe_size(net.layout)}
    (out / "behaviours.json").write_text(json.dumps(net.behaviours))
    self.metrics = JsonlLog(out / "metrics.jsonl")
    self.tracker = tracking.open_tracker(cfg)   # None unless log.tensorboard is set

  def warm_up(self, st) -> None:
    """Compiles the round on an empty store (all absent) before window 0."""
    net, t = self.net, time.perf_counter()
    net.storage = MemoryStorage()
    inputs, _, reports, _, _ = net.score_round(st, 0, net.scheme.step_size(0))
    params, _ = outer_step(net, st.params, st.outer, inputs.subs, np.zeros(net.n, bool))
    jax.block_until_ready((reports, params, net._val_loss(params, net.val_batch)))
    net.storage = self.view
    self.log.info("compiled in %.1f s", time.perf_counter() - t)

  def run(self) -> None:
    net, rounds = self.net, self.cfg.sim.rounds
    st = net.place(net.init_state())
    self.warm_up(st)
    clock = self.joined.ready("validator", None, self.log)
    self.log.info("window 0 starts in %.1f s", clock.boundary(0) - clock.now())
    for w in range(rounds):
      clock.sleep_until(clock.read_at(w, self.cfg.net.read_delay_s))
      st, rec = self.round(st, w)
      self.metrics.write(rec)
      if self.tracker is not None:
        self.tracker(rec)
        self.tracker.flush()
      self.log.info("round %d: scored %d, gathered %s, weights %s (read %.1f s after the "
                    "put window)", w, rec["evaluated"], rec["gather"],
                    [round(x, 4) for x in rec["report"]["weight"]], rec["late_s"])
    self.metrics.close()
    if self.tracker is not None:
      self.tracker.close()

  def round(self, st: network.NetState, w: int):
    """One round of the simulator's validator half on the store's objects."""
    net, cfg, clock = self.net, self.cfg, self.joined.clock
    late = clock.now() - clock.read_at(w, cfg.net.read_delay_s)
    lr_t = net.scheme.step_size(w)
    self.view.prefetch(w, net.n, self.limits, cfg.net.retries)
    inputs, vstate, reports, lead, report = net.score_round(st, w, lr_t)
    valid = report["gather_valid"]
    params, outer = outer_step(net, st.params, st.outer, inputs.subs, valid)
    ledger, ledger_log = net.ledger.maybe_epoch(st.ledger, w, reports["weight"], inputs.present)
    gathered = [int(u) for u in np.flatnonzero(valid)]
    theta = theta_digest(params)
    listing = GatherList(w, lead, tuple(float(x) for x in report["weight"]), tuple(gathered),
                         {u: sha256(self.view.data(gradient_name(w, u))) for u in gathered},
                         theta)
    keep_trying(lambda: self.joined.store.put(gather_name(w), listing.to_bytes(), clock.now()),
                gather_name(w), self.log)
    st = st._replace(params=params, outer=outer, validator=vstate, ledger=ledger,
                     window=jnp.int32(w + 1))
    return st, self.record(w, st, report, reports, lr_t, ledger_log, lead, theta, late)

  def record(self, w, st, report, reports, lr_t, ledger_log, lead, theta, late) -> dict:
    """The simulator's metrics keys that a validator knows (no peer losses), plus the gather
    list, θ's digest and how late the round was read."""
    weights = report["weight"]
    top = np.argsort(-weights, kind="stable")[:5]
    classes = np.asarray(self.net.behaviours)
    return {"round": w, "lr": float(lr_t),
            "val_loss": float(self.net._val_loss(st.params, self.net.val_batch)),
            "evaluated": int(report["scored"].sum()),
            "gathered": int(report["gather_valid"].sum()),
            "gather": [int(u) for u in np.flatnonzero(report["gather_valid"])],
            "top_uids": top.tolist(), "top_weights": weights[top].round(4).tolist(),
            "weight_by_class": {b: float(weights[classes == b].sum()) for b in sorted(set(classes))},
            "slashes": {k: int(v.sum()) for k, v in report.items() if k.startswith("slash_")},
            "ledger": ledger_log, "lead_validator": lead,
            "validator_weights": reports["weight"].round(6).tolist(), "theta": theta,
            "late_s": round(float(late), 3), "step": w + 1,
            "report": {k: v.tolist() for k, v in report.items()}}


def main(cfg: Config, run_id: str) -> None:
  """`jaxnet validator`: log lines `time validator message` on stderr, then its run."""
  setup_logging("validator")
  ValidatorNode(cfg, run_id).run()
