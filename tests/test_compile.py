"""torch.compile: the eval forward (and the training forward of the MoE) traces into one graph
(no graph break) on CPU.

A graph break splits the compiled model into pieces with Python in between, which costs the
launch savings that make compiling worth it at batch 1 (docs/DEPLOY.md section 6)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from check_compile import explain
from tiny_options import TINY

import hybridmoe_arch as A


@pytest.mark.parametrize(
    ("variant", "options", "fused"),
    [
        ("hybridmoe_nano", {}, True),
        ("hybridmoe_nano", {}, False),
        ("hybridmoe", {**TINY, "global_mixer": "ssm", "freq_split": "fft"}, True),
        ("hybridmoe", {**TINY, "upsampler": "dysample", "refine_moe": True}, False),
    ],
)
def test_eval_forward_has_no_graph_break(
    variant: str, options: dict[str, Any], fused: bool
) -> None:
    model = A.FACTORIES[variant](scale=2, **options).eval()
    if fused:
        model.fuse()
    x = torch.rand(1, 3, 24, 20)
    with torch.inference_mode():
        graphs, breaks, reasons = explain(model, x)
    assert (graphs, breaks) == (1, 0), reasons


def test_moe_training_forward_has_no_graph_break() -> None:
    """traiNNer-redux's ``use_compile`` compiles the training forward: the MoE's expert usage
    statistics must not need a data-dependent shape."""
    model = A.hybridmoe(scale=2, **TINY, refine_moe=True).train()
    graphs, breaks, reasons = explain(model, torch.rand(1, 3, 24, 20))
    A.MOE_AUX.begin_forward()  # drop the terms the traced forward recorded
    assert (graphs, breaks) == (1, 0), reasons


def test_dysample_compiles_with_dynamic_shapes_at_sizes_that_need_padding() -> None:
    """Once a compiled model has seen a second input size, torch.compile traces the sizes
    symbolically. The padding to a multiple of 2^(levels-1) was a modulo of the size, and the
    DySample upsampler turns the padded size into float arithmetic, which the compiler could
    not handle: every input size that needs padding failed ("no attribute 'python_mod'")."""
    import torch._dynamo

    model = A.hybridmoe(scale=2, **TINY, levels=2, upsampler="dysample").eval()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", dynamic=True)
    x = torch.rand(1, 3, 13, 10)
    try:
        with torch.inference_mode():
            torch.testing.assert_close(compiled(x), model(x))
    finally:
        torch._dynamo.reset()


def test_moe_training_forwards_compile_once() -> None:
    """traiNNer-redux's ``use_compile``: every training forward of an MoE network read and
    bumped a Python int of the side channel (its forward counter), a value torch.compile
    guards on, so each step recompiled the whole network until the recompile limit, after
    which the network ran uncompiled."""
    import torch._dynamo

    graphs: list[torch.fx.GraphModule] = []

    def counting_backend(gm: torch.fx.GraphModule, example_inputs: Any) -> Any:
        graphs.append(gm)
        return gm.forward

    model = A.hybridmoe(scale=2, **TINY).train()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=counting_backend)
    try:
        for _ in range(3):
            y = compiled(torch.rand(1, 3, 16, 16))
            balance = A.MOE_AUX.take_balance_loss()
            assert balance is not None
            (y.mean() + 0.01 * balance).backward()
    finally:
        torch._dynamo.reset()
    assert len(graphs) == 1
