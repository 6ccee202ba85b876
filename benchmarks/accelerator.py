"""Accelerator benchmark: the validator's and a peer's heavy work on one GPU/TPU (issue 15 item 4).

One script, one process, every figure beside the ceiling measured in the same run:

  ceilings     a square matmul (bf16 8192^3 on an accelerator, float32 1024^3 on CPU) and a
               device-to-device copy (bytes read + written): the two roofs below.
  lossscore    LossScore (gauntlet.md §9.2) of P peers in one jitted `score_peers` call, exact
               and first order, on templar's per-peer budget: own and random batches of 8 x
               2048 tokens, so 3 forward passes of 8 x 2048 tokens per peer (plus the shared
               L(θ; R)). 150m at P = 256 (5.9e15 FLOP: 5.9 s at 989 TFLOP/s; issue target
               <= 15 s) and 1.2b at P = 32 (target <= 10 s). Beside it, the reference
               validator's loop in PyTorch (benchmarks/torch_reference.py; bf16 autocast on
               CUDA, as templar runs it) on the first `--torch-peers` peers, scaled to P.
  train        the centralised train step on 150m in bf16: tokens/s and MFU against the
               datasheet peak (989 TFLOP/s dense bf16 on an H100/H200) and the measured matmul.
  compress     DeMo compress + decode of one peer's 150m gradient, GB/s of parameter bytes,
               against the NumPy reference (benchmarks/demo_compress.py) on the host.
  copies       the copy detector at P = 256 on the 150m layout against the exact all-pairs
               index overlap (benchmarks/copy_detection.py).
  yuma         one Yuma epoch at 256 validators x 4096 miners against NumPy (benchmarks/ledger.py).

Submissions are random submissions of the layout's exact shapes and dtypes and the batches
random tokens: the cost of a round does not depend on the values (scores are tested for
correctness elsewhere: tests/, benchmarks/peer_eval.py). `--size tiny` (the default on a CPU)
runs the same code on tiny shapes (CI runs it); `--size full` is the default on an
accelerator. Each section's result is written to `--out` as soon as it is done, and a
section that fails is recorded with its error while the others still run.

  python benchmarks/accelerator.py [--size tiny|full] [--only lossscore train ...] [--reps 2]
      [--out results/bench/accelerator.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from jaxnet import model as jmodel, schemes  # noqa: E402
from jaxnet.config import load_config  # noqa: E402
from jaxnet.gauntlet import lossscore  # noqa: E402

PEAK_BF16 = 989e12   # dense bf16 FLOP/s of one H100/H200 SXM (the roofline)
SEQS = 8             # templar's per-peer budget: 8 sequences of 2048 tokens per batch

# Per size: (config, peers) of each LossScore case, and the other sections' shapes.
SIZES = {
    "full": {"lossscore": [("150m", 256, 15.0), ("1.2b", 32, 10.0)], "seq_len": 2048,
             "train": ("150m", ["--train.batch_size", "128", "--train.microbatch", "32"]),
             "compress": "150m", "copies": ("150m", 256, 16), "yuma": (256, 4096),
             "matmul": (8192, jnp.bfloat16), "copy_mib": 2048, "torch_peers": 4},
    "tiny": {"lossscore": [("tiny", 8, None)], "seq_len": None,
             "train": ("tiny", []), "compress": "tiny", "copies": ("tiny", 16, 4),
             "yuma": (16, 64), "matmul": (1024, jnp.float32), "copy_mib": 64, "torch_peers": 2},
}
SECTIONS = ("ceilings", "lossscore", "train", "compress", "copies", "yuma")


def best_of(fn, reps: int) -> tuple[float, object]:
  """(fastest of `reps` blocking calls after one warm-up call, the warm-up's result)."""
  out = jax.block_until_ready(fn())
  times = []
  for _ in range(max(1, reps)):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return min(times), out


def ceilings(size: dict, reps: int) -> dict:
  n, dtype = size["matmul"]
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)   # random data, never zeros
  mm = jax.jit(jnp.matmul)
  t_mm, _ = best_of(lambda: mm(a, b), max(reps, 5))
  x = jax.random.normal(jax.random.key(2), (size["copy_mib"] << 18,), jnp.float32)
  copy = jax.jit(lambda v: v * 1.0001)   # reads and writes every byte once
  t_copy, _ = best_of(lambda: copy(x), max(reps, 5))
  return {"matmul_n": n, "matmul_dtype": jnp.dtype(dtype).name,
          "matmul_tflops": 2 * n ** 3 / t_mm / 1e12,
          "copy_bytes": 2 * x.nbytes, "copy_gbs": 2 * x.nbytes / t_copy / 1e9}


