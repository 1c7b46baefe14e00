"""Low-rank adapters (LoRA, Hu et al. 2021) on the linear layers of a model.

A wrapped layer computes `y = W x + scaling * B (A x)` with the original linear `W` kept under the attribute
`frozen_W`, the down projection `A` (`[rank, in]`) under `lora_A` and the up projection `B` (`[out, rank]`) under
`lora_B`. The state-dict keys are therefore `<name>.frozen_W.weight`, `<name>.lora_A.weight` and `<name>.lora_B.weight`,
the layout of the LoRA files released for Moshi. A plain `<name>.weight` (a base checkpoint) loads into `frozen_W`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update scaled by `scaling`.

    `lora_B` starts at zero, so a freshly wrapped layer computes exactly what the base layer computed.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        scaling: float,
        bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.scaling = scaling
        self.frozen_W = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_adapters(device, dtype)
        self.register_load_state_dict_pre_hook(_route_base_weights_to_frozen_W)

    @classmethod
    def wrap(
        cls,
        base: nn.Linear,
        rank: int,
        scaling: float,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> LoRALinear:
        """A LoRA layer around an existing linear layer (kept as `frozen_W`, weights shared, not copied).

        The adapters go to `device` / `dtype`, by default those of the base weight.
        """
        device = base.weight.device if device is None else device
        dtype = base.weight.dtype if dtype is None else dtype
        layer = cls(base.in_features, base.out_features, rank, scaling, device="meta", dtype=dtype)
        layer.frozen_W = base
        layer._init_adapters(device, dtype)
        return layer

    def _init_adapters(self, device: torch.device | str | None, dtype: torch.dtype | None) -> None:
        """`lora_A` with PyTorch's default init and `lora_B` at zero (the meta device is left uninitialised)."""
        self.lora_A = nn.Linear(self.in_features, self.rank, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(self.rank, self.out_features, bias=False, device=device, dtype=dtype)
        if self.lora_B.weight.device.type != "meta":
            nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x` `[..., in]` -> `[..., out]`."""
        return self.frozen_W(x) + self.scaling * self.lora_B(self.lora_A(x))

    @torch.no_grad()
    def merge_weight(self) -> torch.Tensor:
        """`W + scaling * B @ A` `[out, in]`, a new tensor outside autograd (upstream's name; moshi-finetune's
        checkpointer saves it as the merged weight), computed in float32 and returned in the base weight's dtype."""
        base = self.frozen_W.weight
        update = self.lora_B.weight.float() @ self.lora_A.weight.float()
        return (base.float() + self.scaling * update).to(base.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"scaling={self.scaling}")


def _route_base_weights_to_frozen_W(_module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Let a base checkpoint (`<prefix>weight`, `<prefix>bias`) load into a wrapped layer's `frozen_W`."""
    for name in ("weight", "bias"):
        key = prefix + name
        if key in state_dict:
            state_dict[f"{prefix}frozen_W.{name}"] = state_dict.pop(key)


def replace_all_linear_with_lora(
    module: nn.Module,
    rank: int,
    scaling: float,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    skip: tuple[type[nn.Module], ...] = (),
) -> None:
    """Wrap every `nn.Linear` below `module` in a `LoRALinear`, in place, except inside modules of the `skip` types.

    The adapters are created on `device` / with `dtype` (default: those of each base weight); use the meta device when
    their values will be loaded from a file afterwards.
    """
    for name, child in module.named_children():
        if isinstance(child, (LoRALinear, *skip)):
            continue
        if isinstance(child, nn.Linear):
            setattr(module, name, LoRALinear.wrap(child, rank, scaling, device=device, dtype=dtype))
        else:
            replace_all_linear_with_lora(child, rank, scaling, device=device, dtype=dtype, skip=skip)


def replace_lora_with_linear(module: nn.Module) -> None:
    """Replace every `LoRALinear` below `module` by one `nn.Linear` holding `W + scaling * B @ A`, in place."""
    for name, child in module.named_children():
        if isinstance(child, LoRALinear):
            setattr(module, name, _fused_linear(child))
        else:
            replace_lora_with_linear(child)


def _fused_linear(lora: LoRALinear) -> nn.Linear:
    base = lora.frozen_W
    weight = base.weight
    fused = nn.Linear(
        lora.in_features, lora.out_features, bias=base.bias is not None, device="meta", dtype=weight.dtype
    )
    with torch.no_grad():
        fused.weight = nn.Parameter(lora.merge_weight(), requires_grad=weight.requires_grad)
        if base.bias is not None:
            fused.bias = nn.Parameter(base.bias.detach().clone(), requires_grad=base.bias.requires_grad)
    return fused
