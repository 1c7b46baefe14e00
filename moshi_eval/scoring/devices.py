"""The device an evaluation runs on, from a `--device` value (or none) and the visible GPUs.

`resolve_device` always returns an explicit device: `cuda` becomes `cuda:<index>` (the process's local rank modulo
the visible GPUs, i.e. `cuda:0` in a single process), because `torch.cuda.set_device` needs an index. A device that
cannot be used is a `ConfigError` naming the value.
"""

from __future__ import annotations

import torch

from .settings_file import ConfigError


def resolve_device(requested: str | None, local_rank: int = 0, cuda_count: int | None = None) -> str:
    """`requested` (`cpu`, `cuda`, `cuda:1`, ...) as an explicit device; None picks `cuda:<local rank>` when GPUs are
    visible, else `cpu`. `cuda_count` defaults to `torch.cuda.device_count()`."""
    count = torch.cuda.device_count() if cuda_count is None else cuda_count
    if requested is None:
        return f"cuda:{local_rank % count}" if count else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError as error:
        raise ConfigError(f"--device {requested!r} is not a device (use cpu, cuda or cuda:<index>)") from error
    if device.type != "cuda":
        return str(device)
    if count == 0:
        raise ConfigError(f"--device {requested}: no CUDA device is visible to this process (torch "
                          f"{torch.__version__}, CUDA {torch.version.cuda or 'not built in'})")
    index = local_rank % count if device.index is None else device.index
    if index >= count:
        raise ConfigError(f"--device {requested}: only {count} CUDA device(s) are visible (cuda:0 to cuda:{count - 1})")
    return f"cuda:{index}"


def select_device(device: str) -> None:
    """Make a CUDA device the current one (kernels and CUDA graphs are launched there); nothing for other devices."""
    parsed = torch.device(device)
    if parsed.type == "cuda":
        torch.cuda.set_device(parsed)
