"""DeMo compress + decode throughput: JAX against NumPy/SciPy and against copy bandwidth.

For each model shape, one peer's DeMo step (`demo.compress`: momentum, chunked DCT, top-32,
8-bit quantisation, error feedback) and the receiver's `demo.decode_one` are timed, and the
same steps written with NumPy and `scipy.fft.dctn(norm='ortho')` (checked equal first).
Throughput is GB/s of float32 parameters processed. The ceiling is the copy bandwidth of
the same bytes measured in the same run: x*2 written back into its own buffer (donated in
JAX, `out=` in NumPy), parameter bytes counted once. JAX compress is timed with the state
donated, as a peer loop runs it. Also prints the 1.2b upload size.

  python benchmarks/demo_compress.py [--shapes small,150m] [--out results/bench/demo_compress.json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import scipy.fft

from jaxnet.schemes import demo
from jaxnet import model as jmodel
from jaxnet.config import DemoConfig, load_config

ROOT = Path(__file__).resolve().parent.parent
LR = 4e-4   # gauntlet.md §15.2


def model_shapes(name: str) -> dict:
  """Parameter shapes of configs/<name>.yaml from `jax.eval_shape` (nothing allocated)."""
  cfg = load_config(ROOT / "configs" / f"{name}.yaml")
  return jax.tree.map(lambda s: tuple(s.shape), jmodel.abstract_params(cfg.model))


def model_dims(name: str) -> dict:
  m = load_config(ROOT / "configs" / f"{name}.yaml").model
  return {"V": m.vocab_size, "D": m.d_model, "L": m.n_layers, "F": m.d_ff}


def timed(fn, reps):
  """Median seconds of `reps` calls (after one warm-up call), and the last result."""
  out = fn()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), out


# --------------------------------------------------------------------------- NumPy reference

def np_dct(x, t, inverse=False):
  """Blockwise orthonormal DCT-II (or its inverse) of one tensor slice via scipy.fft."""
  f = scipy.fft.idctn if inverse else scipy.fft.dctn
  if len(t.blocks) == 1:
    return f(x.reshape(t.grid[0], t.blocks[0]), norm="ortho", axes=(1,), workers=-1)
  (h, w), (ny, nx) = t.blocks, t.grid
  if inverse:
    y = f(x.reshape(ny, nx, h, w), norm="ortho", axes=(2, 3), workers=-1)
    return y.transpose(0, 2, 1, 3).reshape(t.tensor_shape)
  y = f(x.reshape(ny, h, nx, w).transpose(0, 2, 1, 3), norm="ortho", axes=(2, 3), workers=-1)
  return y.reshape(ny * nx, h * w)


def np_quantize(v, bins=256, sigmas=6.0):
  mean = v.mean(dtype=np.float32)
  c = v - mean
  std = np.sqrt((c * c).sum()) / math.sqrt(v.size - 1)
  scale = np.float32(sigmas * std / bins) or np.float32(1.0)
  q = np.clip(np.round(c / scale + bins // 2), 0, bins - 1).astype(np.uint8)
  sums = np.bincount(q.ravel(), weights=c.ravel(), minlength=bins)
  counts = np.bincount(q.ravel(), minlength=bins)
  lut = np.where(counts > 0, sums / np.maximum(counts, 1), 0).astype(np.float32)
  return q, mean, scale, lut


def np_decode_slice(idx, vhat, t):
  dense = np.zeros((idx.shape[0], t.chunk_len), np.float32)
  np.put_along_axis(dense, idx.astype(np.int64), vhat, axis=-1)
  return np_dct(dense, t, inverse=True).reshape(t.tensor_shape)


def np_compress(grads, moms, layout, cfg):
  """One peer's DeMo step in NumPy (no warm-up: the error feedback is always applied)."""
  out_idx, out_val, new_moms = {}, {}, []
  for t, g, m in zip(layout.tensors, jax.tree.leaves(grads), jax.tree.leaves(moms)):
    m = cfg.beta * m + LR * g
    slices = m.reshape((-1,) + t.tensor_shape)
    idxs, vals, residual = [], [], np.empty_like(slices)
    for b, x in enumerate(slices):
      coef = np_dct(x, t)
      part = np.argpartition(-np.abs(coef), t.k - 1, axis=-1)[:, :t.k]
      idx = np.sort(part, axis=-1)
      v = np.take_along_axis(coef, idx, axis=-1)
      q, mean, _, lut = np_quantize(v)
      residual[b] = x - np_decode_slice(idx, lut[q] + mean, t)
      idxs.append(idx.astype(np.int16))
      vals.append((q, mean, lut))
    out_idx[t.name], out_val[t.name] = idxs, vals
    new_moms.append(residual.reshape(t.shape))
  return out_idx, out_val, new_moms


