"""The scheme seam: every scheme through the same peers, wire format, format checks,
validator eval step and copy-detector indices (schemes.md §1-§4; issue 11).

DeMo's own numbers are in test_demo.py, the DiLoCo/SparseLoCo math against NumPy in
test_schemes.py, and each scheme's network kill-and-resume in test_sim.py.
"""
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet import data as jdata, peer, schemes, sharding as shd
from jaxnet import model as jmodel
from jaxnet import submission as S
from jaxnet.config import load_config
from jaxnet.configbase import ConfigError
from jaxnet.gauntlet import collect
from jaxnet.sim import adversaries

TINY = Path(__file__).parent.parent / "configs" / "tiny.yaml"
NAMES = ("demo", "diloco", "sparseloco")
P = 4


@functools.lru_cache(maxsize=None)
def setup(name: str, raw: bool = False):
  """(cfg, scheme, params, layout, batches [P], states [P]) on the tiny model, H = 2.

  `raw`: no quantisation, so that lifted and looped programs, whose floats differ in the
  last bit, cannot pick different codes.
  """
  over = ["--scheme", name, "--inner.steps", "2", "--demo.peer_batch", "2"]
  if raw:
    over += ["--demo.quantize", "false", "--sparseloco.quantize", "false"]
  else:
    over += ["--diloco.quantize", "int8"]
  cfg = load_config(TINY, over)
  scheme = schemes.get(cfg)
  params = jmodel.init_params(cfg.model, jax.random.key(0))
  layout = scheme.make_layout(params, n_pages=cfg.data.pages_per_window)
  batches = jdata.load_corpus(cfg.data).peer_batches(np.arange(P), window=3)
  states = peer.init_states(params, P, cfg)
  return cfg, scheme, params, layout, batches, states


@functools.lru_cache(maxsize=None)
def uploads(name: str):
  """Every peer's submission of one round, host arrays with metadata."""
  cfg, scheme, params, layout, batches, states = setup(name)
  lr = scheme.step_size(3)
  subs, _, losses = jax.jit(lambda p, s, b: peer.peers_round(p, s, b, lr, layout, cfg))(
      params, states, batches)
  assert np.all(np.isfinite(np.asarray(losses)))
  subs = subs._replace(uid=jnp.arange(P, dtype=jnp.int32), window=jnp.full((P,), 3, jnp.int32))
  subs = jax.tree.map(np.asarray, subs)
  return [jax.tree.map(lambda x: x[u], subs) for u in range(P)]


def test_schemes_are_chosen_by_name_and_unknown_names_are_one_line_errors():
  for name in NAMES:
    cfg, scheme, _, layout, _, _ = setup(name)
    assert scheme.name == name and layout.scheme == name
    assert schemes.of_layout(layout) is type(scheme)
    assert scheme.section is getattr(cfg, name)
  for bad in ("nope", "layout", "base", "../demo"):
    with pytest.raises(ConfigError, match="^scheme: "):
      load_config(TINY, ["--scheme", bad])


@pytest.mark.parametrize("name", NAMES)
def test_uploads_round_trip_pass_the_checks_and_other_schemes_files_are_refused(name):
  _, scheme, _, layout, _, _ = setup(name)
  check = jax.jit(lambda s: scheme.check_values(s, layout))
  for sub in uploads(name):
    data = S.to_bytes(sub, layout)
    assert len(data) <= S.max_upload_bytes(layout)
    back = S.from_bytes(data, layout, uid=int(sub.uid), window=3)
    jax.tree.map(np.testing.assert_array_equal, back, sub)
    flags = check(back)
    assert bool(flags["ok"]) and bool(flags["idx_unique"]), flags
  for other in NAMES:
    if other != name:   # a file for another scheme never parses as this one
      with pytest.raises(S.SubmissionError):
        S.from_bytes(S.to_bytes(uploads(other)[0], setup(other)[3]), layout)


@pytest.mark.parametrize("name", NAMES)
def test_every_malformed_upload_fails_the_scheme_checks(name):
  """gauntlet.md §7.4 per scheme: structure on the host, values in the jitted checks."""
  _, scheme, _, layout, _, _ = setup(name)
  check = jax.jit(lambda s: scheme.check_values(s, layout))
  for kind in adversaries.MALFORMED_KINDS:
    data = adversaries.malformed_bytes(uploads(name)[0], layout, kind, scheme)
    sub, reason, _ = collect.parse_upload(data, layout, 0, 3)
    assert reason or not bool(check(sub)["ok"]), kind
  bad = scheme.out_of_range(uploads(name)[0], layout)
  if name == "diloco":
    assert bad is None   # dense: no indices to point past a chunk
  else:
    flags = check(bad)
    assert not bool(flags["idx_in_range"]) and not bool(flags["ok"])


@pytest.mark.parametrize("name", ["diloco", "sparseloco"])
def test_eval_update_is_the_outer_direction_of_that_peer_alone(name):
  """schemes.md §4: the validator applies what the aggregate of this one peer would be."""
  cfg, scheme, _, layout, _, _ = setup(name)
  sub = uploads(name)[1]
  one = jax.tree.map(lambda x: x[None], sub)
  ok = jnp.ones((1,), bool)
  want = scheme.aggregate(one, ok, layout)
  got = scheme.eval_update(sub, scheme.eval_context(one, ok, layout), layout)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-7), got, want)


@pytest.mark.parametrize("name", NAMES)
def test_copy_detector_indices_are_chunk_local_and_a_copy_has_the_same(name):
  _, scheme, _, layout, _, _ = setup(name)
  subs = uploads(name)
  idx = [jax.jit(lambda s: scheme.indices(s, layout))(s) for s in subs[:2]]
  for t in layout.tensors:
    i = np.asarray(idx[0][t.name])
    assert i.shape == t.idx_shape and i.min() >= 0 and i.max() < t.chunk_len
  copy = jax.jit(lambda s: scheme.indices(s, layout))(subs[0]._replace(uid=np.int32(9)))
  jax.tree.map(np.testing.assert_array_equal, copy, idx[0])
  assert any(not np.array_equal(idx[0][n], idx[1][n]) for n in idx[0])


def _loop(cfg, params, layout, batches, states, lr):
  outs = []
  for i in range(P):
    b, s = jax.tree.map(lambda x: x[i], batches), jax.tree.map(lambda x: x[i], states)
    outs.append(jax.jit(lambda p, s, b: peer.peer_round(p, s, b, lr, layout, cfg))(params, s, b))
  return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)


def _assert_close(a, b, atol=1e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), atol=atol,
                               rtol=0)


@pytest.mark.slow   # 40 s: DeMo's version runs in CI (test_peer.py)
@pytest.mark.parametrize("name", ["diloco", "sparseloco"])
def test_p_peers_in_one_call_equal_a_loop_and_one_or_four_devices(name):
  cfg, scheme, params, layout, batches, states = setup(name, raw=True)
  lr = scheme.step_size(0)
  ref = _loop(cfg, params, layout, batches, states, lr)
  outs = []
  for n in (1, 4) if jax.device_count() >= 4 else (1,):
    mesh = shd.make_mesh("peer", n)
    b = shd.put_tree(batches, shd.along(mesh, "peer"))
    s = shd.put_tree(states, shd.along(mesh, "peer"))
    outs.append(jax.jit(lambda p, s, b: peer.peers_round(p, s, b, lr, layout, cfg, mesh))(
        params, s, b))
  for got in outs:
    _assert_close(got, ref)
