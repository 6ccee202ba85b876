"""The 2020 intelligence market (market.md): valuations, rows of W, one block, the run."""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxnet import sharding as shd
from jaxnet.config import load_config
from jaxnet.configbase import ConfigError
from jaxnet.market import block as mblock
from jaxnet.market import peers, valuation
from jaxnet.market import run as mrun

TINY = Path(__file__).resolve().parents[1] / "configs" / "market-tiny.yaml"
SMALL = ["--market.peers", '["honest:3", "noise:1", "lazy:1", "copier:1", "cabal:2"]',
         "--market.d_embed", "8", "--market.batch_size", "2", "--data.seq_len", "16",
         "--market.shard_sequences", "16"]


# --------------------------------------------------------------------------- valuations

def test_fisher2020_equals_the_hand_computed_score_of_a_linear_head():
  """L(d) = <c, d> has dL/dd = c: the 2020 score is -<d, c> - <d, c^2> (market.md §2)."""
  d = jnp.array([[1.0, 2.0], [0.5, -1.0]])
  c = jnp.array([[0.5, -1.0], [2.0, 0.25]])
  g = jax.grad(lambda x: jnp.sum(c * x))(d)
  # -<d, c> - <d, c^2> = -(0.5 - 2 + 1 - 0.25) - (0.25 + 2 + 2 - 0.0625) = 0.75 - 4.1875
  assert float(valuation.fisher2020(d, g)) == pytest.approx(-3.4375, abs=1e-6)


def test_obd_is_exact_leave_one_out_on_a_quadratic_whose_curvature_is_g_squared():
  rng = np.random.default_rng(0)
  h = jnp.asarray(rng.uniform(0.5, 2.0, (3, 5)))
  d = jnp.asarray(rng.normal(size=(1, 3, 5)))
  b = jnp.sqrt(h) - h * d[0]          # so that g = h d + b = sqrt(h): g^2 is the curvature

  def L(x_KxS):
    return jnp.sum(0.5 * h * x_KxS[0] ** 2 + b * x_KxS[0])

  g = jax.grad(L)(d)[0]
  loo = valuation.loo(L, d)[0]
  np.testing.assert_allclose(float(valuation.obd(d[0], g)), float(loo), rtol=1e-5)
  # otherwise they differ by the curvature error alone: 1/2 <d^2, g^2 - h> (second order)
  h2 = h * 1.3
  b2 = jnp.sqrt(h) - h2 * d[0]
  L2 = lambda x: jnp.sum(0.5 * h2 * x[0] ** 2 + b2 * x[0])   # noqa: E731
  g2 = jax.grad(L2)(d)[0]
  gap = float(valuation.obd(d[0], g2) - valuation.loo(L2, d)[0])
  np.testing.assert_allclose(gap, float(0.5 * jnp.sum(d[0] ** 2 * (g2 ** 2 - h2))), rtol=1e-4)


@settings(max_examples=40, deadline=None)
# (no subnormal scores: XLA's CPU flushes them to 0, numpy does not)
@given(scores=st.lists(st.floats(-5, 5).filter(lambda x: x == 0 or abs(x) > 1e-6), min_size=1,
                       max_size=7),
       self_loop=st.sampled_from([0.0, 0.25, 0.5]), rule=st.sampled_from(["shift", "clip"]))
def test_every_row_is_a_distribution_with_its_self_loop(scores, self_loop, rule):
  K = len(scores)
  n = K + 1
  nbr = jnp.arange(1, n)
  w = np.asarray(valuation.row(jnp.asarray(scores, jnp.float32), nbr, 0, n, self_loop, rule))
  assert (w >= 0).all() and w.sum() == pytest.approx(1.0, abs=1e-5)
  if rule == "clip":   # a neighbour with a score <= 0 is cut; with none left, all on self
    assert np.all(w[1:][np.asarray(scores) <= 0] == 0)
    assert w[0] == pytest.approx(self_loop if max(scores) > 0 else 1.0, abs=1e-6)
    return
  assert w[0] == pytest.approx(self_loop, abs=1e-6)
  # the shift keeps the order of the scores (market.md §3)
  order = np.argsort(scores, kind="stable")
  assert np.all(np.diff(w[1:][order]) >= -1e-6)