def np_decode(out_idx, out_val, layout):
  return [np.stack([np_decode_slice(i, lut[q] + mean, t) for i, (q, mean, lut) in
                    zip(out_idx[t.name], out_val[t.name])]).reshape(t.shape)
          for t in layout.tensors]


# --------------------------------------------------------------------------- one shape

def bench_shape(name, reps, np_reps):
  cfg = DemoConfig(ef_warmup=0)
  shapes = model_shapes(name)
  leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
  rng = np.random.default_rng(0)
  grads_np = treedef.unflatten([rng.standard_normal(s, np.float32) for s in leaves])
  moms_np = treedef.unflatten([1e-3 * rng.standard_normal(s, np.float32) for s in leaves])
  n_params = sum(math.prod(s) for s in leaves)
  nbytes = 4 * n_params
  layout = demo.make_layout(grads_np, cfg, n_pages=6)
  grads = jax.device_put(grads_np)
  state = demo.DemoState(jax.device_put(moms_np), jnp.int32(0))

  compress = jax.jit(lambda g, s: demo.compress(g, s, LR, layout, cfg))
  decode = jax.jit(lambda s: demo.decode_one(s, layout))
  t0 = time.perf_counter()
  jax.block_until_ready(compress(grads, state))
  compile_s = time.perf_counter() - t0
  sub, new = compress(grads, state)
  # Timed as a peer loop runs it: the state is donated, so the new momentum reuses its
  # buffer instead of fresh pages (jax.md §6.3 allocation trap).
  donated = jax.jit(lambda g, s: demo.compress(g, s, LR, layout, cfg), donate_argnums=1)
  loop = {"state": jax.tree.map(jnp.copy, state)}

  def peer_step():
    out, loop["state"] = donated(grads, loop["state"])
    return jax.block_until_ready(out)
  t_comp, _ = timed(peer_step, reps)
  t_dec, dense = timed(lambda: jax.block_until_ready(decode(sub)), reps)

  t_np_comp, (np_idx, np_val, np_moms) = timed(
      lambda: np_compress(grads_np, moms_np, layout, cfg), np_reps)
  t_np_dec, np_dense = timed(lambda: np_decode(np_idx, np_val, layout), np_reps)

  # Checked equal first: same kept indices, codes, residual momentum and decoded tensors.
  idx_match = np.mean([np.mean(np.asarray(sub.idx[t.name]).reshape(-1, t.k)
                               == np.concatenate(np_idx[t.name]).reshape(-1, t.k))
                       for t in layout.tensors])
  code_match = np.mean([np.mean(np.asarray(sub.val[t.name]).reshape(-1)
                                == np.concatenate([q.reshape(-1) for q, _, _ in np_val[t.name]]))
                        for t in layout.tensors])
  rel = lambda a, b: float(np.linalg.norm(np.asarray(a) - b) / (np.linalg.norm(b) + 1e-30))
  mom_err = max(rel(a, b) for a, b in zip(jax.tree.leaves(new.momentum), np_moms))
  dec_err = max(rel(a, b) for a, b in zip(jax.tree.leaves(dense), np_dense))
  equal = bool(idx_match > 0.999 and code_match > 0.99 and mom_err < 1e-3 and dec_err < 1e-2)
  if not equal:
    raise SystemExit(f"{name}: JAX and NumPy disagree: idx {idx_match:.5f} codes "
                     f"{code_match:.5f} momentum {mom_err:.2e} decode {dec_err:.2e}")

  scale = jax.jit(lambda tree: jax.tree.map(lambda x: x * 2.0, tree), donate_argnums=0)
  buf = {"x": jax.tree.map(jnp.copy, grads)}

  def copy_step():
    buf["x"] = jax.block_until_ready(scale(buf["x"]))
  t_copy, _ = timed(copy_step, reps)
  dst = [np.empty_like(x) for x in jax.tree.leaves(grads_np)]
  t_np_copy, _ = timed(lambda: [np.multiply(x, 2.0, out=d) for x, d in
                                zip(jax.tree.leaves(grads_np), dst)], reps)
  gbs = lambda s: nbytes / s / 1e9
  return {
      "shape": model_dims(name), "n_params": n_params, "param_bytes": nbytes,
      "upload_bytes": layout.upload_bytes(), "jax_compile_s": compile_s,
      "jax": {"compress_s": t_comp, "decode_s": t_dec, "compress_gbs": gbs(t_comp),
              "decode_gbs": gbs(t_dec), "compress_decode_gbs": gbs(t_comp + t_dec)},
      "numpy": {"compress_s": t_np_comp, "decode_s": t_np_dec, "compress_gbs": gbs(t_np_comp),
                "decode_gbs": gbs(t_np_dec), "compress_decode_gbs": gbs(t_np_comp + t_np_dec)},
      "copy": {"jax_gbs": gbs(t_copy), "numpy_gbs": gbs(t_np_copy),
               "what": "x*2 into its own buffer; GB/s of parameter bytes"},
      "speedup_vs_numpy": (t_np_comp + t_np_dec) / (t_comp + t_dec),
      "fraction_of_jax_copy": t_copy / (t_comp + t_dec),
      "check": {"idx_match": float(idx_match), "code_match": float(code_match),
                "momentum_rel_err": mom_err, "decode_rel_err": dec_err},
      "reps": {"jax": reps, "numpy": np_reps},
  }


