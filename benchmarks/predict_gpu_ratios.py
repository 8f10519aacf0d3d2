"""What the GPU should show, from the kernel's cost model, stated before any device run (issue 28, item 5).

No GPU needed. For each model (layer shapes from timm, built on the meta device) at ``--batch`` images:

* statistics: every analysed layer's kernel call(s) per batch (two calls of half the rows each with the split
  halves of the engine's default), each costed by the kernel's own wave model
  (:func:`kernels.triton_second_moment.split_cost` with the split count it will choose, 128-wide tiles, one
  program per SM as the sm_90a builds allow): ``waves * (row blocks per split + epilogue)`` row-block times,
  one row-block time being ``2 BLOCK_N BLOCK_D^2`` FLOPs at ``--kernel-efficiency`` of one SM's share of
  the bf16 dense peak, plus ``--launch-us`` per call;
* forward: the model's FLOPs (linear layers, patch embedding, attention's two matrix products) at
  ``--forward-efficiency`` of the bf16 dense peak;
* ratio = forward time / (forward time + statistics time): the host-to-device copies overlap the compute
  (side stream), the finite check and the hooks' host work hide behind the GPU's queue.

Also the kernel alone (``bench_kernels.py`` shapes: useful TFLOP/s = ``n d^2`` per call over the modelled
time), and what items 1 and 2 of issue 28 are worth in this model (d = 3072 with ``S = 1`` as the former cap
forced; the former extra bf16 cast pass of the 24 float32 layer inputs at ``--hbm-tbps``).

    .venv/bin/python benchmarks/predict_gpu_ratios.py [--batch 128] [--kernel-efficiency 0.6]
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.models import describe_layers  # noqa: E402
from analysis.models.sources import create_timm  # noqa: E402
from kernels import triton_second_moment as tsm  # noqa: E402

BLOCK_D, BLOCK_N = 128, 64


def call_seconds(n: int, d: int, sms: int, per_sm_flops: float, launch_s: float, splits: int | None = None) -> float:
    """Modelled time of one kernel call over ``n`` rows of width ``d`` (128 x 64 tiling, one program per SM)."""
    tiles = -(-d // BLOCK_D)
    pairs = tiles * (tiles + 1) // 2
    row_blocks = max(1, -(-n // BLOCK_N))
    s = splits if splits is not None else min(tsm.wave_splits(pairs, row_blocks, sms), row_blocks)
    row_block_s = 2.0 * BLOCK_N * BLOCK_D * BLOCK_D / per_sm_flops
    return tsm.split_cost(pairs, row_blocks, sms, s) * row_block_s + launch_s


def layer_rows(spec, batch: int, tokens: int) -> int:
    if spec.kind == "head":
        return batch
    if spec.kind == "patch_embed":
        return batch * (tokens - 1)
    return batch * tokens


@functools.cache
def _shapes(arch: str) -> tuple[list, int, int]:
    """``(analysed layer specs, embedding width, blocks)`` of a timm model built on the meta device."""
    with torch.device("meta"):
        model = create_timm(arch, pretrained=False)
    return [s for s in describe_layers(model) if s.applicable], model.embed_dim, len(model.blocks)


def model_figures(arch: str, args) -> dict:
    specs, dim, blocks = _shapes(arch)
    tokens = 197
    peak = args.peak_tflops * 1e12
    per_sm = args.kernel_efficiency * peak / args.sms
    launch = args.launch_us * 1e-6
    b = args.batch
    forward_flops = sum(2.0 * layer_rows(s, b, tokens) * s.d_in * s.d_out for s in specs)
    forward_flops += blocks * 4.0 * b * tokens * tokens * dim  # q k^T and (attention) v
    forward_s = forward_flops / (args.forward_efficiency * peak)
    stats = {"no halves": 0.0, "halves": 0.0, "halves, S = 1 at d >= 3072": 0.0}
    cast_bytes = 0.0
    for s in specs:
        n = layer_rows(s, b, tokens)
        stats["no halves"] += call_seconds(n, s.d_in, args.sms, per_sm, launch)
        stats["halves"] += 2 * call_seconds(-(-n // 2), s.d_in, args.sms, per_sm, launch)
        forced = 1 if s.d_in >= 3072 else None
        stats["halves, S = 1 at d >= 3072"] += 2 * call_seconds(-(-n // 2), s.d_in, args.sms, per_sm, launch, forced)
        if s.kind in ("attn_qkv", "mlp_fc1", "patch_embed", "head"):  # float32 inputs under bf16 autocast
            cast_bytes += n * s.d_in * (4 + 2 + 2)  # the former extra pass: read fp32, write bf16, read it again
    cast_s = cast_bytes / (args.hbm_tbps * 1e12)
    return {"arch": arch, "forward_ms": 1e3 * forward_s, "forward_tflop": forward_flops / 1e12,
            "stats_ms": {k: 1e3 * v for k, v in stats.items()}, "cast_ms": 1e3 * cast_s,
            "ratio": {k: forward_s / (forward_s + v) for k, v in stats.items()},
            "ratio_with_cast": forward_s / (forward_s + stats["halves"] + cast_s)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit_base_patch16_224,vit_large_patch16_224")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--sms", type=int, default=132)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100/H200 SXM)")
    parser.add_argument("--kernel-efficiency", type=float, default=0.6,
                        help="share of one SM's bf16 peak a running program reaches in its main loop")
    parser.add_argument("--forward-efficiency", type=float, default=0.35,
                        help="share of the bf16 peak the forward pass reaches (GEMMs, attention, elementwise)")
    parser.add_argument("--launch-us", type=float, default=4.0)
    parser.add_argument("--hbm-tbps", type=float, default=3.35, help="HBM bandwidth (H100 SXM 3.35, H200 4.8)")
    args = parser.parse_args()
    print(f"bf16 peak {args.peak_tflops:.0f} TFLOP/s on {args.sms} SMs; kernel main loop at "
          f"{100 * args.kernel_efficiency:.0f} % of it, forward at {100 * args.forward_efficiency:.0f} %; "
          f"{args.launch_us:.0f} us per launch; batch {args.batch}\n")
    print("| model | forward (TFLOP, ms) | statistics ms: halves (engine default) / no halves / halves with S = 1 at "
          "d = 3072 | predicted ratio: halves / no halves / S = 1 at 3072 | former cast pass ms (ratio with it) |")
    print("|---|---|---|---|---|")
    for arch in args.models.split(","):
        f = model_figures(arch, args)
        st, r = f["stats_ms"], f["ratio"]
        print(f"| {arch} | {f['forward_tflop']:.1f}, {f['forward_ms']:.1f} | "
              f"{st['halves']:.2f} / {st['no halves']:.2f} / "
              f"{st['halves, S = 1 at d >= 3072']:.2f} | {r['halves']:.3f} / {r['no halves']:.3f} / "
              f"{r['halves, S = 1 at d >= 3072']:.3f} | {f['cast_ms']:.2f} ({f['ratio_with_cast']:.3f}) |")
    print("\nSensitivity of the engine-default ratio (halves) to the two efficiencies:")
    kernel_levels, forward_levels = (0.45, 0.6, 0.75), (0.2, 0.35, 0.5)
    print("| model | forward efficiency | " + " | ".join(f"kernel {k:.2f}" for k in kernel_levels) + " |")
    print("|---|---|" + "---|" * len(kernel_levels))
    for arch in args.models.split(","):
        for fe in forward_levels:
            cells = []
            for ke in kernel_levels:
                varied = argparse.Namespace(**{**vars(args), "kernel_efficiency": ke, "forward_efficiency": fe})
                cells.append(f"{model_figures(arch, varied)['ratio']['halves']:.2f}")
            print(f"| {arch} | {fe:.2f} | " + " | ".join(cells) + " |")
    print("\nKernel alone (bench_kernels.py shapes; useful FLOPs n d^2):")
    print("| d | n | splits | waves | modelled ms | useful TFLOP/s | % of bf16 peak |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    per_sm = args.kernel_efficiency * args.peak_tflops * 1e12 / args.sms
    for d in (768, 3072, 4096):
        for n in (25_216, 50_432):
            tiles = -(-d // BLOCK_D)
            pairs = tiles * (tiles + 1) // 2
            row_blocks = -(-n // BLOCK_N)
            s = min(tsm.wave_splits(pairs, row_blocks, args.sms), row_blocks)
            seconds = call_seconds(n, d, args.sms, per_sm, args.launch_us * 1e-6)
            useful = n * d * d / seconds / 1e12
            print(f"| {d} | {n} | {s} | {-(-pairs * s // args.sms)} | {1e3 * seconds:.3f} | {useful:.0f} | "
                  f"{100 * useful / args.peak_tflops:.0f} % |")


if __name__ == "__main__":
    main()
