"""``scripts/gpu_check.sh --device cpu``: the one-shot GPU check, dry-run here so that it cannot rot.

The dry run takes the same steps at toy sizes (kernel in Triton's interpreter, a one-block ViT for the
end-to-end benchmark) and must finish cleanly, leave at most 8 files in ``$OUT`` (what the device tool
returns) and write the tables the GPU run will be read from. On a machine without CUDA the real run must
stop at once with a clear line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _env(out: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "ANALYSIS_KERNEL_BACKEND")}
    env.update(OUT=str(out), PYTHON=os.environ.get("PYTHON_FOR_SCRIPTS", __import__("sys").executable),
               HF_HUB_OFFLINE="1")
    return env


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_gpu_check_dry_run_on_cpu(tmp_path: Path) -> None:
    pytest.importorskip("triton")
    pytest.importorskip("timm")
    proc = subprocess.run(["bash", str(SCRIPT), "--device", "cpu"], cwd=ROOT, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=1900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    files = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert len(files) <= 8, files
    kernel = (tmp_path / "bench_kernels_bf16.txt").read_text()
    assert "| triton | bfloat16 | 64 | 200 |" in kernel and "triton round-bf16" in kernel
    assert "Largest relative error" in kernel
    assert "| triton det | bfloat16 | 64 | 200 |" in kernel and "% of the bf16 peak" in kernel
    e2e = (tmp_path / "bench_gpu_end_to_end.txt").read_text()
    assert "| vit_tiny_patch16_224 | 2 |" in e2e and "engine/fwd" in e2e and "no halves/fwd" in e2e
    assert "warm-up (discovery, self-check, compile, tune)" in e2e and "self-check failures 0" in e2e
    assert e2e.index("warm-up") < e2e.index("repeat 1")  # the timed repeats come after the warm-up
    assert proc.stdout.index("engine/forward") < proc.stdout.index("end-to-end benchmark (toy ViT): ok")  # streamed
    with tarfile.open(tmp_path / "raw.tar.gz") as tar:
        names = tar.getnames()
    assert any(n.endswith("gpu_end_to_end.json") for n in names) and any(n.endswith(".json") and "bench_kernels" in n for n in names)
    log = (tmp_path / "gpu_check.log").read_text()
    assert "STOPPED" not in log and "FAILED" not in log, log


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_stops_at_once_without_cuda(tmp_path: Path) -> None:
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    assert "CUDA is not available on this machine" in proc.stdout
    assert not (tmp_path / "gpu_tests.txt").exists()
