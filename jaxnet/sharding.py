"""Meshes, placement helpers and multi-host start-up (jax.md §2.1-2.4, §2.9).

Placement is kept apart from logic: the training and peer code is written for one
device; these helpers say where arrays live. Meshes are built with `AxisType.Auto`
so that `jit` with `NamedSharding` inputs lets XLA insert the data-parallel
all-reduce (jax.md §2.2: the deliberate-Auto option of style rule 6).
"""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxnet.configbase import ConfigError

_DIST_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE",
             "TPU_WORKER_HOSTNAMES", "CLOUD_TPU_TASK_ID")


def maybe_initialize_distributed() -> bool:
  """Calls `jax.distributed.initialize()` when the standard environment asks for it.

  Multi-host launch: start the same command on every host with
  `JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=N JAX_PROCESS_ID=i`, or under
  Slurm / Open MPI / TPU pods where JAX detects these itself. Must run before any
  JAX computation. Returns True when it initialised (False when not asked or already
  initialised, so every entry point may call it).
  """
  if not any(os.environ.get(k) for k in _DIST_ENV) or jax.distributed.is_initialized():
    return False
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(os.environ.get("JAX_NUM_PROCESSES", "1")),
        process_id=int(os.environ.get("JAX_PROCESS_ID", "0")))
  else:
    jax.distributed.initialize()
  return True


def _auto_mesh(shape: tuple[int, ...], names: tuple[str, ...], devices=None):
  devices = list(devices if devices is not None else jax.devices())
  n = int(np.prod(shape))
  arr = np.asarray(devices[:n], dtype=object).reshape(shape)
  return jax.sharding.Mesh(arr, names, axis_types=(jax.sharding.AxisType.Auto,) * len(names))


def make_mesh(axis: str, size: int = -1, devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh over `size` devices (-1 = all) named `axis` ('data' or 'peer')."""
  available = len(devices) if devices is not None else jax.device_count()
  if size == -1:
    size = available
  if not 1 <= size <= available:
    raise ConfigError(f"mesh.{axis}: {size} devices requested, {available} available")
  return _auto_mesh((size,), (axis,), devices)


def check_divisible(n: int, mesh: jax.sharding.Mesh, axis: str, field: str) -> None:
  size = mesh.shape[axis]
  if n % size:
    raise ConfigError(f"{field}: {n} is not divisible by the {size} devices of mesh axis '{axis}'")


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def along(mesh, axis: str) -> NamedSharding:
  """Sharding of an array split on its leading axis over mesh axis `axis`."""
  return NamedSharding(mesh, P(axis))


def put_tree(tree, sharding):
  return jax.tree.map(lambda x: jax.device_put(x, sharding), tree)


def host_value(x) -> np.ndarray:
  """The whole array on this host (gathered across processes when it is not addressable)."""
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if x.sharding.is_fully_replicated:
      return np.asarray(x.addressable_shards[0].data)
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def to_global(tree, sharding: NamedSharding):
  """Values every process holds alike (numpy or process-local arrays) -> global arrays with
  `sharding`, which may span several processes' devices: each process places only the
  slices its own devices hold (no transfer between processes)."""
  def one(x):
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])
  return jax.tree.map(one, tree)


def is_main_process() -> bool:
  return jax.process_index() == 0
