"""Training precision: ``train.precision`` chooses fp32, or bf16 / fp16 weights with fp32 master copies.

bf16 and fp16 are DeepSpeed's own mixed precision (its ``bf16`` / ``fp16`` config sections), which its CPU
accelerator supports for bf16 (DeepSpeed 0.19.8: ``CPU_Accelerator.is_bf16_supported()`` is True, fp16 only
where oneDNN has fp16 kernels). The weights the forward sees are bf16; the optimizer updates fp32 master
copies (``FP16_UnfusedOptimizer`` without ZeRO, fp32 partitions with ZeRO 1-3) and casts them back. The
trainer casts patches to the weights' dtype (DeepSpeed does not cast inputs); the model keeps position-
embedding angles, pooling weights and softmaxes in fp32 (mmvit/models), and the losses are computed in fp32.

``auto`` picks bf16 where the hardware multiplies bf16 natively: on CUDA ``torch.cuda.is_bf16_supported``
(Ampere and newer), on CPUs the AMX-BF16 or AVX512-BF16 instructions (``torch.cpu.get_capabilities()``, else
the kernel's ``/proc/cpuinfo`` flags). Elsewhere bf16 matmuls are emulated and slower than fp32, so ``auto``
stays fp32 (oneDNN's own ``_is_mkldnn_bf16_supported`` is True on any AVX512 CPU, emulated or not:
pytorch/pytorch#86550, so it is not what decides).

Completing the DeepSpeed config (:func:`apply`) for bf16:
- ``data_types.grad_accum_dtype: fp32`` with ZeRO >= 1: gradients of the micro-batches of one step are summed
  in fp32 (with bf16's 8 significant bits, a sum of many micro-batches loses the small ones). ZeRO-0 has no fp32
  accumulation in DeepSpeed 0.19.8 (``unsupported mix`` error): there the sum stays bf16 and the engine
  warns when ``gradient_accumulation_steps > 1``.
- ``communication_data_type: fp32`` on CPU: gradients are all-reduced over gloo in fp32, exact and with no
  bf16 rounding of the averaged gradient (the CPU's all-reduce is not bandwidth-bound at these sizes).

A native DeepSpeed checkpoint holds the optimizer state of its precision and does not load under another;
the precision is written in the checkpoint's marker, ``auto`` resumes in it, and an explicit different
choice is refused with the way out (a universal checkpoint loads under either).
"""

from __future__ import annotations

from typing import Literal

import torch

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags() -> dict[str, bool]:
    """Whether this CPU has each of :data:`CPU_BF16_FLAGS`: torch's view (torch >= 2.8), else /proc/cpuinfo."""
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        caps = get()
        if any(k in caps for k in CPU_BF16_FLAGS):
            return {k: bool(caps.get(k, False)) for k in CPU_BF16_FLAGS}
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    return {k: k in flags for k in CPU_BF16_FLAGS}


def bf16_support(device: torch.device) -> tuple[bool, str]:
    """(native bf16 on ``device``, the reason in words)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return True, f"{name} supports bf16"
        return False, f"{name} has no native bf16 (compute capability < 8.0)"
    if device.type != "cpu":
        return False, f"bf16 support of device type {device.type!r} is not known to mmvit"
    flags = cpu_flags()
    have = [k for k, v in flags.items() if v]
    if have:
        return True, f"the CPU has {' and '.join(have)}"
    return False, (f"the CPU has neither {' nor '.join(CPU_BF16_FLAGS)}: bf16 matmuls would be emulated, "
                   f"slower than fp32")


def from_deepspeed(ds: dict) -> str | None:
    """The precision a DeepSpeed config's own ``bf16`` (or legacy ``bfloat16``) / ``fp16`` section enables."""
    on = [name for name, keys in (("bf16", ("bf16", "bfloat16")), ("fp16", ("fp16",)))
          if any((ds.get(k) or {}).get("enabled", False) for k in keys)]
    if len(on) > 1:
        raise ValueError("deepspeed: bf16 and fp16 are both enabled; enable one (or set train.precision)")
    return on[0] if on else None


def resolve(requested: str | None, ds: dict, device: torch.device, saved: str | None = None) -> tuple[str, str]:
    """The run's precision (``fp32``, ``bf16`` or ``fp16``) and why, in words for the log.

    ``requested``: ``train.precision`` (None: as the DeepSpeed config says, fp32 if it says nothing).
    ``saved``: the precision of the checkpoint the run resumes from (None: a fresh start, or not recorded).
    """
    if requested is not None and requested not in PRECISIONS:
        raise ValueError(f"train.precision={requested!r}; choose from {PRECISIONS}")
    theirs = from_deepspeed(ds)
    if requested is None:
        chosen, why = theirs or "fp32", ("the DeepSpeed config's " + theirs + " section") if theirs else "the default"
    elif theirs is not None and requested != theirs:
        raise ValueError(f"train.precision={requested} but the deepspeed section enables {theirs}: set the "
                         f"precision in one place (train.precision; remove deepspeed.{theirs})")
    elif requested == "auto":
        ok, reason = bf16_support(device)
        if saved is not None:
            chosen, why = saved, f"auto, as the checkpoint it resumes from was trained ({reason})"
        else:
            chosen, why = ("bf16" if ok else "fp32"), f"auto: {reason}"
    else:
        chosen, why = requested, "train.precision"
        if requested == "bf16":
            ok, reason = bf16_support(device)
            if not ok:
                why += f" (slow here: {reason})"
    if chosen == "fp16" and device.type == "cpu":
        raise ValueError("fp16 training needs CUDA (DeepSpeed's CPU accelerator has fp16 only where oneDNN has "
                         "fp16 kernels, and mmvit does not test it there); use bf16 on CPUs")
    autocast = (ds.get("torch_autocast") or {}).get("enabled", False)
    if autocast and chosen != "fp32":
        raise ValueError(f"deepspeed.torch_autocast is enabled and the precision is {chosen}: autocast runs fp32 "
                         f"weights in low precision, {chosen} casts the weights; choose one")
    if saved is not None and saved != chosen:
        raise ValueError(f"the checkpoint was trained in {saved} and this run is {chosen} ({why}): a native "
                         f"DeepSpeed checkpoint's optimizer state does not load across precisions. Resume with "
                         f"train.precision={saved} (or auto), or convert the checkpoint with "
                         f"python -m deepspeed.checkpoint.ds_to_universal and resume from the universal folder")
    return chosen, why


def apply(ds: dict, precision: str, device: torch.device) -> dict:
    """``ds`` (a complete DeepSpeed config, see engine.build_ds_config) with ``precision`` switched on and the
    fp32 accumulation and communication described in the module docstring (keys the config sets win)."""
    ds = dict(ds)
    for key in ("bf16", "bfloat16", "fp16"):
        section = ds.get(key)
        if section is not None and not section.get("enabled", False):
            ds.pop(key)  # an explicit enabled: false says nothing more than its absence
    if precision == "fp32":
        return ds
    ds.pop("bfloat16", None)
    ds[precision] = {**(ds.get(precision) or {}), "enabled": True}
    if precision == "bf16":
        stage = int((ds.get("zero_optimization") or {}).get("stage", 0))
        data_types = dict(ds.get("data_types") or {})
        if stage >= 1:
            data_types.setdefault("grad_accum_dtype", "fp32")
            ds["data_types"] = data_types
        if device.type == "cpu":
            ds.setdefault("communication_data_type", "fp32")
    return ds

