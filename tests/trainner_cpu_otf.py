"""Run traiNNer-redux's train.py through train_shim.py with its on-the-fly degradations on the CPU.

Usage (from the traiNNer-redux root, as train_shim.py)::

    python trainner_cpu_otf.py /path/to/train_shim.py train.py -opt CFG [train.py args]

traiNNer-redux's ``RealESRGANModel`` (``high_order_degradation: true``) only runs on CUDA, for two
reasons that have nothing to do with the network or the option file (traiNNer-redux 68629319):

1. It moves its JPEG simulator and its pool of training pairs with ``.cuda()``
   (``traiNNer/models/realesrgan_model.py`` lines 50-52 and 86-88), which raises "Found no NVIDIA
   driver" without a GPU.
2. ``DiffJPEG`` returns a channels-last view (``traiNNer/utils/diffjpeg.py`` line 432,
   ``.permute(0, 3, 1, 2)``), and ``filter2d`` (``traiNNer/utils/img_process_util.py`` line 30)
   calls ``.view(1, b * c, h, w)`` on its reflect-padded input. CUDA's reflect padding returns a
   contiguous tensor, so the view works there; the CPU kernel keeps the channels-last layout and
   the view raises "view size is not compatible with input tensor's size and stride" as soon as
   a batch went through JPEG (the final sinc ``filter2d`` always runs).

Without touching traiNNer-redux, this runner makes the CPU behave as CUDA does for those two
points, then hands over to train_shim.py: ``Tensor.cuda`` / ``Module.cuda`` leave the object
where it is (a CPU config has ``num_gpu: 0``), and reflect padding returns a contiguous tensor
(same values; only the memory layout differs). Everything else is traiNNer-redux's own code.
"""

from __future__ import annotations

import runpy
import sys
from typing import Any

import torch
import torch.nn.functional as F

NOTICE = "[cpu_otf] .cuda() keeps tensors on the CPU; reflect padding returns contiguous tensors"


def _stay(obj: Any, *args: Any, **kwargs: Any) -> Any:
    """``.cuda()`` stand-in: the tensor or module stays where it is."""
    return obj


def install() -> None:
    """Install the two CPU stand-ins described in the module docstring."""
    real_pad = F.pad

    def pad(*args: Any, **kwargs: Any) -> torch.Tensor:
        out = real_pad(*args, **kwargs)
        mode = kwargs.get("mode", args[2] if len(args) > 2 else "constant")
        return out.contiguous() if mode == "reflect" else out

    torch.Tensor.cuda = _stay  # type: ignore[method-assign,assignment]
    torch.nn.Module.cuda = _stay  # type: ignore[method-assign,assignment]
    F.pad = pad  # type: ignore[assignment]
    print(NOTICE, file=sys.stderr, flush=True)


def main() -> None:
    """Install the stand-ins and run train_shim.py with the remaining arguments."""
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    install()
    shim = sys.argv[1]
    sys.argv = sys.argv[1:]  # what train_shim.py expects: [shim, script, -opt, cfg, ...]
    runpy.run_path(shim, run_name="__main__")


if __name__ == "__main__":
    main()
