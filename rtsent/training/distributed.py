"""What the ranks of a torchrun/accelerate launch must agree on: one run name, one stop step, rank-0 writes.

Outside a multi-process launch (WORLD_SIZE unset or 1) every helper is a no-op that answers for one process.
"""

from __future__ import annotations

import os
from typing import Any


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def sharded() -> bool:
    """Whether an accelerate launch shards the model (FSDP or DeepSpeed), from the variables it sets."""
    return any(os.environ.get(f"ACCELERATE_USE_{name}", "").lower() in ("1", "true")
               for name in ("FSDP", "DEEPSPEED"))


def _active() -> bool:
    if world_size() <= 1:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def init_process_group() -> None:
    """Join the launch's process group early, before the Trainer does, so ranks can agree on names.

    The Trainer (through accelerate) reuses an initialised group instead of creating its own.
    """
    if world_size() <= 1:
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl")
    else:
        dist.init_process_group(backend="gloo")


def from_main(value: Any) -> Any:
    """Rank 0's value on every rank (e.g. a run name made from rank 0's clock)."""
    if not _active():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool) -> bool:
    """True on every rank if it is true on any: a stop that all ranks take at the same step."""
    if not _active():
        return flag
    import torch
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier() -> None:
    if _active():
        import torch.distributed as dist

        dist.barrier()
