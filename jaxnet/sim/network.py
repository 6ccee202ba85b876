"""The network loop: peers, uploads, the validator, the outer step and the ledger.

One round w (gauntlet.md §15.1, schemes.md §1): every uid computes what its behaviour says
(the scheme's honest round on `pages(uid, w)`, or wrong pages, or a stale model), uploads
through `Storage` with a timestamp relative to the window boundary T_{w+1}; the validator
reads the storage (only bytes and times), scores the round and posts weights and the
gather list; every honest node aggregates the valid gather peers and applies the scheme's
outer optax transformation. Every `sim.ledger_every` rounds a ledger epoch turns the
validators' weights into emission. The scheme is `cfg.scheme`; nothing here names one.

The whole state is one pytree (`NetState`), checkpointed with Orbax; a run that is killed
and resumed gives bit-identical results.
"""
from __future__ import annotations

import contextlib
import json
import time
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnet import peer, schemes, sharding as shd
from jaxnet import hf
from jaxnet import model as jmodel
from jaxnet import loop
from jaxnet.loop import Task
from jaxnet.config import Config, model_compat, to_dict
from jaxnet.configbase import ConfigError
from jaxnet.gauntlet import collect, fast
from jaxnet.gauntlet.validator import ValidatorState
from jaxnet.sim import adversaries
from jaxnet.sim.validators import ValidatorSet
from jaxnet.sim.storage import ObjectTooLarge, debug_name, gradient_name, make_storage
from jaxnet.submission import Submission, SubmissionError, max_upload_bytes
from jaxnet.train import check_vocab

WINDOW_S = 96.0          # 8 blocks x 12 s (gauntlet.md §1.1)
WRONG_DATA_SHIFT = 100_003  # wrong-data peers train on pages of a far-away window


# Module-level jitted functions: every Network of one process shares their compile cache
# (the static arguments are hashable configs, layouts and meshes).
def _outer_step(params, outer_state, direction, *, scheme):
  """The scheme's outer optax update on an aggregated direction."""
  updates, outer_state = scheme.outer().update(direction, outer_state, params)
  return optax.apply_updates(params, updates), outer_state


_peers_round = jax.jit(peer.peers_round, static_argnames=("layout", "cfg", "mesh"))
_aggregate = jax.jit(lambda subs, valid, *, scheme, layout: scheme.aggregate(subs, valid, layout),
                     static_argnames=("scheme", "layout"))
_outer = jax.jit(_outer_step, static_argnames=("scheme",))
_sync_probe = jax.jit(fast.sync_probe, static_argnames=("layout",))
_loss = jax.jit(jmodel.loss_fn, static_argnames=("cfg",))


def _global_peer_mesh(n: int) -> jax.sharding.Mesh:
  """Mesh axis 'peer' over every process's devices (jax.distributed)."""
  devs = jax.devices()
  if n % len(devs):
    raise ConfigError(f"sim.peers: {n} uids do not split over the {len(devs)} devices of "
                      f"{jax.process_count()} processes: use a multiple of {len(devs)}")
  return shd.make_mesh("peer", len(devs), devs)


class Phases:
  """Wall time per phase of a round (benchmarks/round_scaling.py). Disabled, it costs
  nothing and never blocks; enabled, `sync` waits for a phase's device work so that each
  phase is charged its own."""

  def __init__(self, enabled: bool = True):
    self.enabled, self.seconds = enabled, {}

  @contextlib.contextmanager
  def __call__(self, name: str):
    if not self.enabled:
      yield
      return
    t0 = time.perf_counter()
    yield
    self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

  def sync(self, tree) -> None:
    if self.enabled:
      jax.block_until_ready(tree)


class NetState(NamedTuple):
  params: Any              # θ of every honest node
  outer: Any               # the scheme's outer optax state (its count is the round)
  peers: Any               # [N] per-uid scheme state (DeMo momentum, inner AdamW, EF buffer)
  stale_params: Any        # θ of the desynced nodes (they skip outer steps)
  validator: ValidatorState  # [V] stacked: every validator's state (jaxnet.sim.validators)
  prev_subs: Submission    # [N] last round's own computations (for replay)
  ledger: Any              # the chain: ledger, commit-reveal, activity (jaxnet.sim.chain)
  window: jax.Array        # () int32: next round to run


