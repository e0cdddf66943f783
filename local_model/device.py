"""Whether this machine's PyTorch can use a device, asked before any weights are loaded.

Torch refuses a device it cannot use only deep inside loading a checkpoint (on a CPU-only build,
``cuda`` fails as "pin_memory=True requires a CUDA or other accelerator backend"), and in the
gateway's CUDA default that happens in the child server process: a traceback nobody connects with
``local_model.device``. `device_problem` says it in one line first. It never initialises a device
(no CUDA context in the parent of the server process).
"""

from __future__ import annotations

__all__ = ["DeviceUnavailableError", "device_problem"]


class DeviceUnavailableError(ValueError):
    """The configured device is not one this machine's PyTorch can use."""


def device_problem(device: str) -> str | None:
    """Why torch cannot use ``device`` (cpu, cuda, cuda:N, mps, xpu, xpu:N) here; None when it can."""
    import torch

    kind, _, index = device.partition(":")
    if kind == "cpu":
        return None
    if kind == "mps":
        return None if torch.backends.mps.is_available() else "torch sees no MPS (Apple GPU) device"
    if kind == "cuda":
        if not torch.cuda.is_available():
            if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
                return f"this PyTorch ({torch.__version__}) was built without CUDA"
            return "torch sees no CUDA device (check the driver and CUDA_VISIBLE_DEVICES)"
        count = torch.cuda.device_count()
    elif kind == "xpu":
        xpu = getattr(torch, "xpu", None)
        if xpu is None or not xpu.is_available():
            return "torch sees no XPU (Intel GPU) device"
        count = xpu.device_count()
    else:
        return f"unknown device type {kind!r}"
    if index and int(index) >= count:
        return f"torch sees {count} {kind.upper()} device{'s' if count != 1 else ''} ({kind}:0 to {kind}:{count - 1})"
    return None
