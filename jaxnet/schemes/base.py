"""The scheme seam (schemes.md §1; DESIGN.md): what every training scheme provides.

A round of every scheme, per peer k and round t, from the shared theta^{t-1}:
  1. `local`: the peer's computation on its pages and its encoding into a `Submission`
     (DeMo: one gradient, momentum, DCT top-k; DiLoCo/SparseLoCo: H inner AdamW steps,
     pseudo-gradient, compression with error feedback);
  2. `aggregate` of the gathered peers' submissions into a dense direction;
  3. `outer`: an optax `GradientTransformation` fed that direction as its gradient.
The validator evaluates one peer by applying `eval_update` (what the outer step would
apply for that peer alone, schemes.md §4) scaled by `step_size(window) * eval_lr_factor`.

Operations that need only the static `Layout` (decode, value checks, the indices the copy
detector compares, the eval update, the adversaries' malformed forms) are class methods:
a validator dispatches on `layout.scheme` and never names a scheme. Operations that need
the scheme's settings are methods of an instance bound to the whole `Config` (frozen,
hashable: a scheme instance is a static argument under `jit`).

A new scheme is one file `jaxnet/schemes/<name>.py` defining `SCHEME` (a subclass of
`Scheme` with `name = "<name>"`) and one config section `<name>` in `jaxnet.config.Config`;
`--scheme <name>` then runs it in every mode (`jaxnet.schemes.get`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnet.schemes import layout as lay
from jaxnet.submission import Layout, Submission


@dataclasses.dataclass(frozen=True)
class Scheme:
  """Base class of a training scheme; subclasses override what they change."""
  name: ClassVar[str] = ""
  cfg: Any   # the whole jaxnet.config.Config (frozen and hashable)

  # ------------------------------------------------------------------ bound to the config
  @property
  def section(self):
    """This scheme's config section, `cfg.<name>`."""
    return getattr(self.cfg, self.name)

  def make_layout(self, params, *, n_pages: int,
                  batch_axes=lay.default_batch_axes) -> Layout:
    """Static description of this scheme's submissions for a parameter tree."""
    raise NotImplementedError

  def init(self, params) -> Any:
    """One peer's state before its first round."""
    raise NotImplementedError

  def local(self, params, state, batch_SxL: dict, lr_t, layout: Layout):
    """One peer's round on its pages [S, L]: -> (submission with zero metadata, new state,
    its mean loss on those pages before its own update)."""
    raise NotImplementedError

  def encode_direction(self, dense, layout: Layout) -> Submission:
    """A stateless encoding of a dense tree (no error feedback): what a peer that made up
    a direction would upload (the noise and degraded behaviours)."""
    raise NotImplementedError

  def aggregate(self, subs_G: Submission, valid_G, layout: Layout):
    """Dense direction from G stacked submissions; invalid peers contribute nothing."""
    raise NotImplementedError

  def outer(self) -> optax.GradientTransformation:
    """The outer update, fed `aggregate`'s output as its gradient (count = round)."""
    raise NotImplementedError

  def step_size(self, window):
    """The outer learning rate of round `window` (float32 []): the validator's eval step
    is this times `gauntlet.eval_lr_factor`, and the sync score measures drift in it."""
    raise NotImplementedError

  def check_config(self) -> None:
    """Raises ConfigError when the rest of the config does not fit this scheme."""

  # ------------------------------------------------------------------ the layout alone
  @classmethod
  def decode(cls, sub: Submission, layout: Layout):
    """Dense float32 tree of one submission (no clipping, no sign)."""
    raise NotImplementedError

  @classmethod
  def check_values(cls, sub: Submission, layout: Layout, decode: bool = True) -> dict:
    """Value checks of one submission as scalar bool flags (gauntlet.md §7.4): every scheme
    reports `idx_in_range`, `values_finite`, `qparams_finite`, `decoded_finite`,
    `idx_unique` (informational) and `ok`. Jittable; vmap it over [P, ...]."""
    raise NotImplementedError

  @classmethod
  def indices(cls, sub: Submission, layout: Layout) -> dict:
    """{tensor name: int32 [*batch, n_chunks, k]}: the chunk indices the copy detector
    compares (gauntlet.md §14)."""
    raise NotImplementedError

  @classmethod
  def coefficients(cls, sub: Submission, layout: Layout) -> dict:
    """{tensor name: (idx int32, values float32), both [*batch, n_chunks, k]}: the chunk
    coefficients a peer sent, which the copy detector's value statistic compares (issue
    12). Defaults to `indices` with the decoded chunk entries at those positions."""
    idx = cls.indices(sub, layout)
    dense = layout.treedef.flatten_up_to(cls.decode(sub, layout))
    return {t.name: (idx[t.name], jnp.take_along_axis(lay.to_chunks(d, t), idx[t.name], axis=-1))
            for t, d in zip(layout.tensors, dense)}

  @classmethod
  def eval_context(cls, subs_N: Submission, gathered_N, layout: Layout) -> Any:
    """What `eval_update` needs from the round's gathered peers (schemes.md §4); none here."""
    return ()

  @classmethod
  def eval_update(cls, sub: Submission, context, layout: Layout, apply_sign: bool = True):
    """What the outer step would apply for this peer alone, before scaling (schemes.md §4)."""
    return cls.decode(sub, layout)

  @classmethod
  def out_of_range(cls, sub: Submission, layout: Layout) -> Submission | None:
    """The submission with an index past its chunk (the index_range attack), or None when
    the wire format cannot express one."""
    return None