def test_a_cabal_row_weights_only_the_other_members():
  member = jnp.array([False, True, True, False, True])
  w = np.asarray(valuation.cabal_row(member, 1, 0.5))
  np.testing.assert_allclose(w, [0, 0.5, 0.25, 0, 0.25])


# --------------------------------------------------------------------------- one block

@pytest.fixture(scope="module")
def market():
  cfg = load_config(TINY, SMALL + ["--market.blocks", "4", "--train.out_dir", "/tmp/unused"])
  mk = mrun.Market(cfg)
  return cfg, mk, mk.init_state()


def _loop_reference(cfg, mk, st, batch, key):
  """The slow reference: peer by peer (one jitted function of the peer index), the same
  pieces, the gradients of every peer's loss summed."""
  m, topo = cfg.market, mk.topo
  batch = {k: jnp.asarray(v) for k, v in batch.items()}   # indexed by a traced peer index

  @jax.jit
  def one(params, i):
    def L_i(params):
      dd = peers.serve(params, batch["inputs"], topo.nbr, topo.src, topo.kind, topo.const,
                       key)[i]
      if not m.return_gradients:
        dd = jax.lax.stop_gradient(dd)
      p = jax.tree.map(lambda x: x[i], params)
      return peers.loss(p, peers.encode(p, batch["inputs"][i]), dd, batch["targets"][i],
                        batch["mask"][i], m.center)
    loss_i, g = jax.value_and_grad(L_i)(params)
    d_i = peers.serve(params, batch["inputs"], topo.nbr, topo.src, topo.kind, topo.const,
                      key)[i]
    p = jax.tree.map(lambda x: x[i], params)
    h = peers.encode(p, batch["inputs"][i])
    g_d = jax.grad(lambda dd: peers.loss(p, h, dd, batch["targets"][i], batch["mask"][i],
                                         m.center))(d_i)
    return loss_i, g, jax.vmap(valuation.fisher2020)(d_i, g_d)

  grads = jax.tree.map(jnp.zeros_like, st.params)
  losses, scores = [], []
  for i in range(topo.nbr.shape[0]):
    loss_i, g, score = one(st.params, i)
    grads = jax.tree.map(jnp.add, grads, g)
    losses.append(float(loss_i))
    scores.append(np.asarray(score))
  return np.array(losses), np.array(scores), grads


def test_one_jitted_block_equals_the_per_peer_loop(tmp_path):
  # no lazy peer here: its centred vector is 0 up to rounding, and Adam turns gradients of
  # 1e-9 against exactly 0 into steps of lr x O(0.1) (the lazy test covers that slot)
  cfg = load_config(TINY, SMALL + ["--market.peers", '["honest:4", "noise:1", "copier:1", '
                                   '"cabal:2"]', "--train.out_dir", str(tmp_path)])
  mk = mrun.Market(cfg)
  st = mk.init_state()
  batch = mrun.block_batch(cfg, mk.shards, 0, mk.corpus.eos_id)
  key = jax.random.key(7)
  new, out = mblock.block_step_jit(st, mk.topo, batch, key, cfg=cfg.market)
  losses, scores, grads = _loop_reference(cfg, mk, st, batch, key)
  np.testing.assert_allclose(np.asarray(out["loss"]), losses, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(out["score"]), scores, rtol=1e-4, atol=1e-6)
  # the Adam step from the summed per-peer gradients gives the same parameters
  opt = mblock.optimizer(cfg.market)
  up, _ = opt.update(grads, st.opt, st.params)
  want = jax.tree.map(lambda p, u: p + u, st.params, up)
  for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
  W = np.asarray(out["W"])
  assert (W >= 0).all()
  np.testing.assert_allclose(W.sum(1), 1.0, atol=1e-5)
  np.testing.assert_allclose(np.diag(W), cfg.market.self_loop, atol=1e-6)