def _tokens(rng, shape, vocab: int) -> dict:
  t = rng.integers(0, min(vocab, 256), shape[:-1] + (shape[-1] + 1,)).astype(np.int32)
  return {"inputs": t[..., :-1], "targets": t[..., 1:], "mask": np.ones(shape, np.float32)}


def _torch_loop(cfg, params, layout, subs, own, rand, step, n_peers: int) -> dict:
  """The PyTorch reference loop on the first `n_peers` peers (bf16 autocast on CUDA)."""
  import contextlib
  import torch
  import torch_reference as tr
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  cut = lambda tree: jax.tree.map(lambda x: np.asarray(x)[:n_peers], tree)
  tp = tr.torch_params(params, layout, dev)
  subs_t, own_t = tr.torch_submissions(cut(subs), dev), tr.torch_batch(cut(own), dev)
  rand_t, dec = tr.torch_batch(rand, dev), tr.TorchDecoder(layout, dev)
  amp = (torch.autocast("cuda", dtype=torch.bfloat16) if dev == "cuda"
         else contextlib.nullcontext())

  def run():
    with amp:
      return tr.score_peers_sequential(tp, subs_t, own_t, rand_t, step, layout=layout,
                                       cfg=cfg.model, decoder=dec)
  run()   # warm-up: kernels, caches
  t0 = time.perf_counter()
  run()
  return {"torch": torch.__version__, "torch_device": dev, "torch_peers": n_peers,
          "torch_s_per_peer": (time.perf_counter() - t0) / n_peers}


def lossscore_case(name: str, P: int, target_s, size: dict, reps: int, matmul_flops: float,
                   torch_peers: int, eval_batches=(1,)) -> dict:
  from copy_detection import synthetic_round
  over = ["--data.seq_len", str(size["seq_len"])] if size["seq_len"] else []
  cfg = load_config(ROOT / "configs" / f"{name}.yaml", over)
  L, V = cfg.data.seq_len, cfg.model.vocab_size
  t0 = time.perf_counter()
  params = jax.jit(partial(jmodel.init_params, cfg.model))(jax.random.key(0))
  scheme = schemes.get(cfg)
  layout = scheme.make_layout(jmodel.abstract_params(cfg.model), n_pages=cfg.data.pages_per_window)
  rng = np.random.default_rng(P)
  subs_host = synthetic_round(layout, P, rng)
  own_host, rand_host = _tokens(rng, (P, SEQS, L), V), _tokens(rng, (SEQS, L), V)
  subs, own, rand = jax.device_put((subs_host, own_host, rand_host))
  step = cfg.train.lr * cfg.gauntlet.eval_lr_factor
  row = {"config": name, "P": P, "seqs": SEQS, "seq_len": L, "params": jmodel.count_params(params),
         "compute_dtype": cfg.model.compute_dtype,
         "upload_mb_per_peer": sum(x[0].nbytes for x in jax.tree.leaves(subs_host)) / 1e6,
         "setup_s": time.perf_counter() - t0, "target_s": target_s}
  fwd = jmodel.flops_per_token(cfg.model, L, training=False) * L * SEQS   # one batch forward
  # exact: 3 forwards per peer + the shared L(θ; R); first order: 2 per peer + one
  # forward-and-backward (3 forwards' worth) for ∇L(θ; R)
  passes = {"exact": 3 * P + 1, "first_order": 2 * P + 3}
  for mode in ("exact", "first_order"):
    for eb in eval_batches:   # peers per lax.map step; the fastest is reported
      fn = jax.jit(lambda p, s, o, r, mode=mode, eb=eb: lossscore.score_peers(
          p, s, o, r, step, layout=layout, model_cfg=cfg.model, eval_batch=eb, mode=mode))
      t0 = time.perf_counter()
      compiled = fn.lower(params, subs, own, rand).compile()
      compile_s = time.perf_counter() - t0
      s, out = best_of(lambda: compiled(params, subs, own, rand), reps)
      row[f"s_{mode}_eval_batch_{eb}"] = s
      if s < row.get(f"s_{mode}", np.inf):
        flop = passes[mode] * fwd
        row.update({f"s_{mode}": s, f"eval_batch_{mode}": eb, f"compile_s_{mode}": compile_s,
                    f"ms_per_peer_{mode}": s / P * 1e3, f"model_flop_{mode}": flop,
                    f"tflops_{mode}": flop / s / 1e12, f"share_of_peak_{mode}": flop / s / PEAK_BF16,
                    f"share_of_matmul_{mode}": flop / s / matmul_flops,
                    f"finite_{mode}": bool(np.isfinite(np.asarray(out.r_rand)).all())})
  if target_s is not None:
    row["target_met"] = row["s_exact"] <= target_s
  if torch_peers:
    try:
      row.update(_torch_loop(cfg, params, layout, subs_host, own_host, rand_host, step,
                             min(torch_peers, P)))
      row["torch_s_scaled_to_P"] = row["torch_s_per_peer"] * P
      row["speedup_vs_torch"] = row["torch_s_scaled_to_P"] / row["s_exact"]
    except ImportError as e:
      row["torch"] = f"not installed ({e.name})"
  return row


