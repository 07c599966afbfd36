"""Data-parallel training: one run over several devices with the same global batch as a single process.

Two ways, chosen by the backend:

* torch: one process per device, launched by torchrun (`torchrun --nproc_per_node N -m convnn train ...`); the
  process group uses gloo on the CPU and NCCL on CUDA. Each rank computes the gradient of its shard of the
  global batch; the gradients (weighted by shard size, so uneven shards still give the global mean) are summed
  with all_reduce, the collective DistributedDataParallel uses, before clipping and the AdamW step, so every rank
  takes the same step. BatchNorm uses each rank's batch statistics (as DDP without SyncBatchNorm); the running
  statistics are averaged over the ranks after each step so every rank evaluates and saves the same state.
* jax: one process; the global batch is split over the first N local devices (a Mesh with one 'data' axis,
  NamedSharding, shard_map), parameters and optimizer state are replicated, and gradients, loss and BatchNorm
  statistics are averaged over the devices (pmean). A batch whose size the device count does not divide (the last
  one of an epoch) runs whole on the first device: same result, not split.

Only rank 0 writes the run folder (config, metrics, curves, checkpoints); every rank can read a checkpoint to resume.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from convnn.tree import tree_leaves, tree_map

WORLD_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
NO_NUMBA_ENV = "CONVNN_JAX_NO_NUMBA"  # the jax backend's switch to keep its CPU selection in XLA


def launch_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) that torchrun set for this process; (0, 1, 0) when it did not."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as err:
        raise ValueError(f"the launcher's environment is not numeric "
                         f"({', '.join(f'{k}={os.environ.get(k)!r}' for k in WORLD_ENV)}): {err}") from err
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"the launcher's environment is inconsistent: RANK={rank}, WORLD_SIZE={world}")
    return rank, world, local


def _replace_leaves(tree: Any, old: list[Any], new: list[Any]) -> Any:
    """`tree` with each leaf of `old` (matched by identity) replaced by the leaf of `new` at the same position."""
    where = {id(leaf): i for i, leaf in enumerate(old)}
    return tree_map(lambda leaf: new[where[id(leaf)]] if id(leaf) in where else leaf, tree)


def pin_local_device() -> None:
    """Under torchrun with CUDA, make this process's default GPU its LOCAL_RANK (before anything is allocated)."""
    rank, world, local_rank = launch_env()
    if world == 1:
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())


class SingleDevice:
    """One process on one device: every hook is the identity (the trainer's original behaviour)."""

    kind = "single"
    rank, world, devices = 0, 1, 1
    reduces_gradients = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        """What config.json records about how the run is spread."""
        return {"kind": self.kind, "world_size": self.world, "devices": self.devices}

    def local_rows(self, n: int) -> np.ndarray:
        """The rows of a global batch of n that this process computes."""
        return np.arange(n)

    def place_batch(self, x: Any) -> Any:
        return x

    def replicate(self, tree: Any) -> Any:
        return tree

    def sum_floats(self, values: list[float]) -> list[float]:
        """The sums over all processes of a few host numbers (counts, flags)."""
        return list(values)

    def close(self) -> None:
        pass


