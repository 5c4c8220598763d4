"""Choosing the training precision (fp32, bf16 or fp16) for the hardware at hand, and saying why.

The rule (``precision: auto`` with ``use_mixed_precision: true``):

* CUDA: bf16 autocast when the GPU supports bf16 (Ampere and newer), else fp16 autocast with a
  ``torch.amp.GradScaler`` (loss scaling keeps small fp16 gradients from flushing to zero).
* CPU: bf16 autocast only when the processor has bf16 instructions (avx512_bf16 or AMX) *and* a
  quick micro-benchmark at the model's matmul shapes shows it faster than fp32. Without those
  instructions bf16 matmuls are emulated and hundreds of times slower, so fp32 it is.
* MPS and anything else: fp32.

``precision: fp32 | bf16 | fp16`` forces a choice; ``use_mixed_precision: false`` means fp32.

``NIMA_CPU_BF16=on|off`` (environment) forces the CPU half of the ``auto`` rule: ``on`` picks
bf16 without the micro-benchmark, ``off`` picks fp32. Runs that must not depend on which CPU they
land on (test suites, benchmarks compared across machines) set it, or set ``precision``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from nima.errors import ConfigError

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_BF16_ENV = "NIMA_CPU_BF16"
MIN_BF16_WORK = 1 << 28
"""Multiply-adds of one MLP matmul below which ``auto`` keeps fp32 on a CPU without measuring."""


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run trains in, and the reason, for the start-up message."""

    name: str
    """fp32, bf16 or fp16."""
    device_type: str
    """cpu, cuda, mps ... (what torch.autocast wants)."""
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.name]

    @property
    def uses_autocast(self) -> bool:
        return self.name != "fp32"

    @property
    def needs_grad_scaler(self) -> bool:
        return self.name == "fp16"

    @property
    def float32_matmul_precision(self) -> str:
        """For :func:`torch.set_float32_matmul_precision`: ``high`` (TF32 tensor cores) for the
        fp32 matmuls left outside autocast on a GPU in mixed precision; ``highest`` otherwise, so
        that a run that asked for fp32 gets true fp32."""
        return "high" if self.device_type == "cuda" and self.uses_autocast else "highest"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context the forward pass runs in (a no-op for fp32)."""
        return autocast_for(torch.device(self.device_type), self.dtype)

    def describe(self) -> str:
        return f"precision: {self.name} ({self.reason})"


def cpu_flags(path: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags Linux reports (empty where /proc/cpuinfo is missing)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_bf16(flags: set[str] | None = None, capability: str | None = None) -> bool:
    """True when the CPU has native bf16 instructions (avx512_bf16 or AMX bf16).

    ``flags`` and ``capability`` (``torch.backends.cpu.get_cpu_capability()``) can be injected
    for tests. A capability of ``AMX``/``AVX512_BF16`` counts as well as the Linux flags.
    """
    flags = cpu_flags() if flags is None else flags
    if capability is None:
        try:
            capability = torch.backends.cpu.get_cpu_capability()
        except Exception:  # older torch: flags alone decide
            capability = ""
    return bool({"avx512_bf16", "amx_bf16"} & flags) or capability.upper() in ("AMX", "AVX512_BF16")


def bf16_faster_on_cpu(rows: int, d_model: int, d_ff: int, repeats: int = 5) -> bool:
    """Micro-benchmark: is bf16 autocast clearly faster (by 10%) than fp32 for a (rows x d_model)
    @ (d_model x d_ff) MLP?

    Forward and backward of the model's largest matmul pair, best of ``repeats``, fp32 and bf16
    alternating; takes well under a second at the sizes where it matters. Only called on CPUs with
    bf16 instructions. Below ``MIN_BF16_WORK`` multiply-adds the answer is no without measuring:
    there bf16 gains nothing worth its rounding, and timings that short flip between runs, which
    would make the same command train in different precisions.
    """
    rows, d_model, d_ff = max(rows, 1), max(d_model, 1), max(d_ff, 1)
    if rows * d_model * d_ff < MIN_BF16_WORK:
        return False
    x = torch.randn(rows, d_model)
    w1 = torch.randn(d_model, d_ff, requires_grad=True)
    w2 = torch.randn(d_ff, d_model, requires_grad=True)

    def once(dtype: torch.dtype | None) -> float:
        ctx = torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()
        start = time.perf_counter()
        with ctx:
            y = torch.nn.functional.gelu(x @ w1) @ w2
        y.float().sum().backward()
        return time.perf_counter() - start

    once(None), once(torch.bfloat16)  # warm the allocator and both kernels
    fp32 = bf16 = float("inf")
    for _ in range(repeats):
        fp32, bf16 = min(fp32, once(None)), min(bf16, once(torch.bfloat16))
    return bf16 < 0.9 * fp32


def choose_precision(
    requested: str = "auto",
    use_mixed_precision: bool = True,
    device: torch.device | str = "cpu",
    *,
    cuda_bf16_supported: bool | None = None,
    cpu_bf16_instructions: bool | None = None,
    bf16_benchmark: Callable[[], bool] | None = None,
) -> PrecisionChoice:
    """Pick fp32, bf16 or fp16 for ``device`` (see the module docstring for the rule).

    The keyword arguments inject hardware facts for tests: whether the GPU supports bf16,
    whether the CPU has bf16 instructions, and a callable that runs (or fakes) the CPU
    micro-benchmark, returning True when bf16 is faster. The benchmark runs only when needed.
    """
    device = torch.device(device)
    kind = device.type
    if requested not in ("auto", *_DTYPES):
        raise ConfigError(f"training.precision must be auto, fp32, bf16 or fp16, got {requested!r}")
    if requested != "auto":
        if requested == "fp16" and kind != "cuda":
            raise ConfigError(
                f"training.precision=fp16 needs a CUDA GPU (device is {kind}); use fp32 or bf16"
            )
        reason = "forced by training.precision"
        if requested == "bf16" and kind == "cpu" and not _cpu_bf16(cpu_bf16_instructions):
            reason += "; warning: this CPU has no bf16 instructions, so bf16 is emulated and very slow"
        return PrecisionChoice(requested, kind, reason)
    if not use_mixed_precision:
        return PrecisionChoice("fp32", kind, "use_mixed_precision is off")
    if kind == "cuda":
        supported = torch.cuda.is_bf16_supported() if cuda_bf16_supported is None else cuda_bf16_supported
        if supported:
            return PrecisionChoice("bf16", kind, "mixed precision on a GPU with bf16 support")
        return PrecisionChoice("fp16", kind, "mixed precision on a GPU without bf16: fp16 with loss scaling")
    if kind == "cpu":
        forced = cpu_bf16_forced() if cpu_bf16_instructions is None else None  # injected facts win
        if forced is not None:
            why = f"{CPU_BF16_ENV}={os.environ[CPU_BF16_ENV]} in the environment"
            return PrecisionChoice("bf16" if forced else "fp32", kind, why)
        if not _cpu_bf16(cpu_bf16_instructions):
            return PrecisionChoice(
                "fp32",
                kind,
                "this CPU has no bf16 instructions (avx512_bf16/AMX), "
                "where bf16 would be far slower than fp32",
            )
        faster = bf16_benchmark() if bf16_benchmark is not None else False
        if faster:
            return PrecisionChoice(
                "bf16",
                kind,
                "the CPU has bf16 instructions and bf16 measured faster than fp32 at this model's shapes",
            )
        return PrecisionChoice(
            "fp32",
            kind,
            "the CPU has bf16 instructions but bf16 was not faster than fp32 at this model's shapes",
        )
    return PrecisionChoice("fp32", kind, f"mixed precision is not used on {kind}")


def cpu_bf16_forced() -> bool | None:
    """``NIMA_CPU_BF16`` read as True (on), False (off) or None (unset: measure)."""
    value = os.environ.get(CPU_BF16_ENV, "").strip().lower()
    if not value:
        return None
    if value in ("1", "on", "true", "yes"):
        return True
    if value in ("0", "off", "false", "no"):
        return False
    raise ConfigError(f"{CPU_BF16_ENV}={value!r} must be on or off (or unset to let Nima measure)")


def _cpu_bf16(injected: bool | None) -> bool:
    return cpu_has_bf16() if injected is None else injected


def inference_precision(requested: str = "auto", device: torch.device | str = "cpu") -> PrecisionChoice:
    """The precision for evaluating or generating: ``auto`` is bf16 on GPUs that support it and
    fp32 elsewhere (no micro-benchmark: a forward pass is short); fp32, bf16 or fp16 force it."""
    device = torch.device(device)
    if requested == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16", device.type, "a GPU with bf16 support")
        return PrecisionChoice("fp32", device.type, "full precision off bf16 GPUs")
    return choose_precision(requested, True, device)


def autocast_for(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device`` (a no-op for None or fp32)."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