def test_one_and_four_devices_give_the_same_block(market):
  cfg, mk, st = market
  devs = jax.devices()
  if len(devs) < 4:
    pytest.skip("needs 4 devices")
  batch = mrun.block_batch(cfg, mk.shards, 1, mk.corpus.eos_id)
  key = jax.random.key(3)
  _, one = mblock.block_step_jit(st, mk.topo, batch, key, cfg=cfg.market)
  mesh = shd.make_mesh("peer", 4, devs[:4])
  along, rep = shd.along(mesh, "peer"), shd.replicated(mesh)
  st4 = st._replace(params=shd.put_tree(st.params, along), opt=shd.put_tree(st.opt, rep),
                    alone=shd.put_tree(st.alone, along), scores=shd.put_tree(st.scores, along))
  _, four = mblock.block_step_jit(st4, mk.topo, shd.put_tree(batch, along), key, cfg=cfg.market)
  for k in one:
    np.testing.assert_allclose(np.asarray(four[k]), np.asarray(one[k]), rtol=1e-5, atol=1e-6,
                               err_msg=k)


def test_the_block_vmaps_over_seeds(market):
  cfg, mk, st = market
  batch = mrun.block_batch(cfg, mk.shards, 0, mk.corpus.eos_id)
  keys = jax.random.split(jax.random.key(0), 2)
  sts = jax.tree.map(lambda x: jnp.stack([x, x]), st)
  _, out = jax.jit(jax.vmap(lambda s, k: mblock.block_step(s, mk.topo, batch, k, cfg=cfg.market)))(
      sts, keys)
  for s in range(2):
    _, ref = mblock.block_step_jit(st, mk.topo, batch, keys[s], cfg=cfg.market)
    np.testing.assert_allclose(np.asarray(out["loss"][s]), np.asarray(ref["loss"]), rtol=1e-5)


# --------------------------------------------------------------------------- the run

