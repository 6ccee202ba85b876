"""The `jaxnet` command: a thin layer that parses flags into the config and calls the library.

  jaxnet train --config configs/tiny.yaml [--train.steps 50 ...]
  jaxnet data prepare PATH... --out DIR [--tokenizer byte|FILE] [--bpe-vocab N]
  jaxnet simulate --config configs/sim-small.yaml [--sim.rounds 40 ...]
  jaxnet report RUN_DIR [--round R] [--no-plots]
"""
from __future__ import annotations

import argparse
import json
import sys


def _split_config(argv: list[str]) -> tuple[str | None, list[str]]:
  parser = argparse.ArgumentParser(add_help=False)
  parser.add_argument("--config", default=None)
  known, rest = parser.parse_known_args(argv)
  return known.config, rest


def _fail(e: Exception) -> int:
  print(f"jaxnet: {type(e).__name__}: {e}", file=sys.stderr)
  return 2


def cmd_train(argv: list[str]) -> int:
  from jaxnet.config import load_config
  from jaxnet.sharding import maybe_initialize_distributed
  maybe_initialize_distributed()
  path, overrides = _split_config(argv)
  cfg = load_config(path, overrides)
  if cfg.train.optimizer == "demo":
    from jaxnet import decentral
    result = decentral.train(cfg)
  else:
    from jaxnet import train
    result = train.train(cfg)
  hist = result["history"]
  if hist:
    print(f"done: step {hist[-1]['step']}, loss {hist[0]['loss']:.4f} -> {hist[-1]['loss']:.4f}; "
          f"outputs in {cfg.train.out_dir}")
  return 0


def cmd_data(argv: list[str]) -> int:
  if not argv or argv[0] != "prepare":
    print("usage: jaxnet data prepare PATH... --out DIR [--tokenizer byte|FILE] [--bpe-vocab N]",
          file=sys.stderr)
    return 2
  from jaxnet import data
  return int(data.prepare_main(argv[1:]) or 0)


def cmd_simulate(argv: list[str]) -> int:
  from jaxnet.config import load_config
  from jaxnet.sim import network
  path, overrides = _split_config(argv)
  cfg = load_config(path, overrides)

  def summary(rec):
    slashes = ", ".join(f"{k[6:]}={v}" for k, v in rec["slashes"].items() if v) or "none"
    tops = " ".join(f"{u}:{w:.2f}" for u, w in zip(rec["top_uids"][:3], rec["top_weights"][:3]))
    network.tqdm_write(f"round {rec['round']:>4}  loss {rec['val_loss']:.4f}  scored {rec['evaluated']:>3}  "
                       f"top {tops}  slashes {slashes}")

  result = network.simulate(cfg, on_round=summary)
  hist = result["history"]
  if hist:
    last = hist[-1]
    print(f"done: {last['round'] + 1} rounds, loss {hist[0]['val_loss']:.4f} -> {last['val_loss']:.4f}; "
          f"weight by class {json.dumps({k: round(v, 4) for k, v in last['weight_by_class'].items()})}; "
          f"outputs in {cfg.train.out_dir} (jaxnet report {cfg.train.out_dir})")
  return 0


def cmd_report(argv: list[str]) -> int:
  from jaxnet import report
  return int(report.main(argv) or 0)


COMMANDS = {"train": cmd_train, "data": cmd_data, "simulate": cmd_simulate, "report": cmd_report}


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
    print(__doc__.strip())
    return 0 if argv and argv[0] in ("-h", "--help") else 2
  from jaxnet.checkpoint import CheckpointError
  from jaxnet.configbase import ConfigError
  errors: tuple[type[Exception], ...] = (ConfigError, CheckpointError, FileNotFoundError)
  try:
    from jaxnet.data import DataError
    errors += (DataError,)
  except ImportError:
    pass
  try:
    return COMMANDS[argv[0]](argv[1:])
  except errors as e:
    return _fail(e)


if __name__ == "__main__":
  sys.exit(main())
