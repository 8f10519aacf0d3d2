"""The command line: real runs on a tiny model, exports with every column, one-line errors with exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from analysis.cli import main
from analysis.result import TABLE_COLUMNS

from .helpers import TINY_VIT, make_image_folder


@pytest.fixture(scope="module")
def folder_id(tmp_path_factory):
    return f"folder:{make_image_folder(tmp_path_factory.mktemp('cli_images'), per_class=6)}"


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_run_then_show_list_compare_and_export_every_format(capsys, tmp_path, folder_id):
    out_csv = tmp_path / "table.csv"
    code, out, err = _run(capsys, "run", "--model", TINY_VIT, "--dataset", folder_id, "--samples", "8",
                          "--quiet", "--export", str(out_csv))
    assert code == 0, err
    assert "MLU" in out
    key = out.split("key", 1)[1].split()[0]
    table = pd.read_csv(out_csv)
    assert list(table.columns) == TABLE_COLUMNS
    assert len(table) == 2 * 4 + 2  # two blocks of qkv/proj/fc1/fc2, patch embedding, head

    code, out, _ = _run(capsys, "run", "--model", TINY_VIT + "&seed=1", "--dataset", folder_id,
                        "--samples", "8", "--quiet")
    other = out.split("key", 1)[1].split()[0]
    assert code == 0 and other != key

    code, out, _ = _run(capsys, "show", key[:8], "--energy-in", "0.9", "--energy-out", "0.9")
    assert code == 0 and "energies   in 0.9  out 0.9" in out

    code, out, _ = _run(capsys, "list", "cache")
    assert code == 0 and key in out and other in out

    code, out, _ = _run(capsys, "compare", key, other)
    assert code == 0 and "mlu_delta" in out and "blocks.1.mlp.fc2" in out

    for fmt in ("csv", "parquet", "json"):
        path = tmp_path / f"export.{fmt}"
        code, _, err = _run(capsys, "export", key, "--format", fmt, "--out", str(path))
        assert code == 0, err
        if fmt == "parquet":
            assert list(pd.read_parquet(path).columns) == TABLE_COLUMNS
        elif fmt == "json":
            document = json.loads(path.read_text())
            assert set(document["layers"][0]) == set(TABLE_COLUMNS)
            assert document["summary"]["key"] == key


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--model", "nosuch:thing"], "unknown model source 'nosuch'"),
        (["run", "--model", "random:vit_tiny_patch16_2244"], "timm has no architecture 'vit_tiny_patch16_2244'"),
        (["run", "--model", "timm:resnet18.no_such_tag"], "no pretrained weights named"),
        (["run", "--model", "timm:resnet18.a1_in1k"], "not in the local Hugging Face cache"),
        (["run", "--model", "file:/nonexistent/x.safetensors?arch=resnet18"], "does not exist"),
        (["run", "--model", TINY_VIT, "--dataset", "imagenet-22k"], "imagenet-22k"),
        (["run", "--model", TINY_VIT, "--dataset", "folder:/nonexistent/folder"], "/nonexistent/folder"),
        (["run", "--model", TINY_VIT, "--energy-in", "1.5"], "energy_in must be in (0, 1]"),
        (["run", "--model", TINY_VIT, "--energy-out", "-0.1"], "energy_out must be in (0, 1]"),
        (["run", "--model", TINY_VIT, "--samples", "0"], "samples must be a positive integer"),
        (["run", "--model", TINY_VIT, "--export", "table.xlsx"], "use a .csv, .parquet or .json name"),
        (["show", "../../etc"], "is not a cache key"),
        (["show", "abcdef"], "no cached analysis with key 'abcdef'"),
    ],
)
def test_bad_input_exits_2_with_one_specific_line(capsys, argv, message):
    code, _, err = _run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert message in lines[0]


def test_the_module_entry_point_returns_exit_codes(tmp_path):
    env = {**os.environ, "ANALYSIS_CACHE_DIR": str(tmp_path)}
    bad = subprocess.run([sys.executable, "-m", "analysis", "run", "--model", "nosuch:x"], capture_output=True,
                         text=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)), timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: unknown model source")
    ok = subprocess.run([sys.executable, "-m", "analysis", "list", "cache"], capture_output=True, text=True,
                        env=env, cwd=os.path.dirname(os.path.dirname(__file__)), timeout=300)
    assert ok.returncode == 0 and "no cached analyses" in ok.stdout
