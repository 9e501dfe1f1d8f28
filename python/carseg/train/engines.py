"""Engine selection: a GPU with AMP and cudnn.benchmark where there is one, else the CPU."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def auto_engine(mixed_precision: str = "fp16"):
    """catalyst.engines.GPUEngine(mixed_precision=...) on CUDA, else CPUEngine.

    Catalyst 22.04's own default passes `fp16=` to accelerate, which 0.27 refuses; naming
    accelerate's `mixed_precision` works.
    """
    from catalyst.engines import CPUEngine, GPUEngine

    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        log.info("engine: GPU (%s), mixed precision %s", torch.cuda.get_device_name(0),
                 mixed_precision)
        return GPUEngine(mixed_precision=mixed_precision)
    log.info("engine: CPU (%d threads)", torch.get_num_threads())
    return CPUEngine()


def ddp_cpu_engine(num_processes: int = 2, port: int = 29510):
    """Distributed data-parallel over `num_processes` CPU processes (gloo)."""
    from catalyst.engines import DistributedDataParallelEngine

    return DistributedDataParallelEngine(
        address="127.0.0.1", port=port, world_size=num_processes,
        num_node_workers=num_processes, process_group_kwargs={"backend": "gloo"}, cpu=True)
