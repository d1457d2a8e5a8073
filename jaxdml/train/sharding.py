"""The data-parallel mesh and the shardings of the train state and of batches.

Data parallelism follows the jit-with-shardings model: the global batch is one array sharded over
the mesh axis "data", parameters and state are replicated, and XLA inserts the collectives. The
mesh uses `AxisType.Auto` axes so that losses written for one device run unchanged on a sharded
batch.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def make_mesh(num_devices: int | None = None, axis: str = "data") -> Mesh:
  """A 1-D data-parallel mesh over the first `num_devices` devices (all by default)."""
  devices = jax.devices()
  n = len(devices) if num_devices is None else int(num_devices)
  if not 1 <= n <= len(devices):
    raise ValueError(f"num_devices must be in [1, {len(devices)}], got {num_devices}.")
  return jax.make_mesh((n,), (axis,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices[:n])


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, stacked: bool = False) -> NamedSharding:
  """Sharding of a batch: leading (batch) axis over "data"; `stacked`: [steps, batch, ...]."""
  axis = mesh.axis_names[0]
  return NamedSharding(mesh, P(None, axis) if stacked else P(axis))


def put_batch(batch: dict, mesh: Mesh, stacked: bool = False) -> dict:
  """Host batch (this process's part) -> global device arrays sharded over the mesh."""
  sharding = batch_sharding(mesh, stacked)
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    if jax.process_count() == 1:
      out[k] = jax.device_put(v, sharding)
    else:
      out[k] = jax.make_array_from_process_local_data(sharding, v)
  return out
