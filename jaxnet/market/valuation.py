"""Valuing a neighbour, and turning the scores into a row of W (market.md §2, §3).

For peer i and neighbour slot k, d = the embedding served (any shape), g = dL_i/dd:

  fisher2020  -<d, g> - <d, g^2>            the 2020 code (first-order term plus an
                                             empirical-Fisher diagonal, as written there)
  obd         -<d, g> + 1/2 <d^2, g^2>      Optimal Brain Damage, empirical Fisher curvature
  loo         L_i(d_k := 0) - L_i           exact leave-one-out (one extra head pass)
  shapley2022 base + synergy                 the 2022 successor (§4): the value of the
                                             peer's loss with that neighbour alone through
                                             an inverted scaling law, plus pairwise synergy

Each is the loss increase from removing the neighbour (Delta d = -d); larger = more value.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnet.market.peers import nll

SCALING_N, SCALING_ALPHA, LOSS_FLOOR = 8.8e13, 0.076, 1.69   # market.md §4 (the 2022 code)


def fisher2020(d, g):
  """market.md §2, code-faithful: sum(Dd g) + sum(Dd g g) with Dd = -d."""
  return -jnp.sum(d * g) - jnp.sum(d * g * g)


def obd(d, g):
  """market.md §2, textbook: -<d, g> + 1/2 <d^2, g^2>."""
  return -jnp.sum(d * g) + 0.5 * jnp.sum(d * d * g * g)


def loo(loss_fn, d_KxS):
  """[K] exact leave-one-out: loss_fn(d with slot k zeroed) - loss_fn(d), vmapped over k."""
  base = loss_fn(d_KxS)
  K = d_KxS.shape[0]

  def without(k):
    keep = (jnp.arange(K) != k).reshape((K,) + (1,) * (d_KxS.ndim - 1))
    return loss_fn(jnp.where(keep, d_KxS, 0.0)) - base

  return jax.vmap(without)(jnp.arange(K))


def smooth(s_K, score_K, ema: float):
  """s <- (1 - ema) s + ema score (market.md §3: EMA 0.05)."""
  return (1.0 - ema) * s_K + ema * score_K


def row(s_K, nbr_K, self_index, n: int, self_loop: float, rule: str = "shift"):
  """One row of W [n] (market.md §3), summing to 1 with self_loop on W_ii.

  rule "shift" (the 2020 code): add 2 |min| to the scores so all are >= 0 and normalise
  them to 1 - self_loop over the neighbours; equal scores (e.g. all zero before any block)
  share equally, and every neighbour but a lone minimum keeps a positive weight. Rule
  "clip": negative scores get 0 (a peer cuts the neighbours that hurt it); with no positive
  score the neighbours' share goes to the self-loop.
  """
  if rule == "clip":
    kept = jnp.maximum(s_K, 0.0)
    total = jnp.sum(kept)
    share = jnp.where(total > 0, kept / jnp.where(total > 0, total, 1.0), 0.0)
    w = jnp.zeros((n,), s_K.dtype).at[nbr_K].add((1.0 - self_loop) * share)
    return w.at[self_index].add(jnp.where(total > 0, self_loop, 1.0))
  shifted = s_K + 2.0 * jnp.abs(jnp.min(s_K))
  total = jnp.sum(shifted)
  share = jnp.where(total > 0, shifted / jnp.where(total > 0, total, 1.0),
                    1.0 / s_K.shape[0])
  w = jnp.zeros((n,), s_K.dtype).at[nbr_K].add((1.0 - self_loop) * share)
  return w.at[self_index].add(self_loop)


def cabal_row(member_N, self_index, self_loop: float):
  """A cabal member's row: 1 - self_loop spread over the other members only (market.md §5)."""
  others = member_N & (jnp.arange(member_N.shape[0]) != self_index)
  n_others = jnp.sum(others)
  w = jnp.where(others, (1.0 - self_loop) / jnp.maximum(n_others, 1), 0.0)
  w = jnp.where(n_others > 0, w, 0.0)
  return w.at[self_index].add(jnp.where(n_others > 0, self_loop, 1.0))


def scaling_value(loss, power: float = 0.5):
  """market.md §4: N(L) = exp(ln 8.8e13 - ln(max(L, 1.69)) / 0.076), to the power 0.5
  (computed in log space: N itself overflows float32 near the floor)."""
  log_n = jnp.log(SCALING_N) - jnp.log(jnp.maximum(loss, LOSS_FLOOR)) / SCALING_ALPHA
  return jnp.exp(power * log_n)


def shapley2022(logits_KxBxLxV, targets_BxL, mask_BxL, power: float = 0.5):
  """[K] the 2022 value of each neighbour (market.md §4) from the peer's predictions with
  one neighbour at a time: base N(L_k)^p, plus for every pair (a, b) max(N(measured)^p -
  N(expected)^p, 0) / 2 / K to each member, measured = the loss of the averaged
  predictions, expected = min(L_a, L_b). Every neighbour answers here, so K responsive.
  The 2022 routing gates (which neighbours to query) are not modelled: every peer here
  queries its whole neighbourhood through a joiner without routing."""
  logp = jax.nn.log_softmax(logits_KxBxLxV)
  K = logp.shape[0]
  loss_K = jax.vmap(lambda lp: nll(lp, targets_BxL, mask_BxL))(logp)
  base_K = scaling_value(loss_K, power)

  def pair(a, b):
    mixed = jnp.logaddexp(logp[a], logp[b]) - jnp.log(2.0)   # log of the averaged probabilities
    measured = nll(mixed, targets_BxL, mask_BxL)
    expected = jnp.minimum(loss_K[a], loss_K[b])
    return jnp.maximum(scaling_value(measured, power) - scaling_value(expected, power), 0.0)

  syn_KxK = jax.vmap(lambda a: jax.vmap(lambda b: pair(a, b))(jnp.arange(K)))(jnp.arange(K))
  syn_KxK = jnp.where(jnp.eye(K, dtype=bool), 0.0, syn_KxK)
  return base_K + jnp.sum(syn_KxK, axis=1) / 2.0 / K
