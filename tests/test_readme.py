"""The README's commands run in order on a fresh clone (with tiny-model overrides).

The first command block (install + main job) and the block under "## Commands" are taken
from README.md itself, so a command that is edited there is the command that is tested.
They run in-process through `jaxnet.cli.main` in a scratch working directory holding the
shipped configs, in README order: two commands that shared a run directory would fail here.
"""
import shlex
import shutil
from pathlib import Path

from jaxnet import cli

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
# Shrinks every model and run so the whole block takes about a minute on 2 CPU cores; the
# structure of each command (its config, mode, flags and run directory) is unchanged.
TINY = ["--model.d_model", "32", "--model.n_layers", "1", "--model.n_heads", "2",
        "--model.d_ff", "64", "--model.max_seq_len", "32", "--data.seq_len", "32",
        "--train.steps", "2", "--train.warmup_steps", "1", "--train.batch_size", "4",
        "--train.microbatch", "0", "--train.peers", "2", "--sim.rounds", "2"]


def _blocks(text: str) -> list[list[str]]:
  blocks, current = [], None
  for line in text.splitlines():
    if line.startswith("```"):
      if current is None and line.strip() == "```bash":
        current = []
      elif current is not None:
        blocks.append(current)
        current = None
    elif current is not None:
      current.append(line)
  return blocks


def readme_commands() -> list[list[str]]:
  """argv of every `jaxnet ...` command of the first block and of the Commands section."""
  text = README.read_text()
  first = _blocks(text)[0]
  section = text[text.index("## Commands\n"):]
  commands = []
  for line in first + _blocks(section)[0]:
    for part in line.split("&&"):
      words = shlex.split(part, comments=True)
      if words and words[0] == "jaxnet":
        commands.append(words[1:])
  return commands


def test_the_readme_lists_the_main_job_first():
  commands = readme_commands()
  assert commands[0] == ["simulate", "--config", "configs/sim-tiny.yaml"]
  assert {c[0] for c in commands} >= {"train", "simulate", "report", "data"}


def test_every_readme_command_runs_in_order(tmp_path, monkeypatch, capsys):
  shutil.copytree(ROOT / "configs", tmp_path / "configs")
  shutil.copy(README, tmp_path / "README.md")
  monkeypatch.chdir(tmp_path)
  for argv in readme_commands():
    tiny = TINY if argv[0] in ("train", "simulate") and "--help" not in argv else []
    if argv[0] == "market":
      tiny = ["--market.blocks", "3"]
    rc = cli.main(argv + tiny)
    err = capsys.readouterr().err
    assert rc == 0, (argv, err[-2000:])
    assert "Traceback" not in err, (argv, err[-2000:])
  runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
  assert {"sim-tiny", "tiny", "small", "small-demo", "sim-small", "readme-shards",
          "tiny-readme", "sim-validators", "market-tiny"} <= set(runs), runs
