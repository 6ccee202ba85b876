"""`jaxnet export` and `model.init_from`: the Hugging Face LLaMA layout (jaxnet/hf.py).

With transformers installed (`.[hf]`; CI's newest stack): an exported run loads in
`LlamaForCausalLM.from_pretrained` with no conversion code and its logits equal jaxnet's
to 1e-4, and a checkpoint that transformers itself saved starts a jaxnet run computing
the same logits. Everywhere: export -> import is bit-exact, a train run starts from the
imported weights, and hostile or mismatched files give one-line errors.
"""
import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxnet import hf, model as jmodel, train as jtrain
from jaxnet.checkpoint import CheckpointError
from jaxnet.cli import main as cli_main
from jaxnet.config import load_config
from jaxnet.configbase import ConfigError

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny.yaml"
TOL = 1e-4


def _tokens(cfg, seed=0, batch=2):
  return np.random.default_rng(seed).integers(0, cfg.model.vocab_size, (batch, cfg.model.max_seq_len))


def _perturbed(model_cfg, seed: int):
  """Random params whose norm scales are far from 1 (so a scale applied in the wrong place
  or a transposed projection changes the logits)."""
  params = jmodel.init_params(model_cfg, jax.random.key(seed))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: np.asarray(a) * (1.0 + 0.5 * rng.standard_normal(a.shape)).astype(np.float32)
                      if a.ndim <= 2 and a.shape[-1] == model_cfg.d_model and a.size < 10_000
                      else np.asarray(a), params)


