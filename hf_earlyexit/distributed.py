# Copyright 2026 The hf-earlyexit Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Losses over the global batch of a multi-process (DDP) run.

Under DDP every process computes a loss on its own share of the global batch and the gradients are averaged. That
equals one process training on the whole batch only when the loss is a mean over examples and the shares are equal.
Three recipes are not of that kind: CascadeBERT's DAR pairs every easy example with a hard one drawn from the batch,
the token losses are means over the batch's words (the shares hold different numbers of words), and self-sampling
draws its sandwich per batch. They compute their loss on the global batch instead, with the two collectives below.

The gradient convention: every process computes the *same* function of what a collective returns (the global loss,
redundantly), so the true gradient with respect to a process's own input is the sum over processes of identical
gradients, `world_size` times the local one. Backward returns that (without communicating: it is what the backward
of a differentiable all-gather, a reduce-scatter of identical gradients, would compute), and DDP's averaging divides
it back out: the update is exactly that of one process on the whole batch, and every process's loss value is the
global one, so the logged mean over processes is too. Outside a process group both functions return their input.
"""

import torch
import torch.distributed as dist


def world_size() -> int:
    """The number of processes in the default group, 1 outside one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _as_collective(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.dtype]:
    # gloo reduces no bools
    return (tensor.to(torch.uint8), tensor.dtype) if tensor.dtype == torch.bool else (tensor, tensor.dtype)


class _SumAcrossProcesses(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor):
        total, dtype = _as_collective(tensor.detach().clone())
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total.to(dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad * world_size()


class _GatherAcrossProcesses(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, sizes):
        # all_gather takes equal shapes: pad every share to the largest, then cut the padding off again
        local, dtype = _as_collective(tensor.detach())
        padded = local.new_zeros((max(sizes), *local.shape[1:]))
        padded[: local.shape[0]] = local
        shares = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(shares, padded)
        rank = dist.get_rank()
        ctx.start, ctx.stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
        return torch.cat([share[:n] for share, n in zip(shares, sizes)]).to(dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad[ctx.start : ctx.stop] * world_size(), None


def sum_across_processes(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of `tensor` over the processes (every process passes the same shape).

    Differentiable under the convention of the module docstring: use it for a loss that every process computes
    identically from the result.
    """
    return _SumAcrossProcesses.apply(tensor) if world_size() > 1 else tensor


def gather_across_processes(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every process's `tensor` concatenated along dimension 0 in process order (the global batch, when every process
    holds its share of it), and where this process's own rows start. The shares may differ in their first dimension.

    Differentiable under the convention of the module docstring.

    Returns:
        `(gathered, offset)`: `gathered[offset : offset + len(tensor)]` equals `tensor`.
    """
    if world_size() == 1:
        return tensor, 0
    sizes = _gather_sizes(tensor.shape[0], tensor.device)
    return _GatherAcrossProcesses.apply(tensor, sizes), sum(sizes[: dist.get_rank()])


def global_batch_share(size: int, device: torch.device | str = "cpu") -> tuple[int, int]:
    """`(global batch size, position of this process's first row in it)` for a share of `size` rows (`(size, 0)`
    outside a process group)."""
    sizes = _gather_sizes(size, device)
    return sum(sizes), sum(sizes[: dist.get_rank()]) if len(sizes) > 1 else 0


def _gather_sizes(size: int, device) -> list[int]:
    if world_size() == 1:
        return [size]
    local = torch.tensor([size], device=device)
    sizes = [torch.zeros_like(local) for _ in range(world_size())]
    dist.all_gather(sizes, local)
    return [int(s) for s in sizes]


__all__ = ["gather_across_processes", "global_batch_share", "sum_across_processes", "world_size"]
