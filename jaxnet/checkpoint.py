"""Orbax checkpoints with the current `CheckpointManager` + `args` API (jax.md §2.6).

A checkpoint holds two items: `state` (any pytree of arrays, restored into an abstract
tree that carries the current shardings) and `meta` (JSON: step, data position, the
config that produced it, and a SHA-256 digest of every array). A missing, partial,
damaged or incompatible checkpoint raises `CheckpointError` with one line saying what is
wrong (a damaged array is named with its step and path); nothing restarts silently.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxnet import sharding as shd


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used: missing, partial, or from another config."""


def digests(tree) -> dict[str, str]:
  """SHA-256 of every leaf (dtype, shape and bytes), keyed by its '/'-joined tree path."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    a = np.ascontiguousarray(shd.host_value(leaf))
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    out[jax.tree_util.keystr(path)] = h.hexdigest()
  return out


def _host_local(x) -> bool:
  """A leaf that lives on this process only (numpy, or a jax array on local devices) while
  several processes run: the simulator keeps every process's copy of its state local."""
  return jax.process_count() > 1 and not (isinstance(x, jax.Array) and not x.is_fully_addressable)


def _everywhere():
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("all",))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def _lift(tree):
  """Host-local leaves (identical on every process) -> global replicated arrays, which is
  what Orbax saves under jax.distributed; identity for one process."""
  def one(x):
    if not _host_local(x):
      return x
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(one(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    a = np.asarray(x)
    return jax.make_array_from_callback(a.shape, _everywhere(), lambda idx: a[idx])
  return jax.tree.map(one, tree)


def abstract_like(tree):
  """ShapeDtypeStructs carrying each leaf's current sharding (topology-safe restore)."""
  def one(x):
    sharding = _everywhere() if _host_local(x) else getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  return jax.tree.map(one, tree)


class Checkpointer:
  """Save every `every` steps, keep the last `keep`, restore the latest.

  `compat` is a JSON-able dict (e.g. the model config) that must match on restore.
  """

  def __init__(self, directory: str | Path, every: int = 0, keep: int = 3,
               compat: dict | None = None, create: bool = True):
    self.directory = Path(directory).absolute()
    self.every = every
    self.compat = json.loads(json.dumps(compat or {}))
    if create:
      self.directory.mkdir(parents=True, exist_ok=True)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create)
    self._mngr = ocp.CheckpointManager(self.directory, options=options)

  # -------------------------------------------------------------------------- queries
  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def check_resumable(self) -> int | None:
    """Latest complete step, None for an empty directory; raises on leftovers only."""
    step = self.latest_step()
    if step is None and self.directory.exists():
      leftovers = [p.name for p in self.directory.iterdir() if not p.name.startswith(".")]
      if leftovers:
        raise CheckpointError(
            f"{self.directory}: holds no complete checkpoint (found {', '.join(sorted(leftovers)[:5])}); "
            "remove it or point checkpoint.dir elsewhere")
    return step

  def check_fresh(self) -> None:
    """For checkpoint.resume=never: refuse to mix a new run into old checkpoints."""
    if self.all_steps():
      raise CheckpointError(f"{self.directory}: checkpoint.resume=never but it holds checkpoints "
                            f"{self.all_steps()}; use another checkpoint.dir or train.out_dir")

  def start_step(self, mode: str) -> int | None:
    """The step to resume from under checkpoint.resume=`mode` (None = start fresh)."""
    if mode == "never":
      self.check_fresh()
      return None
    step = self.check_resumable()
    if step is None and mode == "required":
      raise CheckpointError(f"{self.directory}: checkpoint.resume=required but no checkpoint exists")
    return step

  # -------------------------------------------------------------------------- save
  def should_save(self, step: int) -> bool:
    return self.every > 0 and step % self.every == 0

  def save(self, step: int, state: Any, meta: dict | None = None) -> None:
    state = _lift(state)
    meta = dict(meta or {}, step=int(step), compat=self.compat, digests=digests(state))
    self._mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

  # -------------------------------------------------------------------------- restore
  def restore(self, step: int | None, target: Any) -> tuple[Any, dict]:
    """Restores `state` into the structure/shardings of `target`; checks compatibility."""
    if step is None:
      step = self.latest_step()
    if step is None:
      raise CheckpointError(f"{self.directory}: no checkpoint to restore")
    if step not in self.all_steps():
      raise CheckpointError(f"{self.directory}: no checkpoint for step {step} "
                            f"(have {self.all_steps()})")
    try:
      meta = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # orbax raises many types for damaged files
      raise CheckpointError(f"{self.directory}/{step}: metadata unreadable, checkpoint is partial "
                            f"or corrupt ({type(e).__name__}: {_first_line(e)})") from None
    saved = meta.get("compat", {})
    if saved != self.compat:
      diff = sorted(k for k in set(saved) | set(self.compat) if saved.get(k) != self.compat.get(k))
      k = diff[0]
      raise CheckpointError(f"{self.directory}/{step}: incompatible checkpoint, {k} was "
                            f"{saved.get(k)!r}, config says {self.compat.get(k)!r}")
    try:
      restored = self._mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_like(target))))["state"]
    except Exception as e:
      raise CheckpointError(f"{self.directory}/{step}: cannot restore state, checkpoint is partial, "
                            f"corrupt or of another shape ({type(e).__name__}: {_first_line(e)})") from None
    _check_same_structure(restored, target, f"{self.directory}/{step}")
    _check_digests(restored, meta.get("digests"), f"{self.directory}/{step}")
    # leaves the caller keeps host-local come back as this process's copy
    restored = jax.tree.map(lambda r, t: r.addressable_shards[0].data if _host_local(t) else r,
                            restored, target)
    return restored, meta

  def restore_raw(self, step: int | None = None, part: str | None = None) -> tuple[Any, dict]:
    """(the saved state, or its item `part`; meta) of `step` (default the latest), restored
    without a target: for reading a run's arrays outside the run (`jaxnet export`).
    NamedTuples come back as dicts of their fields, tuples as lists. Every returned leaf
    is checked against the SHA-256 digest saved with it."""
    step = self.latest_step() if step is None else step
    if step is None or step not in self.all_steps():
      raise CheckpointError(f"{self.directory}: no checkpoint for step {step} "
                            f"(have {self.all_steps()})")
    try:
      got = self._mngr.restore(step, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore(), state=ocp.args.StandardRestore()))
    except Exception as e:  # orbax raises many types for damaged files
      raise CheckpointError(f"{self.directory}/{step}: cannot read the checkpoint "
                            f"({type(e).__name__}: {_first_line(e)})") from None
    state, meta, prefix = got["state"], got["meta"], ()
    if part is not None:
      items = state if isinstance(state, dict) else dict(enumerate(state))
      items = {str(k): v for k, v in items.items()}
      if part not in items:
        raise CheckpointError(f"{self.directory}/{step}: the checkpoint has no {part!r}")
      state, prefix = items[part], (part,)
    saved = meta.get("digests") if isinstance(meta, dict) else None
    if not isinstance(saved, dict):
      raise CheckpointError(f"{self.directory}/{step}: checkpoint has no array digests")
    # a NamedTuple field was saved under the digest path '.f', a tuple item under '[i]';
    # orbax hands both back as keys, so paths are compared by their key names only
    by_keys = {_key_names(k): v for k, v in saved.items()}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
      key = prefix + _key_names(jax.tree_util.keystr(path))
      if by_keys.get(key) != digests([leaf])["[0]"]:
        raise CheckpointError(f"{self.directory}/{step}: array {'/'.join(key)} fails its SHA-256 "
                              "digest; the checkpoint is damaged")
    return state, dict(meta, step=step)

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _key_names(keystr: str) -> tuple[str, ...]:
  """".params['embed'][0]" -> ('params', 'embed', '0'): a saved digest path's key names."""
  import re
  return tuple(a or b or c for a, b, c in re.findall(r"\.(\w+)|\['([^']*)'\]|\[(\d+)\]", keystr))


def _first_line(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return text[0][:200] if text else ""


def _check_digests(restored, saved, where: str) -> None:
  if not isinstance(saved, dict):
    raise CheckpointError(f"{where}: checkpoint has no array digests (written by an older "
                          "jaxnet or damaged); cannot verify it")
  now = digests(restored)
  for path in sorted(set(now) | set(saved)):
    if now.get(path) != saved.get(path):
      raise CheckpointError(f"{where}: array {path} fails its SHA-256 digest; the checkpoint "
                            "is damaged (restore an earlier step or start a new run)")


def _check_same_structure(restored, target, where: str) -> None:
  r_leaves, r_def = jax.tree.flatten(restored)
  t_leaves, t_def = jax.tree.flatten(target)
  if r_def != t_def:
    raise CheckpointError(f"{where}: incompatible checkpoint, tree structure differs from the model")
  for r, t in zip(r_leaves, t_leaves):
    if r.shape != t.shape or r.dtype != t.dtype:
      raise CheckpointError(f"{where}: incompatible checkpoint, leaf {r.shape}/{r.dtype} "
                            f"where the model has {t.shape}/{t.dtype}")
