"""Every config field is documented and read by the code, and the wired ones change what runs.

The read check is an AST scan of the package: a field `name` of section class C counts as
read when some code accesses `.name` anywhere but in C's own `__post_init__` (a field that
only its own validation looks at does nothing). Other methods of C count (e.g.
`SimConfig.degraded_fraction`, which the adversaries call), and so does another class's
check (`Config.__post_init__` bounds data.seq_len by model.max_seq_len). No allow-list;
one rule: a root section named like a scheme (`jaxnet.schemes.scheme_class` accepts the
name) is read as `Scheme.section`, `getattr(cfg, scheme.name)`; its fields are still scanned.
"""
import ast
import dataclasses
import importlib.util
import inspect
import sys
import typing
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnet
from jaxnet import schemes
from jaxnet.config import Config, describe_fields, load_config

PACKAGE = Path(jaxnet.__file__).parent
TINY = PACKAGE.parent / "configs" / "tiny.yaml"


def config_classes(root: type = Config) -> list[type]:
  """The root and every dataclass section below it."""
  out = [root]
  for tp in typing.get_type_hints(root).values():
    if dataclasses.is_dataclass(tp):
      out += config_classes(tp)
  return out


def _key(cls: type) -> tuple[Path, str]:
  return Path(inspect.getsourcefile(cls)).resolve(), cls.__name__


def attribute_reads(files) -> list[tuple[str, tuple | None]]:
  """(x, owner) for every `.x` access in `files`; owner is (file, class) when the access
  sits in that class's `__post_init__`, else None."""
  out = []
  for path in files:
    path = Path(path).resolve()
    tree = ast.parse(path.read_text())
    owner = {}
    for cls in ast.walk(tree):
      if isinstance(cls, ast.ClassDef):
        for fn in cls.body:
          if isinstance(fn, ast.FunctionDef) and fn.name == "__post_init__":
            owner.update({id(n): (path, cls.name) for n in ast.walk(fn)})
    out += [(n.attr, owner.get(id(n))) for n in ast.walk(tree) if isinstance(n, ast.Attribute)]
  return out


def unread_fields(files, root: type = Config) -> list[str]:
  """Dotted names of the fields that no code in `files` reads (module docstring)."""
  reads = attribute_reads(files)

  def is_scheme_section(cls, name):
    if cls is not root:
      return False
    try:
      return schemes.scheme_class(name).name == name
    except ValueError:
      return False

  def walk(cls, prefix):
    key = _key(cls)
    seen = {attr for attr, owner in reads if owner != key}
    for f in dataclasses.fields(cls):
      if f.name not in seen and not is_scheme_section(cls, f.name):
        yield prefix + f.name
      tp = typing.get_type_hints(cls)[f.name]
      if dataclasses.is_dataclass(tp):
        yield from walk(tp, f"{prefix}{f.name}.")
  return list(walk(root, ""))


def test_every_config_field_is_read_somewhere():
  assert unread_fields(sorted(PACKAGE.rglob("*.py"))) == []


def test_the_check_sees_a_field_that_only_its_own_validation_reads(tmp_path):
  # A section whose `unused` field is checked in __post_init__ but read nowhere else.
  (tmp_path / "fake_section.py").write_text(
      "from dataclasses import dataclass\n\n"
      "@dataclass(frozen=True)\n"
      "class Section:\n"
      "  used: int = 1    # read by run()\n"
      "  unused: int = 2  # accepted, validated, never read\n\n"
      "  def __post_init__(self):\n"
      "    assert self.unused >= 0 and self.used >= 0\n\n"
      "def run(section):\n"
      "  return section.used\n")
  spec = importlib.util.spec_from_file_location("fake_section", tmp_path / "fake_section.py")
  mod = importlib.util.module_from_spec(spec)
  sys.modules["fake_section"] = mod
  try:
    spec.loader.exec_module(mod)
    assert unread_fields([tmp_path / "fake_section.py"], mod.Section) == ["unused"]
  finally:
    del sys.modules["fake_section"]


