"""The market run: topology, each peer's own data, blocks, the ledger, the host loop.

Each peer owns a shard of the embedded corpus (`market.shard_sequences` consecutive
training sequences, a different stretch per peer); an honest peer's shard has a fraction
of its tokens replaced by random bytes, graded over the honest peers by `market.data_noise`
(market.md §1: peers differ in data quality). Per block each peer draws `batch_size`
sequences of its shard from (seed, block, peer). Every `market.ledger_every` blocks W and
the stake go through one epoch of `ledger.mechanism` (the 2020 mechanism: ranks,
connectivity trust, sigmoid consensus, inflation into stake; or Yuma in its combined
layout) on the integer ledger, whose emission is conserved exactly. The run is a
`jaxnet.loop` task: checkpoints, resume (bit-exact), progress, metrics.jsonl.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet import loop, sharding as shd
from jaxnet.config import Config, to_dict
from jaxnet.configbase import ConfigError
from jaxnet.ledger import LedgerInputError, init_ledger, ledger_step
from jaxnet.ledger.state import _check_headroom
from jaxnet.market import peers
from jaxnet.market.block import KIND, MarketState, Topology, block_step_jit, optimizer
from jaxnet.market.config import MarketConfig

STAKE_UNITS = 10_000   # integer ledger units of one peer's initial stake


def topology(cfg: MarketConfig) -> Topology:
  """Neighbours, served encoders, behaviour kinds, lazy vectors, cabal flags."""
  N, K = cfg.n_peers, cfg.k
  beh = cfg.behaviours()
  idx = np.arange(N)
  if cfg.topology == "all":
    nbr = np.stack([np.delete(idx, i) for i in range(N)])
  elif cfg.topology == "ring":
    nbr = (idx[:, None] + 1 + np.arange(K)[None, :]) % N
  else:
    nbr = np.stack([np.sort(np.random.default_rng([cfg.seed, i, 0x70B0]).choice(
        np.delete(idx, i), K, replace=False)) for i in range(N)])
  src = idx.copy()
  for i, b in enumerate(beh):   # a copier serves the encoder of the honest peer before it
    if b == "copier":
      src[i] = max(j for j in range(i) if beh[j] == "honest")
  const = np.random.default_rng([cfg.seed, 0x1A2F]).normal(0.0, 0.5, (N, cfg.d_embed))
  return Topology(nbr=jnp.asarray(nbr, jnp.int32), src=jnp.asarray(src, jnp.int32),
                  kind=jnp.asarray([KIND[b] for b in beh], jnp.int32),
                  const=jnp.asarray(const, jnp.float32),
                  cabal=jnp.asarray([b == "cabal" for b in beh]))


def data_noise(cfg: MarketConfig) -> np.ndarray:
  """Per peer: the fraction of its shard's tokens replaced by random bytes."""
  beh = cfg.behaviours()
  honest = [i for i, b in enumerate(beh) if b == "honest"]
  lo, hi = cfg.data_noise
  out = np.zeros(len(beh))
  for r, i in enumerate(honest):
    out[i] = lo + (hi - lo) * (r / max(len(honest) - 1, 1))
  return out


def shards(cfg: Config, corpus) -> np.ndarray:
  """[N, S, L+1] every peer's own corrupted sequences."""
  m = cfg.market
  S, N = m.shard_sequences, m.n_peers
  if N * S > corpus.n_train:
    raise ConfigError(f"market.shard_sequences: {N} peers x {S} sequences exceed the "
                      f"corpus's {corpus.n_train} training sequences")
  vocab = corpus.vocab_size
  out = []
  for p, q in enumerate(data_noise(m)):
    seq = corpus.sequences(np.arange(p * S, (p + 1) * S)).copy()
    rng = np.random.default_rng([m.seed, p, 0xDA7A])
    bad = rng.random(seq.shape) < q
    seq[bad] = rng.integers(0, min(vocab, 256), bad.sum())
    out.append(seq)
  return np.stack(out).astype(np.int32)


def block_batch(cfg: Config, shard_NxSxL1: np.ndarray, block: int, eos_id: int) -> dict:
  """Each peer's batch of block `block` from its own shard: [N, B, L]."""
  m = cfg.market
  N, S = shard_NxSxL1.shape[:2]
  rows = np.stack([np.random.default_rng([m.seed, block, p, 0xBA7C]).choice(
      S, m.batch_size, replace=False) for p in range(N)])
  seq = np.take_along_axis(shard_NxSxL1, rows[:, :, None], axis=1)
  return {"inputs": seq[:, :, :-1], "targets": seq[:, :, 1:],
          "mask": (seq[:, :, 1:] != eos_id).astype(np.float32)}


