"""Hugging Face LLaMA layout: export a run's model, start a run from a LLaMA checkpoint.

`jaxnet export RUN_DIR --out DIR` writes `config.json` + `model.safetensors` (+ the run's
`tokenizer.json` when it used one) that `transformers.LlamaForCausalLM.from_pretrained(DIR)`
loads with no conversion code; `model.init_from: DIR` starts any LLaMA run from such a
checkpoint (or from a Hugging Face LLaMA of the same shape).

What must match for the logits to agree (tests/test_hf.py checks them to 1e-4):
  * Weights: a jaxnet kernel multiplies from the right (`x @ W`, [in, out]); torch's Linear
    stores [out, in], so every projection is transposed. Layer l of a stacked `[L, ...]`
    leaf is `model.layers.{l}`.
  * Embeddings are untied (spec §2.1: the 1.2B run's lm_head is its own matrix):
    `tie_word_embeddings: false`. A tied checkpoint imports with lm_head = embedding^T.
  * RoPE: both use the "rotate half" layout (the first and second halves of a head are
    the pair), so q/k need no permutation; `rope_theta` = model.rope_theta, no scaling.
  * RMSNorm in float32 with eps = model.norm_eps (`rms_norm_eps`), weight applied after.
  * Attention: no GQA (`num_key_value_heads` = `num_attention_heads`), no biases, scale
    1/sqrt(head_dim); MLP `down(silu(gate(x)) * up(x))`.
Everything is written in float32, the dtype jaxnet keeps its parameters in.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from jaxnet.configbase import ConfigError
from jaxnet.submission import SubmissionError, parse_header

CONFIG_FILE, WEIGHTS_FILE, INDEX_FILE = "config.json", "model.safetensors", "model.safetensors.index.json"
MAX_HEADER_BYTES = 100 << 20     # a safetensors header is JSON names + offsets; 100 MiB is
                                 #   ~10^6 tensors, far beyond any LLaMA (bounded before parsing)
MAX_JSON_BYTES = 64 << 20        # config.json, the shard index, tokenizer.json
_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}

# jaxnet leaf -> (HF name pattern, transpose): {l} is the layer of a stacked leaf
_LAYER_MAP = {
    ("attn_norm", "scale"): ("model.layers.{l}.input_layernorm.weight", False),
    ("wq", "kernel"): ("model.layers.{l}.self_attn.q_proj.weight", True),
    ("wk", "kernel"): ("model.layers.{l}.self_attn.k_proj.weight", True),
    ("wv", "kernel"): ("model.layers.{l}.self_attn.v_proj.weight", True),
    ("wo", "kernel"): ("model.layers.{l}.self_attn.o_proj.weight", True),
    ("mlp_norm", "scale"): ("model.layers.{l}.post_attention_layernorm.weight", False),
    ("w_gate", "kernel"): ("model.layers.{l}.mlp.gate_proj.weight", True),
    ("w_up", "kernel"): ("model.layers.{l}.mlp.up_proj.weight", True),
    ("w_down", "kernel"): ("model.layers.{l}.mlp.down_proj.weight", True),
}
_TOP_MAP = {
    ("embed", "embedding"): ("model.embed_tokens.weight", False),
    ("final_norm", "scale"): ("model.norm.weight", False),
    ("lm_head", "kernel"): ("lm_head.weight", True),
}


class ExportError(RuntimeError):
  """A run that cannot be exported or a checkpoint that cannot be imported; one line."""


# ----------------------------------------------------------------------- pure mapping

def to_llama(params) -> dict[str, np.ndarray]:
  """jaxnet params -> {HF LLaMA tensor name: float32 array}, torch's [out, in] layout."""
  out = {}
  for (mod, leaf), (name, t) in _TOP_MAP.items():
    a = np.asarray(params[mod][leaf], np.float32)
    out[name] = np.ascontiguousarray(a.T if t else a)
  for (mod, leaf), (name, t) in _LAYER_MAP.items():
    stacked = np.asarray(params["layers"][mod][leaf], np.float32)
    for l, a in enumerate(stacked):
      out[name.format(l=l)] = np.ascontiguousarray(a.T if t else a)
  return out


