"""The inner loop of the local-SGD schemes (schemes.md §2, §3 step 1): H AdamW steps.

DiLoCo and SparseLoCo share it, and its settings are one config section (`inner`), so
the two are compared at equal H and inner optimizer by construction. A peer starts each
round from the shared theta^{t-1}, takes H steps on its own pages with its inner AdamW
state kept across rounds, and reports the pseudo-gradient delta = theta^{t-1} - theta_k.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxnet.configbase import ConfigError, require, static_config
from jaxnet.schemes import base


@static_config
class InnerConfig:
  """Inner AdamW of DiLoCo and SparseLoCo (schemes.md §2, §3 step 1)."""
  steps: int = 15                # H inner steps per round (CCLoco 512M and the SparseLoCo
                                 #   comparison; templar 72B: 30; DiLoCo at scale: 500)
  lr: float = 1e-3               # inner AdamW learning rate (CCLoco 512M; templar 72B: 1.17e-4)
  warmup: int = 0                # linear lr warm-up from 0 over this many inner steps, counted
                                 #   across rounds (CCLoco 512M: 500; 0 = constant lr)
  b1: float = 0.9                # AdamW beta1 (templar, CCLoco)
  b2: float = 0.95               # AdamW beta2 (templar, CCLoco)
  weight_decay: float = 0.1      # decoupled weight decay, not on norm scales (templar, CCLoco)
  grad_clip: float = 1.0         # global-norm clip of every inner gradient (templar, CCLoco)

  def __post_init__(self):
    require(self.steps > 0, "inner.steps", "must be positive")
    require(self.lr > 0, "inner.lr", "must be positive")
    require(self.warmup >= 0, "inner.warmup", "must be >= 0")
    require(0 <= self.b1 < 1 and 0 <= self.b2 < 1, "inner.b1", "betas must be in [0, 1)")
    require(self.grad_clip > 0, "inner.grad_clip", "must be positive")


def _decay_mask(params):
  # No weight decay on RMSNorm scales, the rule of train.make_optimizer.
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) != "scale", params)


def optimizer(cfg: InnerConfig) -> optax.GradientTransformation:
  """Inner AdamW (schemes.md §3 step 1), built like `jaxnet.train.make_optimizer`:
  global-norm clip, then AdamW with decoupled weight decay off the norm scales; constant
  lr after an optional linear warm-up."""
  lr = optax.linear_schedule(0.0, cfg.lr, cfg.warmup) if cfg.warmup else cfg.lr
  return optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip),
      optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=_decay_mask))


def inner_steps(params, opt_state, batches_HxBxL: dict, model_cfg, cfg: InnerConfig):
  """H inner AdamW steps with `lax.scan` (schemes.md §2, §3 step 1).

  Args:
    params: the round's starting parameters theta^{t-1}.
    opt_state: the peer's inner AdamW state (`optimizer(cfg).init`), kept across rounds.
    batches_HxBxL: `inputs`/`targets`/`mask` [H, B, L], one batch per inner step; [H, M, B, L]
      splits each step's batch into M micro-batches (summed gradients, same result).
    model_cfg: the ModelConfig of `jaxnet.model.loss_sums`.
  Returns:
    (theta_k, new opt_state, metrics): `loss` [H] the mean token loss of each step's batch
    before its update, `grad_norm` [H] before clipping.
  """
  from jaxnet.train import accumulate_grads   # train imports config, which imports this
  tx = optimizer(cfg)

  def step(carry, batch):
    params, opt_state = carry
    mb = batch if batch["inputs"].ndim == 3 else jax.tree.map(lambda x: x[None], batch)
    total, count, grads = accumulate_grads(params, mb, model_cfg)
    denom = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), (total / denom,
                                                               optax.tree.norm(grads))

  (params, opt_state), (loss_H, gnorm_H) = lax.scan(step, (params, opt_state), batches_HxBxL)
  return params, opt_state, {"loss": loss_H, "grad_norm": gnorm_H}


def pseudo_gradient(start, end):
  """delta = theta^{t-1} - theta_k, float32 (schemes.md §2, §3 step 2)."""
  return jax.tree.map(lambda a, b: a.astype(jnp.float32) - b.astype(jnp.float32), start, end)


@dataclasses.dataclass(frozen=True)
class LocalSGDScheme(base.Scheme):
  """What DiLoCo and SparseLoCo share behind the seam: H inner steps on the peer's pages
  split into H equal batches, and a constant outer learning rate `<section>.outer_lr`."""

  def check_config(self) -> None:
    seqs = self.cfg.data.pages_per_window * self.cfg.data.page_size
    if seqs % self.cfg.inner.steps:
      raise ConfigError(f"inner.steps: {self.cfg.inner.steps} inner steps do not divide the "
                        f"{seqs} sequences of a peer's round (data.pages_per_window x "
                        "data.page_size)")

  def inner_batches(self, batch_SxL: dict) -> dict:
    """[S, L] pages of one peer -> [H, S/H, L]: one batch per inner step."""
    h = self.cfg.inner.steps
    return jax.tree.map(lambda x: x.reshape((h, x.shape[0] // h) + x.shape[1:]), batch_SxL)

  def step_size(self, window):
    return jnp.float32(self.section.outer_lr)