def _write(params, model_cfg, out: Path):
  import safetensors.numpy
  out.mkdir(parents=True, exist_ok=True)
  safetensors.numpy.save_file(hf.to_llama(params), str(out / hf.WEIGHTS_FILE), metadata={"format": "pt"})
  (out / hf.CONFIG_FILE).write_text(json.dumps(hf.llama_config(model_cfg, 256)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 3-step tiny AdamW run, exported with `jaxnet export`."""
  d = tmp_path_factory.mktemp("hf")
  cfg = load_config(str(TINY), ["--train.steps", "3", "--train.warmup_steps", "1",
                                "--train.out_dir", str(d / "run"), "--model.norm_eps", "1e-5"])
  out = jtrain.train(cfg, progress=False)
  params = jax.tree.map(np.asarray, out["state"].params)
  assert cli_main(["export", str(d / "run"), "--out", str(d / "export")]) == 0
  return cfg, params, d / "export"


def test_export_import_is_bit_exact_and_a_run_starts_from_it(trained, tmp_path):
  cfg, params, export = trained
  back = hf.load_llama(export, cfg.model)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
    np.testing.assert_array_equal(a, b)
  hf_cfg = json.loads((export / "config.json").read_text())
  assert hf_cfg["rms_norm_eps"] == 1e-5 and hf_cfg["tie_word_embeddings"] is False
  assert hf_cfg["eos_token_id"] == 256
  started = load_config(str(TINY), ["--model.init_from", str(export), "--train.steps", "1",
                                    "--train.warmup_steps", "0", "--model.norm_eps", "1e-5",
                                    "--train.out_dir", str(tmp_path / "b")])
  state = jtrain.init_state(started, jax.random.key(123), jtrain.make_optimizer(started.train))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, np.asarray(b))


def test_logits_in_transformers_equal_jaxnet(trained):
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  cfg, params, export = trained
  model = transformers.LlamaForCausalLM.from_pretrained(str(export), torch_dtype=torch.float32)
  model.eval()
  assert not model.config.tie_word_embeddings
  assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
  tokens = _tokens(cfg)
  with torch.no_grad():
    theirs = model(torch.from_numpy(tokens)).logits.numpy()
  ours = np.asarray(jmodel.forward(params, tokens, cfg.model))
  np.testing.assert_allclose(theirs, ours, atol=TOL, rtol=0)


def test_perturbed_model_with_other_rope_and_eps_matches_transformers(tmp_path):
  """Norm scales far from 1, rope_theta 5e5, eps 1e-5 and weights 5x the usual init (logits of
  order 1, so that every convention moves them by far more than the tolerance)."""
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  cfg = load_config(str(TINY), ["--model.rope_theta", "500000", "--model.norm_eps", "1e-5",
                                "--model.n_layers", "3", "--model.init_std", "0.1"])
  params = _perturbed(cfg.model, 7)
  _write(params, cfg.model, tmp_path / "m")
  model = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "m"), torch_dtype=torch.float32).eval()
  tokens = _tokens(cfg, 1)
  with torch.no_grad():
    theirs = model(torch.from_numpy(tokens)).logits.numpy()
  ours = np.asarray(jmodel.forward(params, tokens, cfg.model))
  np.testing.assert_allclose(theirs, ours, atol=TOL, rtol=0)
  # the check has teeth: the default eps/theta (a config the export must not fall back to)
  # give other logits
  wrong = np.asarray(jmodel.forward(params, tokens, dataclasses.replace(cfg.model, rope_theta=1e4)))
  assert np.abs(wrong - theirs).max() > 100 * TOL


def test_a_checkpoint_transformers_saved_imports(tmp_path):
  """A LlamaForCausalLM that transformers built and saved (its own names, its own config,
  tied embeddings) starts a jaxnet model that computes its logits."""
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  cfg = load_config(str(TINY), [])
  m = cfg.model
  torch.manual_seed(0)
  hf_cfg = transformers.LlamaConfig(
      vocab_size=m.vocab_size, hidden_size=m.d_model, intermediate_size=m.d_ff,
      num_hidden_layers=m.n_layers, num_attention_heads=m.n_heads, num_key_value_heads=m.n_heads,
      max_position_embeddings=m.max_seq_len, rms_norm_eps=m.norm_eps, rope_theta=m.rope_theta,
      tie_word_embeddings=True)
  model = transformers.LlamaForCausalLM(hf_cfg).eval()
  with torch.no_grad():   # non-trivial norm scales
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.add_(0.3 * torch.randn_like(p))
  model.save_pretrained(str(tmp_path / "hf"))
  params = hf.load_llama(tmp_path / "hf", m)
  np.testing.assert_array_equal(params["lm_head"]["kernel"], params["embed"]["embedding"].T)
  tokens = _tokens(cfg, 2)
  with torch.no_grad():
    theirs = model(torch.from_numpy(tokens)).logits.numpy()
  np.testing.assert_allclose(np.asarray(jmodel.forward(params, tokens, m)), theirs, atol=TOL, rtol=0)


def _fake_run(run: Path, cfg, state) -> None:
  """A run directory holding `state` as its checkpoint, as the trainers write one."""
  from jaxnet.checkpoint import Checkpointer
  from jaxnet.config import to_yaml
  run.mkdir()
  (run / "config.yaml").write_text(to_yaml(cfg))
  (run / "run.json").write_text(json.dumps({"mode": "train"}))
  with Checkpointer(run / "checkpoints") as ckpt:
    ckpt.save(4, state, {"data_position": 4})


def test_decentral_state_exports_its_item_zero(tmp_path):
  """θ is NetState.params / TrainState.params (saved as a field, as the trained fixture
  checks) or item 0 of the decentralised trainer's (params, outer, peers) tuple."""
  cfg = load_config(str(TINY), ["--train.optimizer", "decentral"])
  params = _perturbed(cfg.model, 3)
  decoy = jax.tree.map(lambda a: a + 1.0, params)   # the outer state has the same tree
  _fake_run(tmp_path / "dec", cfg, (params, {"mu": decoy}, decoy))
  assert cli_main(["export", str(tmp_path / "dec"), "--out", str(tmp_path / "e")]) == 0
  back = hf.load_llama(tmp_path / "e", cfg.model)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
    np.testing.assert_array_equal(a, b)


def test_export_carries_the_run_tokenizer(tmp_path):
  """A run on a BPE tokenizer exports it; transformers' tokenizer gives jaxnet's ids and EOS."""
  pytest.importorskip("tokenizers")
  transformers = pytest.importorskip("transformers")
  from jaxnet.data import load_tokenizer, train_bpe
  text = ["In the beginning God created the heaven and the earth."] * 20 + ["And God said"] * 5
  train_bpe(text, 300, tmp_path / "tokenizer.json")
  cfg = load_config(str(TINY), ["--data.tokenizer", str(tmp_path / "tokenizer.json"),
                                "--model.vocab_size", "300"])
  _fake_run(tmp_path / "run", cfg, {"params": _perturbed(cfg.model, 4)})
  assert cli_main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "e")]) == 0
  ours = load_tokenizer(str(tmp_path / "tokenizer.json"))
  theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "e"))
  sample = "And God created the earth"
  assert theirs(sample).input_ids == ours.encode(sample).tolist()
  assert theirs.eos_token_id == ours.eos_id
  assert json.loads((tmp_path / "e" / "config.json").read_text())["eos_token_id"] == ours.eos_id


