"""What the autotuner needs to know about the device: limits for pruning and an identity for the cache."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Union

import torch

DeviceLike = Union[torch.device, str, int, None]


@dataclass(frozen=True)
class DeviceLimits:
    """Hardware limits that decide whether a tile fits, plus the device's identity.

    ``smem_per_block``: bytes of shared memory one program may use (the opt-in maximum);
    ``regs_per_sm``: 32-bit registers per SM; ``regs_per_thread``: the per-thread cap
    (255 on every NVIDIA GPU since Kepler); ``l2_bytes``: L2 size, used to size the
    rotating input buffers. ``capability`` is ``(major, minor)`` or ``None`` off-GPU.
    """

    name: str
    kind: str = "cuda"
    capability: Optional[tuple[int, int]] = None
    sm_count: int = 1
    smem_per_block: int = 48 * 1024
    regs_per_sm: int = 65536
    regs_per_thread: int = 255
    max_threads_per_block: int = 1024
    l2_bytes: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("cuda", "cpu"):
            raise ValueError(f"DeviceLimits.kind must be 'cuda' or 'cpu', got {self.kind!r}")
        for attr in ("sm_count", "smem_per_block", "regs_per_sm", "regs_per_thread", "max_threads_per_block"):
            value = getattr(self, attr)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"DeviceLimits.{attr} must be a positive int, got {value!r}")

    @property
    def arch(self) -> str:
        """``"sm90"`` style capability tag, or ``"cpu"``."""
        if self.capability is None:
            return "cpu"
        return f"sm{self.capability[0]}{self.capability[1]}"

    @classmethod
    def cpu(cls) -> "DeviceLimits":
        """Limits for running kernels on the CPU (Triton interpreter, TVM llvm): nothing is pruned
        for size, since there are no registers or shared memory to overflow."""
        big = 1 << 30
        return cls(name="cpu", kind="cpu", capability=None, sm_count=1, smem_per_block=big,
                   regs_per_sm=big, regs_per_thread=big, max_threads_per_block=big, l2_bytes=0)

    @classmethod
    def from_torch(cls, device: DeviceLike = None) -> "DeviceLimits":
        """Read the limits of a torch device (memoised per device index)."""
        dev = resolve_device(device)
        if dev.type != "cuda":
            return cls.cpu()
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return _cuda_limits(index)


def resolve_device(device: DeviceLike) -> torch.device:
    """``None`` → the current CUDA device if there is one, else the CPU."""
    if device is None:
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if isinstance(device, int):
        return torch.device("cuda", device)
    if isinstance(device, (str, torch.device)):
        return torch.device(device)
    raise TypeError(f"device must be a torch.device, str, int or None, got {type(device).__name__}")


@functools.lru_cache(maxsize=None)
def _cuda_limits(index: int) -> DeviceLimits:
    props = torch.cuda.get_device_properties(index)
    smem = getattr(props, "shared_memory_per_block_optin", 0) or getattr(props, "shared_memory_per_block", 48 * 1024)
    return DeviceLimits(
        name=props.name,
        kind="cuda",
        capability=(props.major, props.minor),
        sm_count=props.multi_processor_count,
        smem_per_block=int(smem),
        regs_per_sm=int(getattr(props, "regs_per_multiprocessor", 65536) or 65536),
        regs_per_thread=255,
        max_threads_per_block=int(getattr(props, "max_threads_per_block", 1024) or 1024),
        l2_bytes=int(getattr(props, "L2_cache_size", 0) or 0),
    )
