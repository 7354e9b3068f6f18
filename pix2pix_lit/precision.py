"""Which reduced precisions this CPU runs fast, and the CLI's fallback for CPUs that have none.

PyTorch runs bf16 convolutions on the CPU through oneDNN only where oneDNN has bf16 kernels
(x86 CPUs with AVX-512; natively fast with AVX512-BF16 or AMX). Elsewhere (AVX2-only CPUs such as
AMD Zen 2/3 or most laptops before 2023) it falls back to a single-threaded reference
convolution: measured on an AMD EPYC (Zen 3) here, the pix2pix training step at 256x256 ran at
0.017 images/s in bf16-mixed against 0.62 in fp32, 36x slower (``experiments/RESULTS.md``). Lightning cannot know this, so the
CLI checks it before building the Trainer.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any, Literal, Optional

import torch

log = logging.getLogger(__name__)

BF16Support = Literal["native", "emulated", "none"]

# 16-bit precisions; on a CPU they put convolutions in bf16 (Lightning turns 16-mixed into bf16-mixed there)
_16BIT_PRECISIONS = ("bf16-mixed", "bf16", "bf16-true", "16-mixed", "16", 16, "16-true")


def autocast_off(device: torch.device):
    """No autocast inside (on CPU and CUDA): what a score computes must not depend on the trainer's precision (the
    Inception, SSIM, a segmenter, LPIPS all drift by percents under bf16 autocast)."""
    return torch.autocast(device.type, enabled=False) if device.type in ("cpu", "cuda") else nullcontext()


def is_16bit(precision: Any) -> bool:
    """Whether a Trainer ``precision`` setting computes in fp16/bf16."""
    return precision in _16BIT_PRECISIONS


def cpu_bf16_support() -> BF16Support:
    """``native`` (AVX512-BF16 or AMX: bf16 is faster than fp32), ``emulated`` (oneDNN emulates bf16 with
    AVX-512: works, rarely faster) or ``none`` (no oneDNN bf16 kernels: reference kernels, far slower)."""
    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return "none"
    cpu = torch.cpu
    native = getattr(cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(cpu, "_is_amx_tile_supported", lambda: False)()
    return "native" if native else "emulated"


def cpu_kernels() -> str:
    """Which CPU kernels torch runs here, as far as their rounding goes: its ISA level, the vendor and AMX (oneDNN
    picks its fp32 convolution kernels by all three; the same training steps on two of them differ by rounding).
    Fixtures of the official code's numbers record it (``experiments/*_check.py``) so tests compare exactly only
    on the kernels the numbers came from."""
    vendor = ""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        vendor = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("vendor_id")), "")
    except OSError:
        pass
    amx = " AMX" if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)() else ""
    return f"{torch.backends.cpu.get_cpu_capability()} {vendor or 'unknown'}{amx}"


def runs_on_cpu(accelerator: Any) -> bool:
    """Whether a Trainer ``accelerator`` setting ends up on the CPU."""
    name = accelerator if isinstance(accelerator, str) else type(accelerator).__name__.lower().replace("accelerator", "")
    name = (name or "auto").lower()
    if name == "cpu":
        return True
    if name == "auto":
        mps = getattr(torch.backends, "mps", None)
        return not torch.cuda.is_available() and not (mps is not None and mps.is_available())
    return False


def cpu_precision_fallback(accelerator: Any, precision: Any, support: Optional[BF16Support] = None) -> Optional[str]:
    """The precision to use instead of ``precision`` on this machine, or None to keep it.

    bf16 (and 16-mixed, which Lightning runs as bf16 on CPUs) on a CPU with no bf16 kernels becomes
    ``32-true``: the same training, an order of magnitude faster there.
    """
    if not is_16bit(precision) or not runs_on_cpu(accelerator):
        return None
    support = support or cpu_bf16_support()
    return "32-true" if support == "none" else None


def autocast_ready_copy(net: torch.nn.Module, dtype: torch.dtype) -> Optional[torch.nn.Module]:
    """A frozen copy of ``net`` whose convolution and linear weights (and biases) are already in ``dtype``,
    or None if ``net`` re-derives its weights at every call (parametrizations, spectral norm's hooks).

    Under autocast these layers cast their fp32 weights to ``dtype`` at every call, which is what the copy
    holds from the start: the outputs are the same to the bit (batch norm and everything else autocast
    leaves alone stay in fp32). For evaluation passes, where weights do not change between calls
    (``ImageTranslationModel.generate``).
    """
    import copy

    nn = torch.nn
    if any(getattr(m, "parametrizations", None) or m._forward_pre_hooks for m in net.modules()):
        return None
    out = copy.deepcopy(net).requires_grad_(False)
    for m in out.modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            for name, p in list(m.named_parameters(recurse=False)):
                setattr(m, name, nn.Parameter(p.detach().to(dtype), requires_grad=False))
    return out


class EvalPassWeights:
    """During a validation/test/predict pass under autocast, networks with their convolution weights cast once for
    the whole pass (:func:`autocast_ready_copy`); outside a pass (or without autocast) the networks themselves.

    Autocast casts every fp32 weight at every call: for unet_256 that is 54 M parameters per image, which was 43%
    of a paper-mode forward in bf16 on the CPU (16.4 against 28.7 img/s, outputs equal to the bit;
    ``experiments/RESULTS.md``). Weights cannot change within a pass; the copies are made at the first batch and
    dropped when the pass ends.
    """

    def __init__(self) -> None:
        self._copies: Optional[dict] = None

    def begin(self) -> None:
        self._copies = {}

    def end(self) -> None:
        self._copies = None

    @property
    def copies(self) -> Optional[dict]:
        """The copies made in this pass by (network id, dtype), or None outside a pass."""
        return self._copies

    def __call__(self, net: torch.nn.Module, device_type: str) -> torch.nn.Module:
        copies = self._copies
        if copies is None or not torch.is_autocast_enabled(device_type) or hasattr(net, "_orig_mod"):
            return net
        dtype = torch.get_autocast_dtype(device_type)
        key = (id(net), dtype)
        if key not in copies:
            copies[key] = autocast_ready_copy(net, dtype) or net
        return copies[key]
