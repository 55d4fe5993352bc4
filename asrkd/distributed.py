"""Data-parallel training across processes and machines (torchrun), the way DDP does it.

``asrkd train`` and ``asrkd distill`` run unchanged under ``torchrun --nproc_per_node N [--nnodes
M ...] -m asrkd train ...``: torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR)
makes every process one rank of a process group (gloo on CPU, nccl on CUDA).

How the work is split, and why it equals one process with the same global batch:
- every rank draws the same seeded permutation of the training frames, cuts it into the same
  global minibatches and takes its own contiguous part of each (``local_part``), so a rank
  reads only its share of the frame cache and of the soft targets (both memory-mapped);
- the gradients are all-reduced as the frame-weighted mean of the ranks' (mean) gradients,
  which is the gradient of the global batch's mean loss; every rank then takes the same
  optimizer step, so the weights stay equal on all ranks without being broadcast again;
- a loss term that is a mean over only some frames (the hard term of distillation with a
  transfer set: the labelled frames) is divided on each rank by ``batch["hard_norm"]``
  (``with_world_counts``), the global batch's labelled frames times this rank's share of its
  frames, so that the frame-weighted mean above is again the mean over the global batch;
- validation utterances are shared out between ranks and their sums all-reduced;
- rank 0 alone builds the frame cache and writes checkpoints, logs and TensorBoard; the other
  ranks wait for it at a barrier.

Deviations from torch's DistributedDataParallel: one flat all-reduce after the backward pass
instead of bucketed overlap with it (our models are a few dense layers: one message per step);
batch norm statistics stay per rank (no SyncBatchNorm).
"""

import dataclasses
import os

import numpy as np
import torch

from asrkd.errors import UserError


@dataclasses.dataclass
class World:
    """This process's place in the process group (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.size > 1


def init_world(device="cpu"):
    """Join torchrun's process group (once per process); a single-process World without it.

    ``device`` "cuda" selects nccl and this rank's GPU (LOCAL_RANK); anything else gloo.
    Returns (World, device string to put the model on).
    """
    import torch.distributed as dist

    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = str(device).startswith("cuda")
    if cuda:
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r}: this torch build sees no CUDA device")
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        import atexit

        dist.init_process_group("nccl" if cuda else "gloo")
        atexit.register(dist.destroy_process_group)
    return World(rank, size, local, dist.get_backend()), device


def local_part(items, world):
    """This rank's contiguous part of one global minibatch (parts differ by at most one)."""
    if not world.distributed:
        return items
    return np.array_split(items, world.size)[world.rank]


def rank_seed(seed, world):
    """Rank 0 keeps ``seed`` (a 1-process run is unchanged); other ranks get their own stream
    (dropout masks must differ between ranks, and stay reproducible)."""
    if world.rank == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), world.rank]).generate_state(1, np.uint64)[0]
               % (2**63))


def all_reduce_gradients(model, n_local, world):
    """Gradients := the frame-weighted mean over ranks of each rank's mean-loss gradient.

    ``n_local`` frames (rows of the loss's mean) on this rank. Parameters without a gradient (a
    rank with an empty part, say) count as zeros. Returns the global number of frames.
    """
    import torch.distributed as dist

    if not world.distributed:
        return n_local
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads] + [grads[0].new_tensor([1.0])])
    flat[:-1] *= n_local
    flat[-1] = n_local
    dist.all_reduce(flat)
    total = float(flat[-1])
    flat[:-1] /= max(total, 1.0)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n
    return int(total)


def with_world_counts(batch, world):
    """``batch`` with ``batch["hard_norm"]`` under torchrun (unchanged in one process).

    hard_norm = L * n / N for the global batch's N frames and L labelled frames (``y >= 0``)
    and this rank's n frames: a hard term ``sum / hard_norm`` weighted by n / N in
    ``all_reduce_gradients`` sums to ``sum over all ranks / L``, as in one process. Every rank
    calls this for every global batch (an empty part included): it is one all-reduce.
    """
    if not world.distributed:
        return batch
    y = batch["y"]
    n, labelled = len(y), int((y >= 0).sum())
    n_all, labelled_all = all_reduce_sums([n, labelled], world, y.device)
    batch["hard_norm"] = labelled_all * n / n_all if n_all else 0.0
    return batch


def all_reduce_sums(values, world, device="cpu"):
    """Element-wise sum over ranks of a list of numbers (float64; on the GPU for nccl)."""
    import torch.distributed as dist

    if not world.distributed:
        return list(values)
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.cpu().tolist()


def barrier(world):
    import torch.distributed as dist

    if world.distributed:
        dist.barrier()


def broadcast_parameters(model, world):
    """Rank 0's weights and buffers on every rank (guards against any init difference)."""
    import torch.distributed as dist

    if not world.distributed:
        return
    for t in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(t.data, src=0)
