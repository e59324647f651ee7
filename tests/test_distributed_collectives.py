"""The collectives of hf_earlyexit/distributed.py, in one process and in a real two-process gloo group."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hf_earlyexit.distributed import gather_across_processes, global_batch_share, sum_across_processes, world_size


def test_outside_a_process_group_they_return_their_input():
    x = torch.randn(3, 2, requires_grad=True)
    gathered, offset = gather_across_processes(x)
    assert world_size() == 1 and gathered is x and offset == 0
    assert sum_across_processes(x) is x
    assert global_batch_share(5) == (5, 0)


def _worker(rank: int, init_file: str, results: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        # uneven shares: 2 rows in process 0, 3 in process 1
        local = (torch.arange((rank + 2) * 3, dtype=torch.float).view(rank + 2, 3) + 10 * rank).requires_grad_()
        gathered, offset = gather_across_processes(local)
        total = sum_across_processes(local.sum(dim=0))
        # the same function of the gathered and summed tensors in both processes
        ((gathered**2).sum() + (total**3).sum()).backward()
        flags, _ = gather_across_processes(torch.tensor([rank == 1] * (rank + 1)))
        torch.save(
            {
                "gathered": gathered.detach(),
                "offset": offset,
                "total": total.detach(),
                "grad": local.grad,
                "flags": flags,
                "share": global_batch_share(rank + 2),
            },
            f"{results}.{rank}",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_processes_gather_uneven_shares_and_scale_their_gradients(tmp_path):
    results = str(tmp_path / "result")
    mp.spawn(_worker, args=(str(tmp_path / "init"), results), nprocs=2, join=True)
    shares = [torch.arange(6, dtype=torch.float).view(2, 3), torch.arange(9, dtype=torch.float).view(3, 3) + 10]
    whole = torch.cat(shares)
    for rank in range(2):
        got = torch.load(f"{results}.{rank}")
        assert torch.equal(got["gathered"], whole) and got["offset"] == (0, 2)[rank]
        assert torch.equal(got["total"], whole.sum(dim=0))
        assert got["share"] == (5, (0, 2)[rank])
        assert torch.equal(got["flags"], torch.tensor([False, True, True]))
        # the gradient of the one global loss with respect to this process's rows, times the number of processes
        # (DDP's averaging divides it back out)
        expected = 2 * (2 * shares[rank] + 3 * whole.sum(dim=0) ** 2)
        torch.testing.assert_close(got["grad"], expected)
