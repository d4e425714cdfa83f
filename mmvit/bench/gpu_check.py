"""Correctness on the device (part a of ``tools/gpu_check.sh``): the attention backends against each other in
bf16, and the isolation invariant of Patch n' Pack (NaViT, Dehghani et al. 2023) with each backend.

- **Agreement.** A small NaViT (tubelet tokenizer, so images and clips share the packs) runs one packed batch
  of mixed images and videos (``mmvit.pack``) forward and backward with every usable backend. The reference
  is the ``dense`` backend in float64. A backend passes when, for the logits and every parameter gradient,
  its error against the reference is at most twice the error of ``dense`` itself in the same precision, plus
  ``FLOOR`` (the rule of flash-attention's tests, Dao-AILab/flash-attention tests/test_flash_attn.py: a fast
  kernel may be at most twice as far from an exact reference as a plain PyTorch implementation). Errors are
  relative to each tensor's largest magnitude. Two precisions: bf16 weights and inputs (what DeepSpeed's
  ``bf16`` does) and fp32 weights under bf16 autocast (what the benchmark step does).
- **Isolation** (tests/test_isolation.py on the device): one example's logits, input gradient and parameter
  gradients, packed alone and packed with 9 others in three packings (other neighbours, rows and offsets;
  the report names the row and offset), must agree: in float32 (TF32 off) to ``FP32_TOL``; in bf16 the
  packed run's error against a float64 run of the example alone may be at most twice the alone bf16 run's,
  plus ``FLOOR``.

Any device works (the test suite runs this on the CPU with ``segments`` and ``dense``); ``main`` writes one
JSON. ``python -m mmvit.bench.gpu_check --out part_a.json [--device cuda] [--backends xformers,flex]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator

import torch

import mmvit
from mmvit.models import flex_attention, xformers_ops

BACKENDS = ("xformers", "flex", "segments", "dense")
FLOOR = 2e-3      # relative error a bf16 result may exceed twice the dense backend's by (bf16 epsilon 7.8e-3)
FP32_TOL = 1e-4   # relative error between float32 runs of the same example (TF32 off)
PATCH = (2, 8, 8)  # tubelet of 2 frames; images are repeated into 2 frames by mmvit.pack
MODEL = {"type": "navit", "width": 64, "depth": 2, "heads": 2, "mlp_dim": 128, "patch_size": 8,
         "num_classes": 7, "tokenizer": {"type": "tubelet", "frames": 2},
         "pos_embed": {"type": "learned", "fractional": True}, "head": {"type": "linear", "zero_init": False}}
MODES = ("bf16", "autocast-bf16")


def backend_status(device: torch.device) -> dict[str, str | None]:
    """Each backend: None when it can run forward and backward on ``device``, else why not."""
    status: dict[str, str | None] = {"segments": None, "dense": None}
    status["xformers"] = xformers_ops.kernels_usable(device)
    why = flex_attention.available()
    if why is None and device.type != "cuda":
        why = flex_attention.CPU_REFUSAL
    status["flex"] = why
    return {b: status[b] for b in BACKENDS}


# Images (h, w) and 4-frame clips (h, w) of 1 to 18 tokens at patch (2, 8, 8); the target clip (12 tokens) last.
IMAGE_SIZES = ((8, 8), (16, 8), (16, 16), (24, 16), (24, 24), (8, 24))
CLIP_SIZES = ((16, 16), (24, 16), (24, 24))
TARGET_SIZE = (24, 16)


def samples(seed: int) -> list[torch.Tensor]:
    """Six images and three clips of mixed sizes, and the target clip last (random content)."""
    gen = torch.Generator().manual_seed(seed)
    out = [torch.randn(3, h, w, generator=gen) for h, w in IMAGE_SIZES]
    out += [torch.randn(3, 4, h, w, generator=gen) for h, w in CLIP_SIZES]
    return out + [torch.randn(3, 4, *TARGET_SIZE, generator=gen)]


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _model(backend: str, state: dict, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    model = mmvit.build_model({**MODEL, "attention": backend})
    model.load_state_dict(state)
    return model.to(device=device, dtype=dtype).train()


def run_once(backend: str, state: dict, samples_: list[torch.Tensor], seq_len: int, mode: str,
             device: torch.device, target: int | None = None) -> dict[str, torch.Tensor]:
    """Logits and gradients of ``sum(logits * w)`` (one fixed ``w``) as float64 CPU tensors.

    ``mode``: ``float64``, ``float32``, ``bf16`` (weights and inputs) or ``autocast-bf16`` (fp32 weights).
    With ``target``, only that sample's logits enter the loss and the input gradient of that sample is kept.
    """
    dtype = {"float64": torch.float64, "float32": torch.float32, "bf16": torch.bfloat16,
             "autocast-bf16": torch.float32}[mode]
    model = _model(backend, state, device, dtype)
    xs = [s.to(device=device, dtype=dtype).clone() for s in samples_]  # own leaves: gradients never accumulate
    if target is not None:
        xs[target].requires_grad_()
    batch = mmvit.pack(xs, patch_size=PATCH, seq_len=seq_len).to(device)
    cast = torch.autocast(device.type, dtype=torch.bfloat16) if mode == "autocast-bf16" else contextlib.nullcontext()
    with cast:
        logits = model(batch).float()
    order = batch.example_ids.tolist()
    logits = logits[[order.index(i) for i in range(len(xs))]]            # back to input order
    if target is not None:
        logits = logits[target:target + 1]
    weight = torch.randn(logits.shape, generator=torch.Generator().manual_seed(7)).to(device)
    (logits * weight).sum().backward()
    out = {"logits": logits.detach()}
    if target is not None:
        out["input_grad"] = xs[target].grad
    out.update({f"grad/{n}": p.grad for n, p in model.named_parameters() if p.grad is not None})
    return {k: v.detach().double().cpu() for k, v in out.items()}


def rel_errors(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per tensor: max |got - ref| / max |ref| (a tensor missing from ``got`` counts as wrong)."""
    out = {}
    for k, r in ref.items():
        g = got.get(k)
        scale = float(r.abs().max()) or 1.0
        out[k] = float("inf") if g is None or g.shape != r.shape else float((g - r).abs().max()) / scale
    return out