class Network:
  """Builds the jitted pieces once; `run_round(state)` advances one round."""

  def __init__(self, cfg: Config, devices=None, run_id: str | None = None):
    from jaxnet import data as jdata
    self.cfg = cfg
    self.run_id = run_id
    self.behaviours = cfg.sim.behaviours()
    self.n = len(self.behaviours)
    self.corpus = jdata.load_corpus(cfg.data)
    check_vocab(cfg, self.corpus)
    # Every process simulates the whole network on its own devices (the host loop reads every
    # upload), identically; under jax.distributed only process 0 writes (RunDir).
    devs = list(devices or jax.local_devices())
    size = max(d for d in range(1, len(devs) + 1) if self.n % d == 0)
    self.mesh = shd.make_mesh("peer", size if cfg.mesh.peer == -1 else min(cfg.mesh.peer, size), devs)
    # Under jax.distributed the peers' step (most of a round) splits the peer axis over every
    # process's devices; the rest of the round runs in every process on its own devices.
    self.peer_mesh = self.mesh if devices is not None or jax.process_count() == 1 else \
        _global_peer_mesh(self.n)
    self.scheme = schemes.get(cfg)
    self.scheme.check_config()
    self.layout = self.scheme.make_layout(jmodel.abstract_params(cfg.model),
                                          n_pages=cfg.data.pages_per_window)
    self.validator = collect.Validator(cfg, self.layout, self.n, self.mesh)   # parses uploads
    self.validators = ValidatorSet(cfg, self.layout, self.n, self.mesh)
    # objects live under this run's id: another run's uploads in a reused directory are unseen
    self.storage = make_storage(cfg.sim.storage, run_id=run_id)
    self.desync = np.array([b == "desync" for b in self.behaviours])
    self._peers = partial(_peers_round, layout=self.layout, cfg=cfg, mesh=self.peer_mesh)
    self._peers_one_device = partial(_peers_round, layout=self.layout, cfg=cfg, mesh=None)
    self._agg = partial(_aggregate, scheme=self.scheme, layout=self.layout)
    self._outer = partial(_outer, scheme=self.scheme)
    self._probe = partial(_sync_probe, layout=self.layout)
    self._val_loss = partial(_loss, cfg=cfg.model)
    self.val_batch = self.corpus.held_out()
    from jaxnet.sim import ledger_bridge
    self.ledger = ledger_bridge.LedgerBridge(cfg, self.n, self.validators.kinds)
    self.phases = Phases(enabled=False)   # benchmarks/round_scaling.py turns it on

  # ------------------------------------------------------------------ state
  def init_state(self) -> NetState:
    params = hf.initial_params(self.cfg.model, jax.random.key(self.cfg.train.seed))
    zero = collect.zeros_submission(self.layout)
    prev = jax.tree.map(lambda x: np.broadcast_to(x, (self.n,) + x.shape).copy(), zero)
    return NetState(params, self.scheme.outer().init(params),
                    peer.init_states(params, self.n, self.cfg), params,
                    self.validators.init_state(), prev, self.ledger.init(),
                    jnp.int32(0))

  def place(self, st: NetState) -> NetState:
    """Commits the state to the mesh (peer-axis leaves split, the rest replicated), so that
    fresh, restored and computed states share one compilation of every jitted piece."""
    rep, along = shd.replicated(self.mesh), shd.along(self.mesh, "peer")
    return st._replace(**{k: shd.put_tree(v, along if k in ("peers", "prev_subs") else rep)
                          for k, v in st._asdict().items()})

  # ------------------------------------------------------------------ one round
  def _batches(self, window: int) -> dict:
    uids = np.arange(self.n)
    honest = self.corpus.peer_batches(uids, window)
    wrong = [u for u, b in enumerate(self.behaviours) if b == "wrong_data"]
    if wrong:
      other = self.corpus.peer_batches(np.asarray(wrong), window + WRONG_DATA_SHIFT)
      for k in honest:
        honest[k][wrong] = other[k]
    return honest

  def _compute(self, st: NetState, window: int, lr_t):
    batches = self._batches(window)
    if self.peer_mesh is self.mesh:
      subs, states, losses = self._peers(st.params, st.peers, batches, lr_t)
    else:
      subs, states, losses = self._peers_split(st, batches, lr_t)
    if self.desync.any():  # desynced uids compute on their stale model (only those uids)
      d = np.flatnonzero(self.desync)
      take = lambda x: x[d]
      d_out = self._peers_one_device(st.stale_params, jax.tree.map(take, st.peers),
                                     jax.tree.map(take, batches), lr_t)
      subs, states, losses = jax.tree.map(lambda a, b: a.at[d].set(b), (subs, states, losses), d_out)
    pages = np.stack([self.corpus.pages(u, window) for u in range(self.n)]).astype(np.int32)
    subs = subs._replace(uid=jnp.arange(self.n, dtype=jnp.int32),
                         window=jnp.full((self.n,), window, jnp.int32), pages=jnp.asarray(pages))
    return jax.tree.map(np.asarray, subs), states, np.asarray(losses)

  def _peers_split(self, st: NetState, batches: dict, lr_t):
    """The peers' step with the peer axis split over every process's devices; results are
    gathered back, so that every process holds the whole network as with one process."""
    rep, along = shd.replicated(self.peer_mesh), shd.along(self.peer_mesh, "peer")
    out = self._peers(shd.to_global(st.params, rep), shd.to_global(st.peers, along),
                      shd.to_global(batches, along), shd.to_global(np.float32(lr_t), rep))
    subs, states, losses = jax.tree.map(shd.host_value, out)
    return (jax.tree.map(jnp.asarray, subs), shd.put_tree(states, shd.along(self.mesh, "peer")),
            jnp.asarray(losses))

  def upload(self, st: NetState, w: int, lr_t):
    """Every uid computes and uploads round w (gradient + debug objects) into the storage."""
    with self.phases("peers: gradient + encode"):
      subs, states, peer_losses = self._compute(st, w, lr_t)
    with self.phases("serialise + upload"):
      self._put_all(st, w, subs)
    return subs, states, peer_losses

  def _put_all(self, st: NetState, w: int, subs) -> None:
    n = self.n
    own = [jax.tree.map(lambda x: x[u], subs) for u in range(n)]
    # one device-to-host copy of last round's submissions, then host slices (not N x leaves
    # device slices)
    prev = [None] * n
    if w > 0:
      prev_host = jax.tree.map(np.asarray, st.prev_subs)
      prev = [jax.tree.map(lambda x: x[u], prev_host) for u in range(n)]
    uploads, offsets, probe_ok = adversaries.make_uploads(self.behaviours, own, w, prev,
                                                          self.layout, self.cfg.sim,
                                                          self.scheme)
    boundary = (w + 1) * WINDOW_S   # T_{w+1}
    honest_probe = np.asarray(self._probe(st.params))
    stale_probe = np.asarray(self._probe(st.stale_params))
    for u in range(n):
      if uploads[u] is not None:
        self.storage.put(gradient_name(w, u), uploads[u], boundary + offsets[u])
      if probe_ok[u]:
        pr = stale_probe if self.desync[u] else honest_probe
        self.storage.put(debug_name(w, u), pr.astype(np.float32).tobytes(), boundary + offsets[u])

  def validator_inputs(self, w: int, salt: int = 0):
    """What a validator reads for round w: only the storage, plus its own data (its random
    pages drawn with `salt`)."""
    n, boundary = self.n, (w + 1) * WINDOW_S
    limit = max_upload_bytes(self.layout)   # bounded before anything is read
    got = [self._fetch(gradient_name(w, u), limit) for u in range(n)]
    data = [g[0] if g else None for g in got]
    times = np.array([g[1] - boundary if g else np.inf for g in got], np.float32)
    k = fast.probe_size(self.layout)
    dbg = [self._fetch(debug_name(w, u), 4 * k) for u in range(n)]
    dbg = [None if d is None or isinstance(d[0], SubmissionError) else d for d in dbg]
    probes = np.stack([_parse_probe(d[0], k) if d else np.zeros(k, np.float32) for d in dbg])
    probe_present = np.array([d is not None and len(d[0]) == 4 * k for d in dbg])
    own_b, rand_b = collect.round_batches(self.corpus, n, w, self.cfg.gauntlet.sample_rate,
                                          self.cfg.sim.seed, salt)
    return self.validator.inputs(data, times, probes, probe_present, self.ledger.miner_stake(),
                                 own_b, rand_b, w)

  def _fetch(self, name: str, max_bytes: int):
    """(bytes, time), None when absent, or (SubmissionError('oversize'), time) when larger
    than `max_bytes`: the peer's penalty, still timed, never read."""
    try:
      return self.storage.get(name, max_bytes=max_bytes)
    except ObjectTooLarge as e:
      return SubmissionError("oversize", str(e)), e.timestamp

  def round_key(self, w: int, salt: int = 0):
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(self.cfg.sim.seed), w), salt)

  def validator_randomness(self, w: int, inputs):
    """Every validator's random batch [V, B, L] and key [V]: salt v (independent) or 0."""
    g = self.cfg.gauntlet
    by_salt = {0: inputs.rand}
    for s in set(self.validators.salts.tolist()) - {0}:
      by_salt[s] = collect.random_batch(self.corpus, w, g.sample_rate, self.cfg.sim.seed, s)
    rand_V = {k: np.stack([np.asarray(by_salt[s][k]) for s in self.validators.salts])
              for k in inputs.rand}
    keys_V = jnp.stack([self.round_key(w, int(s)) for s in self.validators.salts])
    return rand_V, keys_V

  def score_round(self, st: NetState, w: int, lr_t):
    """The validators' half of a round on what the storage holds for window w -> (inputs,
    new validator states [V], reports [V], lead validator, its report with reasons). The
    network of processes (jaxnet.net.validator_node) calls it on the shared store."""
    with self.phases("download + parse"):
      inputs, reasons = self.validator_inputs(w)
    with self.phases("validator"):
      rand_V, keys_V = self.validator_randomness(w, inputs)
      vstate, reports = self.validators.round(st.validator, inputs, rand_V, st.params, w, lr_t,
                                              keys_V)
      reports = {k: np.asarray(v) for k, v in reports.items()}
      # the gather list (and the report shown) of the highest-stake running validator
      lead = self.validators.lead(self.ledger.validator_stake(st.ledger))
      report = {k: v[lead] for k, v in reports.items()}
      report["reason"] = collect.explain(report, reasons)
    return inputs, vstate, reports, lead, report

  def outer_step(self, params, outer, subs_N, valid_N):
    """Every honest node's step (gauntlet.md §5): the mean direction of the valid gathered
    submissions, then the scheme's outer step -> (params, outer state, direction). The
    peer and validator processes (jaxnet.net) take the same step."""
    direction = self._agg(subs_N, jnp.asarray(valid_N, bool))
    return (*self._outer(params, outer, direction), direction)

  def run_round(self, st: NetState) -> tuple[NetState, dict]:
    cfg = self.cfg
    w = int(st.window)
    lr_t = self.scheme.step_size(w)
    ph = self.phases
    subs, states, peer_losses = self.upload(st, w, lr_t)
    inputs, vstate, reports, lead, report = self.score_round(st, w, lr_t)
    with ph("aggregate + outer step"):
      params, outer_state, direction = self.outer_step(st.params, st.outer, inputs.subs,
                                                       report["gather_valid"])
      # a desynced node applies only every desync_every-th step (with the honest outer state)
      stale = (self._outer(st.stale_params, st.outer, direction)[0]
               if w % cfg.sim.desync_every == 0 else st.stale_params)
      ph.sync((params, outer_state, stale))
    with ph("ledger"):
      ledger_state, ledger_log = self.ledger.maybe_epoch(st.ledger, w, reports["weight"],
                                                         inputs.present)
      ph.sync(ledger_state)
    new = NetState(params, outer_state, states, stale, vstate, jax.tree.map(jnp.asarray, subs),
                   ledger_state, jnp.int32(w + 1))
    with ph("metrics"):
      metrics = self._metrics(w, new, report, peer_losses, float(lr_t), ledger_log)
    metrics.update(lead_validator=lead, validator_weights=reports["weight"].round(6).tolist())
    return new, metrics

  def _metrics(self, w, st, report, peer_losses, lr_t, ledger_log) -> dict:
    weights = report["weight"]
    top = np.argsort(-weights, kind="stable")[:5]
    by_class = {}
    for b in sorted(set(self.behaviours)):
      sel = np.array([x == b for x in self.behaviours])
      by_class[b] = float(weights[sel].sum())
    slashed = {k: int(report[k].sum()) for k in report if k.startswith("slash_")}
    return {"round": w, "lr": lr_t, "val_loss": float(self._val_loss(st.params, self.val_batch)),
            "honest_peer_loss": float(np.mean([l for l, b in zip(peer_losses, self.behaviours) if b == "honest"] or [np.nan])),
            "evaluated": int(report["scored"].sum()), "gathered": int(report["gather_valid"].sum()),
            "top_uids": top.tolist(), "top_weights": weights[top].round(4).tolist(),
            "weight_by_class": by_class, "slashes": slashed, "ledger": ledger_log,
            "report": {k: v.tolist() for k, v in report.items()}}


