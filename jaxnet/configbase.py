"""Building blocks shared by every config section (kept apart to avoid import cycles).

Sections that live beside their modules (e.g. `jaxnet/ledger/config.py`) use these, and
`jaxnet/config.py` assembles them into the one `Config` tree.

Each field is documented by its trailing `# comment` (continued on the comment-only lines
indented below it) or, failing that, by the comment block right above it; `field_docs`
reads them back from the source, so `jaxnet train --help` shows what the code says.
"""
from __future__ import annotations

import ast
import functools
import inspect
import io
import textwrap
import tokenize
from dataclasses import dataclass

import jax


class ConfigError(ValueError):
  """A bad configuration value; the message starts with the dotted field name."""


def static_config(cls):
  """Frozen, keyword-only dataclass registered as a static pytree (Training Cookbook)."""
  cls = dataclass(frozen=True, kw_only=True)(cls)
  jax.tree_util.register_static(cls)
  return cls


def require(cond: bool, name: str, msg: str) -> None:
  """Raises `ConfigError("name: msg")` unless `cond`."""
  if not cond:
    raise ConfigError(f"{name}: {msg}")


def behaviour_groups(items, known, name: str) -> list[str]:
  """("behaviour:count", ...) -> one behaviour per member, in order; a one-line
  ConfigError naming `name[i]` for an unknown behaviour or a malformed count."""
  out = []
  for i, item in enumerate(items):
    kind, _, count = item.partition(":")
    require(kind in known, f"{name}[{i}]",
            f"unknown behaviour {kind!r} (known: {', '.join(known)})")
    require(count.isdigit() and int(count) > 0, f"{name}[{i}]",
            f"{item!r} must look like 'behaviour:count' with count > 0")
    out += [kind] * int(count)
  return out


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
  """One-line doc of every annotated field of `cls`, from the comments in its source.

  The doc is the field's trailing comment plus the comment-only lines below it that are
  indented past the field (a wrapped comment); a field without one takes the comment block
  directly above it (section headers `# --- ...` excluded). Missing docs map to "".
  """
  src = textwrap.dedent(inspect.getsource(cls))
  comments: dict[int, tuple[int, str]] = {}   # line -> (column, text)
  code_lines: set[int] = set()
  for tok in tokenize.generate_tokens(io.StringIO(src).readline):
    if tok.type == tokenize.COMMENT:
      comments[tok.start[0]] = (tok.start[1], tok.string.lstrip("#").strip())
    elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                          tokenize.ENDMARKER):
      code_lines.update(range(tok.start[0], tok.end[0] + 1))
  only_comment = lambda ln: ln in comments and ln not in code_lines  # noqa: E731
  docs = {}
  body = ast.parse(src).body[0].body
  for node in body:
    if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
      continue
    col = node.col_offset
    parts = [comments[ln][1] for ln in range(node.lineno, node.end_lineno + 1)
             if ln in comments]
    if parts:
      ln = node.end_lineno + 1
      while only_comment(ln) and comments[ln][0] > col:
        parts.append(comments[ln][1])
        ln += 1
    else:
      ln = node.lineno - 1
      while only_comment(ln) and comments[ln][0] == col and not comments[ln][1].startswith("---"):
        parts.insert(0, comments[ln][1])
        ln -= 1
    docs[node.target.id] = " ".join(p for p in parts if p)
  return docs