def _worst(errors: dict[str, float]) -> tuple[str, float]:
    k = max(errors, key=errors.get)
    return k, errors[k]


def compare_to_baseline(errors: dict[str, float], baseline: dict[str, float]) -> list[str]:
    """Tensors whose error exceeds ``2 x baseline + FLOOR``."""
    return [k for k, e in errors.items() if not e <= 2 * baseline[k] + FLOOR]


def check_agreement(device: torch.device, backends: list[str], seed: int = 0) -> list[dict]:
    """One check per (backend, precision): logits and parameter gradients against float64 dense."""
    torch.manual_seed(seed)
    state = mmvit.build_model({**MODEL, "attention": "dense"}).state_dict()
    xs = samples(seed)
    seq_len = 40  # 75 tokens: 2 to 3 rows
    with no_tf32():
        ref = run_once("dense", state, xs, seq_len, "float64", device)
    results = []
    for mode in MODES:
        baseline = rel_errors(run_once("dense", state, xs, seq_len, mode, device), ref)
        for b in backends:
            t0 = time.perf_counter()
            try:
                err = rel_errors(run_once(b, state, xs, seq_len, mode, device), ref)
            except Exception as e:
                results.append({"name": f"agreement {b} {mode}", "status": "fail",
                                "detail": f"{type(e).__name__}: {e}"})
                continue
            bad = compare_to_baseline(err, baseline)
            k, worst = _worst(err)
            results.append({
                "name": f"agreement {b} {mode}", "status": "fail" if bad else "pass",
                "detail": (f"{len(bad)} of {len(err)} tensors beyond 2 x dense's error + {FLOOR:g}: "
                           + ", ".join(f"{n} {err[n]:.2e} (dense {baseline[n]:.2e})" for n in bad[:4])) if bad else
                          f"worst {k}: {worst:.2e} vs dense {baseline[k]:.2e} (limit 2x + {FLOOR:g})",
                "max_rel_error": worst, "logits_rel_error": err["logits"],
                "dense_logits_rel_error": baseline["logits"], "seconds": round(time.perf_counter() - t0, 2)})
    return results


# Three packings of the target (the last sample) with the others: (samples before it in the list, seq_len).
# First-fit-decreasing then puts it in a middle row after a clip of its length (row 1 of 4, offset 12), after
# the longest clip in the first row (row 0 of 3, offset 18), and first in the last row (row 1 of 2, offset 0).
PLACEMENTS = ((9, 24), (0, 36), (9, 40))


