"""A peer's round through the scheme (schemes.md §1; gauntlet.md §3).

Written for one peer (`peer_round`: the scheme's `local`) and lifted over a leading peer
axis (`peers_round`): `lax.map` in batches of `demo.peer_batch` inside a `shard_map` over
the mesh axis `peer`, so P peers split across devices (jax.md §2.3, §6.5: on CPU this beats
`vmap` over weights). All peers share the same model θ; states and batches are per peer
`[P, ...]`. The scheme is `cfg.scheme` (`jaxnet.schemes.get`): nothing here names one.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from jaxnet import schemes
from jaxnet.config import Config
from jaxnet.submission import Layout, Submission


def peer_round(params, state, batch_SxL: dict, lr_t, layout: Layout,
               cfg: Config) -> tuple[Submission, object, jax.Array]:
  """One peer: (submission, new scheme state, its loss on its pages before its update)."""
  return schemes.get(cfg).local(params, state, batch_SxL, lr_t, layout)


def peers_round(params, state_P, batch_PxSxL: dict, lr_t, layout: Layout,
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


def init_states(params, n_peers: int, cfg: Config):
  """Every peer's initial scheme state, stacked on a leading axis [P, ...]."""
  one = schemes.get(cfg).init(params)
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (n_peers,) + jnp.shape(x)), one)