def from_llama(tensors, model_cfg, tied: bool = False) -> dict[str, Any]:
  """{HF name: array} (any float dtype) -> jaxnet params of `model_cfg`'s shapes, float32.

  Raises ExportError naming the first missing tensor or wrong shape. `tied`: the
  checkpoint has no lm_head (tie_word_embeddings), so lm_head = embedding^T.
  """
  import jax
  from jaxnet import model as jmodel
  want = jax.tree.map(lambda s: s.shape, jmodel.abstract_params(model_cfg))

  def get(name: str, transpose: bool, shape) -> np.ndarray:
    if name not in tensors:
      raise ExportError(f"tensor {name} is missing")
    a = tensors[name]
    got = tuple(a.shape[::-1]) if transpose else tuple(a.shape)
    if got != tuple(shape):
      raise ExportError(f"tensor {name} has shape {tuple(a.shape)}, the config's model needs "
                        f"{tuple(shape[::-1]) if transpose else tuple(shape)}")
    a = np.asarray(a).astype(np.float32)
    return np.ascontiguousarray(a.T if transpose else a)

  params: dict[str, Any] = {}
  for (mod, leaf), (name, t) in _TOP_MAP.items():
    if mod == "lm_head" and tied:
      name, t = "model.embed_tokens.weight", False
      params[mod] = {leaf: np.ascontiguousarray(get(name, t, want[mod][leaf][::-1]).T)}
      continue
    params[mod] = {leaf: get(name, t, want[mod][leaf])}
  layers = params["layers"] = {}
  for (mod, leaf), (name, t) in _LAYER_MAP.items():
    shape = want["layers"][mod][leaf][1:]
    layers[mod] = {leaf: np.stack([get(name.format(l=l), t, shape)
                                   for l in range(model_cfg.n_layers)])}
  # RoPE tables some older exports carry are recomputed by every loader, jaxnet's too
  extra = sorted(n for n in set(tensors) - _names(model_cfg.n_layers, tied)
                 if not n.endswith("rotary_emb.inv_freq"))
  if extra:
    raise ExportError(f"tensor {extra[0]} is not part of the config's model "
                      f"({model_cfg.n_layers} layers, untied LLaMA)")
  return params


def _names(n_layers: int, tied: bool) -> set[str]:
  names = {name for (mod, _), (name, _) in _TOP_MAP.items() if not (tied and mod == "lm_head")}
  return names | {name.format(l=l) for name, _ in _LAYER_MAP.values() for l in range(n_layers)}


def llama_config(model_cfg, eos_id: int | None = None) -> dict:
  """config.json of the LLaMA that computes what `model_cfg` computes.

  Both RoPE spellings are written: `rope_theta` (transformers 4.x) and `rope_parameters`
  (5.x); each version ignores the other's key.
  """
  return {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama",
      "vocab_size": model_cfg.vocab_size, "hidden_size": model_cfg.d_model,
      "intermediate_size": model_cfg.d_ff, "num_hidden_layers": model_cfg.n_layers,
      "num_attention_heads": model_cfg.n_heads, "num_key_value_heads": model_cfg.n_heads,
      "head_dim": model_cfg.head_dim, "hidden_act": "silu",
      "max_position_embeddings": model_cfg.max_seq_len, "rms_norm_eps": model_cfg.norm_eps,
      "rope_theta": model_cfg.rope_theta,
      "rope_parameters": {"rope_type": "default", "rope_theta": model_cfg.rope_theta},
      "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
      "tie_word_embeddings": False, "initializer_range": model_cfg.init_std,
      "bos_token_id": None, "eos_token_id": eos_id, "pad_token_id": eos_id,
      "torch_dtype": "float32", "use_cache": True,
  }