def _placement(xs: list[torch.Tensor], pos: int, seq_len: int) -> tuple[list[torch.Tensor], str]:
    others, target = xs[:-1], xs[-1]
    packed = others[:pos] + [target] + others[pos:]
    b = mmvit.pack(packed, patch_size=PATCH, seq_len=seq_len)
    e = b.example_ids.tolist().index(pos)
    rows, cols = torch.nonzero(b.segment_ids == e + 1, as_tuple=True)
    return packed, f"row {int(rows[0])} of {b.segment_ids.shape[0]}, offset {int(cols.min())}"


def check_isolation(device: torch.device, backends: list[str], seed: int = 1) -> list[dict]:
    """One check per (backend, precision): the target alone vs packed with others at three placements."""
    torch.manual_seed(seed)
    state = mmvit.build_model({**MODEL, "attention": "dense"}).state_dict()
    xs = samples(seed)
    target = xs[-1]
    with no_tf32():
        ref64 = run_once("dense", state, [target], 24, "float64", device, target=0)
    results = []
    for b in backends:
        for mode in ("float32", "bf16"):
            t0 = time.perf_counter()
            try:
                with no_tf32():
                    alone = run_once(b, state, [target], 24, mode, device, target=0)
                    noise = rel_errors(alone, ref64)
                    problems, places = [], []
                    for pos, seq_len in PLACEMENTS:
                        packed_xs, where = _placement(xs, pos, seq_len)
                        places.append(where)
                        got = run_once(b, state, packed_xs, seq_len, mode, device, target=pos)
                        if mode == "float32":
                            err = rel_errors(got, alone)
                            bad = [k for k, e in err.items() if not e <= FP32_TOL]
                        else:
                            err = rel_errors(got, ref64)
                            bad = compare_to_baseline(err, noise)
                        problems += [f"{where}: {k} {err[k]:.2e}" for k in bad[:3]]
            except Exception as e:
                results.append({"name": f"isolation {b} {mode}", "status": "fail",
                                "detail": f"{type(e).__name__}: {e}"})
                continue
            limit = f"{FP32_TOL:g} of the alone run" if mode == "float32" else f"2 x the alone run's error + {FLOOR:g}"
            results.append({"name": f"isolation {b} {mode}", "status": "fail" if problems else "pass",
                            "detail": ("; ".join(problems[:6]) if problems else "same outputs and gradients at "
                                       + "; ".join(places)) + f" (limit: {limit})",
                            "seconds": round(time.perf_counter() - t0, 2)})
    return results


def run_checks(device: str | torch.device = "cuda", backends: list[str] | None = None) -> dict:
    """All checks on ``device`` as a JSON-ready dict; a backend that cannot run is listed as skipped with why."""
    t0 = time.perf_counter()
    device = torch.device(device)
    report: dict = {"part": "cuda_tests", "device": str(device), "torch": torch.__version__,
                    "torch_cuda": torch.version.cuda, "checks": [], "skipped": None}
    if device.type == "cuda" and not torch.cuda.is_available():
        report["skipped"] = (f"no CUDA device (torch {torch.__version__}, built with CUDA {torch.version.cuda}; "
                             "torch.cuda.is_available() is False)")
        report["passed"] = None
        return report
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    status = backend_status(device)
    report["backends"] = status
    wanted = list(backends or BACKENDS)
    unknown = [b for b in wanted if b not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backends {unknown}; choose from {BACKENDS}")
    usable = [b for b in wanted if status[b] is None]
    report["checks"] += [{"name": f"backend {b}", "status": "skip", "detail": status[b]}
                         for b in wanted if status[b] is not None]
    report["checks"] += check_agreement(device, usable)
    report["checks"] += check_isolation(device, usable)
    report["passed"] = all(c["status"] != "fail" for c in report["checks"])
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the report to this JSON file")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--backends", help=f"comma-separated subset of {','.join(BACKENDS)} (default: all)")
    args = parser.parse_args(argv)
    report = run_checks(args.device, args.backends.split(",") if args.backends else None)
    for c in report["checks"]:
        print(f"{c['status']:4}  {c['name']}: {c['detail']}", flush=True)
    if report["skipped"]:
        print(f"skipped: {report['skipped']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 1 if report["passed"] is False else 0


if __name__ == "__main__":
    sys.exit(main())
