"""torch.distributed for training and detection on several processes (launched by torchrun).

A job is distributed when torchrun set WORLD_SIZE > 1: NCCL on CUDA (each
rank on the GPU of its LOCAL_RANK), gloo on CPU. Rank 0 alone reports
progress and writes final outputs; the helpers here keep every rank in
step (same data order, same decisions).
"""
import os

import torch
import torch.distributed as dist


def world_size():
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank():
    return int(os.environ.get("RANK", "0"))


def local_rank():
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_distributed():
    return world_size() > 1


def is_main():
    return rank() == 0


def init(device_preference="auto"):
    """Join the process group when torchrun started us (once); returns this rank's device, or None
    when the job is not distributed."""
    if not is_distributed():
        return None
    use_cuda = torch.cuda.is_available() and not str(device_preference).startswith("cpu")
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl" if use_cuda else "gloo")
        # Processes on one host share its cores: split them instead of oversubscribing.
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size()))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return torch.device(f"cuda:{local_rank()}") if use_cuda else torch.device("cpu")


def shutdown():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier():
    if is_distributed() and dist.is_initialized():
        dist.barrier()


def gather_objects(obj):
    """Every rank's ``obj``, in rank order, on every rank."""
    if not (is_distributed() and dist.is_initialized()):
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    if not (is_distributed() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(items, of_rank=None):
    """A rank's share of ``items`` (interleaved, so neighbouring tiles spread over ranks)."""
    if not is_distributed():
        return items
    return items[rank() if of_rank is None else of_rank::world_size()]


def padded_shard(order):
    """Equal-length shards (DistributedSampler's rule: pad by repeating), so every rank takes
    the same number of steps and gradient synchronisation never waits on a rank that finished."""
    n = world_size()
    if n == 1:
        return list(order)
    order = list(order)
    total = -(-len(order) // n) * n
    order += order[: total - len(order)]
    return order[rank()::n]
