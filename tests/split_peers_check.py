"""Run by tests/test_distributed.py in each of 2 processes (jax.distributed on loopback): the
peers' step with the peer axis split across the processes equals the same step on this
process's own devices, leaf for leaf (not a test module: no test_ prefix)."""
import sys

import jax
import numpy as np

from jaxnet.config import load_config
from jaxnet.sharding import maybe_initialize_distributed
from jaxnet.sim.network import Network


def main(config: str) -> None:
  assert maybe_initialize_distributed() and jax.process_count() == 2
  cfg = load_config(config, ["--sim.peers", '["honest:2", "noise:1", "desync:1"]',
                             "--train.out_dir", "/tmp/unused-split-check"])
  net = Network(cfg, run_id="split-check")
  assert net.peer_mesh.size == 2 and net.peer_mesh is not net.mesh
  st = net.place(net.init_state())
  lr = net.scheme.step_size(0)
  split = net._compute(st, 0, lr)
  local = Network(cfg, devices=jax.local_devices(), run_id="split-check-local")
  assert local.peer_mesh is local.mesh
  one = local._compute(local.place(local.init_state()), 0, lr)
  for a, b in zip(jax.tree.leaves(split), jax.tree.leaves(one)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  print(f"process {jax.process_index()}: split peers' step equals the local one "
        f"({len(jax.tree.leaves(split))} leaves)", flush=True)


if __name__ == "__main__":
  main(sys.argv[1])