def test_the_check_would_fail_if_a_wired_field_lost_its_reader():
  # Without the validator (which reads fast_scope, carry_unmatched_scores, ...) they are unread.
  files = [p for p in PACKAGE.rglob("*.py") if p.name != "validator.py"]
  missing = unread_fields(files)
  for name in ("gauntlet.fast_scope", "gauntlet.carry_unmatched_scores",
               "gauntlet.gather_slash_threshold", "gauntlet.relative_improvement"):
    assert name in missing


def test_every_field_has_a_one_line_doc():
  fields = describe_fields()
  assert len(fields) > 100
  empty = [f.name for f in fields if not f.doc.strip()]
  assert empty == []
  assert all("\n" not in f.doc for f in fields)
  # the doc is the field's own comment, not a neighbour's section header
  docs = {f.name: f.doc for f in fields}
  assert docs["gauntlet.slash_inactive"] == "per inactive window (§7.1)"
  assert docs["checkpoint.resume"].startswith("auto: resume from the latest checkpoint")
  assert "success" in docs["gauntlet.gather_slash_threshold"]   # a wrapped comment is joined


@pytest.mark.parametrize("name", ["train.log_every", "gauntlet.penalise_page_mismatch",
                                  "gauntlet.windows_per_weights", "gauntlet.blocks_per_window",
                                  "gauntlet.validator_offset", "ledger.tempo",
                                  "ledger.log_path",
                                  "ledger.checkpoint_dir", "ledger.checkpoint_keep"])
def test_removed_fields_are_unknown(name):
  from jaxnet.config import ConfigError
  with pytest.raises(ConfigError, match=rf"^{name}: unknown field"):
    load_config(TINY, [f"--{name}", "1"])


# --------------------------------------------------------------------------- wired fields

def test_carry_unmatched_scores_keeps_a_lone_score_for_the_next_match():
  from jaxnet.gauntlet import rating, scores
  n = 4
  lone = jnp.array([False, False, True, False])
  other = jnp.array([True, False, False, False])
  score = jnp.array([0.3, 0.0, 0.7, 0.0], jnp.float32)

  def two_rounds(carry):
    sc, rt = scores.init(n), rating.init_state(n)
    for scored in (lone, other):
      players, s = scores.match_players(sc, scored, score, carry)
      rt, m = rating.rate(rt, players, s)
      sc = scores.settle_pending(sc, players, s, m["applied"], carry)
      yield np.asarray(players), m, sc

  (p1, m1, sc1), (p2, m2, sc2) = two_rounds(carry=True)
  # round 1: uid 2 alone, no match; its score waits
  assert not m1["applied"] and p1.tolist() == lone.tolist()
  assert np.asarray(sc1.pending).tolist() == lone.tolist()
  assert sc1.pending_score[2] == np.float32(0.7)
  # round 2: uid 0 plays against the carried uid 2, which ranks first (0.7 > 0.3)
  assert m2["applied"] and p2.tolist() == [True, False, True, False]
  assert np.asarray(m2["rank"]).tolist() == [1, -1, 0, -1]
  assert not np.asarray(sc2.pending).any()
  (q1, n1, _), (q2, n2, sc2_off) = two_rounds(carry=False)
  # default (§18 row 10f): the lone score is dropped, round 2 is a lone match again
  assert not n1["applied"] and not n2["applied"] and q2.tolist() == other.tolist()
  assert not np.asarray(sc2_off.pending).any()
  # a full reset drops a waiting score with the rest of the record
  reset = scores.reset_uids(sc1, lone)
  assert not np.asarray(reset.pending).any() and float(reset.pending_score[2]) == 0.0


