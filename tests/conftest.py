"""Test set-up: 4 simulated CPU devices, offline hub access, strict numerics.

XLA_FLAGS must be set before JAX initialises its backend, so it is set here at import
time of the conftest, before any test module imports jax (jax.md §2.4, rule 13).
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
if "--xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=4"
os.environ["HF_HUB_OFFLINE"] = "1"
# Token-shard cache of the embedded corpus: per test session, not the user's ~/.cache.
import tempfile  # noqa: E402
os.environ.setdefault("JAXNET_CACHE", tempfile.mkdtemp(prefix="jaxnet-cache-"))
os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def is_shape(x):
  return isinstance(x, tuple)


def random_tree(shapes, seed, scale=1.0):
  """A float32 tree of standard normals shaped like `shapes` (a tree of shape tuples)."""
  leaves, treedef = jax.tree.flatten(shapes, is_leaf=is_shape)
  rng = np.random.default_rng(seed)
  return treedef.unflatten([jnp.asarray(scale * rng.standard_normal(s), jnp.float32)
                            for s in leaves])


def n_devices() -> int:
  return len(jax.devices())


def skip_if_not_enough_devices(count: int):
  """Levanter's marker: skip cleanly instead of failing when devices are missing."""
  return pytest.mark.skipif(n_devices() < count, reason=f"needs {count} devices")


@pytest.fixture(scope="session", autouse=True)
def _log_versions():
  import flax, optax  # noqa: E401
  print(f"\njax {jax.__version__} flax {flax.__version__} optax {optax.__version__} "
        f"devices {n_devices()}")
  yield


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
  """Drops every jit cache after each test module. A whole run compiles thousands of XLA
  programs; kept alive they pile up memory mappings (each CPU executable maps its code),
  and on jax 0.10.2 the run aborted inside XLA compilation near its end (2 of 2 CI runs,
  at the same test, which passes on its own). Modules rarely share compiled programs."""
  yield
  jax.clear_caches()
  import gc
  gc.collect()
