"""Data-parallel training with ``torch.distributed``: the same ``edgetl train`` in one
process, under ``torchrun``, or launched by ``edgetl train --nproc-per-node N``.

Inside a ``torchrun`` job (``WORLD_SIZE`` > 1) :func:`setup` joins the process group (gloo
on the CPU, nccl on GPUs). Then fine-tuning and adaptation run under DDP (only trainable
parameters are synchronised; frozen ones are left out), each rank reads its own shard of
the training data through a ``DistributedSampler`` (``set_epoch`` every epoch) and of the
validation data (a plain ``rank::world`` split, so nothing is padded or counted twice), and
losses and accuracies are summed over ranks. Frozen-backbone embedding (the linear probe,
the probe stage of LP-FT) is sharded over ranks and gathered; the head is solved once on
rank 0 and broadcast. Only rank 0 writes the RUN.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

import torch

from edgetl.errors import ConfigError

__all__ = ["Dist", "current", "setup", "shard", "all_sum", "gather_rows", "barrier", "broadcast_object", "launch"]


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    backend: str | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def to_dict(self) -> dict[str, Any]:
        return {"world_size": self.world, "backend": self.backend}


def current() -> Dist:
    """This process's place in the job (rank 0 of 1 outside torchrun)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), dist.get_backend())
    return Dist()


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the torchrun job described by the environment, if there is one; returns where
    this process stands and the device it trains on (its own GPU under nccl)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Dist(), device
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
        dist.init_process_group(backend)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return current(), device


def shard(n: int, d: Dist) -> list[int]:
    """This rank's indices of ``n`` items: ``rank, rank + world, ...`` (no padding)."""
    return list(range(d.rank, n, d.world))


def all_sum(values: Sequence[float], d: Dist) -> list[float]:
    if not d.active:
        return [float(v) for v in values]
    import torch.distributed as dist

    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def gather_rows(local: np.ndarray, n: int, d: Dist) -> np.ndarray:
    """The rows of every rank's shard (:func:`shard`) put back in order: ``n`` rows."""
    if not d.active:
        return local
    import torch.distributed as dist

    parts: list[Any] = [None] * d.world
    dist.all_gather_object(parts, local)
    width = next((p.shape[1] for p in parts if p is not None and p.ndim == 2 and len(p)), 0)
    out = np.zeros((n, width), np.float32)
    for r, part in enumerate(parts):
        if len(part):
            out[r::d.world] = part
    return out


def barrier(d: Dist) -> None:
    if d.active:
        import torch.distributed as dist

        dist.barrier()


def broadcast_object(obj: Any, d: Dist) -> Any:
    """Rank 0's ``obj`` on every rank (our own processes' results, never user data)."""
    if not d.active:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def launch(argv: Sequence[str], nproc: int, nnodes: str | None = None, rdzv_endpoint: str | None = None,
           node_rank: int | None = None) -> int:
    """Run ``edgetl ARGV`` as ``nproc`` processes per node through ``torch.distributed.run``."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = ["--nproc-per-node", str(nproc)]
    if rdzv_endpoint:
        args += ["--nnodes", nnodes or "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", rdzv_endpoint]
        if node_rank is not None:
            args += ["--node-rank", str(node_rank)]
    elif nnodes not in (None, "1"):
        raise ConfigError("--nnodes above 1 needs --rdzv-endpoint HOST:PORT (the same on every machine)")
    else:
        args += ["--standalone"]
    args += ["--module", "edgetl.cli", *argv]
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, nproc))))
    try:
        torchrun.main(args)
    except ChildFailedError as e:
        codes = sorted({f.exitcode for f in e.failures.values()})
        return codes[0] if len(codes) == 1 and codes[0] > 0 else 1
    return 0