def chunk_flags(in_range, vals_ok, q_ok, decoded_ok, unique) -> dict:
  """The flag dict of `Scheme.check_values` from per-tensor lists of scalar flags."""
  def all_of(xs):
    return jnp.all(jnp.stack(xs)) if xs else jnp.bool_(True)
  flags = {"idx_in_range": all_of(in_range), "values_finite": all_of(vals_ok),
           "qparams_finite": all_of(q_ok), "decoded_finite": all_of(decoded_ok),
           "idx_unique": all_of(unique)}
  flags["ok"] = (flags["idx_in_range"] & flags["values_finite"] & flags["qparams_finite"]
                 & flags["decoded_finite"])
  return flags


def tree_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def unique_sorted(idx) -> jax.Array:
  """No repeated index within a chunk (last axis)."""
  srt = jnp.sort(idx, axis=-1)
  return jnp.all(srt[..., 1:] != srt[..., :-1])


def field_entries(specs: dict) -> tuple:
  """{field: {name: (shape, dtype)}} -> the hashable `Layout.fields` tuple."""
  return tuple((f, n, tuple(s), np.dtype(d).name) for f, per in specs.items()
               for n, (s, d) in per.items())


def empty_submission(layout: Layout, fields: dict) -> Submission:
  """A Submission from per-field dicts, with zero metadata."""
  zero = jnp.zeros((), jnp.int32)
  full = {f: dict(fields.get(f, {})) for f in ("idx", "val", "qmean", "qscale", "qlut")}
  return Submission(**full, uid=zero, window=zero, pages=jnp.zeros(layout.n_pages, jnp.int32))


def mean_grads(params, batch_SxL: dict, cfg):
  """Mean-token-loss gradient over a peer's pages, accumulated in micro-batches of
  `train.microbatch` when it divides the pages (gauntlet.md §3.1) -> (grads, mean loss).

  The reference averages per-micro-batch mean losses; with equal-length packed sequences
  the token-weighted mean used here differs only by the EOS masking.
  """
  from jaxnet.train import accumulate_grads   # train imports config, which imports schemes
  S = batch_SxL["inputs"].shape[0]
  mb = cfg.train.microbatch if cfg.train.microbatch and S % cfg.train.microbatch == 0 else S
  micro = jax.tree.map(lambda x: x.reshape(x.shape[0] // mb, mb, *x.shape[1:]), batch_SxL)
  total, count, grads = accumulate_grads(params, micro, cfg.model)
  denom = jnp.maximum(count, 1.0)
  return jax.tree.map(lambda g: g / denom, grads), total / denom
