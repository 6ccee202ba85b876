"""The market's peers: a small byte-level encoder, a joiner over the neighbours' embeddings,
and a next-byte head (market.md §1). Everything is written for one peer and lifted over the
leading peer axis with `vmap`.

A peer i encodes its batch x_i into h_i = tanh(sum_c emb[x_{t-c}] P_c + b) (a causal
convolution of width `context` over byte embeddings, [B, L, E]); each neighbour j serves
d_ij = f_j(x_i), its own encoding of i's input (the 2020 "dspike"); the joiner adds a
learned linear map of every neighbour's embedding, z = h_i + sum_k d_ik J_ik; the head
predicts the next byte from z. The encoder is deliberately small (market.md leaves the
model to us): the market's question is who brings value, and with tiny encoders a peer's
own data quality decides what its embedding is worth.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class PeerParams(NamedTuple):
  """One peer's parameters (stacked [N, ...] in the market)."""
  emb: jax.Array      # [V, E] byte embeddings
  conv: jax.Array     # [C, E, E] causal convolution over the last C positions
  conv_b: jax.Array   # [E]
  join: jax.Array     # [K, E, E] one linear map per neighbour slot (the joiner)
  head: jax.Array     # [E, V]
  head_b: jax.Array   # [V]


def init_peer(key, vocab: int, d_embed: int, context: int, k: int) -> PeerParams:
  """Scaled-normal initialisation (fan-in); the joiner starts at zero (neighbours are
  ignored until the peer's own loss says they help)."""
  k1, k2, k3 = jax.random.split(key, 3)
  E = d_embed
  return PeerParams(emb=jax.random.normal(k1, (vocab, E)) * 0.5,
                    conv=jax.random.normal(k2, (context, E, E)) / jnp.sqrt(context * E),
                    conv_b=jnp.zeros((E,)), join=jnp.zeros((k, E, E)),
                    head=jax.random.normal(k3, (E, vocab)) / jnp.sqrt(E),
                    head_b=jnp.zeros((vocab,)))


def encode(p: PeerParams, tokens_BxL) -> jax.Array:
  """h = f(x): [B, L] bytes -> [B, L, E], position t reads tokens t-C+1..t (causal)."""
  x_BxLxE = p.emb[tokens_BxL]
  C = p.conv.shape[0]
  L = x_BxLxE.shape[1]
  pad = jnp.pad(x_BxLxE, ((0, 0), (C - 1, 0), (0, 0)))
  acc = p.conv_b
  for c in range(C):   # static: C is a shape
    acc = acc + pad[:, C - 1 - c:C - 1 - c + L] @ p.conv[c]
  return jnp.tanh(acc)


def loss(p: PeerParams, h_BxLxE, d_KxBxLxE, targets_BxL, mask_BxL, center: bool = True
         ) -> jax.Array:
  """The peer's next-byte cross-entropy with its neighbours' embeddings joined in.

  With `center` the joiner sees each neighbour's embedding minus its mean over the batch's
  positions: what a neighbour tells about this input, not a constant (a fixed vector
  would otherwise act as a second output bias, and every valuation would pay for it)."""
  return _nll(p, h_BxLxE + jnp.sum(_joined(p, d_KxBxLxE, center), axis=0), targets_BxL,
              mask_BxL)


def _joined(p: PeerParams, d_KxBxLxE, center: bool) -> jax.Array:
  """[K, B, L, E] each neighbour's term of the joiner, d_k J_k (centred: see `loss`)."""
  if center:
    d_KxBxLxE = d_KxBxLxE - jnp.mean(d_KxBxLxE, axis=(1, 2), keepdims=True)
  return jnp.einsum("kble,kef->kblf", d_KxBxLxE, p.join)


def single_logits(p: PeerParams, h_BxLxE, d_KxBxLxE, center: bool = True) -> jax.Array:
  """[K, B, L, V] the peer's prediction with one neighbour at a time (market.md §4)."""
  return (h_BxLxE[None] + _joined(p, d_KxBxLxE, center)) @ p.head + p.head_b


def loss_alone(p: PeerParams, tokens_BxL, targets_BxL, mask_BxL) -> jax.Array:
  """The same peer without neighbours (its joiner never used)."""
  return _nll(p, encode(p, tokens_BxL), targets_BxL, mask_BxL)


def _nll(p: PeerParams, z_BxLxE, targets_BxL, mask_BxL) -> jax.Array:
  return nll(jax.nn.log_softmax(z_BxLxE @ p.head + p.head_b), targets_BxL, mask_BxL)


def nll(logp_BxLxV, targets_BxL, mask_BxL) -> jax.Array:
  """Masked mean negative log-likelihood of the targets."""
  out = -jnp.take_along_axis(logp_BxLxV, targets_BxL[..., None], -1)[..., 0]
  return jnp.sum(out * mask_BxL) / jnp.maximum(jnp.sum(mask_BxL), 1.0)


def serve(params: PeerParams, tokens_NxBxL, nbr_NxK, src_N, kind_N, const_NxE, key):
  """What every neighbour serves every peer: d[i, k] = embedding of peer nbr[i, k] for
  x_i, [N, K, B, L, E] (market.md §5 behaviours).

  kind: 0 honest f_j(x); 1 noise (normal, scaled to the RMS of the honest embeddings
  served this block); 2 lazy (its fixed vector `const`); copiers are honest with
  `src[j]`, the peer whose encoder they serve (its victim); cabal members serve noise.
  """
  src_NxK = src_N[nbr_NxK]
  p_NxK = jax.tree.map(lambda x: x[src_NxK], params)
  d = jax.vmap(lambda p_K, x: jax.vmap(lambda p: encode(p, x))(p_K))(p_NxK, tokens_NxBxL)
  scale = jax.lax.stop_gradient(jnp.sqrt(jnp.mean(jnp.square(d))))
  noise = jax.random.normal(key, d.shape, d.dtype) * scale
  k_NxK = kind_N[nbr_NxK][..., None, None, None]
  lazy = jnp.broadcast_to(const_NxE[nbr_NxK][:, :, None, None, :], d.shape)
  return jnp.where(k_NxK == 1, noise, jnp.where(k_NxK == 2, lazy, d))