class TorchProcessGroup(SingleDevice):
    """torchrun's processes: gloo on the CPU, NCCL on CUDA; gradients and BatchNorm statistics all-reduced."""

    kind = "torch-distributed"
    reduces_gradients = True

    def __init__(self, backend: Any, rank: int, world: int, local_rank: int) -> None:
        import torch
        import torch.distributed as dist

        self.torch, self.dist = torch, dist
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.devices = world
        self.device = backend.device
        on_cuda = self.device.type == "cuda"
        self.group_backend = "nccl" if on_cuda else "gloo"
        if not dist.is_available():
            raise ValueError("torch was built without torch.distributed; a torchrun launch needs it")
        if not dist.is_initialized():
            dist.init_process_group(self.group_backend, rank=rank, world_size=world)
        self._owns_group = True

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "process_group": self.group_backend}

    def local_rows(self, n: int) -> np.ndarray:
        """A contiguous, nearly equal share of the batch rows (sizes differ by at most one)."""
        return np.array_split(np.arange(n), self.world)[self.rank]

    def all_sum(self, leaves: list[Any]) -> list[Any]:
        """The element-wise sums over the ranks of a list of tensors, in one flat all_reduce."""
        torch = self.torch
        if not leaves:
            return []
        dtype = leaves[0].dtype
        flat = torch.cat([t.detach().reshape(-1).to(dtype) for t in leaves])
        self.dist.all_reduce(flat, op=self.dist.ReduceOp.SUM)
        out, start = [], 0
        for t in leaves:
            out.append(flat[start:start + t.numel()].reshape(t.shape).to(t.dtype))
            start += t.numel()
        return out

    def reduce_gradients(self, grads: Any, loss: Any, weight: float) -> tuple[Any, Any]:
        """(grads, loss) averaged over the global batch: each rank's mean weighted by its share `weight`."""
        leaves = tree_leaves(grads)
        summed = self.all_sum([g * weight for g in leaves] + [(loss * weight).reshape(1)])
        return _replace_leaves(grads, leaves, summed[:-1]), summed[-1].reshape(())

    def average_state(self, state: Any) -> Any:
        """The floating leaves of the model state (BatchNorm running statistics) averaged over the ranks."""
        leaves = [t for t in tree_leaves(state) if t.is_floating_point()]
        if not leaves:
            return state
        return _replace_leaves(state, leaves, [t / self.world for t in self.all_sum(leaves)])

    def replicate(self, tree: Any) -> Any:
        """Rank 0's values of every tensor of a pytree on every rank (fresh parameters, a resumed optimizer)."""
        for t in tree_leaves(tree):
            if isinstance(t, self.torch.Tensor):
                self.dist.broadcast(t, src=0)
        return tree

    def sum_floats(self, values: list[float]) -> list[float]:
        t = self.torch.tensor(values, dtype=self.torch.float64,
                              device=self.device if self.group_backend == "nccl" else "cpu")
        self.dist.all_reduce(t, op=self.dist.ReduceOp.SUM)
        return [float(v) for v in t.cpu().tolist()]

    def close(self) -> None:
        if self._owns_group and self.dist.is_initialized():
            self.dist.destroy_process_group()
        self._owns_group = False