class Market:
  """Builds the market once; `run_block(state)` advances one block."""

  def __init__(self, cfg: Config):
    from jaxnet import data as jdata
    m = self.m = cfg.market
    self.cfg = cfg
    if not (cfg.ledger.mechanism == "bittensor2020" or cfg.ledger.yuma.layout == "combined"):
      raise ConfigError("ledger.yuma.layout: the market has one index of peers; use "
                        "ledger.mechanism bittensor2020 or ledger.yuma.layout combined")
    self.behaviours = m.behaviours()
    self.corpus = jdata.load_corpus(cfg.data)
    self.shards = shards(cfg, self.corpus)
    self.topo = topology(m)
    self.stake0 = self.initial_stake()
    try:   # the integer totals must not wrap within the run: refused at start, in one line
      _check_headroom(init_ledger(self.stake0, None, cfg.ledger), cfg.ledger,
                      m.blocks // m.ledger_every)
    except LedgerInputError as e:
      raise ConfigError(f"market.blocks: {m.blocks} blocks: {e}") from None

  def initial_stake(self) -> np.ndarray:
    """STAKE_UNITS per peer; with `cabal_stake`, the cabal's total is that share."""
    cabal = np.array([b == "cabal" for b in self.behaviours])
    s = np.full(len(cabal), float(STAKE_UNITS))
    x = self.m.cabal_stake
    if x > 0:
      total = s.sum()
      s[cabal] = x * total / cabal.sum()
      s[~cabal] = (1 - x) * total / (~cabal).sum()
    return np.round(s)

  def init_state(self) -> MarketState:
    m, N = self.m, self.m.n_peers
    vocab = self.corpus.vocab_size
    keys = jax.random.split(jax.random.key(m.seed), 2 * N)
    init = jax.vmap(lambda k: peers.init_peer(k, vocab, m.d_embed, m.context, m.k))
    params, alone = init(keys[:N]), init(keys[N:])
    opt = optimizer(m)
    return MarketState(params=params, opt=opt.init(params), alone=alone,
                       opt_alone=opt.init(alone), scores=jnp.zeros((N, m.k), jnp.float32),
                       ledger=init_ledger(self.stake0, None, self.cfg.ledger),
                       block=jnp.int32(0))

  def run_block(self, st: MarketState):
    b = int(st.block)
    batch = block_batch(self.cfg, self.shards, b, self.corpus.eos_id)
    key = jax.random.fold_in(jax.random.key(self.m.seed), b)
    st, out = block_step_jit(st, self.topo, batch, key, cfg=self.m)
    out = {k: np.asarray(v) for k, v in out.items()}
    log = None
    if (b + 1) % self.m.ledger_every == 0:
      ledger, rec = ledger_step(st.ledger, out["W"], self.cfg.ledger)
      st = st._replace(ledger=ledger)
      log = {"epoch": int(rec.epoch), "minted": int(rec.minted),
             "paid": (np.asarray(rec.server_units) + np.asarray(rec.validator_units)).tolist()}
    return st, self.record(b, st, out, log)

  def record(self, b: int, st: MarketState, out: dict, log) -> dict:
    stake = np.asarray(st.ledger.stake, np.float64)
    share = stake / stake.sum()
    cabal = np.asarray(self.topo.cabal)
    top = np.argsort(-share, kind="stable")[:3]
    return {"block": b, "loss": float(out["loss"].mean()),
            "loss_alone": float(np.nanmean(out["loss_alone"])) if self.m.alone_baseline else None,
            "cabal_share": float(share[cabal].sum()), "top": top.tolist(),
            "stake": stake.astype(np.int64).tolist(), "value": out["value"].round(6).tolist(),
            "peer_loss": out["loss"].round(5).tolist(),
            "peer_loss_alone": out["loss_alone"].round(5).tolist(),
            "W": out["W"].tolist(), "ledger": log}   # exact: experiments replay the ledger on it


def run(cfg: Config, *, progress: bool = True, stop_after: int | None = None,
        on_block=None) -> dict:
  """Runs (or resumes) `market.blocks` blocks; metrics.jsonl and checkpoints under
  train.out_dir. `on_block(record)` runs after every block (the CLI's live line)."""
  built = {}

  def build(run_id: str) -> loop.Task:
    mk = built["market"] = Market(cfg)
    if shd.is_main_process():
      (Path(cfg.train.out_dir) / "behaviours.json").write_text(json.dumps(mk.behaviours))
    return loop.Task(state=mk.init_state(), total=cfg.market.blocks,
                     step=lambda st, i: mk.run_block(st), host=lambda s, r: r,
                     loss_key="loss", unit="block", from_checkpoint=lambda t: MarketState(*t),
                     postfix=lambda r: {"loss": f"{r['loss']:.3f}",
                                        "cabal": f"{r['cabal_share']:.2f}"},
                     hooks=[on_block] if on_block is not None else [])

  compat = {"market": to_dict(cfg.market), "data": to_dict(cfg.data),
            "ledger": to_dict(cfg.ledger)}
  out = loop.run(cfg, "market", build, compat=compat, progress=progress, stop_after=stop_after)
  return dict(out, market=built["market"])


def tqdm_write(line: str) -> None:
  """Prints above a running progress bar."""
  from tqdm.auto import tqdm
  tqdm.write(line)
