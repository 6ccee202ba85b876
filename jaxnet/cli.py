"""The `jaxnet` command: a thin layer that parses flags into the config and calls the library.

  jaxnet train --config configs/tiny.yaml [--train.steps 50 ...] [--print-config]
  jaxnet data prepare PATH... --out DIR [--tokenizer byte|FILE] [--text-field NAME] [--bpe-vocab N]
  jaxnet simulate --config configs/sim-small.yaml [--sim.rounds 40 ...] [--print-config]
  jaxnet market --config configs/market-tiny.yaml [--market.blocks 100 ...]
  jaxnet report RUN_DIR [--round R] [--no-plots]
  jaxnet export RUN_DIR --out DIR [--step N]      (Hugging Face LLaMA layout)
  jaxnet launch --config C [--storage SPEC] [--run-id R] [...]   (a network of processes)
  jaxnet validator --config C --run-id R [--storage SPEC] [...]
  jaxnet peer --config C --uid U --run-id R [--storage SPEC] [...]

`jaxnet COMMAND --help` lists the command's options; for train and simulate that is every
config field with its type, default and meaning.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

# Errors a user causes (a bad flag, value, file or run directory), by module and class
# name: looked up in sys.modules, so that `--help` does not import JAX to catch them.
USER_ERRORS = (("jaxnet.configbase", "ConfigError"), ("jaxnet.checkpoint", "CheckpointError"),
               ("jaxnet.data.errors", "DataError"), ("jaxnet.rundir", "RunError"),
               ("jaxnet.report", "ReportError"), ("jaxnet.hf", "ExportError"), ("jaxnet.net.clock", "NetError"),
               ("jaxnet.sim.storage", "StorageUnavailable"))

RUN_HELP = {
    "train": "Trains the model: centralised AdamW (train.optimizer: adamw) or the config's "
             "scheme (--scheme demo|diloco|sparseloco) across train.peers simulated peers "
             "(train.optimizer: decentral). Outputs go to train.out_dir.",
    "simulate": "Runs the permissionless network under the config's scheme (--scheme "
                "demo|diloco|sparseloco): peers with the sim.peers behaviours, the "
                "Gauntlet validator and, every sim.ledger_every rounds, a ledger epoch. "
                "Outputs go to train.out_dir; inspect them with `jaxnet report`.",
    "market": "Runs the 2020 intelligence market: market.peers peers that learn the value of "
              "their neighbours (market.valuation) and a ledger (ledger.mechanism) that pays "
              "them. Outputs go to train.out_dir; inspect them with `jaxnet report`.",
    "launch": "Runs the network as separate processes that meet only in object storage "
              "(--storage s3://bucket/prefix or a shared directory): one validator and one "
              "peer per uid of sim.peers (honest only); window 0 starts once all have "
              "compiled (at most net.warmup_s), then sim.rounds windows of net.window_s "
              "seconds. Logs, metrics and checkpoints go to train.out_dir.",
    "validator": "Runs the Gauntlet validator of run --run-id as its own process: scores each "
                 "window from the store after its put window, publishes gather-{w} and writes "
                 "train.out_dir/metrics.jsonl. Normally started by `jaxnet launch`.",
    "peer": "Runs honest peer --uid of run --run-id as its own process: computes and uploads "
            "its submission each window, applies the validator's gather list; its checkpoint "
            "(train.out_dir/peer-U) lets a restarted peer catch up. Normally started by "
            "`jaxnet launch`.",
}

# the options of the process commands, beside the config fields: (flag, metavar, help),
# and those a command cannot run without
NET_REQUIRED = {"validator": ("--run-id",), "peer": ("--uid", "--run-id")}
NET_OPTIONS = {
    "launch": (("--storage", "SPEC", "shared store (default sim.storage): s3://bucket/prefix "
                "or a directory"), ("--run-id", "R", "the run's id in the store (default: new)")),
    "validator": (("--run-id", "R", "the run to join (written by jaxnet launch)"),
                  ("--storage", "SPEC", "shared store (default sim.storage)")),
    "peer": (("--uid", "U", "this peer's uid in sim.peers"),
             ("--run-id", "R", "the run to join (written by jaxnet launch)"),
             ("--storage", "SPEC", "shared store (default sim.storage)")),
}


# overrides that may stand alone (no value, or another option next), and the value they take
BARE_OVERRIDES = {"--log.tensorboard": "auto"}


class UsageError(Exception):
  """A malformed command line; the message is the one line to print."""


class OneLineArgumentParser(argparse.ArgumentParser):
  """argparse whose errors are one line (`prog: error: ...`) instead of usage + error."""

  def error(self, message):
    raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def _one_line(text: str) -> str:
  return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _user_error(e: BaseException) -> bool:
  for module, name in USER_ERRORS:
    cls = getattr(sys.modules.get(module), name, None)
    if cls is not None and isinstance(e, cls):
      return True
  return False


def _os_error(e: BaseException) -> OSError | None:
  """The OSError behind `e`: itself or an explicit cause (`raise ... from err`, as libraries
  wrap I/O errors). Implicit context is not followed: a bug raised while handling, say, a
  cache miss must still show its traceback."""
  seen = set()
  while e is not None and id(e) not in seen:
    if isinstance(e, OSError):
      return e
    seen.add(id(e))
    e = e.__cause__
  return None


def _fail(e: BaseException) -> int:
  print(f"jaxnet: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
  return 2


def _fail_os(e: OSError) -> int:
  """`jaxnet: PermissionError: /path: Permission denied` (one line, exit status 2)."""
  if e.strerror and e.filename is not None:
    where = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else f"{e.filename}"
    print(f"jaxnet: {type(e).__name__}: {where}: {e.strerror}", file=sys.stderr)
    return 2
  return _fail(e)


# --------------------------------------------------------------------------- train, simulate

def run_help(command: str) -> str:
  """`jaxnet train --help`: options, then every config field generated from the dataclasses."""
  from jaxnet.config import describe_fields, section_docs
  fields, sections = describe_fields(), section_docs()
  w_name = max(len(f.name) for f in fields)
  w_type = min(max(len(f.type) for f in fields), 16)
  w_default = min(max(len(f.default) for f in fields), 12)
  extra = NET_OPTIONS.get(command, ())
  usage = "".join(f"{flag} {meta} " if flag in NET_REQUIRED.get(command, ()) else
                  f"[{flag} {meta}] " for flag, meta, _ in extra)
  lines = [f"usage: jaxnet {command} {usage}[--config FILE] [--SECTION.FIELD VALUE ...] "
           "[--print-config]", "", RUN_HELP[command], "", "options:",
           *(f"  {flag + ' ' + meta:<23}  {text}" for flag, meta, text in extra),
           "  --config FILE            YAML config; fields it leaves out keep the defaults below",
           "  --SECTION.FIELD VALUE    override a field (or --SECTION.FIELD=VALUE); VALUE is YAML",
           "  --log.tensorboard [DIR]  TensorBoard events in DIR (alone: <train.out_dir>/tensorboard)",
           "  --print-config           print the resolved config as YAML and exit",
           "  -h, --help               show this help and exit", "",
           "config fields (name, type, default, meaning):"]
  section = None
  for f in fields:
    if f.section != section:
      section = f.section
      lines += ["", f"{section}: {sections.get(section, '')}".rstrip()]
    lines.append(f"  {f.name:<{w_name}}  {f.type:<{w_type}}  {f.default:<{w_default}}  {f.doc}")
  return "\n".join(lines)


def _parse_run_args(argv: list[str]) -> tuple[str | None, list[str], bool, bool]:
  """-> (config path, dotted overrides, --print-config, --help)."""
  path, overrides, show, help_ = None, [], False, False
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg in ("-h", "--help"):
      help_ = True
    elif arg == "--print-config":
      show = True
    elif arg == "--config":
      if i + 1 >= len(argv):
        raise UsageError("jaxnet: --config needs a FILE")
      path, i = argv[i + 1], i + 1
    elif arg.startswith("--config="):
      path = arg.split("=", 1)[1]
    elif arg in BARE_OVERRIDES and (i + 1 >= len(argv) or argv[i + 1].startswith("-")):
      overrides += [arg, BARE_OVERRIDES[arg]]
    elif arg.startswith("--") and "=" not in arg and i + 1 < len(argv):
      overrides += [arg, argv[i + 1]]   # a dotted override and its value, whatever it reads
      i += 1
    else:
      overrides.append(arg)
    i += 1
  return path, overrides, show, help_


def _load(command: str, argv: list[str]):
  """The resolved config, or None when --help / --print-config already answered."""
  path, overrides, show, help_ = _parse_run_args(argv)
  if help_:
    print(run_help(command))
    return None
  from jaxnet.config import load_config, to_yaml
  cfg = load_config(path, overrides)
  if show:
    print(to_yaml(cfg), end="")
    return None
  return cfg


def cmd_train(argv: list[str]) -> int:
  cfg = _load("train", argv)
  if cfg is None:
    return 0
  from jaxnet.sharding import maybe_initialize_distributed
  maybe_initialize_distributed()
  if cfg.train.optimizer == "decentral":
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


def cmd_simulate(argv: list[str]) -> int:
  cfg = _load("simulate", argv)
  if cfg is None:
    return 0
  from jaxnet.sim import network

  def summary(rec):
    slashes = ", ".join(f"{k[6:]}={v}" for k, v in rec["slashes"].items() if v) or "none"
    tops = " ".join(f"{u}:{w:.2f}" for u, w in zip(rec["top_uids"][:3], rec["top_weights"][:3]))
    network.tqdm_write(f"round {rec['round']:>4}  loss {rec['val_loss']:.4f}  scored {rec['evaluated']:>3}  "
                       f"top {tops}  slashes {slashes}")
    g = rec.get("ledger")
    if g and "stake_units" in g:   # one line per ledger epoch: who was paid what
      per = " ".join(f"{v}:{u / s:.4f}" if s else f"{v}:-" for v, (u, s) in
                     enumerate(zip(g["validator_units"], g["stake_units"])))
      network.tqdm_write(f"  epoch {g['epoch']:>3}  miners {sum(g['miner_units'])}  "
                         f"validators {sum(g['validator_units'])}  owner {g['owner']}  "
                         f"dividends/stake {per}")

  result = network.simulate(cfg, on_round=summary)
  hist = result["history"]
  if hist:
    last = hist[-1]
    print(f"done: {last['round'] + 1} rounds, loss {hist[0]['val_loss']:.4f} -> {last['val_loss']:.4f}; "
          f"weight by class {json.dumps({k: round(v, 4) for k, v in last['weight_by_class'].items()})}; "
          f"outputs in {cfg.train.out_dir} (jaxnet report {cfg.train.out_dir})")
  return 0


# --------------------------------------------------------------------------- data, report

DATA_USAGE = "usage: jaxnet data prepare PATH... --out DIR [--tokenizer byte|FILE] [--text-field NAME] [--bpe-vocab N]"


def cmd_data(argv: list[str]) -> int:
  if not argv or argv[0] in ("-h", "--help"):
    print(DATA_USAGE + "\n\nTokenizes text into token shards; see `jaxnet data prepare --help`.")
    return 0 if argv else 2
  if argv[0] != "prepare":
    raise UsageError(f"jaxnet data: unknown command {argv[0]!r} (known: prepare)")
  from jaxnet import data
  return int(data.prepare_main(argv[1:]) or 0)


def cmd_report(argv: list[str]) -> int:
  from jaxnet import report
  return int(report.main(argv) or 0)


def cmd_export(argv: list[str]) -> int:
  p = OneLineArgumentParser(
      prog="jaxnet export",
      description="Writes a run's model (its latest checkpoint) in the Hugging Face LLaMA "
                  "layout: config.json + model.safetensors (+ tokenizer.json when the run used "
                  "one), which transformers.LlamaForCausalLM.from_pretrained(OUT) loads. "
                  "Start a run from it with --model.init_from OUT.")
  p.add_argument("run_dir", metavar="RUN_DIR", help="a train or simulate run directory")
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  p.add_argument("--force", action="store_true", help="write into a non-empty --out")
  args = p.parse_args(argv)
  from jaxnet import hf
  out = hf.export(args.run_dir, args.out, step=args.step, force=args.force)
  print(f"wrote step {out['step']} ({out['n_params']:,} parameters) to {args.out}: "
        f"{', '.join(out['files'])}")
  return 0


def cmd_market(argv: list[str]) -> int:
  cfg = _load("market", argv)
  if cfg is None:
    return 0
  from jaxnet.market import run as market_run

  def line(rec):
    tops = " ".join(str(u) for u in rec["top"])
    alone = f"  alone {rec['loss_alone']:.4f}" if rec["loss_alone"] is not None else ""
    market_run.tqdm_write(f"block {rec['block']:>5}  loss {rec['loss']:.4f}{alone}  "
                          f"top earners {tops}  cabal stake {rec['cabal_share']:.3f}")

  result = market_run.run(cfg, on_block=line)
  hist = result["history"]
  if hist:
    last = hist[-1]
    print(f"done: {last['block'] + 1} blocks, loss with neighbours {hist[0]['loss']:.4f} -> "
          f"{last['loss']:.4f}" + (f", alone {last['loss_alone']:.4f}" if last["loss_alone"]
                                    is not None else "")
          + f"; cabal stake {last['cabal_share']:.3f}; outputs in {cfg.train.out_dir}")
  return 0


# --------------------------------------------------------------------------- processes

def _take_options(command: str, argv: list[str]) -> tuple[dict, list[str]]:
  """Pulls the command's NET_OPTIONS (`--flag VALUE` or `--flag=VALUE`) out of `argv`."""
  flags = {flag for flag, _, _ in NET_OPTIONS[command]}
  found, rest, i = {}, [], 0
  while i < len(argv):
    flag, eq, value = argv[i].partition("=")
    if flag in flags:
      if not eq:
        if i + 1 >= len(argv):
          raise UsageError(f"jaxnet {command}: {flag} needs a value")
        value, i = argv[i + 1], i + 1
      found[flag] = value
    else:
      rest.append(argv[i])
    i += 1
  return found, rest


