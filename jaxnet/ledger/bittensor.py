"""The 2020 BitTensor mechanism (arXiv 2003.03917; spec §1.2, §1.3, §5.2).

Each peer's row of W is a distribution over its neighbours (§1.2: W is row-stochastic),
so W is row-normalised first, as Yuma's step 5 does; only the relative weights of a row
count. Ranks R = W^T s, connectivity trust T_j = sum_i s_i [W_ij > 0], sigmoid consensus
C = sigma(rho (T - kappa)), incentive = normalize(R * C), and inflation into stake. All
pure and jit/vmap-able; everything but the edge indicator is smooth, so `jax.grad` flows
through R (w.r.t. the values of W) and through s (w.r.t. S), as the paper's connectivity
regularisation needs.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxnet.ledger import ops
from jaxnet.ledger.config import BitTensorConfig
from jaxnet.ledger.validate import (LedgerInputError, check_2020_inputs, check_config,
                                   check_count, check_matrix, check_scalar, check_sequence,
                                   check_vector, shape_of)


class Epoch2020Out(NamedTuple):
  stake: jax.Array      # [n] s = normalize(S)
  rank: jax.Array       # [n] R = W^T s
  trust: jax.Array      # [n] connectivity trust T
  consensus: jax.Array  # [n] C = sigma(rho (T - kappa))
  incentive: jax.Array  # [n] normalize(R * C)


def legacy_epoch_2020_core(W, S, rho=10.0, kappa=0.5) -> Epoch2020Out:
  """The 2020 epoch without checks (spec §5.2 `legacy_epoch_2020`); rho, kappa may be traced.

  W is row-normalised (spec §1.2: each row is a distribution over the neighbours; zero
  rows stay zero), so scaling a row by a positive factor changes nothing (§5.3 prop. 2).
  """
  w_NxN = jnp.asarray(W, jnp.result_type(float))
  # Edges are read before normalising, so a tiny weight that rounds to 0 in its
  # normalised row still counts as the edge it is.
  edge_NxN = w_NxN > 0
  # Unnormalised rows would let a peer buy rank by the scale of its row, not its stake.
  w_NxN = ops.row_normalize(w_NxN)
  s_N = ops.normalize(jnp.asarray(S, w_NxN.dtype))
  rank_N = s_N @ w_NxN
  # Trust counts the stake of peers with a non-zero edge (§1.2): the indicator has no
  # gradient, so grad w.r.t. W flows only through the ranks.
  trust_N = s_N @ edge_NxN.astype(w_NxN.dtype)
  consensus_N = ops.sigmoid(rho * (trust_N - kappa))
  return Epoch2020Out(s_N, rank_N, trust_N, consensus_N, ops.normalize(rank_N * consensus_N))


_epoch_2020_jit = jax.jit(legacy_epoch_2020_core)


def legacy_epoch_2020(W, S, rho=10.0, kappa=0.5) -> Epoch2020Out:
  """The 2020 epoch with boundary checks (spec §1.2).

  Args:
    W: [n, n] weights, >= 0, any row scale: each non-empty row is normalised to sum 1
      (row-stochastic, spec §1.2); empty rows give no rank and no trust.
    S: [n] stake, >= 0.
    rho: sigmoid temperature (§1.2: 10). kappa: shift (§1.2: 0.5).
  Raises:
    LedgerInputError: non-square W, mismatched S, negative or non-finite values.
  """
  check_2020_inputs(W, S)
  check_scalar(rho, "rho")
  check_scalar(kappa, "kappa", 1.0)
  return _epoch_2020_jit(W, S, rho, kappa)


def inflate(S, incentive, tau):
  """2020 inflation: S <- S + tau * sum(S) * normalize(incentive) (spec §1.2, §5.2 `inflate`).

  Rewards are added to stake, so rewarded peers gain weight. With all-zero incentive
  nothing is minted (the minted amount is tau * sum(S) * sum(normalize(I))).

  Raises:
    LedgerInputError: S or incentive not 1-D of one length, negative or non-finite
      entries, or tau not a finite number >= 0.
  """
  check_vector(S, "S")
  check_vector(incentive, "incentive", shape_of(S)[0], of="entries of S")
  check_scalar(tau, "tau")
  return _inflate_core(S, incentive, tau)


def _inflate_core(S, incentive, tau):
  S = jnp.asarray(S)
  return S + tau * jnp.sum(S) * ops.normalize(incentive)


def connectivity_loss(W, S, kappa=0.5):
  """The paper's connectivity regulariser L = -sum_j R_j (T_j - kappa) (spec §1.2).

  A reconstruction (the exact derivation is not in the available sources); differentiable
  w.r.t. the values of W and w.r.t. S. R is the rank of the row-normalised W, as in
  `legacy_epoch_2020`.
  """
  check_2020_inputs(W, S)
  check_scalar(kappa, "kappa", 1.0)
  out = legacy_epoch_2020_core(W, S, 10.0, kappa)
  return -jnp.sum(out.rank * (out.trust - kappa))


def run_2020(W, S0, params: BitTensorConfig = BitTensorConfig(), epochs: int | None = None):
  """`lax.scan` of the 2020 ledger: epoch then inflation, carrying S (spec §5.2 `run`).

  Args:
    W: [n, n] constant weights, or [T, n, n] one matrix per block.
    S0: [n] initial stake.
    params: rho, kappa, tau.
    epochs: T when W is constant.
  Returns:
    (S_T, Epoch2020Out stacked over T, S_TxN the stake after each block).
  """
  check_config(params, BitTensorConfig, "params")
  W = jnp.asarray(W, jnp.result_type(float))
  if W.ndim == 2:
    if epochs is None:
      raise LedgerInputError("epochs: required when W is a single [n, n] matrix")
    check_count(epochs, "epochs")
    check_2020_inputs(W, S0)
  else:
    if W.ndim != 3:
      raise LedgerInputError(f"W: expected [n, n] or [T, n, n], got shape {W.shape}")
    check_sequence(W)
    check_2020_inputs(W[0], S0)
    epochs = W.shape[0]
    # Every block's matrix, not just the first: rows of the [T * n, n] stack.
    check_matrix(W.reshape(-1, W.shape[-1]), "W")
  return _run_2020_jit(W, jnp.asarray(S0, W.dtype), params, epochs)


def _run_2020_core(W, S0, params: BitTensorConfig, epochs: int):
  const = W.ndim == 2

  def step(S, w):
    out = legacy_epoch_2020_core(W if const else w, S, params.rho, params.kappa)
    S = _inflate_core(S, out.incentive, params.tau)
    return S, (out, S)

  xs = None if const else W
  S_T, (outs, S_TxN) = jax.lax.scan(step, S0, xs, length=epochs)
  return S_T, outs, S_TxN


_run_2020_jit = jax.jit(_run_2020_core, static_argnums=(3,))


def cabal_toy(s_a=0.51, s_b=0.49, params: BitTensorConfig = BitTensorConfig(), blocks=100):
  """The paper's cabal toy run (spec §1.3): cabal share S_B / (S_A + S_B) after each block.

  Two disjoint subgraphs that only connect internally are `run_2020` with a
  block-diagonal W; one peer per side gives W = identity, which is the §1.3 recurrence.
  """
  check_count(blocks, "blocks")
  _, _, S_TxN = run_2020(jnp.eye(2), jnp.asarray([s_a, s_b]), params, epochs=blocks)
  return S_TxN[:, 1] / jnp.sum(S_TxN, axis=1)
