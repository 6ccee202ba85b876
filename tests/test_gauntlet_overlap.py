"""Index-overlap copy detection against a NumPy double loop (gauntlet.md §14, §16)."""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet.gauntlet import overlap, scores
from jaxnet.gauntlet.config import GauntletConfig, GauntletError

P = 6
# leaf name -> (batch + chunk shape, k, chunk_len): a 1-D tensor (k = 8 of 64, "bits"), 2-D
# blocks (k = 6 of 4096, "gather"), and a half-dense 1-D tensor (k = 32 of 64).
LEAVES = {"b1d": ((3, 4), 8, 64), "w2d": ((5,), 6, 4096), "dense": ((7,), 32, 64)}
LENS = {name: spec[2] for name, spec in LEAVES.items()}


def _make_tree(seed=0):
  """Random distinct top-k per chunk; peer 3 copies peer 1 with ~25% of each chunk replaced,
  peer 5 copies peer 0 exactly."""
  rng = np.random.default_rng(seed)
  tree = {}
  for name, (shape, k, chunk_len) in LEAVES.items():
    idx = np.argsort(rng.random((P, *shape, chunk_len)), axis=-1)[..., :k].astype(np.int32)
    idx[5] = idx[0]
    copy = idx[1].reshape(-1, k).copy()
    for row in copy:
      n_swap = max(1, k // 4)
      fresh = np.setdiff1d(np.arange(chunk_len), row)
      row[rng.choice(k, n_swap, replace=False)] = rng.choice(fresh, n_swap, replace=False)
    idx[3] = copy.reshape(idx[1].shape)
    tree[name] = idx
  return tree


def _ref_overlap(tree, lens, size_weight="indices"):
  """The templar double loop, with set semantics (duplicates once, out-of-range dropped)."""
  total, wsum = np.zeros((P, P)), 0.0
  for name, idx in tree.items():
    chunk_len = lens[name]
    k = idx.shape[-1]
    flat = idx.reshape(P, -1, k)
    m = flat.shape[1]
    frac = np.zeros((P, P))
    for a in range(P):
      for b in range(P):
        inter = [len({int(x) for x in flat[a, c] if 0 <= x < chunk_len}
                     & {int(x) for x in flat[b, c] if 0 <= x < chunk_len}) for c in range(m)]
        frac[a, b] = np.mean(np.array(inter) / k)
    w = m * (k if size_weight == "indices" else chunk_len)
    total += w * frac
    wsum += w
  return total / wsum


@pytest.mark.parametrize("size_weight", ["indices", "elements"])
def test_overlap_matches_numpy_double_loop(size_weight):
  tree = _make_tree()
  got = np.asarray(jax.jit(partial(overlap.index_overlap, chunk_lens=LENS,
                                   size_weight=size_weight))(tree))
  ref = _ref_overlap(tree, LENS, size_weight)
  np.testing.assert_allclose(got, ref, atol=1e-6)
  np.testing.assert_allclose(np.diag(got), 1.0, atol=1e-6)
  np.testing.assert_allclose(got, got.T, atol=1e-7)
  # exact copy = 1, perturbed copy well above unrelated pairs (half-dense leaves overlap ~0.5)
  assert got[0, 5] == pytest.approx(1.0) and 0.6 < got[1, 3] < 0.9
  assert got[0, 1] < got[1, 3] - 0.2 and got[2, 4] < got[1, 3] - 0.2


@pytest.mark.parametrize("method", ["bits", "gather"])
def test_methods_and_blocking_agree(method):
  tree = _make_tree(1)
  counts = jax.jit(overlap.leaf_counts, static_argnums=(1, 2, 3))
  for name, idx in tree.items():
    full = counts(jnp.asarray(idx), LENS[name], "auto", 16 << 20)
    # block_bytes of 1 forces one chunk per scan step (with padding of the chunk axis)
    blocked = counts(jnp.asarray(idx), LENS[name], method, 1)
    np.testing.assert_array_equal(blocked, full)


def test_duplicates_and_out_of_range_use_set_semantics():
  rng = np.random.default_rng(2)
  idx = rng.integers(-3, 70, size=(P, 9, 8)).astype(np.int32)   # duplicates, <0 and >=64
  got = overlap.index_overlap({"x": idx}, {"x": 64})
  np.testing.assert_allclose(got, _ref_overlap({"x": idx}, {"x": 64}), atol=1e-6)


def test_permutation_equivariance():
  tree = _make_tree(3)
  perm = np.array([4, 2, 0, 5, 1, 3])
  f = jax.jit(partial(overlap.index_overlap, chunk_lens=LENS))
  base = np.asarray(f(tree))
  permuted = np.asarray(f({n: x[perm] for n, x in tree.items()}))
  np.testing.assert_allclose(permuted, base[np.ix_(perm, perm)], atol=1e-7)


def test_bad_leaves_rejected():
  with pytest.raises(GauntletError, match="integers"):
    overlap.leaf_counts(jnp.zeros((2, 3, 4)), 64)
  with pytest.raises(GauntletError, match="every leaf must be"):
    overlap.index_overlap({"a": jnp.zeros((2, 3, 4), jnp.int32),
                           "b": jnp.zeros((3, 3, 4), jnp.int32)}, {"a": 8, "b": 8})


# ------------------------------------------------------------------ copy_slash

def _ref_copy(ov, t, valid, thr):
  p = len(t)
  level, source = np.zeros(p, int), np.full(p, -1)
  for a in range(p):
    best, src = -1.0, -1
    for b in range(p):
      if a == b or not (valid[a] and valid[b]):
        continue
      if t[a] > t[b] or (t[a] == t[b] and a > b):
        if ov[a, b] > best:
          best, src = ov[a, b], b
    level[a] = sum(best >= x for x in thr) if best >= 0 else 0
    source[a] = src if level[a] > 0 else -1
  return level, source


def test_copy_slash_matches_reference_loop():
  rng = np.random.default_rng(4)
  p = 12
  ov = rng.uniform(0, 0.75, (p, p))
  ov = (ov + ov.T) / 2
  np.fill_diagonal(ov, 1.0)
  t = rng.integers(0, 4, p).astype(np.float32)        # many equal times: uid tie-break
  valid = rng.random(p) > 0.2
  v = overlap.copy_slash(jnp.asarray(ov, jnp.float32), jnp.asarray(t), jnp.asarray(valid))
  level, source = _ref_copy(ov.astype(np.float32), t, valid, (0.4, 0.5, 0.6))
  np.testing.assert_array_equal(v.level, level)
  np.testing.assert_array_equal(v.source, source)
  assert not np.asarray(v.level)[~valid].any()


def test_copy_slash_flags_later_uploader_by_hand():
  ov = jnp.array([[1.0, 0.55, 0.1, 0.7],
                  [0.55, 1.0, 0.2, 0.1],
                  [0.1, 0.2, 1.0, 0.45],
                  [0.7, 0.1, 0.45, 1.0]], jnp.float32)
  t = jnp.array([5.0, 2.0, 3.0, 3.0])
  v = overlap.copy_slash(ov, t, jnp.array([True, True, True, True]))
  # pair (0,1) 0.55: 0 is later -> "max"; pair (0,3) 0.7: 0 later -> "mega" (largest wins);
  # pair (2,3) 0.45 at equal times: the higher uid 3 counts as later -> "high".
  np.testing.assert_array_equal(v.level, [3, 0, 0, 1])
  np.testing.assert_array_equal(v.source, [3, -1, -1, 2])
  np.testing.assert_allclose(v.max_overlap, [0.7, 0.55, 0.45, 0.7])
  # an invalid peer is neither flagged nor a source
  v = overlap.copy_slash(ov, t, jnp.array([True, True, True, False]))
  np.testing.assert_array_equal(v.level, [2, 0, 0, 0])


def test_apply_copy_verdict():
  cfg = GauntletConfig()
  s = scores.init(4)._replace(final=jnp.array([1.0, -1.0, 1.0, 1.0]),
                              bma=jnp.array([0.4, 0.4, 0.4, 0.4]))
  out, reset = overlap.apply_copy_verdict(s, jnp.array([1, 1, 2, 3]), 10, cfg)
  np.testing.assert_allclose(out.final, [0.5, -1.0, 0.0, 0.0])
  np.testing.assert_allclose(out.bma, [0.2, 0.4, 0.0, 0.0])
  np.testing.assert_array_equal(reset, [False, False, True, True])
  np.testing.assert_array_equal(out.timeout_until, [-1, -1, -1, 210])
