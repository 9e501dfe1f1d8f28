"""Timing, accuracy and hardware-limit measurements shared by every backend."""

from __future__ import annotations

import gc
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass
class Timing:
    """Per-call wall-clock latencies (ms) of one backend at one batch size and resolution."""

    samples_ms: list[float] = field(repr=False)
    batch: int

    @property
    def p50(self) -> float:
        return percentile(self.samples_ms, 50)

    @property
    def p90(self) -> float:
        return percentile(self.samples_ms, 90)

    @property
    def p99(self) -> float:
        return percentile(self.samples_ms, 99)

    @property
    def throughput(self) -> float:
        """Images a second at the median latency."""
        return self.batch / (self.p50 / 1000.0)

    def to_json(self) -> dict[str, Any]:
        return {"p50_ms": self.p50, "p90_ms": self.p90, "p99_ms": self.p99,
                "mean_ms": statistics.fmean(self.samples_ms), "iters": len(self.samples_ms),
                "throughput_img_s": self.throughput}


def percentile(xs: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), without numpy."""
    if not xs:
        raise ValueError("percentile of no samples")
    s = sorted(xs)
    k = (len(s) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def time_calls(fn: Callable[[], Any], *, batch: int, iters: int, warmup: int,
               device: torch.device, max_seconds: float = 60.0) -> Timing:
    """Call fn() `warmup` times, then up to `iters` times (stopping after max_seconds),
    each timed with a device synchronize on CUDA so the GPU's work is inside the interval."""
    cuda = device.type == "cuda"
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize(device)
    samples = []
    t_end = time.perf_counter() + max_seconds
    gc_was = gc.isenabled()
    gc.disable()  # a collection inside one sample is noise, not the backend's cost
    try:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize(device)
            samples.append((time.perf_counter() - t0) * 1000.0)
            if time.perf_counter() > t_end and len(samples) >= 5:
                break
    finally:
        if gc_was:
            gc.enable()
    return Timing(samples, batch)


def parity(ref_logits: torch.Tensor, logits: torch.Tensor, threshold: float = 0.5
           ) -> dict[str, float]:
    """max |diff| of logits and IoU of the thresholded masks, against the reference."""
    ref = ref_logits.detach().float().cpu()
    got = logits.detach().float().cpu()
    if ref.shape != got.shape:
        raise ValueError(f"logits shape: expected {list(ref.shape)}, got {list(got.shape)}")
    ref_m = torch.sigmoid(ref) > threshold
    got_m = torch.sigmoid(got) > threshold
    union = (ref_m | got_m).sum().item()
    iou = 1.0 if union == 0 else (ref_m & got_m).sum().item() / union
    return {"max_abs_diff": (ref - got).abs().max().item(), "mask_iou": iou}


def count_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward pass, counted by torch's FlopCounterMode (a multiply-add is 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(x)
    return int(counter.get_total_flops())


def measure_peak(device: torch.device, seconds: float = 2.0) -> dict[str, float]:
    """What this device reaches on a large fp32 (and on CUDA fp16) matrix product and on a
    large copy: the ceiling that backends are compared with."""
    out: dict[str, float] = {}
    n = 2048 if device.type == "cpu" else 8192
    dtypes = [torch.float32] + ([torch.float16] if device.type == "cuda" else [])
    for dt in dtypes:
        a = torch.randn(n, n, device=device, dtype=dt)
        b = torch.randn(n, n, device=device, dtype=dt)
        t = time_calls(lambda a=a, b=b: torch.mm(a, b), batch=1, iters=50, warmup=2, device=device,
                       max_seconds=seconds)
        out[f"matmul_{str(dt).split('.')[-1]}_tflops"] = 2 * n ** 3 / (t.p50 / 1000) / 1e12
    src = torch.empty(64 * 2 ** 20 if device.type == "cpu" else 512 * 2 ** 20,
                      dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    t = time_calls(lambda: dst.copy_(src), batch=1, iters=50, warmup=2, device=device,
                   max_seconds=seconds)
    out["copy_gb_s"] = 2 * src.numel() / (t.p50 / 1000) / 1e9  # read + write
    return out


def device_info(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name = props.name
        extra = {"memory_gib": round(props.total_memory / 2 ** 30, 1),
                 "cuda": torch.version.cuda}
    else:
        name = _cpu_name()
        extra = {"cores": os.cpu_count(), "threads": torch.get_num_threads()}
    return {"type": device.type, "name": name, "slug": slugify(f"{device.type}-{name}"),
            "torch": torch.__version__, "python": platform.python_version(), **extra}


def _cpu_name() -> str:
    try:
        with Path("/proc/cpuinfo").open() as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


def _status_mib(field: str) -> float | None:
    """A memory line of /proc/self/status (VmRSS, VmHWM) in MiB; None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def peak_memory_reset(device: torch.device) -> None:
    """Start a fresh high-water mark: CUDA's allocator peak, or on Linux the process's peak
    resident size (writing 5 to /proc/self/clear_refs resets VmHWM)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_mib(device: torch.device) -> float | None:
    """Peak since the last reset: CUDA memory allocated, or the process's peak resident set
    (which includes every model loaded so far, so compare cells by their increase)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return _status_mib("VmHWM")


def resident_mib() -> float | None:
    return _status_mib("VmRSS")


def asjson(obj: Any) -> Any:
    return asdict(obj) if hasattr(obj, "__dataclass_fields__") else obj