@pytest.fixture(scope="module")
def round_inputs():
  """One validator round on the tiny model: uids 0-3 honest, uid 4 missing, uid 5 late.

  Every uid starts active with F = 2 and BMA = 0.5, and last round's weights rank uids
  0, 1, 2, 4 on top, so the gather list (size 4) holds one missing uid (success 3/4) and
  leaves the late uid 5 outside.
  """
  from jaxnet import data as jdata, peer
  from jaxnet.schemes import demo
  from jaxnet import model as jmodel
  from jaxnet.gauntlet import collect, fast
  from jaxnet.gauntlet.validator import init_state
  from jaxnet.submission import to_bytes
  n = 6
  cfg = load_config(TINY, ["--gauntlet.sample_rate", "0.5", "--gauntlet.gather_size", "4",
                           "--gauntlet.minimum_peers", "2"])
  corpus = jdata.load_corpus(cfg.data)
  params = jmodel.init_params(cfg.model, jax.random.key(0))
  layout = demo.make_layout(params, cfg.demo, n_pages=cfg.data.pages_per_window)
  subs, _, _ = jax.jit(lambda p, s, b: peer.peers_round(p, s, b, jnp.float32(2e-3), layout, cfg))(
      params, peer.init_states(params, n, cfg), corpus.peer_batches(np.arange(n), 0))
  subs = jax.tree.map(np.asarray, subs._replace(uid=jnp.arange(n, dtype=jnp.int32),
                                                window=jnp.zeros(n, jnp.int32)))
  uploads = [to_bytes(jax.tree.map(lambda x: x[u], subs), layout) for u in range(n)]
  uploads[4] = None
  offsets = np.full(n, 2.0, np.float32)
  offsets[5] = 15.0
  own, rand = collect.round_batches(corpus, n, 0, cfg.gauntlet.sample_rate, 0)
  probe = np.asarray(fast.sync_probe(params, layout))
  data = {"own": own, "rand": rand, "probes": np.tile(probe, (n, 1)),
          "probe_present": np.ones(n, bool), "stake": np.zeros(n, np.float32)}
  state = init_state(n, cfg.gauntlet)
  sc = state.scores._replace(final=jnp.full((n,), 2.0), bma=jnp.full((n,), 0.5),
                             ever_evaluated=jnp.ones((n,), bool),
                             waiting=jnp.ones((n,), jnp.int32),
                             # uid 5's score waits from a lone earlier round
                             pending=jnp.arange(n) == 5,
                             pending_score=jnp.where(jnp.arange(n) == 5, 0.5, 0.0))
  state = state._replace(scores=sc, last_upload=jnp.full((n,), -1, jnp.int32),
                         weights=jnp.array([0.4, 0.3, 0.2, 0.0, 0.1, 0.0], jnp.float32))

  def run(overrides):
    c = load_config(TINY, ["--gauntlet.sample_rate", "0.5", "--gauntlet.gather_size", "4",
                           "--gauntlet.minimum_peers", "2", *overrides])
    v = collect.Validator(c, layout, n)
    _, report = collect.validator_round(state, uploads, offsets, params, data, jax.random.key(0),
                                        validator=v, window=0, lr_t=2e-3)
    return report
  return run


def test_gauntlet_switches_change_the_validator_round(round_inputs):
  # One round with every switch off its default (a compile per config is costly on CPU);
  # each assertion below fails if its switch is ignored. test_validator covers the defaults.
  report = round_inputs(["--gauntlet.relative_improvement", "false",
                         "--gauntlet.gather_slash_threshold", "0.9",
                         "--gauntlet.fast_scope", "all_active",
                         "--gauntlet.carry_unmatched_scores", "true"])
  assert report["in_gather"].tolist() == [True, True, True, False, True, False]
  np.testing.assert_allclose(report["gather_success"], 0.75)
  honest = np.arange(6) < 4
  # relative_improvement false: r = L_before - L_after, not divided by L_before (§18 row 2)
  before, after = report["rand_before"][honest], report["rand_after"][honest]
  np.testing.assert_allclose(report["r_rand"][honest], before - after, rtol=1e-5)
  assert not np.allclose(report["r_rand"][honest], (before - after) / before, rtol=1e-3)
  # fast_scope all_active: the late uid 5, outside the gather list, is slashed as skipped
  # (the reference scope slashes gather peers only: uid 4)
  assert report["slash_gather_skipped"].tolist() == [False] * 4 + [True, True]
  # gather_slash_threshold 0.9 > success 0.75: the skipped peers are zeroed, not x 0.75
  np.testing.assert_array_equal(report["final"][4:], [0.0, 0.0])
  # carry_unmatched_scores: uid 5's waiting score joins this round's match (§18 row 10f)
  assert report["carried"].tolist() == [False] * 5 + [True]
  assert report["in_match"][5] and report["in_match"][honest].all()
  assert not report["scored"][5]