# ----------------------------------------------------------------------- hostile input

def test_mismatched_checkpoints_are_one_line_config_errors(trained, tmp_path):
  cfg, params, export = trained
  wider = load_config(str(TINY), ["--model.d_ff", "176", "--model.init_from", str(export),
                                  "--model.norm_eps", "1e-5"])
  with pytest.raises(ConfigError, match=r"model.init_from: .*config.json: intermediate_size is 172 but model.d_ff is 176"):
    hf.initial_params(wider.model, jax.random.key(0))
  # without config.json the tensor shapes are checked, by name
  (tmp_path / "w").mkdir()
  (tmp_path / "w" / "model.safetensors").write_bytes((export / "model.safetensors").read_bytes())
  with pytest.raises(hf.ExportError, match=r"layers.0.mlp.gate_proj.weight has shape \(172, 64\).*needs \(176, 64\)"):
    hf.load_llama(tmp_path / "w", wider.model)
  gqa = json.loads((export / "config.json").read_text()) | {"num_key_value_heads": 2}
  (tmp_path / "g").mkdir()
  (tmp_path / "g" / "config.json").write_text(json.dumps(gqa))
  (tmp_path / "g" / "model.safetensors").write_bytes((export / "model.safetensors").read_bytes())
  with pytest.raises(hf.ExportError, match="num_key_value_heads is 2 but model.n_heads"):
    hf.load_llama(tmp_path / "g", cfg.model)
  with pytest.raises(hf.ExportError, match="no such file"):
    hf.load_llama(tmp_path / "nothing", cfg.model)


@pytest.mark.parametrize("damage", ["truncated", "huge_header", "not_json", "deep_json",
                                    "bad_offsets", "int_dtype"])
def test_hostile_safetensors_are_refused_before_reading(trained, tmp_path, damage):
  cfg, _, export = trained
  data = (export / "model.safetensors").read_bytes()
  n = int.from_bytes(data[:8], "little")
  header = json.loads(data[8:8 + n])
  name = "model.norm.weight"
  if damage == "truncated":
    data = data[:len(data) // 2]
  elif damage == "huge_header":
    data = (1 << 62).to_bytes(8, "little") + data[8:]
  elif damage == "not_json":
    data = data[:8] + b"{" * n + data[8 + n:]
  elif damage == "deep_json":   # nesting past Python's recursion limit
    deep = b"[" * 200_000
    data = len(deep).to_bytes(8, "little") + deep + data[8 + n:]
  else:
    if damage == "bad_offsets":
      header[name]["data_offsets"][1] += 4
    else:
      header[name]["dtype"] = "I32"
    text = json.dumps(header, separators=(",", ":")).encode().ljust(n)
    data = data[:8] + text[:n] + data[8 + n:] if len(text) <= n else None
    assert data is not None
  path = tmp_path / "bad.safetensors"
  path.write_bytes(data)
  with pytest.raises(hf.ExportError) as e:
    hf.load_llama(path, cfg.model)
  assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_export_refusals(trained, tmp_path, capsys):
  _, _, export = trained
  run = export.parent / "run"
  assert cli_main(["export", str(run), "--out", str(export)]) == 2          # not empty
  assert "exists and is not empty" in capsys.readouterr().err
  assert cli_main(["export", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
  assert "not a run directory" in capsys.readouterr().err
  # a damaged array is found by its digest, not exported
  import shutil
  copy = tmp_path / "copy"
  shutil.copytree(run, copy)
  cfg = load_config(str(copy / "config.yaml"), [])
  (copy / "config.yaml").write_text((copy / "config.yaml").read_text().replace(
      str(run), str(copy)))
  data_files = [f for f in (copy / "checkpoints").rglob("*") if f.is_file() and f.parent.name == "d"]
  assert data_files   # Orbax's OCDBT data files
  for target in data_files:
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    target.write_bytes(bytes(raw))
  code = cli_main(["export", str(copy), "--out", str(tmp_path / "o2")])
  err = capsys.readouterr().err
  assert code == 2 and ("SHA-256" in err or "cannot read" in err), err
  assert cfg.model.vocab_size == 257
