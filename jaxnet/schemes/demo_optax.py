"""DeMo as plain optax `GradientTransformation`s, usable outside jaxnet (schemes issue item 2).

`outer(cfg)` is the outer step of gauntlet.md §5.2 on an aggregated direction: updates
= -eta_t * (direction + lambda * theta), eta_t = `demo_lr(count)` (§5.4), so
`optax.apply_updates(theta, updates)` is `jaxnet.schemes.demo.outer_step`. With the default
lambda = 0 the two are bit-identical; with lambda > 0 they differ by float rounding only
(optax adds the decay to the update instead of scaling theta first).

`optimizer(layout, cfg)` is a single-worker DeMo optimizer in the form of the DeMo paper's
optimizer class: gradients in, DeMo's momentum, DCT top-k compression and error feedback
(`jaxnet.schemes.demo.compress`), the one-peer aggregate (sign of the decoded top-k, §5.1) and the
outer step out:

    tx = demo_optax.optimizer(jaxnet.schemes.demo.make_layout(params, cfg, n_pages=1), cfg)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)

One step of it equals one round of `jaxnet.decentral` with a single peer (tested).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
import optax

from jaxnet import submission
from jaxnet.schemes import demo
from jaxnet.schemes.demo import DemoConfig
from jaxnet.submission import Layout

__all__ = ["outer", "optimizer", "DemoOptState"]


outer = demo.outer   # the outer step on an aggregated direction (gauntlet.md §5.2)


class DemoOptState(NamedTuple):
  peer: demo.DemoState   # momentum and call count (error-feedback warm-up)
  outer: Any             # the outer transformation's state (its step count)


def optimizer(layout: Layout, cfg: DemoConfig) -> optax.GradientTransformation:
  """Single-worker DeMo: compress with momentum and error feedback, aggregate the one
  submission, then `outer` (the learning rate of round t is `demo_lr(t)` in both)."""
  out = outer(cfg)

  def init(params):
    return DemoOptState(demo.init(params), out.init(params))

  def update(grads, state, params=None):
    if params is None:
      raise ValueError("DeMo's optimizer needs params (weight decay and the outer step)")
    lr_t = demo.demo_lr(state.peer.count, cfg)
    sub, peer = demo.compress(grads, state.peer, lr_t, layout, cfg)
    direction = demo.aggregate(submission.stack([sub]), jnp.ones((1,), bool), layout, cfg)
    updates, outer_state = out.update(direction, state.outer, params)
    return updates, DemoOptState(peer, outer_state)

  return optax.GradientTransformation(init, update)