def check_llama_config(hf: dict, model_cfg, where: str) -> bool:
  """A LLaMA config.json against `model_cfg`: ExportError on the first field that would
  make the model compute something else. Returns tie_word_embeddings."""
  if hf.get("model_type", "llama") != "llama":
    raise ExportError(f"{where}: model_type {hf.get('model_type')!r} is not llama")
  rope = hf.get("rope_parameters") or {}
  theta = hf.get("rope_theta", rope.get("rope_theta", 1e4))
  checks = [("hidden_size", hf.get("hidden_size"), model_cfg.d_model, "model.d_model"),
            ("intermediate_size", hf.get("intermediate_size"), model_cfg.d_ff, "model.d_ff"),
            ("num_hidden_layers", hf.get("num_hidden_layers"), model_cfg.n_layers, "model.n_layers"),
            ("num_attention_heads", hf.get("num_attention_heads"), model_cfg.n_heads, "model.n_heads"),
            ("num_key_value_heads", hf.get("num_key_value_heads", model_cfg.n_heads),
             model_cfg.n_heads, "model.n_heads (jaxnet has no GQA)"),
            ("vocab_size", hf.get("vocab_size"), model_cfg.vocab_size, "model.vocab_size"),
            ("rope_theta", theta, model_cfg.rope_theta, "model.rope_theta"),
            ("rms_norm_eps", hf.get("rms_norm_eps", 1e-6), model_cfg.norm_eps, "model.norm_eps"),
            ("hidden_act", hf.get("hidden_act", "silu"), "silu", "jaxnet's SwiGLU"),
            ("attention_bias", bool(hf.get("attention_bias", False)), False, "jaxnet (no biases)"),
            ("mlp_bias", bool(hf.get("mlp_bias", False)), False, "jaxnet (no biases)")]
  for key, got, need, field in checks:
    if isinstance(need, float) and isinstance(got, (int, float)):
      same = abs(float(got) - need) <= 1e-9 * max(1.0, abs(need))
    else:
      same = got == need
    if not same:
      raise ExportError(f"{where}: {key} is {got!r} but {field} is {need!r}")
  scaling = hf.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
  if scaling:
    raise ExportError(f"{where}: rope scaling {str(scaling)[:80]} is not supported")
  return bool(hf.get("tie_word_embeddings", False))


# ----------------------------------------------------------------------- files

