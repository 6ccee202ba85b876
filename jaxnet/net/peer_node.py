"""`jaxnet peer`: one honest peer as its own process (gauntlet.md §15.1, peer k round w).

Round w: the peer computes its own submission on θ_w (the scheme's local step on its pages
of (uid, w), `Network._peers_one_device` on a batch of one peer), uploads `gradient-{w}-
{uid}` and `debug-{w}-{uid}` (θ_w's sync probe) inside the put window [T_{w+1}, T_{w+1} +
net.put_window_s], then waits for the lead validator's `gather-{w}`, aggregates the uploads
it names and takes the outer step (`jaxnet.net.gather.apply_round`): θ_{w+1}, checked
against the validator's digest.

Its state (θ, outer state, its own scheme state) is checkpointed under
`<train.out_dir>/peer-{uid}/checkpoints` after every round. A restarted peer resumes from
it and catches up: every round whose put window has passed is applied from its gather list
and the gathered uploads (still in the store) without computing; it uploads again from the
first round it can still make. A missing gather list or an unavailable store is logged and
retried, never the end of the process.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import jax
import numpy as np

from jaxnet import hf
from jaxnet import peer
from jaxnet.checkpoint import Checkpointer
from jaxnet.config import Config
from jaxnet.gauntlet import collect
from jaxnet.net.clock import NetError, config_digest
from jaxnet.net.gather import apply_round, read_gather
from jaxnet.net.node import (POLL_S, Joined, JsonlLog, keep_trying, lock, outer_step,
                             setup_logging, theta_digest)
from jaxnet.sim import network
from jaxnet.sim.storage import debug_name, gradient_name
from jaxnet.submission import to_bytes, with_meta


class PeerNode:
  def __init__(self, cfg: Config, uid: int, run_id: str):
    self.log = logging.getLogger("jaxnet.net.peer")
    behaviours = cfg.sim.behaviours()
    if not 0 <= uid < len(behaviours):
      raise NetError(f"--uid {uid}: sim.peers has uids 0..{len(behaviours) - 1}")
    if behaviours[uid] != "honest":
      raise NetError(f"--uid {uid} is {behaviours[uid]!r} in sim.peers; a peer process runs "
                     "honest peers only (the other behaviours live in `jaxnet simulate`)")
    self.cfg, self.uid = cfg, uid
    self.joined = Joined(cfg, run_id)
    self.dir = Path(cfg.train.out_dir) / f"peer-{uid}"
    self._lock = lock(self.dir / ".lock", f"peer {uid}")
    self.net = net = network.Network(cfg, run_id=run_id)
    params = hf.initial_params(cfg.model, jax.random.key(cfg.train.seed))
    self.state = {"params": params, "outer": net.scheme.outer().init(params),
                  "peer": peer.init_states(params, 1, cfg)}
    self.ckpt = Checkpointer(self.dir / "checkpoints", every=1, keep=2,
                             compat={"run_id": run_id, "uid": uid,
                                     "config": config_digest(cfg)})
    self.applied = self.ckpt.latest_step() or 0    # rounds θ has taken
    if self.applied:
      self.state, _ = self.ckpt.restore(self.applied, self.state)
      self.log.info("resumed from the checkpoint after round %d", self.applied - 1)
    self.metrics = JsonlLog(self.dir / "metrics.jsonl", keep_upto=self.applied)
    self.uploads = {}   # round -> what its upload did

  def compute(self, w: int):
    """(gradient bytes, debug bytes, loss) of round w on θ_w; advances the scheme state."""
    net, st = self.net, self.state
    batch = net.corpus.peer_batches(np.array([self.uid]), w)
    subs, states, losses = net._peers_one_device(st["params"], st["peer"], batch,
                                                 net.scheme.step_size(w))
    sub = with_meta(jax.tree.map(lambda x: x[0], subs), self.uid, w,
                    net.corpus.pages(self.uid, w))
    st["peer"] = states
    probe = np.asarray(net._probe(st["params"]), np.float32).tobytes()
    return to_bytes(jax.tree.map(np.asarray, sub), net.layout), probe, float(losses[0])

  def warm_up(self) -> None:
    """Compiles the local step, the probe and the outer step before window 0."""
    t, saved = time.perf_counter(), dict(self.state)
    self.compute(0)
    subs, _, ok, _ = collect.parse_uploads([None] * self.net.n, self.net.layout, 0)
    jax.block_until_ready(outer_step(self.net, saved["params"], saved["outer"], subs, ok))
    self.state = saved
    self.log.info("compiled in %.1f s", time.perf_counter() - t)

  def upload(self, w: int) -> None:
    clock, store = self.joined.clock, self.joined.store
    grad, probe, loss = self.compute(w)
    clock.sleep_until(clock.upload_at(w))

    def put():
      store.put(gradient_name(w, self.uid), grad, clock.now())
      store.put(debug_name(w, self.uid), probe, clock.now())
      return clock.now() - clock.boundary(w + 1)

    offset = keep_trying(put, f"the upload of round {w}", self.log, until=clock.upload_by(w),
                         clock=clock) if clock.now() <= clock.upload_by(w) else None
    if offset is None:
      self.log.warning("round %d: missed the put window, not uploaded", w)
    self.uploads[w] = {"uploaded": offset is not None, "loss": loss,
                       "upload_s": None if offset is None else round(offset, 3)}

  def apply(self, w: int) -> None:
    """Waits for round w's gather list, then θ_w -> θ_{w+1} from the gathered uploads."""
    store, log, n = self.joined.store, self.log, self.net.n
    waited = time.monotonic()
    while (listing := keep_trying(lambda: read_gather(store, w, n, log), f"gather-{w}",
                                  log)) is None:
      if time.monotonic() - waited > 10.0:
        log.info("round %d: still waiting for the validator's gather list", w)
        waited = time.monotonic()
      time.sleep(POLL_S)
    st = self.state
    st["params"], st["outer"], used, problems = apply_round(
        self.net, store, st["params"], st["outer"], listing, log)
    self.applied = w + 1
    theta = theta_digest(st["params"])
    if theta != listing.theta:
      log.warning("round %d: θ differs from the validator's after the outer step", w)
    self.ckpt.save(self.applied, st)
    done = self.uploads.pop(w, None)   # None: applied without computing (caught up)
    self.metrics.write(dict(done or {"uploaded": False, "loss": None, "upload_s": None},
                            round=w, step=w + 1, caught_up=done is None, gathered=used,
                            problems={str(u): p for u, p in problems.items()},
                            theta=theta, in_sync=theta == listing.theta))
    log.info("round %d applied: gathered %s, θ %s (%s)", w, used, theta[:12],
             "in sync" if theta == listing.theta else "DIFFERS from the validator's")

  def run(self) -> None:
    rounds = self.cfg.sim.rounds
    self.warm_up()
    clock = self.joined.ready("peer", self.uid, self.log)
    self.log.info("window 0 starts in %.1f s (store clock offset %+.2f +- %.2f s)",
                  clock.boundary(0) - clock.now(), clock.offset, clock.error)
    try:
      while self.applied < rounds:
        w = self.applied
        if clock.now() < clock.upload_by(w):
          self.upload(w)
        else:
          self.log.info("round %d: its put window has passed; catching up", w)
        self.apply(w)
    finally:
      self.ckpt.close()
      self.metrics.close()


def main(cfg: Config, uid: int, run_id: str) -> None:
  """`jaxnet peer`: log lines `time peer[U] message` on stderr, then the peer's run."""
  setup_logging(f"peer[{uid}]")
  PeerNode(cfg, uid, run_id).run()
