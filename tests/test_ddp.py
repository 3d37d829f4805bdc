"""DistributedDataParallel without ``find_unused_parameters``: every parameter receives a
gradient on every rank and step, even when routing sends all tokens to one expert (the experts
are stacked parameters, so an idle expert still gets a zero gradient slice), and the balance
loss from the side channel trains the routers through DDP (gloo, 2 CPU processes). The model is
channels_last, as with traiNNer-redux's ``use_channels_last``, and DDP must not warn about
gradient strides."""

from __future__ import annotations

import os
import socket
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _collapsed(gate):
    """Wrap a router's gate so that every token goes to expert 0 (probabilities unchanged)."""

    def forced(logits: torch.Tensor):
        probs, top_i, gates = gate(logits)
        return probs, torch.zeros_like(top_i), torch.ones_like(gates)

    return forced


def _worker(rank: int, world: int, port: int, out: str) -> None:
    sys.path[:0] = [str(ROOT / "traiNNer" / "archs")]
    import hybridmoe_arch as A

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)  # identical initial weights on every rank
    model = A.HybridMoE(
        scale=2,
        dim=8,
        enc_blocks=(1, 1, 1),
        hf_blocks=(1, 1, 0),
        mid_blocks=2,
        dec_blocks=(1, 1),
        window_size=4,
        kernel_size=5,
        num_experts=4,
        top_k=1,
        refine_moe=True,
        noise=True,
    ).train()
    for layer in model.moe_layers():  # collapse routing: every token to expert 0
        layer.gate = _collapsed(layer.gate)  # type: ignore[method-assign]
    model = model.to(memory_format=torch.channels_last)  # as traiNNer's use_channels_last
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=False)
    opt = torch.optim.SGD(ddp.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(rank)
    caught = warnings.catch_warnings(record=True)
    log = caught.__enter__()
    warnings.simplefilter("always")
    for _ in range(3):
        x = torch.rand(2, 3, 16, 16, generator=g).to(memory_format=torch.channels_last)
        y = ddp(x)
        balance = A.MOE_AUX.take_balance_loss()
        assert balance is not None
        loss = (
            y - torch.nn.functional.interpolate(x, scale_factor=2)
        ).abs().mean() + 0.01 * balance
        opt.zero_grad()
        loss.backward()  # raises under DDP if a parameter got no gradient
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, missing
        opt.step()
    caught.__exit__(None, None, None)
    stride_warnings = [str(w.message) for w in log if "strides" in str(w.message)]
    assert not stride_warnings, stride_warnings  # DDP buckets match every gradient's layout
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.save(flat, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_ddp_two_ranks_without_find_unused_parameters(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    # DDP averaged the gradients: both ranks hold the same weights after the steps
    assert torch.allclose(r0, r1, atol=1e-6)