def _read_json(path: Path) -> dict:
  size = path.stat().st_size
  if size > MAX_JSON_BYTES:
    raise ExportError(f"{path}: {size} bytes is over the {MAX_JSON_BYTES} limit for a JSON file")
  try:
    out = json.loads(path.read_text(encoding="utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
    raise ExportError(f"{path}: not a JSON file ({type(e).__name__})") from None
  if not isinstance(out, dict):
    raise ExportError(f"{path}: not a JSON object")
  return out


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
  """{name: array} memory-mapped from a safetensors file (nothing read but the header).

  The header's size is bounded before it is parsed, it is parsed as the uploads' headers
  are (`submission.parse_header`), and every entry's dtype and offsets are checked against
  its shape and the file's size before any array is mapped.
  """
  import ml_dtypes   # ships with jax: numpy's bfloat16
  size = path.stat().st_size
  with open(path, "rb") as f:
    head = f.read(8)
    n = int.from_bytes(head, "little") if len(head) == 8 else -1
    if not 2 <= n <= min(MAX_HEADER_BYTES, size - 8):
      raise ExportError(f"{path}: not a safetensors file (header length {n}, file {size} bytes)")
    try:
      header = parse_header(f.read(n).decode("utf-8"))
    except UnicodeDecodeError as e:
      raise ExportError(f"{path}: safetensors header is not UTF-8 (byte {e.start})") from None
    except SubmissionError as e:   # the uploads' checks: bounded JSON, typed entries
      raise ExportError(f"{path}: safetensors header: {e}") from None
  out, data_start = {}, 8 + n
  for name, e in header.items():
    if name == "__metadata__":
      continue
    if e["dtype"] not in _DTYPES:
      raise ExportError(f"{path}: tensor {name[:80]} has dtype {e['dtype'][:16]!r}, not a float "
                        f"dtype ({', '.join(_DTYPES)})")
    dtype = np.dtype(ml_dtypes.bfloat16) if e["dtype"] == "BF16" else np.dtype(_DTYPES[e["dtype"]])
    begin, end = e["data_offsets"]
    count = int(np.prod(e["shape"], dtype=np.int64))
    if not 0 <= begin <= end <= size - data_start or end - begin != count * dtype.itemsize:
      raise ExportError(f"{path}: tensor {str(name)[:80]} has offsets {e['data_offsets']} that do "
                        f"not fit its shape {e['shape']} and the file")
    out[name] = np.memmap(path, dtype=dtype, mode="r", offset=data_start + begin,
                          shape=tuple(e["shape"])) if count else np.zeros(e["shape"], dtype)
  return out


def load_llama(source: str | Path, model_cfg) -> dict[str, Any]:
  """jaxnet params from a LLaMA-layout checkpoint: a directory (config.json checked when
  present; model.safetensors or a sharded model.safetensors.index.json) or one
  .safetensors file. ExportError (one line) on anything that does not fit `model_cfg`."""
  path = Path(source)
  if not path.exists():
    raise ExportError(f"{path}: no such file or directory")
  tied = False
  if path.is_dir():
    if (path / CONFIG_FILE).exists():
      tied = check_llama_config(_read_json(path / CONFIG_FILE), model_cfg, str(path / CONFIG_FILE))
    if (path / WEIGHTS_FILE).exists():
      files = [path / WEIGHTS_FILE]
    elif (path / INDEX_FILE).exists():
      weight_map = _read_json(path / INDEX_FILE).get("weight_map")
      if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ExportError(f"{path / INDEX_FILE}: no weight_map of file names")
      files = []
      for v in dict.fromkeys(weight_map.values()):
        f = (path / v).resolve()
        if f.parent != path.resolve():   # a shard name must not leave the directory
          raise ExportError(f"{path / INDEX_FILE}: shard {v[:80]!r} is outside the directory")
        files.append(f)
    else:
      raise ExportError(f"{path}: holds neither {WEIGHTS_FILE} nor {INDEX_FILE}")
  else:
    files = [path]
  tensors: dict[str, np.ndarray] = {}
  for f in files:
    if not f.exists():
      raise ExportError(f"{f}: shard named by the index is missing")
    for name, a in read_safetensors(f).items():
      if name in tensors:
        raise ExportError(f"{f}: tensor {name} appears in two shards")
      tensors[name] = a
  if "lm_head.weight" not in tensors and not tied:
    tied = "model.embed_tokens.weight" in tensors and len(tensors) == len(_names(model_cfg.n_layers, True))
  return from_llama(tensors, model_cfg, tied=tied)


def initial_params(model_cfg, key):
  """The parameters every LLaMA mode starts from: `model.init_from` when set, else the
  random initialisation of `key` (train.seed). A checkpoint that does not fit the config
  is a ConfigError naming model.init_from."""
  from jaxnet import model as jmodel
  if not model_cfg.init_from:
    return jmodel.init_params(model_cfg, key)
  import jax
  import jax.numpy as jnp
  try:
    params = load_llama(model_cfg.init_from, model_cfg)
  except (ExportError, OSError) as e:
    raise ConfigError(f"model.init_from: {e}") from None
  return jax.tree.map(jnp.asarray, params)


# ----------------------------------------------------------------------- export

def _run_params(run_dir: Path, cfg, mode: str, step: int | None) -> tuple[dict, int]:
  """The model parameters of a run directory's checkpoint (latest or `step`), each array
  checked against the SHA-256 digest the checkpoint carries."""
  import jax
  from jaxnet import model as jmodel
  from jaxnet.checkpoint import Checkpointer
  directory = Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else run_dir / "checkpoints"
  if not directory.is_dir():
    raise ExportError(f"{directory}: no checkpoints (a run saves one at its end)")
  # θ is the state's first item: TrainState.params and NetState.params (saved as fields),
  # the decentralised trainer's (params, outer, peers) tuple (saved as item 0)
  part = "0" if mode == "train" and cfg.train.optimizer == "decentral" else "params"
  with Checkpointer(directory, create=False) as ckpt:
    params, meta = ckpt.restore_raw(step, part)
  params = jax.tree.map(np.asarray, params)
  want = jmodel.abstract_params(cfg.model)
  same = jax.tree.structure(want) == jax.tree.structure(params) and all(
      w.shape == p.shape for w, p in zip(jax.tree.leaves(want), jax.tree.leaves(params)))
  if not same:
    raise ExportError(f"{directory}/{meta['step']}: the checkpoint's parameters are not the "
                      "model of the run's config.yaml")
  return params, meta["step"]


def _tokenizer_files(data_cfg, out: Path) -> int | None:
  """Copies the run's tokenizer.json (if it used one) with a tokenizer_config.json naming
  its EOS; returns the EOS id (256 for the byte tokenizer, which has no HF file)."""
  from jaxnet.data.tokenizer import BYTE_EOS, EOS_NAMES
  if data_cfg.tokenizer == "byte":
    return BYTE_EOS
  src = Path(data_cfg.tokenizer)
  if not src.is_file():
    raise ExportError(f"{src}: the run's tokenizer file is gone (data.tokenizer)")
  tok = _read_json(src)
  added = {t.get("content"): t.get("id") for t in tok.get("added_tokens", []) if isinstance(t, dict)}
  eos = next((n for n in EOS_NAMES if isinstance(added.get(n), int)), None)
  shutil.copyfile(src, out / "tokenizer.json")
  (out / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "pad_token": eos,
       "model_max_length": None}, indent=2))
  return added.get(eos) if eos else None


