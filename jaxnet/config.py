"""One frozen, typed config tree, loaded from YAML with dotted command-line overrides.

Every section is a frozen dataclass registered as a static pytree node, so a whole
`Config` (or any section) can be passed straight into a jitted function.

Errors are one line and name the field: ``ConfigError: train.batch_size: 6 is not
divisible by the 4 devices of mesh axis 'data'``.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

import yaml


from jaxnet.configbase import ConfigError
from jaxnet.gauntlet.config import GauntletConfig
from jaxnet.ledger.config import LedgerConfig
from jaxnet.market.config import MarketConfig
from jaxnet.net.config import NetConfig
from jaxnet.schemes.demo import DemoConfig
from jaxnet.schemes.diloco import DiLoCoConfig
from jaxnet.schemes.inner import InnerConfig
from jaxnet.schemes.sparseloco import SparseLoCoConfig
from jaxnet.sim.config import SimConfig, require as _require, static_config as _static

__all__ = ["ConfigError", "Config", "DemoConfig", "load_config", "parse_overrides", "config_from_dict", "to_dict", "model_compat",
           "to_yaml", "describe_fields", "FieldInfo"]


@_static
class ModelConfig:
  """LLaMA-style decoder (gauntlet.md §2.1). Defaults are the `tiny` test model."""
  vocab_size: int = 257          # byte tokenizer: 256 bytes + EOS/pad
  d_model: int = 64              # hidden width
  n_layers: int = 2              # decoder blocks
  n_heads: int = 4               # attention heads (no GQA); head dim must be even for RoPE
  d_ff: int = 172                # SwiGLU hidden width
  max_seq_len: int = 64          # context the model is built for; bounds data.seq_len
  rope_theta: float = 1e4        # HF LlamaConfig default (spec §2.1)
  norm_eps: float = 1e-6         # HF LlamaConfig rms_norm_eps default
  init_std: float = 0.02         # HF LlamaConfig initializer_range
  compute_dtype: Literal["float32", "bfloat16"] = "float32"  # matmul dtype; params stay float32
  remat: bool = False            # jax.checkpoint each scanned block
  init_from: str = ""            # start from a LLaMA-layout safetensors checkpoint (a `jaxnet
                                 #   export` or Hugging Face LLaMA directory, or one .safetensors
                                 #   file) of these shapes instead of the random init; "" = random

  def __post_init__(self):
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
      _require(getattr(self, name) > 0, f"model.{name}", "must be positive")
    _require(self.d_model % self.n_heads == 0, "model.n_heads",
             f"{self.n_heads} heads do not divide d_model={self.d_model}")
    _require((self.d_model // self.n_heads) % 2 == 0, "model.n_heads",
             f"head dim {self.d_model // self.n_heads} must be even for RoPE")

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads


@_static
class DataConfig:
  """Offline corpus, packing and deterministic pages (gauntlet.md §2.2)."""
  shards: str = ""               # directory of token shards; "" = the embedded corpus
  tokenizer: str = "byte"        # "byte" or a path to a tokenizers JSON file
  seq_len: int = 64              # tokens per packed sequence
  page_size: int = 8             # sequences per page (reference: 100 rows per page)
  pages_per_window: int = 2      # pages assigned to a peer per round (reference: 6)
  seed: int = 0                  # corpus-level seed for page assignment
  val_fraction: float = 0.02     # tail of the token stream kept for validation
  val_sequences: int = 64        # held-out sequences every mode's val_loss is measured on (the
                                 #   first ones of the held-out tail; fewer if it holds fewer)

  def __post_init__(self):
    for name in ("seq_len", "page_size", "pages_per_window", "val_sequences"):
      _require(getattr(self, name) > 0, f"data.{name}", "must be positive")
    _require(0.0 <= self.val_fraction < 0.5, "data.val_fraction", "must be in [0, 0.5)")


@_static
class TrainConfig:
  """Centralised AdamW baseline (gauntlet.md §2.3, jax.md §4.4 constants)."""
  optimizer: Literal["adamw", "decentral"] = "adamw"  # centralised AdamW, or the config's
                                 #   scheme across train.peers honest peers
  steps: int = 20                # optimizer steps (decentralised: rounds)
  batch_size: int = 8            # global sequences per step
  microbatch: int = 0            # sequences per gradient-accumulation step; 0 = batch_size
  lr: float = 1e-3               # AdamW peak learning rate
  warmup_steps: int = 5          # linear warm-up, then cosine decay to min_lr_ratio
  min_lr_ratio: float = 0.1      # cosine floor, as alpha_f = 0.1 in the DeMo/OLMo configs
  b1: float = 0.9                # AdamW beta1
  b2: float = 0.95               # AdamW beta2
  weight_decay: float = 0.1      # AdamW decoupled weight decay
  grad_clip: float = 1.0         # global gradient-norm clip
  seed: int = 0                  # parameter initialisation (all modes, the simulator too)
  peers: int = 8                 # decentralised mode: simulated peers per round
  compare_baseline: bool = True  # decentralised mode: also run AdamW on the same tokens/round
  eval_every: int = 0            # validation loss every N steps; 0 = never
  out_dir: str = "runs/tiny"     # run directory: metrics, checkpoints, figures

  def __post_init__(self):
    _require(self.steps > 0, "train.steps", "must be positive")
    _require(self.batch_size > 0, "train.batch_size", "must be positive")
    _require(self.microbatch >= 0, "train.microbatch", "must be >= 0")
    if self.microbatch:
      _require(self.batch_size % self.microbatch == 0, "train.microbatch",
               f"{self.microbatch} does not divide batch_size={self.batch_size}")
    _require(self.lr > 0, "train.lr", "must be positive")
    _require(0 <= self.warmup_steps < self.steps or self.steps == 1, "train.warmup_steps",
             f"{self.warmup_steps} must be < steps={self.steps}")
    _require(0 < self.b1 < 1 and 0 < self.b2 < 1, "train.b1", "betas must be in (0, 1)")
    _require(self.peers > 0, "train.peers", "must be positive")


@_static
class MeshConfig:
  """Device mesh. -1 takes all devices for that axis."""
  data: int = -1                 # devices on the data axis; -1 = all
  peer: int = 1                  # devices on the peer axis (simulated peers, LossScore)


@_static
class CheckpointConfig:
  """Orbax CheckpointManager settings (jax.md §2.6)."""
  dir: str = ""                  # "" = <train.out_dir>/checkpoints
  every: int = 0                 # save every N steps (rounds in simulate); 0 = only at the end
  keep: int = 3                  # checkpoints kept (Orbax max_to_keep)
  # auto: resume from the latest checkpoint if the directory has one, else start fresh;
  # required: error when there is none; never: always start fresh (overwrites nothing).
  resume: Literal["auto", "required", "never"] = "auto"

  def __post_init__(self):
    _require(self.every >= 0, "checkpoint.every", "must be >= 0")
    _require(self.keep > 0, "checkpoint.keep", "must be positive")


@_static
class LogConfig:
  """Experiment tracking beside metrics.jsonl, which stays the record (jaxnet.tracking)."""
  tensorboard: str = ""          # TensorBoard event directory: "" = off, "auto" =
                                 #   <train.out_dir>/tensorboard (also a bare --log.tensorboard)


@_static
class Config:
  """The whole config tree: one section per subsystem."""
  scheme: str = "demo"           # training scheme of every decentralised mode: demo, diloco or
                                 #   sparseloco (a module of jaxnet.schemes with a section here)
  model: ModelConfig = field(default_factory=ModelConfig)
  data: DataConfig = field(default_factory=DataConfig)
  train: TrainConfig = field(default_factory=TrainConfig)
  mesh: MeshConfig = field(default_factory=MeshConfig)
  checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
  demo: DemoConfig = field(default_factory=DemoConfig)
  inner: InnerConfig = field(default_factory=InnerConfig)
  diloco: DiLoCoConfig = field(default_factory=DiLoCoConfig)
  sparseloco: SparseLoCoConfig = field(default_factory=SparseLoCoConfig)
  gauntlet: GauntletConfig = field(default_factory=GauntletConfig)
  sim: SimConfig = field(default_factory=SimConfig)
  ledger: LedgerConfig = field(default_factory=LedgerConfig)
  market: MarketConfig = field(default_factory=MarketConfig)
  net: NetConfig = field(default_factory=NetConfig)
  log: LogConfig = field(default_factory=LogConfig)

  def __post_init__(self):
    from jaxnet import schemes   # here, not at the top: scheme modules import this one
    try:
      schemes.scheme_class(self.scheme)
    except ValueError as e:
      raise ConfigError(f"scheme: {e}") from None
    _require(dataclasses.is_dataclass(getattr(self, self.scheme, None)), "scheme",
             f"{self.scheme!r} has no config section")
    _require(self.data.seq_len <= self.model.max_seq_len, "data.seq_len",
             f"{self.data.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}")
    if self.data.tokenizer == "byte":
      _require(self.model.vocab_size >= 257, "model.vocab_size",
               f"{self.model.vocab_size} < 257 needed by the byte tokenizer")

  def replace(self, **sections) -> "Config":
    return dataclasses.replace(self, **sections)


# --------------------------------------------------------------------------- loading

def _check_type(value: Any, tp: Any, name: str) -> Any:
  """Checks (and mildly coerces: int -> float) a YAML value against a type hint."""
  origin = typing.get_origin(tp)
  if dataclasses.is_dataclass(tp):
    if isinstance(value, tp):
      return value
    if not isinstance(value, dict):
      raise ConfigError(f"{name}: expected a mapping, got {type(value).__name__}")
    return _from_dict(tp, value, name + ".")
  if origin is Literal:
    if value not in typing.get_args(tp):
      raise ConfigError(f"{name}: {value!r} is not one of {list(typing.get_args(tp))}")
    return value
  if origin in (typing.Union, types.UnionType):
    args = typing.get_args(tp)
    if value is None and type(None) in args:
      return None
    for arg in args:
      if arg is type(None):
        continue
      try:
        return _check_type(value, arg, name)
      except ConfigError:
        pass
    raise ConfigError(f"{name}: {value!r} does not match {tp}")
  if origin is tuple:
    if not isinstance(value, (list, tuple)):
      raise ConfigError(f"{name}: expected a list, got {type(value).__name__}")
    args = typing.get_args(tp)
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(_check_type(v, args[0], f"{name}[{i}]") for i, v in enumerate(value))
    if len(args) != len(value):
      raise ConfigError(f"{name}: expected {len(args)} items, got {len(value)}")
    return tuple(_check_type(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
  if tp is bool:
    if not isinstance(value, bool):
      raise ConfigError(f"{name}: expected true/false, got {value!r}")
    return value
  if tp is int:
    if isinstance(value, bool) or not isinstance(value, int):
      raise ConfigError(f"{name}: expected an integer, got {value!r}")
    return value
  if tp is float:
    if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
      try:
        value = float(value)
      except ValueError:
        pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise ConfigError(f"{name}: expected a number, got {value!r}")
    if not math.isfinite(value):
      raise ConfigError(f"{name}: {value!r} is not finite")
    return float(value)
  if tp is str:
    if not isinstance(value, str):
      raise ConfigError(f"{name}: expected a string, got {value!r}")
    return value
  raise ConfigError(f"{name}: unsupported field type {tp}")


def _from_dict(cls: type, data: dict, prefix: str = "") -> Any:
  hints = typing.get_type_hints(cls)
  names = {f.name for f in dataclasses.fields(cls)}
  for key in data:
    if key not in names:
      raise ConfigError(f"{prefix}{key}: unknown field (known: {', '.join(sorted(names))})")
  kwargs = {k: _check_type(v, hints[k], prefix + k) for k, v in data.items()}
  try:
    return cls(**kwargs)
  except ConfigError:
    raise
  except TypeError as e:  # pragma: no cover - dataclass signature errors
    raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from None


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
  keys = dotted.split(".")
  node = tree
  for k in keys[:-1]:
    node = node.setdefault(k, {})
    if not isinstance(node, dict):
      raise ConfigError(f"{dotted}: '{k}' is not a section")
  node[keys[-1]] = value


def parse_overrides(args: list[str]) -> dict:
  """`["--train.steps", "50", "--model.remat=true"]` -> nested dict (values parsed as YAML)."""
  tree: dict = {}
  i = 0
  while i < len(args):
    arg = args[i]
    if not arg.startswith("--"):
      raise ConfigError(f"{arg}: expected an override of the form --section.field VALUE")
    key = arg[2:]
    if "=" in key:
      key, raw = key.split("=", 1)
    else:
      if i + 1 >= len(args):
        raise ConfigError(f"{key}: override is missing its value")
      i += 1
      raw = args[i]
    if "." not in key and key not in _root_scalars():
      raise ConfigError(f"{key}: overrides name a field as section.field (or one of "
                        f"{sorted(_root_scalars())})")
    _set_dotted(tree, key, yaml.safe_load(raw))
    i += 1
  return tree


def _root_scalars() -> set[str]:
  """Fields of `Config` itself that are not sections (e.g. `scheme`)."""
  hints = typing.get_type_hints(Config)
  return {f.name for f in dataclasses.fields(Config) if not dataclasses.is_dataclass(hints[f.name])}


def _merge(base: dict, over: dict) -> dict:
  out = dict(base)
  for k, v in over.items():
    out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
  return out


def config_from_dict(data: dict, cls: type = None) -> Config:
  return _from_dict(cls or Config, data or {})


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> Config:
  """Loads a YAML config and applies dotted overrides. Raises ConfigError (one line)."""
  data: dict = {}
  if path is not None:
    p = Path(path)
    if not p.is_file():
      raise ConfigError(f"config: file not found: {p}")
    try:
      data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
      raise ConfigError(f"config: {p} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
      raise ConfigError(f"config: {p} must hold a mapping at top level")
  if overrides:
    over = overrides if isinstance(overrides, dict) else parse_overrides(list(overrides))
    data = _merge(data, over)
  return config_from_dict(data)


def to_dict(cfg: Any) -> dict:
  return dataclasses.asdict(cfg)


def model_compat(model_cfg: ModelConfig) -> dict:
  """The model fields a checkpoint's arrays depend on: every one but `init_from`, which only
  chooses where a fresh run starts (a resume restores its own arrays), so that checkpoints
  written before the field existed still restore."""
  return {k: v for k, v in to_dict(model_cfg).items() if k != "init_from"}


class _Dumper(yaml.SafeDumper):
  """Block mappings, flow lists: `peers: [honest:6, noise:1]` reads like the shipped configs."""


def _flow_seq(dumper, value):
  return dumper.represent_sequence("tag:yaml.org,2002:seq", list(value), flow_style=True)


_Dumper.add_representer(tuple, _flow_seq)
_Dumper.add_representer(list, _flow_seq)


def to_yaml(cfg: Any) -> str:
  """The config as YAML that `load_config` reads back to an equal config."""
  return yaml.dump(to_dict(cfg), Dumper=_Dumper, sort_keys=False, allow_unicode=True)


# --------------------------------------------------------------------------- description

class FieldInfo(typing.NamedTuple):
  """One leaf field of the config tree, as `jaxnet train --help` lists it."""
  name: str       # dotted, e.g. "gauntlet.rating.beta"
  type: str       # e.g. "int", "float", "adamw|demo", "list[str]"
  default: str    # YAML spelling of the default
  doc: str        # the field's comment in its dataclass (configbase.field_docs)
  section: str    # dotted name of the section that holds it, e.g. "gauntlet.rating"


def type_name(tp: Any) -> str:
  """Short spelling of a field's type hint for help text."""
  origin, args = typing.get_origin(tp), typing.get_args(tp)
  if origin is Literal:
    return "|".join(str(a) for a in args)
  if origin is tuple:
    if len(args) == 2 and args[1] is Ellipsis:
      return f"list[{type_name(args[0])}]"
    return "[" + ", ".join(type_name(a) for a in args) + "]"
  if origin in (typing.Union, types.UnionType):
    return " | ".join("null" if a is type(None) else type_name(a) for a in args)
  return "bool" if tp is bool else getattr(tp, "__name__", str(tp))


