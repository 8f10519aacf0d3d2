"""Ahead-of-time review of every shipped kernel tiling (no GPU): :mod:`kernels.aot` compiles each one for
``sm_90a`` and ``sm_80`` with Triton and reads the cubin, SASS and PTX.

What must hold for every build (the reasons are in :mod:`kernels.aot`): no spill; registers and shared memory
within one SM / one block; shared memory at or below the prune rule's estimate; tensor-core instructions in the
main loop of every class but exact float32 ("ieee", an FMA loop by design); no float FMA in the 16-bit and
rounded main loops; and, in the 16-bit class on Hopper, no loop that waits for every wgmma it issued (the
column sum's wgmma on the diagonal programs used to). Every shipped tiling of every class is built for sm_90a.

Runs in a fresh process (this one may hold the interpreted kernel). Cold, the builds take about a minute on two
quiet cores; Triton keeps the cubins and :mod:`kernels.aot` their reviews, so a later run re-reads them
(about 15 s on two shared cores). ``python -m kernels.aot`` prints the table ``benchmarks/RESULTS.md`` quotes.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def builds() -> list[dict]:
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "kernels.aot", "--json"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1800)
    if proc.returncode not in (0, 1) and "ptxas" in proc.stderr:
        pytest.skip("Triton's bundled ptxas is unavailable: " + proc.stderr[-500:])
    assert proc.stdout.strip(), proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_every_shipped_tiling_is_built_for_hopper(builds: list[dict]) -> None:
    from kernels.triton_second_moment import SHIPPED

    built = {(b["job"]["mode"], tuple(b["job"]["tiling"])) for b in builds
             if b["job"]["capability"] == 90 and not b["job"]["deterministic"]}
    shipped = {(mode, (c.block_d, c.block_n, c.warps, c.stages)) for mode, configs in SHIPPED.items() for c in configs}
    assert shipped <= built, shipped - built
    assert any(b["job"]["deterministic"] for b in builds)
    assert any(b["job"]["capability"] == 80 for b in builds)


def test_every_build_passes_the_review(builds: list[dict]) -> None:
    failed = {_label(b): b["problems"] for b in builds if b["problems"]}
    assert not failed, json.dumps(failed, indent=1)


def test_the_review_reads_what_the_paths_compile_to(builds: list[dict]) -> None:
    """The facts the review relies on, per class: 16-bit and rounded tiles at least 64 wide use Hopper's wgmma,
    ieee is FMA only, the 16-bit loops keep wgmma in flight (wait_group > 0) while the rounded and tf32x3
    loops wait for every wgmma (their operands are converted in registers and staged through shared memory:
    a Triton 3.8 limit recorded in benchmarks/RESULTS.md)."""
    for b in builds:
        job, loops = b["job"], b["loops"]
        wide_hopper = job["capability"] == 90 and job["tiling"][0] >= 64
        if job["mode"] in ("16bit", "rounded", "tf32x3") and wide_hopper:
            assert b["sass"]["HGMMA"] > 0 and all(loop["wgmma"] > 0 for loop in loops), _label(b)
        if job["mode"] == "16bit" and wide_hopper:
            assert all(min(loop["waits"]) >= 1 for loop in loops), _label(b)
            # the diagonal loop (with the column sum) and the off-diagonal one
            assert len(loops) == 2 and loops[0]["wgmma"] != loops[1]["wgmma"], _label(b)
        if job["mode"] in ("rounded", "tf32x3") and wide_hopper:
            assert all(0 in loop["waits"] for loop in loops), _label(b)
        if job["mode"] == "ieee":
            assert b["sass"]["HGMMA"] == b["sass"]["HMMA"] == 0 and b["sass"]["FFMA"] > 100, _label(b)


def _label(b: dict) -> str:
    job = b["job"]
    return (f"sm_{job['capability']} {job['mode']} {job['dtype']} {'x'.join(map(str, job['tiling']))}"
            f"{' det' if job['deterministic'] else ''}")


def test_the_row_count_is_not_specialised() -> None:
    """A ragged last batch must reuse the compiled kernel: ``n`` (and its class) are not specialisation keys."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = "import kernels.triton_second_moment as t; print(sorted(t._second_moment_body.do_not_specialize))"
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {"n", "n_class"} <= set(ast.literal_eval(proc.stdout.strip()))
