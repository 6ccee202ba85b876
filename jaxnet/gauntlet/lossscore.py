"""LossScore: loss before and after one peer's step, on its own and on shared random data.

gauntlet.md §9. For every evaluated peer k, with θ the validator's model before this
round's aggregate and η_t the round's learning rate:

  θ'_k   = θ − η_t · e · u_k                                     (§9.2 step 4, e = 0.2)
  r_own  = (L(θ; D_k) − L(θ'_k; D_k)) / L(θ; D_k)                (§9.2 step 6)
  r_rand = (L(θ; R)   − L(θ'_k; R))   / L(θ; R)

u_k is the scheme's `eval_update` (schemes.md §4): sign(decode(Δ_k)) for DeMo, the
median-norm-clipped decoded values for SparseLoCo, the decoded delta for DiLoCo; η_t is
the scheme's `step_size` (DeMo's schedule, or the outer lr).
(`relative=False`, gauntlet.relative_improvement: the absolute differences, §18 row 2.)

L(θ; R) on the round's shared random batch is computed once per round. Per peer the
exact mode runs 3 forward passes (own before, own after, random after). The logic is
written for one peer and lifted with `lax.map` (batch size `eval_batch`, so memory stays
bounded) inside a `shard_map` over the mesh axis 'peer' (jax.md §6.5: the fastest CPU
layout; `vmap` over weights is 2.5-3.7x slower there).

`first_order` (beyond the reference): the random-data loss change of peer k is estimated
as −η_t·e·⟨∇L(θ; R), u_k⟩: one backward pass per round and one dot product
per peer replace P forward passes. r_own stays exact (it needs each peer's own data).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from jaxnet import model as jmodel
from jaxnet import schemes
from jaxnet.config import ModelConfig
from jaxnet.submission import Layout, Submission


class LossScores(NamedTuple):
  """Per-peer losses and relative improvements, all float32 [P] (rand_before is [])."""
  own_before: jax.Array
  own_after: jax.Array
  rand_before: jax.Array
  rand_after: jax.Array
  r_own: jax.Array
  r_rand: jax.Array
  foil_after: jax.Array   # loss of θ'_k on another peer's assigned batch (0 without foils)
  r_foil: jax.Array       # relative improvement there (0 without foils)


def eval_params(params, sub: Submission, step_size, layout: Layout, apply_sign: bool = True,
                context=()):
  """θ − step·u, u the scheme's `eval_update` (DeMo: sign(decode(Δ)), or the raw decoded
  direction when apply_sign is off, §18 row 3). `context` is the scheme's `eval_context`
  of the round's gathered peers (SparseLoCo's clip norms)."""
  update = schemes.of_layout(layout).eval_update(sub, context, layout, apply_sign)
  return jax.tree.map(lambda p, u: p - step_size * u, params, update)


def _tree_vdot(a, b):
  return sum(jnp.vdot(x.astype(jnp.float32), y.astype(jnp.float32))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _rel(before, after, relative: bool = True):
  if not relative:   # the absolute loss change (§18 row 2)
    return before - after
  # relative improvement, normalised by the "before" loss only (§9.2 step 6)
  return (before - after) / jnp.maximum(before, 1e-12)


def score_peers(params, subs_P: Submission, own_PxBxL: dict, rand_BxL: dict, step_size, *,
                layout: Layout, model_cfg: ModelConfig, eval_batch: int = 1,
                mode: str = "exact", apply_sign: bool = True, relative: bool = True,
                mesh: jax.sharding.Mesh | None = None, context=(), foil_PxBxL=None,
                foil_src=None) -> LossScores:
  """LossScore of P peers in one call (jit it; see the module docstring).

  Args:
    params: the validator's θ (replicated).
    subs_P: P submissions stacked on a leading axis (placed on 'peer' when a mesh is given).
    own_PxBxL: each peer's sampled assigned batch (inputs/targets/mask [P, B, L]).
    rand_BxL: the round's shared random batch.
    step_size: η_t · eval_lr_factor.
    relative: r = (before − after) / before; False gives before − after.
    context: the scheme's `eval_context` (replicated), () for DeMo and DiLoCo.
    foil_PxBxL, foil_src: None, or each peer's foil: another peer's assigned batch (the
      proof of assigned data, issue 12; one more forward pass per peer) and the row of
      that peer here ([P] int), whose own_before is the foil's "before" loss.
  """
  loss = lambda p, b: jmodel.loss_fn(p, b, model_cfg)
  if mode == "first_order":
    rand_before, grad_rand = jax.value_and_grad(loss)(params, rand_BxL)
  else:
    rand_before, grad_rand = loss(params, rand_BxL), None

  scheme = schemes.of_layout(layout)

  use_foil = foil_PxBxL is not None   # static
  foil_PxBxL = foil_PxBxL if use_foil else own_PxBxL

  def one(params, grad_rand, context, sub, own, foil):
    own_before = loss(params, own)
    if mode == "first_order":
      step = scheme.eval_update(sub, context, layout, apply_sign)
      after = jax.tree.map(lambda p, s: p - step_size * s, params, step)
      rand_after = rand_before - step_size * _tree_vdot(grad_rand, step)
    else:
      after = eval_params(params, sub, step_size, layout, apply_sign, context)
      rand_after = loss(after, rand_BxL)
    foil_after = loss(after, foil) if use_foil else jnp.zeros((), jnp.float32)
    return own_before, loss(after, own), rand_after, foil_after

  def local(params, grad_rand, context, subs, own, foil):
    return lax.map(lambda xs: one(params, grad_rand, context, *xs), (subs, own, foil),
                   batch_size=eval_batch)

  if mesh is not None and mesh.size > 1:
    local = jax.shard_map(local, mesh=mesh,
                          in_specs=(P(), P(), P(), P("peer"), P("peer"), P("peer")),
                          out_specs=(P("peer"),) * 4, check_vma=False)
  own_before, own_after, rand_after, foil_after = local(params, grad_rand, context, subs_P,
                                                        own_PxBxL, foil_PxBxL)
  if use_foil:   # the foil's "before" loss is its owner's own_before: no extra pass
    foil_before = own_before[foil_src]
    r_foil = _rel(foil_before, foil_after, relative)
  else:
    r_foil = jnp.zeros_like(own_before)
  return LossScores(own_before, own_after, rand_before, rand_after,
                    _rel(own_before, own_after, relative), _rel(rand_before, rand_after, relative),
                    foil_after, r_foil)


def score_one(params, sub: Submission, own_BxL: dict, rand_BxL: dict, step_size, *,
              layout: Layout, model_cfg: ModelConfig, apply_sign: bool = True,
              relative: bool = True, context=()):
  """The reference procedure for one peer (what the per-peer loop benchmark calls)."""
  loss = lambda p, b: jmodel.loss_fn(p, b, model_cfg)
  after = eval_params(params, sub, step_size, layout, apply_sign, context)
  own_before, rand_before = loss(params, own_BxL), loss(params, rand_BxL)
  own_after, rand_after = loss(after, own_BxL), loss(after, rand_BxL)
  return _rel(own_before, own_after, relative), _rel(rand_before, rand_after, relative)
