"""Decentralised training: P honest peers, top-G aggregate, the scheme's outer step.

`jaxnet train --config configs/small.yaml --train.optimizer decentral --train.peers 8`
(`--scheme diloco` or `--scheme sparseloco` for the other schemes; DeMo is the default).

Each round w (gauntlet.md §15.1, schemes.md §1): every peer runs the scheme's local
computation on its assigned pages `pages(uid, w)` and encodes its submission
(`jaxnet.peer`); the first G = min(gather_size, P) peers are aggregated (all peers are
honest here, so the gather list is simply uids 0..G-1); every node applies the scheme's
outer optax transformation to the aggregate. With `train.compare_baseline` the AdamW
baseline then runs with the same tokens per round (batch = P × pages × page_size
sequences) for the same number of steps, and both curves go into one PNG.
"""
from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnet import peer, schemes, sharding as shd
from jaxnet import hf
from jaxnet import model as jmodel
from jaxnet import loop, tracking
from jaxnet.loop import Task
from jaxnet.config import Config, model_compat, to_dict
from jaxnet.configbase import ConfigError
from jaxnet.rundir import read_metrics
from jaxnet.train import check_vocab


def round_fn(params, outer_state, states_P, batches_PxSxL, window, *, cfg: Config, layout, mesh,
             n_gather):
  """One round for every peer plus the outer step; pure, jitted by `DecentralRun`."""
  scheme = schemes.get(cfg)
  lr_t = scheme.step_size(window)
  subs_P, states_P, losses_P = peer.peers_round(params, states_P, batches_PxSxL, lr_t,
                                                layout, cfg, mesh)
  gather = jax.tree.map(lambda x: x[:n_gather], subs_P)
  direction = scheme.aggregate(gather, jnp.ones((n_gather,), bool), layout)
  updates, outer_state = scheme.outer().update(direction, outer_state, params)
  params = optax.apply_updates(params, updates)
  return params, outer_state, states_P, {"loss": jnp.mean(losses_P), "lr": lr_t}


# Module level: runs with equal static pieces share the compile cache.
_round = jax.jit(round_fn, static_argnames=("cfg", "layout", "mesh", "n_gather"),
                 donate_argnums=(0, 1, 2))


class DecentralRun:
  def __init__(self, cfg: Config, devices=None):
    from jaxnet import data as jdata
    self.cfg = cfg
    n_peers = cfg.train.peers
    self.mesh = shd.make_mesh("peer", cfg.mesh.peer if cfg.mesh.peer != 1 else 1, devices)
    shd.check_divisible(n_peers, self.mesh, "peer", "train.peers")
    self.corpus = jdata.load_corpus(cfg.data)
    check_vocab(cfg, self.corpus)
    self.uids = np.arange(n_peers)
    params = hf.initial_params(cfg.model, jax.random.key(cfg.train.seed))
    scheme = schemes.get(cfg)
    scheme.check_config()
    self.layout = scheme.make_layout(params, n_pages=cfg.data.pages_per_window)
    self.params = params
    self.outer_state = scheme.outer().init(params)
    self.states = peer.init_states(params, n_peers, cfg)
    self.n_gather = min(cfg.gauntlet.gather_size, n_peers)
    self.step = partial(_round, cfg=cfg, layout=self.layout, mesh=self.mesh,
                        n_gather=self.n_gather)
    self.tokens_per_round = n_peers * cfg.data.pages_per_window * cfg.data.page_size * cfg.data.seq_len

  def batches(self, window: int) -> dict:
    host = self.corpus.peer_batches(self.uids, window)
    return shd.put_tree(host, shd.along(self.mesh, "peer"))


def decentral_task(cfg: Config, run: DecentralRun) -> Task:
  """Rounds of P honest peers as a `jaxnet.loop.Task` (state: params, the outer
  optimizer's state and the peers' scheme states)."""
  val = run.corpus.held_out()
  val_loss = jax.jit(partial(jmodel.loss_fn, cfg=cfg.model))

  def step(state, w):
    params, outer_state, states, m = run.step(*state, run.batches(w), jnp.int32(w))
    if cfg.train.eval_every and (w + 1) % cfg.train.eval_every == 0:
      m = dict(m, val_loss=val_loss(params, val))
    return (params, outer_state, states), m

  def place(state):
    # committed placements from the start, so the first and later rounds share one compilation
    params, outer_state, states = state
    rep = shd.replicated(run.mesh)
    return (shd.put_tree(params, rep), shd.put_tree(outer_state, rep),
            shd.put_tree(states, shd.along(run.mesh, "peer")))

  return Task(state=(run.params, run.outer_state, run.states), total=cfg.train.steps, step=step,
              host=lambda s, m: {k: float(v) for k, v in m.items()}, unit="round",
              tokens_per_step=run.tokens_per_round, from_checkpoint=tuple, place=place,
              postfix=lambda r: {"loss": f"{r['loss']:.4f}"})