def test_kill_and_resume_of_a_market_run_is_bit_exact(tmp_path):
  over = SMALL + ["--market.blocks", "4", "--checkpoint.every", "2"]
  straight = mrun.run(load_config(TINY, over + ["--train.out_dir", str(tmp_path / "a")]),
                      progress=False)
  cfg = load_config(TINY, over + ["--train.out_dir", str(tmp_path / "b")])
  mrun.run(cfg, progress=False, stop_after=2)
  resumed = mrun.run(cfg, progress=False)
  assert resumed["start"] == 2
  for a, b in zip(jax.tree.leaves(straight["state"]), jax.tree.leaves(resumed["state"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # the 2020 ledger: every block mints floor(tau x stake), all of it paid into stake
  prev = straight["market"].stake0.sum()
  for rec in straight["history"]:
    g = rec["ledger"]
    assert sum(g["paid"]) == g["minted"] == int(np.floor(0.01 * prev))
    assert sum(rec["stake"]) == prev + g["minted"]
    prev = sum(rec["stake"])


@pytest.mark.parametrize("extra, field", [
    (["--market.topology", "k_random", "--market.neighbours", "8"], "market.neighbours"),
    (["--market.peers", '["honest:3", "cabal:1"]', "--market.cabal_stake", "-0.1"],
     "market.cabal_stake"),
    (["--market.valuation", "shapley1999"], "market.valuation"),
    (["--market.peers", '["honest:3", "oracle:1"]'], "market.peers[1]"),
    (["--ledger.mechanism", "yuma"], "ledger.yuma.layout"),
])
def test_bad_market_configs_give_one_line_errors(extra, field, tmp_path):
  with pytest.raises(ConfigError) as e:
    cfg = load_config(TINY, extra + ["--train.out_dir", str(tmp_path)])
    mrun.Market(cfg)
  msg = str(e.value)
  assert msg.startswith(field + ":") and "\n" not in msg, msg


def test_a_lazy_peers_fixed_vector_is_worth_nothing_to_a_centring_joiner(market):
  """A constant embedding carries no information about the input: its exact leave-one-out
  value is 0 (market.center, the default). (The 2020 score still gives it its curvature
  term -<d, g^2>: the code's Fisher term does not square d, so it is not invariant.)"""
  cfg, mk, st = market
  batch = mrun.block_batch(cfg, mk.shards, 0, mk.corpus.eos_id)
  _, out = mblock.block_step_jit(st._replace(params=st.params._replace(
      join=jnp.ones_like(st.params.join) * 0.1)), mk.topo, batch, jax.random.key(1),
      cfg=cfg.market)
  lazy = mk.behaviours.index("lazy")
  slot = np.asarray(mk.topo.nbr) == lazy
  np.testing.assert_allclose(np.asarray(out["loo"])[slot], 0.0, atol=1e-6)
  assert np.abs(np.asarray(out["loo"])[~slot]).max() > 1e-4   # the others are not


def test_a_market_run_reports_its_table_and_figure(tmp_path, capsys):
  from jaxnet.cli import main
  out = str(tmp_path / "m")
  assert main(["market", "--config", str(TINY), *SMALL, "--market.blocks", "3",
               "--train.out_dir", out]) == 0
  assert main(["report", out]) == 0
  text = capsys.readouterr().out
  assert "earned" in text and "cabal" in text and (tmp_path / "m" / "market.png").exists()
  assert "ledger audit (ledger.jsonl): 3 epochs" in text
  # a tampered log is caught
  from jaxnet.ledger import LedgerAuditError, audit_epoch_log
  log = tmp_path / "m" / "ledger.jsonl"
  lines = log.read_text().splitlines()
  lines[1] = lines[1].replace('"minted":', '"minted":1', 1)
  log.write_text("\n".join(lines) + "\n")
  with pytest.raises(LedgerAuditError):
    audit_epoch_log(log)


def test_the_market_can_be_paid_by_yuma_in_its_combined_layout(tmp_path):
  cfg = load_config(TINY, SMALL + ["--market.blocks", "2", "--ledger.mechanism", "yuma",
                                   "--ledger.yuma.layout", "combined",
                                   "--train.out_dir", str(tmp_path)])
  res = mrun.run(cfg, progress=False)
  for rec in res["history"]:
    g = rec["ledger"]
    owner = int(np.floor(cfg.ledger.epoch_emission * cfg.ledger.owner_cut))
    assert sum(g["paid"]) + owner == g["minted"] == cfg.ledger.epoch_emission


def test_shapley2022_base_and_synergy_by_hand():
  """Two neighbours whose predictions are right on disjoint halves of the targets: their
  averaged prediction beats either alone, so both get synergy on top of their base."""
  V = 64   # losses above the 1.69 floor of the scaling law (byte-level losses are 2-5)
  targets = jnp.array([[0, 1]])
  mask = jnp.ones((1, 2))
  a = jnp.zeros((1, 2, V)).at[0, 0, 0].set(3.0)   # right on position 0, uniform on 1
  b = jnp.zeros((1, 2, V)).at[0, 1, 1].set(3.0)   # right on position 1, uniform on 0
  logits = jnp.stack([a, b])
  v = np.asarray(valuation.shapley2022(logits, targets, mask))
  lp = jax.nn.log_softmax(logits)
  L = [float(peers.nll(lp[k], targets, mask)) for k in range(2)]
  mixed = float(peers.nll(jnp.logaddexp(lp[0], lp[1]) - jnp.log(2.0), targets, mask))
  N = lambda loss: np.exp(0.5 * (np.log(8.8e13) - np.log(max(loss, 1.69)) / 0.076))  # noqa: E731
  syn = max(N(mixed) - N(min(L)), 0.0) / 2 / 2
  assert mixed < min(L) and syn > 0
  np.testing.assert_allclose(v, [N(L[0]) + syn, N(L[1]) + syn], rtol=1e-4)


@pytest.mark.slow   # three more compilations of the block
def test_every_valuation_runs_a_block(market):
  cfg, mk, st = market
  batch = mrun.block_batch(cfg, mk.shards, 0, mk.corpus.eos_id)
  import dataclasses
  for v in ("obd", "loo", "shapley2022"):
    m = dataclasses.replace(cfg.market, valuation=v)
    _, out = mblock.block_step_jit(st, mk.topo, batch, jax.random.key(0), cfg=m)
    assert np.isfinite(np.asarray(out["score"])).all()
    np.testing.assert_allclose(np.asarray(out["W"]).sum(1), 1.0, atol=1e-5)
    if v == "loo":
      np.testing.assert_array_equal(np.asarray(out["score"]), np.asarray(out["loo"]))
