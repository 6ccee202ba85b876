"""One market block as one pure, jitted function of the whole market (market.md §5).

`block_step(state, topo, batch, key, cfg) -> (state, out)`: every peer's forward pass,
every neighbour query (each neighbour encodes each querying peer's input), every peer's
loss, gradient and Adam step (with dL_i/dd_j sent back into neighbour j's encoder when
`return_gradients`), every valuation and every row of W, all with the peer axis leading.
The same block for the peers trained alone (the §6 baseline) runs in the same call. The
function is pure, so it can be vmapped over seeds; placement on a mesh is the caller's.
"""
from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxnet.market import peers, valuation
from jaxnet.market.config import MarketConfig

KIND = {"honest": 0, "copier": 0, "noise": 1, "cabal": 1, "lazy": 2}


class Topology(NamedTuple):
  """The market's constant arrays (inputs, not static: one compilation per shape)."""
  nbr: jax.Array     # [N, K] int32 whom each peer queries
  src: jax.Array     # [N] int32 whose encoder each peer serves (a copier: its victim's)
  kind: jax.Array    # [N] int32 0 encoder, 1 noise, 2 fixed vector (KIND)
  const: jax.Array   # [N, E] a lazy peer's fixed vector
  cabal: jax.Array   # [N] bool cabal members (their rows weight only each other)


class MarketState(NamedTuple):
  params: peers.PeerParams   # [N] every peer's parameters
  opt: Any                   # [N] Adam state
  alone: peers.PeerParams    # [N] the same peers trained without neighbours
  opt_alone: Any
  scores: jax.Array          # [N, K] smoothed valuation of each neighbour slot
  ledger: Any                # LedgerState (jaxnet.ledger), 2020 mechanism by default
  block: jax.Array           # () int32 next block


def optimizer(cfg: MarketConfig):
  """Adam on every peer's own parameters (elementwise, so one transform serves [N])."""
  return optax.adam(cfg.lr)


def _value(cfg: MarketConfig, p, h, d, g, loo_K, targets, mask):
  """[K] one peer's valuation of its neighbour slots (static choice, market.md §2, §4)."""
  if cfg.valuation == "fisher2020":
    return jax.vmap(valuation.fisher2020)(d, g)
  if cfg.valuation == "obd":
    return jax.vmap(valuation.obd)(d, g)
  if cfg.valuation == "shapley2022":
    return valuation.shapley2022(peers.single_logits(p, h, d, cfg.center), targets, mask)
  return loo_K


def block_step(state: MarketState, topo: Topology, batch: dict, key, *, cfg: MarketConfig):
  """One block (module docstring) -> (state without the ledger step, outputs)."""
  tokens, targets, mask = batch["inputs"], batch["targets"], batch["mask"]
  N, K = topo.nbr.shape
  params = state.params
  d, serve_vjp = jax.vjp(lambda p: peers.serve(p, tokens, topo.nbr, topo.src, topo.kind,
                                                topo.const, key), params)

  def total(p, d):
    h = jax.vmap(peers.encode)(p, tokens)
    l_N = jax.vmap(lambda *a: peers.loss(*a, center=cfg.center))(p, h, d, targets, mask)
    return jnp.sum(l_N), (l_N, h)

  (_, (loss_N, h)), (g_own, g_d) = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(
      params, d)
  grads = g_own
  if cfg.return_gradients:   # neighbours learn from the peers they serve (§1)
    grads = jax.tree.map(jnp.add, g_own, serve_vjp(g_d)[0])
  opt = optimizer(cfg)
  updates, opt_state = opt.update(grads, state.opt, params)
  new_params = optax.apply_updates(params, updates)

  # valuation of every neighbour slot (§2), with the exact leave-one-out always measured
  def loo_i(p, h_i, d_i, t_i, m_i):
    return valuation.loo(lambda dd: peers.loss(p, h_i, dd, t_i, m_i, cfg.center), d_i)

  loo_NxK = jax.vmap(loo_i)(params, h, d, targets, mask)
  score_NxK = jax.vmap(partial(_value, cfg))(params, h, d, g_d, loo_NxK, targets, mask)
  ema = cfg.shapley_ema if cfg.valuation == "shapley2022" else cfg.ema
  scores = valuation.smooth(state.scores, score_NxK, ema)
  idx = jnp.arange(N)
  W = jax.vmap(lambda s, nb, i: valuation.row(s, nb, i, N, cfg.self_loop, cfg.row_rule))(
      scores, topo.nbr, idx)
  W_cabal = jax.vmap(lambda i: valuation.cabal_row(topo.cabal, i, cfg.self_loop))(idx)
  W = jnp.where(topo.cabal[:, None], W_cabal, W)

  # the baseline: the same peers, the same batches, no neighbours
  if cfg.alone_baseline:
    def alone_total(p):
      l_N = jax.vmap(peers.loss_alone)(p, tokens, targets, mask)
      return jnp.sum(l_N), l_N
    (_, alone_N), g_alone = jax.value_and_grad(alone_total, has_aux=True)(state.alone)
    up, opt_alone = opt.update(g_alone, state.opt_alone, state.alone)
    alone = optax.apply_updates(state.alone, up)
  else:
    alone_N, alone, opt_alone = jnp.full((N,), jnp.nan), state.alone, state.opt_alone
  # what each peer is worth to the peers that query it: the exact leave-one-out loss
  # increase summed over its queriers (market.md §6, the "true marginal value")
  value_N = jnp.zeros((N,), loo_NxK.dtype).at[topo.nbr].add(loo_NxK)
  new = state._replace(params=new_params, opt=opt_state, alone=alone, opt_alone=opt_alone,
                       scores=scores, block=state.block + 1)
  return new, {"loss": loss_N, "loss_alone": alone_N, "loo": loo_NxK, "score": score_NxK,
               "value": value_N, "W": W}


block_step_jit = jax.jit(block_step, static_argnames=("cfg",))