def _yaml_scalar(value: Any) -> str:
  text = yaml.dump(value, Dumper=_Dumper, width=1 << 16, allow_unicode=True)
  return text.strip().removesuffix("...").strip()


def describe_fields(cls: type = None, prefix: str = "") -> list[FieldInfo]:
  """Every leaf field of the config tree with type, default and doc: a section's own fields
  in declaration order, then its subsections."""
  from jaxnet.configbase import field_docs
  cls = cls or Config
  hints, docs, default = typing.get_type_hints(cls), field_docs(cls), cls()
  out, nested = [], []
  for f in dataclasses.fields(cls):
    tp = hints[f.name]
    if dataclasses.is_dataclass(tp):
      nested += describe_fields(tp, f"{prefix}{f.name}.")
    else:
      out.append(FieldInfo(prefix + f.name, type_name(tp), _yaml_scalar(getattr(default, f.name)),
                           docs.get(f.name, ""), prefix.rstrip(".")))
  return out + nested


def section_docs(cls: type = None, prefix: str = "") -> dict[str, str]:
  """Dotted section name -> first line of its dataclass docstring ("" = the root)."""
  cls = cls or Config
  out = {prefix.rstrip("."): (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""}
  for f, tp in typing.get_type_hints(cls).items():
    if dataclasses.is_dataclass(tp):
      out.update(section_docs(tp, f"{prefix}{f}."))
  return out
