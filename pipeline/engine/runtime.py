"""Where a run executes: the process's rank under torchrun, the device, AMP dtype and memory format,
seeding and the RNG state that a checkpoint carries, and a logger that speaks on rank zero only."""
from __future__ import annotations

import contextlib
import logging
import random
import types
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as tdist

from pipeline.config.schema import RuntimeConfig
from pipeline.config.invocation import DistInfo
from pipeline.errors import TrainingError


class _RankZero(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (tdist.is_available() and tdist.is_initialized() and tdist.get_rank() != 0)


def get_logger(name: str) -> logging.Logger:
    """A logger whose records are dropped on every rank but zero (instead of `if rank == 0: print`)."""
    log = logging.getLogger(name)
    if not any(isinstance(f, _RankZero) for f in log.filters):
        log.addFilter(_RankZero())
    return log


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise TrainingError("runtime.device=cuda but no CUDA device is available (use runtime.device=auto or cpu)")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16, as oneDNN sees them: where bf16 matmuls and convolutions run natively
    (elsewhere bf16 is emulated and slower than fp32)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def amp_dtype(mode: str, device: torch.device):
    """The autocast dtype, or None for fp32. `auto`: bf16 on GPUs that have it (else fp16) and on
    CPUs with native bf16; fp32 on other CPUs."""
    if mode == "off":
        return None
    if device.type == "cpu":
        if mode == "fp16":
            raise TrainingError("runtime.amp=fp16 on the CPU: use bf16 (native on CPUs with AMX or AVX512-BF16) or off")
        if mode == "bf16" or (mode == "auto" and cpu_has_native_bf16()):
            return torch.bfloat16
        return None
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def describe_precision(dtype, device: torch.device) -> str:
    """The training precision for the log; on a CPU without native bf16 it says so, since the
    README's CPU timings come from CPUs with it (several times faster)."""
    if dtype is not None:
        return str(dtype).replace("torch.", "")
    if device.type == "cpu" and not cpu_has_native_bf16():
        return (f"fp32 (this CPU, {torch.backends.cpu.get_cpu_capability()}, has no native bf16: "
                "expect several times the README's bf16 CPU timings)")
    return "fp32"


def _fp32_forward(self, x: torch.Tensor) -> torch.Tensor:
    if not torch.is_grad_enabled():  # no backward to pay for: bf16's forward is the faster one
        return type(self).forward(self, x)
    with torch.autocast(x.device.type, enabled=False):
        return type(self).forward(self, x.float())


def depthwise_in_fp32(model: torch.nn.Module) -> int:
    """Run every depthwise convolution of a training step outside autocast, in fp32: under CPU bf16
    autocast oneDNN's depthwise backward is 3-6x slower than fp32's (bench/train_throughput.py --cpu),
    while the dense convolutions gain from bf16. Without gradients (validation, inference) they stay
    in bf16, whose forward is faster (bench/depthwise_cpu.py; Lite0's whole forward 1.25x). Bound per
    instance, so state-dict keys stay and a deepcopy (EMA, SWA) binds the copy. Returns how many
    convolutions it changed."""
    n = 0
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels:
            m.forward = types.MethodType(_fp32_forward, m)
            n += 1
    return n


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype; None runs in fp32
    channels_last: bool
    dist: DistInfo
    compile: bool = False
    progress: bool = True
    depthwise_fp32: bool = True

    @classmethod
    def create(cls, rc: RuntimeConfig, dist: DistInfo = DistInfo()) -> "Runtime":
        """Resolve the device, join the process group under torchrun, and seed."""
        device = resolve_device(rc.device, dist.local_rank)
        if dist.world > 1 and not tdist.is_initialized():
            tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
            torch.backends.cudnn.benchmark = True
        seed_everything(rc.seed)
        return cls(device, amp_dtype(rc.amp, device), rc.channels_last, dist, rc.compile, rc.progress, rc.depthwise_fp32)

    def to_device(self, x: torch.Tensor, image: bool = False) -> torch.Tensor:
        fmt = torch.channels_last if (image and self.channels_last) else torch.preserve_format
        return x.to(self.device, non_blocking=True, memory_format=fmt)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        if self.depthwise_fp32 and self.device.type == "cpu" and self.dtype == torch.bfloat16:
            depthwise_in_fp32(model)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def all_reduce(self, *tensors: torch.Tensor, op=None) -> None:
        if self.dist.world > 1:
            for t in tensors:
                tdist.all_reduce(t, op=op or tdist.ReduceOp.SUM)

    def barrier(self) -> None:
        if self.dist.world > 1:
            tdist.barrier()

    def no_sync(self, net, skip: bool):
        """DDP's no_sync for accumulation micro-steps; a no-op in one process."""
        return net.no_sync() if (skip and self.dist.world > 1) else contextlib.nullcontext()
