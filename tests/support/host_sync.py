"""A dispatch-mode recorder of host-syncing ops: what a forward that must be capturable in a CUDA graph
may not call (``.item()``, ``bool(t)``, ``.tolist()``, data-dependent shapes)."""

from __future__ import annotations

import traceback
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

# Ops that copy a device value to the host (``.item()``, ``bool(t)``, ``.tolist()``) or have a
# data-dependent output shape.
SYNC_OPS = ("_local_scalar_dense", "is_nonzero", "nonzero", "unique", "masked_select", "item")
# The reference MoE loops over the experts that got tokens (a CPU fallback); the GPU bundle's fused MoE
# kernel replaces it, so its syncs are not the forward's.
CPU_ONLY_KERNELS = ("moe_experts_ref", "experts_ref")


class HostSyncRecorder(TorchDispatchMode):
    """Records every host-syncing op dispatched inside the block, with the Python frames that called it."""

    def __init__(self) -> None:
        super().__init__()
        self.hits: list[tuple[str, list[str]]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func._schema.name.split("::")[-1]
        if any(op in name for op in SYNC_OPS):
            self.hits.append((name, [f.name for f in traceback.extract_stack()]))
        return func(*args, **(kwargs or {}))

    def forward_syncs(self) -> list[tuple[str, list[str]]]:
        return [(n, st) for n, st in self.hits if not any(k in st for k in CPU_ONLY_KERNELS)]