def train(cfg: Config, *, progress: bool = True, devices=None, stop_after: int | None = None) -> dict:
  """Runs (or resumes) a decentralised run of `cfg.scheme`; optionally the matched AdamW
  baseline."""
  if cfg.train.optimizer != "decentral":
    raise ConfigError("train.optimizer: decentral.train needs 'decentral', got "
                      f"{cfg.train.optimizer!r}")
  run = DecentralRun(cfg, devices)
  compat = {"model": model_compat(cfg.model), "optimizer": "decentral", "peers": cfg.train.peers,
            "scheme": cfg.scheme, cfg.scheme: to_dict(getattr(cfg, cfg.scheme))}
  out = loop.run(cfg, "train", lambda run_id: decentral_task(cfg, run), compat=compat,
                 progress=progress, stop_after=stop_after)
  params, outer_state, states = out["state"]
  result = dict(out, params=params, outer_state=outer_state, states=states)
  if out["end"] == cfg.train.steps and cfg.train.compare_baseline and out["main"]:
    result["baseline"] = run_baseline(cfg, run.tokens_per_round, progress, devices)
    plot_comparison(Path(cfg.train.out_dir), cfg)
  return result


def baseline_config(cfg: Config) -> Config:
  """The AdamW baseline seeing the same tokens per round as the P peers together."""
  per_round = cfg.train.peers * cfg.data.pages_per_window * cfg.data.page_size
  train_cfg = dataclasses.replace(cfg.train, optimizer="adamw", batch_size=per_round,
                                  microbatch=cfg.data.pages_per_window * cfg.data.page_size,
                                  out_dir=str(Path(cfg.train.out_dir) / "adamw_baseline"))
  ckpt_cfg = dataclasses.replace(cfg.checkpoint, dir="", every=0)
  # its events beside the run's (a run of its own in TensorBoard), never into the same files
  events = tracking.logdir(cfg)
  log_cfg = dataclasses.replace(cfg.log, tensorboard=str(events / "adamw_baseline") if events
                                else "")
  return dataclasses.replace(cfg, train=train_cfg, checkpoint=ckpt_cfg, log=log_cfg)


def run_baseline(cfg: Config, tokens_per_round: int, progress: bool, devices) -> list[dict]:
  from jaxnet import train as jtrain
  base = baseline_config(cfg)
  devs = (devices or jax.devices())[:1]   # the baseline's own data axis: one device is enough
  return jtrain.train(base, progress=progress, devices=devs)["history"]


def plot_comparison(out_dir: Path, cfg: Config) -> None:
  from jaxnet import plotstyle as ps
  demo_recs = read_metrics(out_dir / "metrics.jsonl")
  base_recs = read_metrics(out_dir / "adamw_baseline" / "metrics.jsonl")
  col = ps.palette(4)
  fig, ax = ps.pyplot().subplots(figsize=(6, 4))
  ax.plot([r["step"] for r in demo_recs], [r["loss"] for r in demo_recs], color=col[0],
          label=f"{cfg.scheme}, {cfg.train.peers} peers (mean peer loss)")
  if base_recs:
    ax.plot([r["step"] for r in base_recs], [r["loss"] for r in base_recs], color=col[2],
            label="AdamW, same tokens per round")
  for recs, style, name, c in ((demo_recs, "o", f"{cfg.scheme} validation", col[1]),
                               (base_recs, "s", "AdamW validation", col[3])):
    val = [(r["step"], r["val_loss"]) for r in recs if "val_loss" in r]
    if val:
      ax.plot(*zip(*val), style + "--", color=c, label=name)
  ps.label(ax, "round (outer step)", ps.LOSS_LABEL, legend="")
  ps.title(fig, f"Decentralised training ({cfg.scheme}) against AdamW on the same tokens")
  ps.save(fig, out_dir / "loss_vs_adamw.png")
