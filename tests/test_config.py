"""Config: every shipped file loads; bad values give one-line errors naming the field."""
from pathlib import Path

import pytest

from jaxnet import model
from jaxnet.config import Config, ConfigError, load_config, parse_overrides

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_configs_exist():
  names = {p.stem for p in CONFIGS}
  assert {"tiny", "small", "150m", "1.2b"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_loads(path):
  cfg = load_config(path)
  assert isinstance(cfg, Config)
  hash(cfg)  # frozen and static: usable as a jit argument


def test_overrides_apply_and_parse_types():
  cfg = load_config(CONFIGS[0].parent / "tiny.yaml",
                    ["--train.steps", "50", "--model.remat=true", "--train.lr", "1e-3"])
  assert cfg.train.steps == 50 and cfg.model.remat is True and cfg.train.lr == 1e-3


@pytest.mark.parametrize("overrides, field", [
    (["--train.bogus", "1"], "train.bogus"),
    (["--nosection.x", "1"], "nosection"),
    (["--train.steps", "ten"], "train.steps"),
    (["--train.steps", "1.5"], "train.steps"),
    (["--model.remat", "3"], "model.remat"),
    (["--model.n_heads", "5"], "model.n_heads"),
    (["--model.compute_dtype", "float16"], "model.compute_dtype"),
    (["--train.microbatch", "3"], "train.microbatch"),
    (["--data.seq_len", "4096"], "data.seq_len"),
    (["--model.vocab_size", "100"], "model.vocab_size"),
    (["--checkpoint.resume", "maybe"], "checkpoint.resume"),
])
def test_bad_values_name_the_field(overrides, field):
  with pytest.raises(ConfigError) as e:
    load_config(CONFIGS[0].parent / "tiny.yaml", overrides)
  msg = str(e.value)
  assert msg.startswith(field) and "\n" not in msg


def test_missing_file_and_bad_yaml(tmp_path):
  with pytest.raises(ConfigError, match="file not found"):
    load_config(tmp_path / "nope.yaml")
  bad = tmp_path / "bad.yaml"
  bad.write_text("model: [1, 2\n")
  with pytest.raises(ConfigError, match="not valid YAML"):
    load_config(bad)


def test_override_syntax_errors():
  with pytest.raises(ConfigError, match="missing its value"):
    parse_overrides(["--train.steps"])
  with pytest.raises(ConfigError, match="section.field"):
    parse_overrides(["--steps", "3"])


def test_batch_not_divisible_by_devices_names_field():
  from jaxnet import sharding
  mesh = sharding.make_mesh("data", 4)
  with pytest.raises(ConfigError, match=r"^train.batch_size: 6 is not divisible"):
    sharding.check_divisible(6, mesh, "data", "train.batch_size")


def test_1p2b_parameter_count_without_allocating():
  cfg = load_config(CONFIGS[0].parent / "1.2b.yaml")
  n = model.count_params(model.abstract_params(cfg.model))
  assert abs(n - 1.2049e9) / 1.2049e9 < 1e-3, n
  # spec §2.1: 131.07 M embedding + output, 67.1 M per layer x 16
  D, V, F, L = 2048, 32000, 8192, 16
  assert n == 2 * V * D + L * (4 * D * D + 3 * D * F + 2 * D) + D


def test_fixed_length_tuples_load_from_yaml():
  # tuple[float, float] used to zip (types, values) the wrong way round and reject any value
  cfg = load_config(None, ["--sim.honest_upload_s", "[1, 2.5]"])
  assert cfg.sim.honest_upload_s == (1.0, 2.5)
  with pytest.raises(ConfigError, match=r"^sim.honest_upload_s: expected 2 items"):
    load_config(None, ["--sim.honest_upload_s", "[1, 2, 3]"])
  with pytest.raises(ConfigError, match=r"^sim.honest_upload_s\[1\]: expected a number"):
    load_config(None, ["--sim.honest_upload_s", "[1, x]"])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_to_yaml_reads_back_to_the_same_config(path):
  import yaml
  from jaxnet.config import config_from_dict, to_yaml
  cfg = load_config(path)
  assert config_from_dict(yaml.safe_load(to_yaml(cfg))) == cfg
