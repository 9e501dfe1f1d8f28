"""Engine selection: a GPU with AMP and cudnn.benchmark where there is one, else the CPU, in
bfloat16 autocast where the CPU computes bfloat16 natively."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# CPU flags (Linux /proc/cpuinfo) of instructions that compute in bfloat16. Without one of
# them oneDNN emulates bfloat16 and a step runs slower than in float32.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CPU_PRECISIONS = ("auto", "bf16", "no")


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True where the CPU's flags name a bfloat16 instruction set (AVX512-BF16 or AMX)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(NATIVE_BF16_FLAGS & set(line.partition(":")[2].split()))
    return False


def cpu_mixed_precision(choice: str = "auto", cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """accelerate's mixed_precision for a CPU run: "bf16" or "no"; "auto" is bf16 where the CPU
    has it natively (autocast keeps float32 master weights, BatchNorm and the loss)."""
    if choice not in CPU_PRECISIONS:
        raise ValueError(f"cpu_mixed_precision must be one of {CPU_PRECISIONS}, got {choice!r}")
    if choice == "auto":
        return "bf16" if cpu_has_native_bf16(cpuinfo) else "no"
    return choice


def auto_engine(mixed_precision: str = "fp16", cpu_precision: str = "auto"):
    """catalyst.engines.GPUEngine(mixed_precision=...) on CUDA, else a CPUEngine whose mixed
    precision is `cpu_mixed_precision(cpu_precision)`.

    Catalyst 22.04's own default passes `fp16=` to accelerate, which 0.27 refuses; naming
    accelerate's `mixed_precision` works. On the CPU, accelerate's "bf16" runs the model's
    forward under torch.autocast("cpu", torch.bfloat16) and hands float32 outputs to the
    loss; the weights, the optimizer and BatchNorm stay float32.
    """
    from catalyst.engines import CPUEngine, GPUEngine

    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        log.info("engine: GPU (%s), mixed precision %s", torch.cuda.get_device_name(0),
                 mixed_precision)
        return GPUEngine(mixed_precision=mixed_precision)
    cpu = cpu_mixed_precision(cpu_precision)
    log.info("engine: CPU (%d threads), mixed precision %s%s", torch.get_num_threads(), cpu,
             " (the CPU computes bfloat16)" if cpu_precision == "auto" and cpu == "bf16" else "")
    return CPUEngine(mixed_precision=cpu)


def ddp_cpu_engine(num_processes: int = 2, port: int = 29510, cpu_precision: str = "auto"):
    """Distributed data-parallel over `num_processes` CPU processes (gloo), each in
    `cpu_mixed_precision(cpu_precision)`."""
    from catalyst.engines import DistributedDataParallelEngine

    return DistributedDataParallelEngine(
        address="127.0.0.1", port=port, world_size=num_processes,
        num_node_workers=num_processes, process_group_kwargs={"backend": "gloo"}, cpu=True,
        mixed_precision=cpu_mixed_precision(cpu_precision))