def _process_config(command: str, argv: list[str]):
  """(config with --storage applied, options) or (None, None) after --help/--print-config."""
  opts, rest = _take_options(command, argv)
  cfg = _load(command, rest)
  if cfg is None:
    return None, None
  missing = [f for f in NET_REQUIRED.get(command, ()) if f not in opts]
  if missing:
    raise UsageError(f"jaxnet {command}: {missing[0]} is required (see jaxnet {command} --help)")
  from jaxnet.net.node import with_storage
  return with_storage(cfg, opts.get("--storage")), opts


def cmd_launch(argv: list[str]) -> int:
  cfg, opts = _process_config("launch", argv)
  if cfg is None:
    return 0
  from jaxnet.net.launch import launch
  out = launch(cfg, opts.get("--run-id"))
  print(f"done: run {out['run_id']}, {cfg.sim.rounds} windows; outputs in {out['out_dir']} "
        f"(jaxnet report {out['out_dir']})")
  return 0


def cmd_validator(argv: list[str]) -> int:
  cfg, opts = _process_config("validator", argv)
  if cfg is None:
    return 0
  from jaxnet.net import validator_node
  validator_node.main(cfg, opts["--run-id"])
  return 0


def cmd_peer(argv: list[str]) -> int:
  cfg, opts = _process_config("peer", argv)
  if cfg is None:
    return 0
  if not opts["--uid"].isdigit():
    raise UsageError(f"jaxnet peer: --uid {opts['--uid']!r} must be an integer >= 0")
  from jaxnet.net import peer_node
  peer_node.main(cfg, int(opts["--uid"]), opts["--run-id"])
  return 0


COMMANDS = {"train": cmd_train, "data": cmd_data, "simulate": cmd_simulate, "market": cmd_market,
            "report": cmd_report, "export": cmd_export, "launch": cmd_launch, "validator": cmd_validator,
            "peer": cmd_peer}


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help"):
    print(__doc__.strip())
    return 0 if argv else 2
  if argv[0] not in COMMANDS:
    print(f"jaxnet: unknown command {argv[0]!r} (known: {', '.join(sorted(COMMANDS))})",
          file=sys.stderr)
    return 2
  try:
    return COMMANDS[argv[0]](argv[1:])
  except UsageError as e:
    print(_one_line(e), file=sys.stderr)
    return 2
  except SystemExit as e:   # argparse: --help (0) or a usage error it printed (2)
    return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
  except KeyboardInterrupt:
    print("jaxnet: interrupted", file=sys.stderr)
    return 130
  except BrokenPipeError:   # `jaxnet train --help | head`: the reader left, say nothing
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1
  except Exception as e:
    if _user_error(e):
      return _fail(e)
    os_error = _os_error(e)   # read-only or full disk, a missing file: not a bug
    if os_error is None:
      raise
    return _fail_os(os_error)


if __name__ == "__main__":
  sys.exit(main())