def lossscores(size: dict, reps: int, ceil: dict, torch_peers: int, configs, eval_batches) -> dict:
  mm = ceil.get("matmul_tflops", float("nan")) * 1e12
  return {"rows": [lossscore_case(n, p, t, size, reps, mm, torch_peers, eval_batches)
                   for n, p, t in size["lossscore"] if not configs or n in configs]}


def train(size: dict, reps: int, ceil: dict) -> dict:
  from train_step import bench_config
  name, over = size["train"]
  r = bench_config(name, max(reps, 3), over)
  r["mfu_vs_peak_bf16"] = r["model_gflops"] * 1e9 / PEAK_BF16
  r["mfu_vs_matmul"] = r["model_gflops"] * 1e9 / (ceil.get("matmul_tflops", float("nan")) * 1e12)
  return r


def compress(size: dict, reps: int, ceil: dict) -> dict:
  from demo_compress import bench_shape
  r = bench_shape(size["compress"], max(reps, 3), 1)
  r["share_of_copy"] = r["jax"]["compress_decode_gbs"] / ceil.get("copy_gbs", float("nan"))
  return r


def copies(size: dict, reps: int, out_dir: Path, ceil: dict) -> dict:
  import copy_detection
  name, peers, exact = size["copies"]
  r = copy_detection.main(["--config", str(ROOT / "configs" / f"{name}.yaml"), "--peers",
                           str(peers), "--exact-peers", str(exact), "--reps", str(max(reps, 2)),
                           "--out", str(out_dir / "accelerator_copies.json")])["rows"][0]
  # its own ceiling is the host's copy; on an accelerator the submissions are read on device
  r["share_of_device_copy"] = r["submission_gb"] / r["jaxnet_s"] / ceil.get("copy_gbs", float("nan"))
  return r


def yuma(size: dict, reps: int) -> dict:
  from ledger import CONFIGS, bench_epoch
  V, M = size["yuma"]
  return bench_epoch(V, M, "yuma2", CONFIGS["yuma2"], max(reps, 5))