def upload_1p2b() -> dict:
  """1.2b upload size from `jax.eval_shape` of one peer's compress (gauntlet.md §3.3)."""
  out = {}
  params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32),
                        model_shapes("1.2b"), is_leaf=lambda x: isinstance(x, tuple))
  for quantize in (True, False):
    cfg = DemoConfig(quantize=quantize)
    layout = demo.make_layout(params, cfg, n_pages=6)
    sub, _ = jax.eval_shape(lambda g, s: demo.compress(g, s, LR, layout, cfg), params,
                            jax.eval_shape(demo.init, params))
    out["uint8" if quantize else "float32"] = sum(x.size * x.dtype.itemsize
                                                  for x in jax.tree.leaves(sub))
  out["kept_values"] = sum(x.size for x in jax.tree.leaves(sub.val))
  out["fp32_gradient_bytes"] = 4 * sum(x.size for x in jax.tree.leaves(params))
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--shapes", default="small,150m")
  ap.add_argument("--reps", type=int, default=5, help="timed JAX repetitions")
  ap.add_argument("--numpy-reps", type=int, default=0,
                  help="timed NumPy repetitions (0: 3 for small, 1 otherwise)")
  ap.add_argument("--out", default="results/bench/demo_compress.json")
  args = ap.parse_args()
  up = upload_1p2b()
  grad = up["fp32_gradient_bytes"]
  print(f"1.2b upload: {up['uint8'] / 1e6:.2f} MB with 8-bit values, {up['float32'] / 1e6:.2f} MB "
        f"with fp32 values ({up['kept_values'] / 1e6:.3f} M kept values; fp32 gradient "
        f"{grad / 1e9:.2f} GB, {grad / up['uint8']:.0f}x smaller)")
  results = {"jax": jax.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
             "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(),
             "machine": platform.processor() or platform.machine(), "upload_1p2b": up,
             "shapes": {}}
  print(f"{'shape':>6} {'params':>8} | {'JAX c+d GB/s':>12} {'NumPy c+d GB/s':>14} "
        f"{'speed-up':>8} | {'JAX copy':>8} {'NumPy copy':>10} | {'compile s':>9}")
  for name in args.shapes.split(","):
    np_reps = args.numpy_reps or (3 if name == "small" else 1)
    r = bench_shape(name, args.reps, np_reps)
    results["shapes"][name] = r
    print(f"{name:>6} {r['n_params'] / 1e6:7.1f}M | {r['jax']['compress_decode_gbs']:12.3f} "
          f"{r['numpy']['compress_decode_gbs']:14.3f} {r['speedup_vs_numpy']:7.1f}x | "
          f"{r['copy']['jax_gbs']:8.1f} {r['copy']['numpy_gbs']:10.1f} | {r['jax_compile_s']:9.1f}")
    print(f"{'':>6} compress {r['jax']['compress_s'] * 1e3:.1f} ms (NumPy "
          f"{r['numpy']['compress_s'] * 1e3:.0f} ms), decode {r['jax']['decode_s'] * 1e3:.1f} ms "
          f"(NumPy {r['numpy']['decode_s'] * 1e3:.0f} ms); check {r['check']}")
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=2))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