def export(run_dir: str | Path, out: str | Path, *, step: int | None = None,
           force: bool = False) -> dict:
  """Writes a run's model (latest checkpoint, or `step`) to `out` in the LLaMA layout.

  Returns a summary: {"step", "n_params", "files"}. Refuses the market (not a LLaMA) and
  an existing non-empty `out` unless `force`.
  """
  import safetensors.numpy
  from jaxnet.config import load_config
  run_dir, out = Path(run_dir), Path(out)
  if not (run_dir / "config.yaml").is_file():
    raise ExportError(f"{run_dir}: not a run directory (no config.yaml)")
  info = _read_json(run_dir / "run.json") if (run_dir / "run.json").is_file() else {}
  if info.get("mode") == "market":
    raise ExportError(f"{run_dir}: a market run has no LLaMA model to export")
  if out.exists() and any(out.iterdir()) and not force:
    raise ExportError(f"{out}: exists and is not empty (use --force to overwrite)")
  cfg = load_config(str(run_dir / "config.yaml"))
  params, step = _run_params(run_dir, cfg, info.get("mode", "train"), step)
  out.mkdir(parents=True, exist_ok=True)
  for name in ("tokenizer.json", "tokenizer_config.json"):   # none stale from a --force
    (out / name).unlink(missing_ok=True)
  eos = _tokenizer_files(cfg.data, out)
  tensors = to_llama(params)
  safetensors.numpy.save_file(tensors, str(out / WEIGHTS_FILE),
                              metadata={"format": "pt", "jaxnet_step": str(step)})
  (out / CONFIG_FILE).write_text(json.dumps(llama_config(cfg.model, eos), indent=2))
  (out / "generation_config.json").write_text(json.dumps(
      {"eos_token_id": eos, "pad_token_id": eos}, indent=2))
  return {"step": step, "n_params": int(sum(a.size for a in tensors.values())),
          "files": sorted(p.name for p in out.iterdir())}
