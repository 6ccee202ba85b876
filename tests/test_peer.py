"""Peers: the lifted round equals a Python loop over peers, on 1 and 4 devices; DeMo learns."""
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import skip_if_not_enough_devices
from jaxnet import data as jdata, decentral, peer, sharding as shd
from jaxnet.schemes import base, demo
from jaxnet import model as jmodel
from jaxnet.config import load_config

TINY = Path(__file__).parent.parent / "configs" / "tiny.yaml"
N_PEERS = 4


@pytest.fixture(scope="module")
def setup():
  # Unquantised: uint8 codes are a discrete function of values that differ by float
  # round-off between the lifted and the looped programs (1e-7 can flip a bin).
  cfg = load_config(TINY, ["--demo.peer_batch", "2", "--demo.quantize", "false"])
  corpus = jdata.load_corpus(cfg.data)
  params = jmodel.init_params(cfg.model, jax.random.key(0))
  layout = demo.make_layout(params, cfg.demo, n_pages=cfg.data.pages_per_window)
  batches = corpus.peer_batches(np.arange(N_PEERS), window=3)
  # non-zero momentum so that the buffers, not only the gradients, matter
  states = peer.init_states(params, N_PEERS, cfg)
  states = states._replace(momentum=jax.tree.map(
      lambda m: 1e-3 * jax.random.normal(jax.random.key(1), m.shape), states.momentum),
      count=jnp.arange(N_PEERS, dtype=jnp.int32) * 3)
  return cfg, params, layout, batches, states


def _loop(cfg, params, layout, batches, states, lr):
  outs = []
  for i in range(N_PEERS):
    b = jax.tree.map(lambda x: x[i], batches)
    s = jax.tree.map(lambda x: x[i], states)
    outs.append(jax.jit(lambda p, s, b: peer.peer_round(p, s, b, lr, layout, cfg))(params, s, b))
  return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)


def _assert_close(a, b, atol=1e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), atol=atol, rtol=0)


@pytest.mark.slow   # CI time (31 s): a one-peer step equals its row of the lifted round bit for bit in tests/net/test_processes.py
def test_lifted_round_equals_python_loop(setup):
  cfg, params, layout, batches, states = setup
  lr = jnp.float32(4e-4)
  ref = _loop(cfg, params, layout, batches, states, lr)
  got = jax.jit(lambda p, s, b: peer.peers_round(p, s, b, lr, layout, cfg))(params, states, batches)
  _assert_close(got, ref)


@skip_if_not_enough_devices(4)
def test_one_and_four_devices_equal(setup):
  cfg, params, layout, batches, states = setup
  lr = jnp.float32(4e-4)
  outs = []
  for n in (1, 4):
    mesh = shd.make_mesh("peer", n)
    b = shd.put_tree(batches, shd.along(mesh, "peer"))
    s = shd.put_tree(states, shd.along(mesh, "peer"))
    outs.append(jax.jit(lambda p, s, b: peer.peers_round(p, s, b, lr, layout, cfg, mesh))(params, s, b))
  _assert_close(outs[0], outs[1])


def test_peer_submission_matches_its_own_pages(setup):
  """Peer k's gradient comes from pages(k, window): swapping batches changes the result."""
  cfg, params, layout, batches, states = setup
  g0, _ = base.mean_grads(params, jax.tree.map(lambda x: x[0], batches), cfg)
  g1, _ = base.mean_grads(params, jax.tree.map(lambda x: x[1], batches), cfg)
  diff = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)))
  assert diff > 1e-4


@pytest.mark.slow   # CI time (25 s): bit-exact resume stays in tests/test_train.py and tests/test_rundir.py
def test_decentralised_tiny_run_learns_and_resumes(tmp_path):
  over = ["--train.optimizer", "decentral", "--train.peers", "4", "--train.steps", "6",
          "--demo.warmup", "2", "--demo.lr", "3e-3", "--train.compare_baseline", "false",
          "--train.out_dir", str(tmp_path / "a")]
  cfg = load_config(TINY, over)
  straight = decentral.train(cfg, progress=False)
  losses = [r["loss"] for r in straight["history"]]
  assert losses[-1] < losses[0] - 0.3
  cfg_b = load_config(TINY, over[:-1] + [str(tmp_path / "b")])
  decentral.train(cfg_b, progress=False, stop_after=3)
  resumed = decentral.train(cfg_b, progress=False)
  assert resumed["start"] == 3
  for a, b in zip(jax.tree.leaves((straight["params"], straight["states"])),
                  jax.tree.leaves((resumed["params"], resumed["states"]))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
