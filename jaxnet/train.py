"""Centralised AdamW baseline, data-parallel over the mesh axis `data`.

The step is a pure function `(state, batch) -> (state, metrics)` jitted with the batch
sharded `P(None, 'data')` and the state replicated: XLA inserts the gradient all-reduce
(the modern form of pmap, jax.md §2.1). Losses and gradients are built from masked
*sums* and one global token count, so 1 device and N devices (and any micro-batching)
compute the same mean loss.

AdamW constants follow the reference baseline (jax.md §4.1 table, §4.4): betas 0.9/0.95,
weight decay 0.1 (not on norm scales), linear warm-up then cosine to `min_lr_ratio`,
global-norm clipping at 1.0.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnet import hf
from jaxnet import model as jmodel
from jaxnet import sharding as shd
from jaxnet import loop
from jaxnet.loop import Task
from jaxnet.config import Config, TrainConfig, model_compat
from jaxnet.configbase import ConfigError
from jaxnet.rundir import read_metrics


class TrainState(NamedTuple):
  params: Any
  opt_state: Any
  step: jax.Array  # int32 scalar: number of optimizer steps taken


def lr_schedule(cfg: TrainConfig) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.lr, warmup_steps=cfg.warmup_steps,
      decay_steps=cfg.steps, end_value=cfg.lr * cfg.min_lr_ratio)


def _decay_mask(params):
  # No weight decay on RMSNorm scales (the usual LLaMA/OLMo practice).
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) != "scale", params)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  return optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip),
      optax.adamw(lr_schedule(cfg), b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay,
                  mask=_decay_mask))


def init_state(cfg: Config, key: jax.Array, tx: optax.GradientTransformation) -> TrainState:
  params = hf.initial_params(cfg.model, key)
  return TrainState(params, tx.init(params), jnp.zeros((), jnp.int32))


def accumulate_grads(params, batch_MxBxL: dict, model_cfg):
  """Sums of loss and gradients over micro-batches (leading axis M) via `lax.scan`."""
  def one(carry, mb):
    (total, count), grads = carry
    (t, c), g = jax.value_and_grad(jmodel.loss_sums, has_aux=True)(params, mb, model_cfg)
    return ((total + t, count + c), jax.tree.map(jnp.add, grads, g)), None

  zeros = jax.tree.map(jnp.zeros_like, params)
  init = ((jnp.zeros(()), jnp.zeros(())), zeros)
  ((total, count), grads), _ = jax.lax.scan(one, init, batch_MxBxL)
  return total, count, grads


def train_step(state: TrainState, batch_MxBxL: dict, cfg: Config,
               tx: optax.GradientTransformation) -> tuple[TrainState, dict]:
  """One AdamW step on a global batch split into M micro-batches."""
  total, count, grads = accumulate_grads(state.params, batch_MxBxL, cfg.model)
  denom = jnp.maximum(count, 1.0)
  grads = jax.tree.map(lambda g: g / denom, grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": total / denom, "grad_norm": optax.tree.norm(grads),
             "lr": lr_schedule(cfg.train)(state.step), "tokens": count}
  return TrainState(params, opt_state, state.step + 1), metrics


def split_micro(batch: dict, microbatch: int) -> dict:
  """[B, L] host arrays -> [M, B/M, L] (micro-batch m = rows m*mb:(m+1)*mb)."""
  def one(x):
    return x.reshape(x.shape[0] // microbatch, microbatch, *x.shape[1:])
  return {k: one(np.asarray(v)) for k, v in batch.items()}


def put_batch(batch: dict, sharding) -> dict:
  """Global batch -> device arrays; every process holds the full deterministic batch."""
  return {k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
          for k, v in batch.items()}


def check_vocab(cfg: Config, corpus) -> None:
  if cfg.model.vocab_size < corpus.vocab_size:
    raise ConfigError(f"model.vocab_size: {cfg.model.vocab_size} < {corpus.vocab_size} tokens of "
                      f"tokenizer {cfg.data.tokenizer!r}")


class Run:
  """Everything a training run needs on the host side (mesh, data, jitted step)."""

  def __init__(self, cfg: Config, devices=None):
    from jaxnet import data as jdata
    self.cfg = cfg
    self.mesh = shd.make_mesh("data", cfg.mesh.data, devices)
    mb = cfg.train.microbatch or cfg.train.batch_size
    shd.check_divisible(mb, self.mesh, "data", "train.microbatch" if cfg.train.microbatch
                        else "train.batch_size")
    self.microbatch = mb
    self.corpus = jdata.load_corpus(cfg.data)
    check_vocab(cfg, self.corpus)
    self.tx = make_optimizer(cfg.train)
    self.state_sharding = shd.replicated(self.mesh)
    self.batch_sharding = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(None, "data"))
    self.step_fn = jax.jit(partial(train_step, cfg=cfg, tx=self.tx),
                           out_shardings=(self.state_sharding, self.state_sharding),
                           donate_argnums=(0,))
    init = jax.jit(partial(init_state, cfg, tx=self.tx), out_shardings=self.state_sharding)
    self.init_fn = lambda: init(jax.random.key(cfg.train.seed))
    self.val_batch = self.corpus.held_out()
    self.val_loss_fn = jax.jit(partial(jmodel.loss_fn, cfg=cfg.model))

  def batch(self, step: int) -> dict:
    host = self.corpus.train_batches(step, self.cfg.train.batch_size)
    return put_batch(split_micro(host, self.microbatch), self.batch_sharding)


def train_task(cfg: Config, run: Run) -> Task:
  """The baseline as a `jaxnet.loop.Task`: one AdamW step per index, val_loss dispatched on
  the params right after its step (before the next step donates them)."""
  def step(state, i):
    state, metrics = run.step_fn(state, run.batch(i))
    if cfg.train.eval_every and (i + 1) % cfg.train.eval_every == 0:
      metrics = dict(metrics, val_loss=run.val_loss_fn(state.params, run.val_batch))
    return state, metrics

  return Task(state=run.init_fn(), total=cfg.train.steps, step=step,
              host=lambda s, m: {k: float(np.asarray(v)) for k, v in m.items()},
              tokens_per_step=cfg.train.batch_size * cfg.data.seq_len,
              from_checkpoint=lambda t: TrainState(*t),
              postfix=lambda r: {"loss": f"{r['loss']:.4f}", "tok_s": f"{r['tokens_per_s']:.0f}"})


def train(cfg: Config, *, progress: bool = True, devices=None, stop_after: int | None = None) -> dict:
  """Runs (or resumes) the baseline; returns the final state and the loss history.

  `stop_after` ends the process-level loop early (as if killed) after that many steps
  of this call, having checkpointed, which the resume tests use.
  """
  if cfg.train.optimizer != "adamw":
    raise ConfigError(f"train.optimizer: {cfg.train.optimizer!r} runs through jaxnet.decentral")
  run = Run(cfg, devices)
  compat = {"model": model_compat(cfg.model), "optimizer": cfg.train.optimizer,
            "data.seq_len": cfg.data.seq_len, "train.batch_size": cfg.train.batch_size}
  out = loop.run(cfg, "train", lambda run_id: train_task(cfg, run), compat=compat,
                 progress=progress, stop_after=stop_after)
  out_dir = Path(cfg.train.out_dir)
  if out["end"] == cfg.train.steps and out["main"]:
    plot_losses(out_dir / "metrics.jsonl", out_dir / "loss.png")
  return out


def plot_losses(metrics_path: Path, png_path: Path, label: str = "AdamW") -> None:
  from jaxnet import plotstyle as ps
  recs = read_metrics(metrics_path)
  col = ps.palette(2)
  fig, ax = ps.pyplot().subplots(figsize=(6, 4))
  ax.plot([r["step"] for r in recs], [r["loss"] for r in recs], color=col[0], label=f"{label} train")
  val = [(r["step"], r["val_loss"]) for r in recs if "val_loss" in r]
  if val:
    ax.plot(*zip(*val), "o-", color=col[1], label=f"{label} validation")
  ps.label(ax, "step", ps.LOSS_LABEL, legend="")
  ps.title(fig, f"Centralised training: {label} loss")
  ps.save(fig, png_path)
