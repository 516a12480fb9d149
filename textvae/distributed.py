"""Data-parallel training under torchrun: who this process is, and the few collectives
the trainer needs.

    torchrun --nproc_per_node=2 train.py ...     # 2 processes: GPUs (nccl) or CPU (gloo)
    python train.py ...                          # one process: every call here is a no-op

torchrun starts the processes and sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous
address in their environment; this module only reads them. The trainer splits every
global batch between the ranks (rank r takes lines r, r + W, ...), DistributedDataParallel
averages the gradients, and rank 0 alone writes the run folder. A step therefore sees
the same lines, the same learning rate and the same KL weight as one process with the
same --batch-size, whatever the number of processes, and a checkpoint (global step,
epoch, position in the shuffled order) resumes under any number of them.
"""
import gc
import os

import torch
import torch.distributed as dist

from .errors import UserError


class Group:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device("cpu")  # this rank's, once ``place`` has chosen it

    @property
    def active(self):
        return self.world > 1

    @property
    def main(self):
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0

    def start(self):
        """Join the process group, before the run's device is known (a resumed run reads
        it from its folder): torch's default backends are gloo for CPU tensors and, where
        there are GPUs, nccl for CUDA ones, so either device can use the group."""
        if not self.active or dist.is_initialized():
            return
        if self.local_rank < torch.cuda.device_count():
            torch.cuda.set_device(self.local_rank)
        dist.init_process_group()

    def place(self, device):
        """The device this rank trains on, given the run's: its own GPU under torchrun."""
        if self.active and device.type == "cuda":
            if self.local_rank >= torch.cuda.device_count():
                raise UserError(f"rank {self.rank} wants cuda:{self.local_rank}, but this "
                                f"node has {torch.cuda.device_count()} GPU(s): "
                                "--nproc_per_node must not exceed them")
            device = torch.device("cuda", self.local_rank)
        elif self.active and device.type != "cpu":
            raise UserError(f"torchrun training runs on cuda or cpu, not {device.type}")
        self.device = device
        return device

    def wait_for_all(self):
        """Return when every rank has come here: after training, the others wait while
        rank 0 writes its last record and checkpoint, so no rank leaves the group while
        a peer still talks to it."""
        if self.active:
            dist.barrier()

    def stop(self):
        if self.active and dist.is_initialized():
            gc.collect()  # objects still holding the group (a cycle) go before it does
            dist.destroy_process_group()

    def first(self, fn):
        """Run ``fn`` on rank 0 only and hand its result to every rank. A UserError on
        rank 0 is raised on every rank, so no rank waits for a peer that gave up."""
        if not self.active:
            return fn()
        box = [None]
        if self.main:
            try:
                box[0] = ("ok", fn())
            except UserError as e:
                box[0] = ("error", str(e))
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise UserError(value)
        return value

    def mean(self, tensor):
        """The mean of ``tensor`` over the ranks (in place; itself when alone)."""
        if self.active:
            dist.all_reduce(tensor)
            tensor /= self.world
        return tensor

    def any(self, flag):
        """Whether ``flag`` is true on some rank (every rank gets the same answer)."""
        if not self.active:
            return bool(flag)
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def smallest(self, value):
        """The least of an integer over the ranks (every rank gets the same answer)."""
        if not self.active:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())

    def check_in_sync(self, model):
        """Raise if the ranks' weights differ: DDP keeps them equal, so a difference is a
        bug (a step some rank skipped) that would silently turn one run into W runs."""
        if not self.active:
            return
        total = sum(p.detach().double().sum() for p in model.parameters())
        lo, hi = total.clone().view(1), total.clone().view(1)
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        if not torch.isclose(lo, hi, rtol=1e-9, atol=1e-6).all():
            raise RuntimeError(f"training processes out of sync: weight sums {lo.item()} "
                               f"to {hi.item()}")


def shard(ids, group):
    """This rank's lines of a global batch ``ids``, and the weight that makes the mean of
    the ranks' losses the loss of the whole batch (shards of unequal size, at the end of
    an epoch). A rank left without lines takes one with weight 0: it must still join
    the gradient all-reduce."""
    mine = ids[group.rank::group.world]
    if len(mine) == 0:
        return ids[:1], 0.0
    return mine, len(mine) * group.world / len(ids)