def tqdm_write(line: str) -> None:
  """Prints above a running progress bar."""
  from tqdm.auto import tqdm
  tqdm.write(line)


def _parse_probe(data: bytes, k: int) -> np.ndarray:
  if len(data) != 4 * k:
    return np.zeros(k, np.float32)
  return np.frombuffer(data, np.float32).copy()


# ---------------------------------------------------------------------- the run

def simulate(cfg: Config, *, progress: bool = True, devices=None, stop_after: int | None = None,
             on_round=None) -> dict:
  """Runs (or resumes) `cfg.sim.rounds` rounds; writes metrics JSONL under train.out_dir.

  `on_round(record)` is called on process 0 after every round (the CLI's summary line).
  """
  from jaxnet.sharding import maybe_initialize_distributed
  maybe_initialize_distributed()
  built = {}

  def build(run_id: str) -> Task:
    net = built["net"] = Network(cfg, devices, run_id=run_id)
    if jax.process_count() > 1:
      print(f"process {jax.process_index()}: the peers' step runs on {net.peer_mesh.size} "
            f"devices of {jax.process_count()} processes", flush=True)
    if shd.is_main_process():   # the labels beside the run, for `jaxnet report`
      (Path(cfg.train.out_dir) / "behaviours.json").write_text(json.dumps(net.behaviours))
      (Path(cfg.train.out_dir) / "validators.json").write_text(json.dumps(
          [f"{k}:{a}" if k in ("sampled", "copier", "lazy") else k for k, a in net.validators.kinds]))
    return Task(state=net.init_state(), total=cfg.sim.rounds, step=lambda st, w: net.run_round(st),
                host=lambda s, m: dict(m), loss_key="val_loss", unit="round",
                from_checkpoint=lambda t: NetState(*t), place=net.place,
                postfix=lambda r: {"loss": f"{r['val_loss']:.3f}", "evald": r["evaluated"],
                                   "top": f"{r['top_uids'][0]}:{r['top_weights'][0]:.2f}"},
                hooks=[on_round] if on_round is not None else [])

  compat = {"model": model_compat(cfg.model), "gauntlet": to_dict(cfg.gauntlet), "scheme": cfg.scheme,
            cfg.scheme: to_dict(getattr(cfg, cfg.scheme))}
  out = loop.run(cfg, "simulate", build, compat=compat, progress=progress, stop_after=stop_after)
  return dict(out, network=built["net"])