def summary(res: dict) -> list[str]:
  s, lines = res["sections"], []
  c = s.get("ceilings", {})
  if "matmul_tflops" in c:
    lines.append(f"ceilings: {c['matmul_dtype']} {c['matmul_n']}^3 matmul {c['matmul_tflops']:.1f} "
                 f"TFLOP/s; device copy {c['copy_gbs']:.0f} GB/s")
  for r in s.get("lossscore", {}).get("rows", []):
    t = f"{r['torch_s_scaled_to_P']:.1f} s ({r['speedup_vs_torch']:.1f}x)" if "speedup_vs_torch" in r else "-"
    goal = "" if r.get("target_s") is None else f"; target <= {r['target_s']:.0f} s: " + (
        "met" if r["target_met"] else "MISSED")
    lines.append(f"LossScore {r['config']} P={r['P']}: exact {r['s_exact']:.2f} s "
                 f"({r['share_of_peak_exact']:.0%} of 989 TF peak, {r['share_of_matmul_exact']:.0%} "
                 f"of the matmul), first order {r['s_first_order']:.2f} s; torch loop {t}{goal}")
  if "tokens_per_s" in s.get("train", {}):
    r = s["train"]
    lines.append(f"train {r['config']}: {r['tokens_per_s']:,.0f} tokens/s, MFU {r['mfu_vs_peak_bf16']:.1%} "
                 f"of 989 TF peak ({r['mfu_vs_matmul']:.1%} of the matmul)")
  if "jax" in s.get("compress", {}):
    r = s["compress"]
    lines.append(f"compress+decode {r['n_params'] / 1e6:.0f}M params: {r['jax']['compress_decode_gbs']:.1f} GB/s "
                 f"({r['speedup_vs_numpy']:.0f}x NumPy, {r['share_of_copy']:.1%} of the copy)")
  if "jaxnet_s" in s.get("copies", {}):
    r = s["copies"]
    lines.append(f"copy detector P={r['peers']} {r['layout']}: {r['jaxnet_s']:.3f} s "
                 f"({r['speedup']:.0f}x the exact overlap, {r['share_of_device_copy']:.1%} of the device "
                 f"copy), flags {'ok' if r['flags_ok'] else 'WRONG'}")
  if "jax_ms" in s.get("yuma", {}):
    r = s["yuma"]
    lines.append(f"Yuma epoch {r['size']}: {r['jax_ms']:.2f} ms ({r['speedup']:.0f}x NumPy)")
  lines += [f"{k}: FAILED {v}" for k, v in res["failed"].items()]
  return lines


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--size", choices=sorted(SIZES), default=None,
                  help="full on an accelerator, tiny on a CPU (default: by the device)")
  ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
  ap.add_argument("--reps", type=int, default=2, help="timed calls per measurement (best kept)")
  ap.add_argument("--torch-peers", type=int, default=None,
                  help="peers of the PyTorch loop (0: skip it); default by size")
  ap.add_argument("--eval-batch", type=int, nargs="+", default=[1],
                  help="peers per lax.map step of LossScore; several: each timed, the fastest kept")
  ap.add_argument("--lossscore-configs", nargs="*", default=[], help="only these LossScore cases")
  ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "accelerator.json"))
  args = ap.parse_args(argv)
  dev = jax.devices()[0]
  size_name = args.size or ("tiny" if dev.platform == "cpu" else "full")
  size = SIZES[size_name]
  torch_peers = size["torch_peers"] if args.torch_peers is None else args.torch_peers
  print(f"device: {dev.platform} {dev.device_kind} x{jax.device_count()} "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs), jax "
        f"{jax.__version__}; size {size_name}", flush=True)
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  res = {"benchmark": "accelerator", "device": str(dev), "platform": dev.platform,
         "device_kind": dev.device_kind, "n_devices": jax.device_count(), "jax": jax.__version__,
         "size": size_name, "reps": args.reps, "eval_batch": args.eval_batch, "sections": {}, "seconds": {}, "errors": {}, "failed": {}}
  run = {"ceilings": lambda: ceilings(size, args.reps),
         "lossscore": lambda: lossscores(size, args.reps, res["sections"].get("ceilings", {}),
                                         torch_peers, args.lossscore_configs, args.eval_batch),
         "train": lambda: train(size, args.reps, res["sections"].get("ceilings", {})),
         "compress": lambda: compress(size, args.reps, res["sections"].get("ceilings", {})),
         "copies": lambda: copies(size, args.reps, out.parent, res["sections"].get("ceilings", {})),
         "yuma": lambda: yuma(size, args.reps)}
  for name in [s for s in SECTIONS if s in args.only]:
    t0 = time.perf_counter()
    try:
      res["sections"][name] = run[name]()
    except (Exception, SystemExit) as e:   # recorded (a failed check exits); the others still run
      res["errors"][name] = traceback.format_exc(limit=4)
      res["failed"][name] = "".join(traceback.format_exception_only(e)).strip().splitlines()[0]
      print(f"[{name}] failed:\n{res['errors'][name]}", flush=True)
    res["seconds"][name] = time.perf_counter() - t0
    print(f"[{name}] {res['seconds'][name]:.0f} s", flush=True)
    out.write_text(json.dumps(res, indent=2, default=str))
  print("\n".join(summary(res)))
  return res


if __name__ == "__main__":
  sys.exit(1 if main()["errors"] else 0)