class JaxMesh(SingleDevice):
    """One process, each batch split over `devices` local jax devices (a Mesh with one 'data' axis), parameters
    and optimizer state replicated.

    The step runs under shard_map: every device computes the gradient of its equal share of the batch, and the
    gradients, the loss and the BatchNorm running statistics are averaged over the 'data' axis (pmean) before the
    clipping and the AdamW step: the torch process-group recipe, within one process. (ConvNN's CPU neighbour
    selection calls back into the host, which XLA's automatic partitioning cannot split; shard_map runs it per
    device.) A batch the device count does not divide (an epoch's last) runs whole on the first device.

    On host (CPU) devices the ConvNN selection stays in XLA's own exact top-k (CONVNN_JAX_NO_NUMBA=1 while the
    mesh is in use): the numba kernel is reached through a host callback, and callbacks of several host devices
    blocking at once were seen to deadlock XLA's CPU thread pool on a 2-core machine.
    """

    kind = "jax-sharding"

    def __init__(self, devices: int) -> None:
        import jax
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        self.jax, self.P = jax, PartitionSpec
        self.devices = devices
        self.mesh = Mesh(np.array(jax.devices()[:devices]), ("data",))
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.first = jax.devices()[0]
        self._saved_env: Any = False
        if self.first.platform == "cpu":
            self._saved_env = os.environ.get(NO_NUMBA_ENV)
            os.environ[NO_NUMBA_ENV] = "1"

    def close(self) -> None:
        """Give the ConvNN selection its usual path back (see the class docstring)."""
        if self._saved_env is False:
            return
        if self._saved_env is None:
            os.environ.pop(NO_NUMBA_ENV, None)
        else:
            os.environ[NO_NUMBA_ENV] = self._saved_env
        self._saved_env = False

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "mesh": {"data": self.devices},
                "platform": self.jax.devices()[0].platform}

    def splits(self, n: int) -> bool:
        """Whether a batch of n rows is split over the devices (else it runs whole on the first one)."""
        return n > 0 and n % self.devices == 0

    def place_batch(self, x: Any) -> Any:
        """x split along its first axis over the mesh, or whole on the first device when it does not split."""
        return self.jax.device_put(x, self.batch_sharding if self.splits(x.shape[0]) else self.first)

    def replicate(self, tree: Any) -> Any:
        return self.jax.device_put(tree, self.replicated)

    def train_step(self, value_and_grad: Any, update: Any, whole_step: Any) -> Any:
        """step(params, state, opt_state, x, y, key, scale) over the mesh; whole_step for batches that do not split.

        value_and_grad(params, state, x, y, key) -> ((loss, (logits, new_state)), grads);
        update(params, opt_state, grads, scale) -> (params, opt_state, grad norm).
        """
        jax, P = self.jax, self.P
        lax = jax.lax

        def local(params: Any, state: Any, opt_state: Any, x: Any, y: Any, key: Any, scale: Any) -> Any:
            if key is not None:  # each device draws its own dropout/sampling masks
                key = jax.random.fold_in(key, lax.axis_index("data"))
            (loss, (logits, new_state)), grads = value_and_grad(params, state, x, y, key)
            grads = lax.pmean(grads, "data")
            loss = lax.pmean(loss, "data")
            new_state = jax.tree_util.tree_map(
                lambda t: lax.pmean(t, "data") if jax.numpy.issubdtype(t.dtype, jax.numpy.floating) else t,
                new_state)
            new_params, new_opt, gnorm = update(params, opt_state, grads, scale)
            return new_params, new_state, new_opt, loss, logits, gnorm

        sharded = jax.jit(jax.shard_map(local, mesh=self.mesh, check_vma=False,
                                        in_specs=(P(), P(), P(), P("data"), P("data"), P(), P()),
                                        out_specs=(P(), P(), P(), P(), P("data"), P())))

        def step(params: Any, state: Any, opt_state: Any, x: Any, y: Any, key: Any, scale: Any) -> Any:
            if self.splits(x.shape[0]):
                return sharded(params, state, opt_state, x, y, key, scale)
            first = jax.device_put((params, state, opt_state, key), self.first)
            out = whole_step(*first[:3], x, y, first[3], scale)
            return (*self.replicate(out[:3]), *out[3:])

        return step

    def eval_logits(self, logits: Any, whole: Any) -> Any:
        """logits(params, state, x) with x split over the mesh; whole(...) for batches that do not split."""
        jax, P = self.jax, self.P
        sharded = jax.jit(jax.shard_map(logits, mesh=self.mesh, check_vma=False, in_specs=(P(), P(), P("data")),
                                        out_specs=P("data")))

        def run(params: Any, state: Any, x: Any) -> Any:
            x = self.place_batch(x)
            if self.splits(x.shape[0]):
                return sharded(params, state, x)
            return whole(*jax.device_put((params, state), self.first), x)

        return run


def local_jax_devices() -> int:
    import jax

    return len(jax.devices())


def data_parallel(backend: Any, devices: Any) -> SingleDevice:
    """How this run spreads over devices: torchrun's process group, a jax mesh of `devices`, or one device.

    devices: 1, an int N or 'all' (config field `devices`); N > 1 is for jax only (torch runs one process per
    device under torchrun). Errors name what was asked and what works.
    """
    rank, world, local_rank = launch_env()
    name = backend.name
    how = getattr(backend.capabilities, "data_parallel", None)
    if world > 1:
        if how != "processes":
            raise ValueError(f"this process was launched by torchrun as rank {rank} of {world}, but backend "
                             f"{name!r} trains in one process: multi-process training runs on backend torch; for "
                             f"jax, run one process with --devices N (the batch is sharded over N local devices)")
        if devices not in (1, "all", world):
            raise ValueError(f"devices={devices!r} under torchrun: each torchrun process drives one device, so the "
                             f"device count is --nproc_per_node ({world}); drop --devices")
        return TorchProcessGroup(backend, rank, world, local_rank)
    if devices == 1:
        return SingleDevice()
    if how != "devices":
        hint = ("launch one process per device with torchrun --nproc_per_node N -m convnn train ..."
                if how == "processes" else "train on backend jax (--devices) or torch (torchrun)")
        raise ValueError(f"devices={devices!r} is for the jax backend (one process sharding the batch over local "
                         f"devices); backend {name!r} cannot: {hint}")
    available = local_jax_devices()
    count = available if devices == "all" else int(devices)
    if count > available:
        raise ValueError(f"devices={devices!r} but jax sees {available} local device(s); on a CPU, "
                         f"XLA_FLAGS=--xla_force_host_platform_device_count={count} (set before jax starts) "
                         f"makes {count} host devices")
    return JaxMesh(count) if count > 1 else SingleDevice()
