"""The PyTorch reference of benchmarks/peer_eval.py computes what jaxnet computes.

Skipped where torch is not installed (CI); run in .venv-bench. Checks: forward logits and
loss equal `jaxnet.model` on the tiny model (weights perturbed so every norm scale
matters), DeMo decode equals `demo.decode_one` (quantised and not), and the sequential
LossScore loop equals `lossscore.score_peers` on 4 real peers and restores the weights.
"""
import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jaxnet import data as jdata, peer  # noqa: E402
from jaxnet.schemes import demo  # noqa: E402
from jaxnet import model as jmodel  # noqa: E402
from jaxnet.config import load_config  # noqa: E402
from jaxnet.gauntlet import lossscore  # noqa: E402

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import torch_reference as tr  # noqa: E402

N_PEERS, STEP = 4, 2e-3


def _perturbed_params(cfg):
  params = jmodel.init_params(cfg.model, jax.random.key(0))
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  # norm scales start at 1: move them so a port that ignores a scale would fail
  return treedef.unflatten([x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def setup():
  cfg = load_config(ROOT / "configs" / "tiny.yaml")
  params = _perturbed_params(cfg)
  layout = demo.make_layout(params, cfg.demo, n_pages=cfg.data.pages_per_window)
  corpus = jdata.load_corpus(cfg.data)
  batches = corpus.peer_batches(np.arange(N_PEERS), window=3)
  subs, _, _ = jax.jit(lambda p, s, b: peer.peers_round(p, s, b, jnp.float32(1e-3), layout, cfg))(
      params, peer.init_states(params, N_PEERS, cfg), batches)
  own = jax.tree.map(lambda x: x[:, :2], batches)
  rand = jax.tree.map(lambda x: x[:4], corpus.batch_from_pages(corpus.random_pages(3)))
  return cfg, params, layout, subs, own, rand


def test_forward_and_loss_equal_jaxnet(setup):
  cfg, params, layout, _, _, rand = setup
  tp = tr.torch_params(params, layout)
  want = np.asarray(jmodel.forward(params, jnp.asarray(rand["inputs"]), cfg.model))
  got = tr.forward(tp, tr.torch_batch(rand)["inputs"], cfg.model).numpy()
  assert np.abs(want).max() > 0.1  # not a trivially small output
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(float(tr.loss(tp, tr.torch_batch(rand), cfg.model)),
                             float(jmodel.loss_fn(params, rand, cfg.model)), rtol=1e-5)


@pytest.mark.parametrize("quantize", [True, False])
def test_decode_equals_decode_one(setup, quantize):
  cfg, params, _, _, _, _ = setup
  dcfg = dataclasses.replace(cfg.demo, quantize=quantize)
  layout = demo.make_layout(params, dcfg, n_pages=cfg.data.pages_per_window)
  buffers = jax.tree.map(lambda x: jax.random.normal(jax.random.key(2), x.shape), params)
  sub = jax.jit(lambda b: demo.encode(b, layout, dcfg))(buffers)
  want = layout.treedef.flatten_up_to(jax.jit(lambda s: demo.decode_one(s, layout))(sub))
  dec = tr.TorchDecoder(layout)
  sub_t = tr.peer_slice(tr.torch_submissions(jax.tree.map(lambda x: x[None], sub)), 0)
  for t, w in zip(layout.tensors, want):
    np.testing.assert_allclose(dec.decode(sub_t, t.name).numpy(), np.asarray(w), atol=1e-5,
                               err_msg=t.name)


def test_lossscore_equals_score_peers(setup):
  cfg, params, layout, subs, own, rand = setup
  want = jax.jit(lambda p, s, o, r: lossscore.score_peers(
      p, s, o, r, STEP, layout=layout, model_cfg=cfg.model, eval_batch=2))(params, subs, own, rand)
  tp = tr.torch_params(params, layout)
  before = {n: p.clone() for n, p in tp.items()}
  got = tr.score_peers_sequential(tp, tr.torch_submissions(subs), tr.torch_batch(own),
                                  tr.torch_batch(rand), STEP, layout=layout, cfg=cfg.model)
  assert np.abs(np.asarray(want.r_rand)).max() > 1e-3  # the step changes the losses
  for key in ("r_own", "r_rand", "own_before", "own_after", "rand_after"):
    np.testing.assert_allclose(got[key], np.asarray(getattr(want, key)), atol=1e-4, err_msg=key)
  for n, p in tp.items():  # the live weights are restored exactly
    assert torch.equal(p, before[n]), n
