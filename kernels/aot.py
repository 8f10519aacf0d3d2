"""Ahead-of-time review of the second-moment kernel: every shipped tiling compiled for a GPU target, no GPU needed.

For each operand class and tiling of :data:`kernels.triton_second_moment.SHIPPED` (and the deterministic
epilogue of each class's first tiling per width), Triton compiles the kernel for ``sm_90a`` (Hopper; also
``sm_80``, Ampere, for the tilings that fit its shared memory) with the argument alignment of a real launch
(16-divisible pointers, ``d`` and strides), and this module reads what the GPU would run:

* from the cubin's resource usage (``cuobjdump -res-usage``, bundled with Triton): registers per thread,
  stack frame and local memory (spills);
* from Triton's metadata: dynamic shared memory per program;
* from the SASS (``cuobjdump -sass``): ``HGMMA`` (Hopper warpgroup tensor-core ops), ``HMMA`` (``mma.sync``),
  ``FFMA``, ``LDL``/``STL`` (local-memory loads/stores, i.e. spills);
* from the PTX, per loop (a label reached by a backward branch): ``wgmma.mma_async`` and ``mma.sync`` issued,
  float ``fma.rn.f32``, and the ``wgmma.wait_group N`` inside the loop (``N = 0`` waits for every wgmma just
  issued: the loop does not overlap its tensor-core work with the next loads).

:func:`problems` lists what a build must not do: spill; exceed 255 registers, one SM's registers or one block's
shared memory (232,448 B on sm_90, 166,912 B on sm_80); use more shared memory than the prune rule's estimate
(:func:`~kernels.triton_second_moment.shared_memory_bytes`); have a main loop without tensor-core ops in the
16-bit, rounded and tf32x3 classes, or with float FMAs in the 16-bit and rounded classes (the exact "ieee"
class is an FMA loop by design); and, for 16-bit tiles wide enough for wgmma, wait for every wgmma inside a
loop (the column sum used to do that on the diagonal programs).

    python -m kernels.aot                 # table of every build (sm_90a and sm_80), 2 compile processes
    python -m kernels.aot --json          # the same as JSON (the tests read it)

Compiled kernels land in Triton's cache (``TRITON_CACHE_DIR``, default ``~/.triton/cache``) and each build's
review beside it (``kernel-aot-review/``, keyed by the source of the kernel's Triton functions, the Triton
version and the job), so a later run compiles only what changed. Measured on the project's 2-core VM shared with
other work (load average 9-10): cold 137 to 312 s for the 41 builds, warm about 15 s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

#: Shared memory one program may use, by compute capability (bytes, after opting in).
SMEM_LIMITS: dict[int, int] = {90: 232_448, 80: 166_912}
REGISTERS_PER_SM: int = 65_536
#: The kernel arguments a real launch passes 16-divisible (PyTorch's allocations, d and strides of ViT widths).
ALIGNED_ARGS: tuple[str, ...] = ("x_ptr", "acc_ptr", "colsum_ptr", "part_ptr", "d", "stride_xn", "stride_am")
#: Input dtype of each operand class (16-bit classes also as fp16).
MODE_DTYPES: dict[str, tuple[str, ...]] = {"16bit": ("bf16", "fp16"), "rounded": ("fp32",), "ieee": ("fp32",),
                                           "tf32x3": ("fp32",)}


@dataclass(frozen=True)
class Job:
    """One build: operand class, input dtype, tiling ``(BLOCK_D, BLOCK_N, warps, stages)``, target, epilogue."""

    mode: str
    dtype: str
    tiling: tuple[int, int, int, int]
    capability: int
    deterministic: bool = False


@dataclass
class Loop:
    """What one PTX loop issues (see the module docstring)."""

    wgmma: int
    mma: int
    fma: int
    waits: list[int]


@dataclass
class Build:
    job: Job
    registers: int
    stack_bytes: int
    local_bytes: int
    shared_bytes: int
    shared_estimate: int
    sass: dict[str, int]
    loops: list[Loop] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def spill_bytes(self) -> int:
        return self.stack_bytes + self.local_bytes

    @property
    def tensor_ops(self) -> int:
        """Tensor-core instructions in the SASS (HGMMA on sm_90, HMMA elsewhere)."""
        return self.sass.get("HGMMA", 0) + self.sass.get("HMMA", 0)

    def label(self) -> str:
        bd, bn, w, s = self.job.tiling
        det = " det" if self.job.deterministic else ""
        return f"sm_{self.job.capability} {self.job.mode} {self.job.dtype} {bd}x{bn} w{w} s{s}{det}"


def jobs(capabilities: tuple[int, ...] = (90, 80)) -> list[Job]:
    """Every shipped tiling of every class for each target (sm_80: the Ampere candidates whose estimate fits its
    shared memory), the 16-bit classes' first tiling also as fp16, and each class's first tiling with the
    deterministic epilogue (sm_90a)."""
    from kernels.triton_second_moment import SHIPPED, SPILL_ON_AMPERE, shared_memory_bytes

    out = []
    for capability in capabilities:
        for mode, tilings in SHIPPED.items():
            dtype = MODE_DTYPES[mode][0]
            for position, config in enumerate(tilings):
                elem = 2 if mode == "16bit" else 4
                if capability < 90 and (mode, config) in SPILL_ON_AMPERE:
                    continue
                if shared_memory_bytes(mode, config, elem) > SMEM_LIMITS[capability]:
                    continue
                tiling = (config.block_d, config.block_n, config.warps, config.stages)
                out.append(Job(mode, dtype, tiling, capability))
                if capability == 90 and position == 0:
                    out.extend(Job(mode, other, tiling, capability) for other in MODE_DTYPES[mode][1:])
                    out.append(Job(mode, dtype, tiling, capability, deterministic=True))
    return out


def _tool(name: str) -> str | None:
    import triton

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(bundled) if bundled.exists() else shutil.which(name)


def ptx_loops(ptx: str) -> list[Loop]:
    """Per loop of the PTX (a label that a later branch jumps back to): tensor-core ops, float FMAs, waits."""
    lines = ptx.splitlines()
    labels: dict[str, int] = {}
    for i, line in enumerate(lines):
        match = re.match(r"^(\$L__\w+):", line.strip())
        if match:
            labels[match.group(1)] = i
    loops = []
    for i, line in enumerate(lines):
        match = re.search(r"\bbra(?:\.uni)?\s+(\$L__\w+);", line)
        if match and match.group(1) in labels and labels[match.group(1)] < i:
            body = "\n".join(lines[labels[match.group(1)]: i + 1])
            loops.append(Loop(wgmma=body.count("wgmma.mma_async"), mma=body.count("mma.sync.aligned"),
                              fma=len(re.findall(r"\bfma\.rn\.f32\b", body)),
                              waits=[int(w) for w in re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", body)]))
    return loops


def _review_cache() -> Path:
    """Where reviews of compiled cubins are kept (beside Triton's own cache of the cubins)."""
    root = os.environ.get("TRITON_CACHE_DIR") or str(Path.home() / ".triton" / "cache")
    return Path(root).parent / "kernel-aot-review"


def _cubin_review(cubin: bytes) -> tuple[dict[str, int], dict[str, int]]:
    """``(resource usage, SASS instruction counts)`` of a cubin, from one ``cuobjdump -res-usage -sass`` call;
    kept by the cubin's SHA-256 (a pure function of its bytes), so unchanged builds are not disassembled again."""
    digest = hashlib.sha256(cubin).hexdigest()
    cache = _review_cache() / f"{digest}.json"
    try:
        stored = json.loads(cache.read_text())
        return stored["usage"], stored["sass"]
    except (OSError, ValueError, KeyError):
        pass
    cuobjdump = _tool("cuobjdump")
    if cuobjdump is None:
        return {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        text = subprocess.run([cuobjdump, "-res-usage", "-sass", str(path)], capture_output=True, text=True).stdout
    match = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", text)
    usage = {"REG": int(match.group(1)), "STACK": int(match.group(2)), "LOCAL": int(match.group(4))} if match else {}
    sass = {op: len(re.findall(rf"\b{op}\b", text)) for op in ("HGMMA", "HMMA", "FFMA", "LDL", "STL")}
    if usage:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps({"usage": usage, "sass": sass}))
        except OSError:
            pass
    return usage, sass


def _kernel_source_key(job: Job) -> str:
    """What a build's review depends on: the job, the Triton version and the source of every Triton function of
    the kernel module (not their line numbers, which Triton's own cache keys on: a docstring edit above them
    recompiles everything there, not here)."""
    import triton
    from triton.runtime.jit import JITFunction

    from kernels import triton_second_moment as tsm

    sources = sorted(obj.src for obj in vars(tsm).values() if isinstance(obj, JITFunction))
    blob = json.dumps([asdict(job), triton.__version__, sources])
    return hashlib.sha256(blob.encode()).hexdigest()


def build(job: Job) -> Build:
    """Compile one job with Triton (no GPU) and read its resources (see the module docstring); a job whose
    kernel source, Triton version and settings were reviewed before is read from the review cache."""
    os.environ.pop("TRITON_INTERPRET", None)
    from kernels import triton_second_moment as tsm

    if tsm.INTERPRETED:
        raise RuntimeError("kernels.triton_second_moment was imported under TRITON_INTERPRET=1; run in a fresh process")
    stored = _review_cache() / f"build-{_kernel_source_key(job)}.json"
    try:
        return _from_dict(json.loads(stored.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    result = _compile_and_review(job)
    try:
        stored.parent.mkdir(parents=True, exist_ok=True)
        stored.write_text(json.dumps({**asdict(result), "seconds": 0.0}))
    except OSError:
        pass
    return result


def _compile_and_review(job: Job) -> Build:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kernels import triton_second_moment as tsm

    kernel = tsm._second_moment_body
    bd, bn, warps, stages = job.tiling
    rounding = "bf16" if job.mode == "rounded" else "none"
    flags = {"HAS_COLSUM": True, "IS_FP32": job.mode in ("ieee", "tf32x3"), "ROUND_TO": rounding,
             "UPCAST_OPERANDS": False, "FP32_PRECISION": job.mode if job.mode in ("ieee", "tf32x3") else "ieee",
             "DETERMINISTIC": job.deterministic, "BLOCK_D": bd, "BLOCK_N": bn}
    signature = {}
    for name in kernel.arg_names:
        if name in flags:
            signature[name] = "constexpr"
        elif name == "x_ptr":
            signature[name] = "*" + job.dtype
        elif name.endswith("_ptr"):
            signature[name] = "*fp32"
        else:
            signature[name] = "i32"
    attrs = {(kernel.arg_names.index(name),): [["tt.divisibility", 16]] for name in ALIGNED_ARGS}
    start = time.perf_counter()
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=flags, attrs=attrs),
                              target=GPUTarget("cuda", job.capability, 32),
                              options={"num_warps": warps, "num_stages": stages})
    seconds = time.perf_counter() - start
    usage, sass = _cubin_review(compiled.asm["cubin"])
    elem = {"bf16": 2, "fp16": 2, "fp32": 4}[job.dtype]
    estimate = tsm.shared_memory_bytes(job.mode, tsm.TileConfig(bd, bn, warps, stages), elem)
    return Build(job=job, registers=usage.get("REG", -1), stack_bytes=usage.get("STACK", -1),
                 local_bytes=usage.get("LOCAL", -1), shared_bytes=int(compiled.metadata.shared),
                 shared_estimate=estimate, sass=sass, loops=ptx_loops(compiled.asm["ptx"]), seconds=seconds)


def problems(b: Build) -> list[str]:
    """What is wrong with one build (empty: it passes; see the module docstring)."""
    found = []
    job = b.job
    if b.registers < 0:
        found.append("no resource usage (cuobjdump missing?)")
    if b.spill_bytes > 0 or b.sass.get("LDL", 0) or b.sass.get("STL", 0):
        found.append(f"spills: stack {b.stack_bytes} B, local {b.local_bytes} B, LDL {b.sass.get('LDL')}, "
                     f"STL {b.sass.get('STL')}")
    warps = job.tiling[2]
    if b.registers > 255 or b.registers * 32 * warps > REGISTERS_PER_SM:
        found.append(f"{b.registers} registers x {32 * warps} threads do not fit one SM")
    if b.shared_bytes > SMEM_LIMITS[job.capability]:
        found.append(f"shared memory {b.shared_bytes} B > {SMEM_LIMITS[job.capability]} B")
    if b.shared_bytes > b.shared_estimate:
        found.append(f"shared memory {b.shared_bytes} B above the prune rule's estimate {b.shared_estimate} B")
    if not b.loops:
        found.append("no loop found in the PTX")
    for loop in b.loops:
        tensor = loop.wgmma + loop.mma
        if job.mode != "ieee" and tensor == 0:
            found.append("a main loop without tensor-core ops")
        if job.mode == "ieee" and (tensor or loop.fma == 0):
            found.append("the exact float32 loop must be FMA only")
        if job.mode in ("16bit", "rounded") and loop.fma:
            found.append(f"{loop.fma} float FMAs in a {job.mode} main loop")
        if job.mode == "16bit" and loop.wgmma and 0 in loop.waits:
            found.append("a 16-bit loop waits for every wgmma (wait_group 0): its tensor-core work is serialised")
    if b.tensor_ops == 0 and job.mode != "ieee":
        found.append("no tensor-core instruction in the SASS")
    return found


def _run_job(job: Job) -> dict:
    return asdict(build(job))


def build_all(selected: list[Job], processes: int = 2) -> list[Build]:
    """Compile every job, ``processes`` at a time (fresh processes: the caller may hold the interpreted kernel)."""
    os.environ.pop("TRITON_INTERPRET", None)
    with ProcessPoolExecutor(max_workers=max(1, processes), mp_context=get_context("spawn")) as pool:
        results = list(pool.map(_run_job, selected))
    return [_from_dict(r) for r in results]


def _from_dict(raw: dict) -> Build:
    raw = dict(raw)
    job = raw.pop("job")
    job["tiling"] = tuple(job["tiling"])
    loops = [Loop(**loop) for loop in raw.pop("loops")]
    return Build(job=Job(**job), loops=loops, **raw)


def table(builds: list[Build]) -> str:
    """The markdown table ``benchmarks/RESULTS.md`` quotes."""
    lines = ["| target | class | dtype | tiling (BLOCK_D x BLOCK_N, warps, stages) | regs | spill B | smem B "
             "(estimate) | HGMMA | HMMA | FFMA | loop waits | compile s | verdict |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    for b in builds:
        bd, bn, w, s = b.job.tiling
        waits = " / ".join(",".join(str(x) for x in loop.waits) or "-" for loop in b.loops)
        issues = problems(b)
        lines.append(
            f"| sm_{b.job.capability}{'a' if b.job.capability == 90 else ''} | {b.job.mode}"
            f"{' (deterministic)' if b.job.deterministic else ''} | {b.job.dtype} | {bd}x{bn}, {w}, {s} | "
            f"{b.registers} | {b.spill_bytes} | {b.shared_bytes} ({b.shared_estimate}) | {b.sass.get('HGMMA', 0)} | "
            f"{b.sass.get('HMMA', 0)} | {b.sass.get('FFMA', 0)} | {waits} | {b.seconds:.1f} | "
            f"{'ok' if not issues else '; '.join(issues)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="90,80", help="compute capabilities, comma-separated (90 = sm_90a)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    selected = jobs(tuple(int(a) for a in args.arch.split(",") if a.strip()))
    start = time.perf_counter()
    builds = build_all(selected, args.processes)
    if args.json:
        print(json.dumps([{**asdict(b), "problems": problems(b)} for b in builds]))
    else:
        import triton

        print(f"Triton {triton.__version__}, {len(builds)} builds in {time.perf_counter() - start:.1f} s\n")
        print(table(builds))
    return 1 if any(problems(b) for b in builds) else 0


if __name__ == "__main__":
    sys.exit(main())
