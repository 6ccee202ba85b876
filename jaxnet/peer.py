"""A peer's round (gauntlet.md §3): gradients on its assigned pages, then the DeMo step.

Written for one peer (`peer_round`) and lifted over a leading peer axis (`peers_round`):
`lax.map` in batches of `demo.peer_batch` inside a `shard_map` over the mesh axis `peer`,
so P peers split across devices (jax.md §2.3, §6.5: on CPU this beats `vmap` over
weights). All peers share the same model θ; momenta and batches are per peer `[P, ...]`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from jaxnet import demo
from jaxnet.config import Config
from jaxnet.submission import Layout, Submission
from jaxnet.train import accumulate_grads


def split_micro_dev(batch_SxL: dict, microbatch: int) -> dict:
  """[S, L] -> [S/mb, mb, L] on device (micro-batches of one peer's pages)."""
  return jax.tree.map(lambda x: x.reshape(x.shape[0] // microbatch, microbatch, *x.shape[1:]),
                      batch_SxL)


def peer_grads(params, batch_SxL: dict, cfg: Config):
  """Mean-token-loss gradient over the peer's pages, accumulated in micro-batches (§3.1).

  The reference averages per-micro-batch mean losses; with equal-length packed sequences
  the token-weighted mean used here differs only by the EOS masking.
  """
  S = batch_SxL["inputs"].shape[0]
  mb = cfg.train.microbatch if cfg.train.microbatch and S % cfg.train.microbatch == 0 else S
  total, count, grads = accumulate_grads(params, split_micro_dev(batch_SxL, mb), cfg.model)
  denom = jnp.maximum(count, 1.0)
  return jax.tree.map(lambda g: g / denom, grads), total / denom


def peer_round(params, state: demo.DemoState, batch_SxL: dict, lr_t, layout: Layout,
               cfg: Config) -> tuple[Submission, demo.DemoState, jax.Array]:
  """One peer: (submission, new DeMo state, its loss on its pages before the update)."""
  grads, loss = peer_grads(params, batch_SxL, cfg)
  sub, state = demo.compress(grads, state, lr_t, layout, cfg.demo)
  return sub, state, loss


def peers_round(params, state_P: demo.DemoState, batch_PxSxL: dict, lr_t, layout: Layout,
                cfg: Config, mesh: jax.sharding.Mesh | None = None):
  """`peer_round` for P peers; placed over mesh axis 'peer' when a mesh is given.

  P must be divisible by the mesh size (checked by the caller's config validation).
  """
  def local(params, state_P, batch_PxSxL, lr_t):
    return lax.map(lambda xs: peer_round(params, xs[0], xs[1], lr_t, layout, cfg),
                   (state_P, batch_PxSxL), batch_size=cfg.demo.peer_batch)

  if mesh is None or mesh.size == 1:
    return local(params, state_P, batch_PxSxL, lr_t)
  return jax.shard_map(local, mesh=mesh, in_specs=(P(), P("peer"), P("peer"), P()),
                       out_specs=(P("peer"), P("peer"), P("peer")), check_vma=False)(
                           params, state_P, batch_PxSxL, lr_t)


def init_states(params, n_peers: int) -> demo.DemoState:
  one = demo.init(params)
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (n_peers,) + x.shape), one)
