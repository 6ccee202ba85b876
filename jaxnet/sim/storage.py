"""Object storage for uploads: put/get with timestamps (DESIGN.md: one small interface).

Object names follow templar (gauntlet.md §1.2): `gradient-{w}-{uid}`, `debug-{w}-{uid}`.
The timestamp is the storage's LastModified, set by the (simulated) clock at upload.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Protocol


class Storage(Protocol):
  def put(self, name: str, data: bytes, timestamp: float) -> None: ...
  def get(self, name: str) -> tuple[bytes, float] | None: ...
  def names(self) -> list[str]: ...


class MemoryStorage:
  def __init__(self):
    self._objects: dict[str, tuple[bytes, float]] = {}

  def put(self, name: str, data: bytes, timestamp: float) -> None:
    self._objects[name] = (bytes(data), float(timestamp))

  def get(self, name: str) -> tuple[bytes, float] | None:
    return self._objects.get(name)

  def names(self) -> list[str]:
    return sorted(self._objects)


class LocalDirStorage:
  """One file per object plus a `.time` sidecar; writes are atomic (temp file + rename)."""

  def __init__(self, directory: str | Path):
    self.directory = Path(directory)
    self.directory.mkdir(parents=True, exist_ok=True)

  def _path(self, name: str) -> Path:
    if "/" in name or name.startswith("."):
      raise ValueError(f"storage object name {name!r} must be a plain file name")
    return self.directory / name

  def put(self, name: str, data: bytes, timestamp: float) -> None:
    path = self._path(name)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    meta = path.with_name(path.name + ".time")
    meta.write_text(json.dumps(float(timestamp)))

  def get(self, name: str) -> tuple[bytes, float] | None:
    path = self._path(name)
    meta = path.with_name(path.name + ".time")
    if not path.exists() or not meta.exists():
      return None
    return path.read_bytes(), float(json.loads(meta.read_text()))

  def names(self) -> list[str]:
    return sorted(p.name for p in self.directory.iterdir()
                  if not p.name.endswith((".time", ".tmp")))


def make_storage(spec: str) -> Storage:
  return MemoryStorage() if spec == "memory" else LocalDirStorage(spec)


def gradient_name(window: int, uid: int) -> str:
  return f"gradient-{window}-{uid}"


def debug_name(window: int, uid: int) -> str:
  return f"debug-{window}-{uid}"
