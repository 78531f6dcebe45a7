"""Data-parallel analysis with torch.distributed (``torchrun --nproc_per_node N``): each process
takes every N-th batch, and the sums behind every estimate and real loss are added across
processes, so all of them reach the same numbers (up to the order of float additions) and the
same configurations as one process would. Methods run in every process (they are
deterministic); tract latencies are measured by process 0 and sent to the others; only process
0 writes results. Backend: gloo on CPU, nccl for CUDA devices.
"""
from __future__ import annotations

import atexit
import os

import torch

__all__ = ["init_from_env", "rank", "world_size", "shard", "all_sum", "broadcast", "is_main"]

_COLLECTIVE_DEVICE = "cpu"    # where the tensors of collectives live (cuda under nccl)


def _dist():
    import torch.distributed as dist
    return dist if dist.is_available() and dist.is_initialized() else None


def init_from_env(device: str = "cpu") -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); False when run alone."""
    import torch.distributed as dist
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
        atexit.register(_leave)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    global _COLLECTIVE_DEVICE
    _COLLECTIVE_DEVICE = "cuda" if dist.get_backend() == "nccl" else "cpu"
    return True


def _leave() -> None:
    """Leave the process group while the interpreter is whole: a gloo group left to interpreter
    shutdown can abort the process (SIGABRT) after all the work is done."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    d = _dist()
    return d.get_rank() if d else 0


def world_size() -> int:
    d = _dist()
    return d.get_world_size() if d else 1


def is_main() -> bool:
    return rank() == 0


def shard(items: list) -> list:
    """This process's share: items rank, rank + N, rank + 2N, ..."""
    return list(items)[rank()::world_size()]


def all_sum(values) -> list[float]:
    """The element-wise sum of ``values`` (a list of floats) over all processes, in float64."""
    d = _dist()
    values = [float(v) for v in values]
    if d is None:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_COLLECTIVE_DEVICE)
    d.all_reduce(t, op=d.ReduceOp.SUM)
    return t.cpu().tolist()


def all_sum_tensor(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over all processes, in place."""
    d = _dist()
    if d is not None:
        moved = t.to(_COLLECTIVE_DEVICE)
        d.all_reduce(moved, op=d.ReduceOp.SUM)
        if moved is not t:
            t.copy_(moved)
    return t


def broadcast(obj):
    """Process 0's ``obj`` in every process."""
    d = _dist()
    if d is None:
        return obj
    box = [obj if d.get_rank() == 0 else None]
    d.broadcast_object_list(box, src=0)
    return box[0]
