"""Reproducibility card: the reproduce command plans the same cache key (parsed by the real CLI parser, and
once run end to end in a subprocess), every export carries the card, ``show`` prints it, and the code's
provenance never fails without git.

Keys for many settings combinations are checked through :func:`analysis.engine.plan` (no images read): the
result's meta is built by the engine's own :func:`analysis.engine.result_meta` from that plan, which is all
the card and the command read. One real analysis is recomputed from its command in a fresh cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from analysis.card import (KEY_DERIVED, KEYED_SETTINGS, card_from_meta, card_lines, reproduce_command,
                           reproducibility_card)
from analysis.cache import ResultCache
from analysis.cli import build_parser, main, run_settings
from analysis.engine import analyze, plan, result_meta
from analysis.errors import AnalysisError
from analysis.meta import Timings
from analysis.provenance import code_provenance, git_state
from analysis.result import Result
from analysis.settings import AnalysisSettings
from analysis.table_export import card_path, export_result, read_parquet_card

from .helpers import TINY_VIT, make_image_folder

ROOT = Path(__file__).resolve().parent.parent
DATASET = "fashion-mnist:test"


def _planned_result(model: str, dataset: str, settings: AnalysisSettings, images: int = 64) -> Result:
    """A result whose meta is what the engine records for this plan (no spectra: the card reads none)."""
    the_plan = plan(model, dataset, settings)
    meta = result_meta(the_plan, SimpleNamespace(images=images, first_batch=0, snapshots=None), Timings())
    return Result(meta=meta, spectra=[], energy_in=settings.energy_in, energy_out=settings.energy_out)


def _parse(command: str) -> argparse.Namespace:
    """The command's arguments as the real ``python -m analysis`` parser reads them."""
    words = shlex.split(command)
    assert words[:4] == ["python", "-m", "analysis", "run"], command
    return build_parser().parse_args(words[3:])


@pytest.fixture(scope="module")
def spaced_folder(tmp_path_factory) -> str:
    """A folder dataset whose path needs shell quoting."""
    return f"folder:{make_image_folder(tmp_path_factory.mktemp('card data') / 'my images', per_class=4)}"


COMBINATIONS = [
    dict(),
    dict(samples=64, seed=7, token_set="cls", centred=True),
    dict(samples=64, token_set="no-outliers:2.5", uncertainty=False, energy_in=0.95, energy_out=0.999),
    dict(samples=100, seed=3, token_set="centre", tokens_per_image=5, precision="bf16", batch_size=16),
    dict(samples=64, layers="blocks.*.attn.*,head", max_width=100, keep_moments=True),
    dict(samples=50, seed=1, token_set="patch", centred=True, uncertainty=False, layers="blocks.0.*"),
    dict(samples=64, token_set="no-registers", precision="bf16", tokens_per_image=3, max_width=48),
]


def test_the_command_spells_every_keyed_setting():
    """A new keyed setting must be added to the card's list (and so to the command), or this fails."""
    assert set(AnalysisSettings().key_parts()) == set(KEYED_SETTINGS)
    parts = plan(TINY_VIT, DATASET, AnalysisSettings(samples=8)).key_parts
    assert set(parts) == set(KEYED_SETTINGS) | set(KEY_DERIVED)


@pytest.mark.parametrize("changes", COMBINATIONS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "defaults")
def test_the_reproduce_command_plans_the_same_key(changes):
    settings = AnalysisSettings(**changes)
    result = _planned_result(TINY_VIT, DATASET, settings)
    args = _parse(reproduce_command(result))
    again = plan(args.model, args.dataset, run_settings(args))
    assert again.key == result.key
    assert again.key_parts == result.meta.key_parts
    # what is not in the key is given as recorded, so the printed table is the same too
    assert (args.energy_in, args.energy_out) == (settings.energy_in, settings.energy_out)
    assert (args.device, args.batch_size) == ("cpu", settings.effective_batch_size())


def test_different_settings_give_different_keys_and_commands():
    """The key comparison above can fail: each combination has its own key, and editing a command changes it."""
    results = [_planned_result(TINY_VIT, DATASET, AnalysisSettings(**c)) for c in COMBINATIONS]
    assert len({r.key for r in results}) == len(COMBINATIONS)
    centred = results[1]
    edited = reproduce_command(centred).replace("--centred", "--no-centred")
    args = _parse(edited)
    assert plan(args.model, args.dataset, run_settings(args)).key != centred.key


def test_the_command_does_not_depend_on_the_cli_defaults():
    """Were the CLI's defaults changed (token set, centring, uncertainty, seed, precision), the command asks
    for the same settings: it spells them all."""
    result = _planned_result(TINY_VIT, DATASET, AnalysisSettings(samples=64))
    parser = build_parser()
    run = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["run"]
    run.set_defaults(token_set="patch", centred=True, uncertainty=False, seed=5, precision="bf16")
    args = parser.parse_args(shlex.split(reproduce_command(result))[3:])
    assert plan(args.model, args.dataset, run_settings(args)).key == result.key
    bare = parser.parse_args(["run", "--model", TINY_VIT, "--dataset", DATASET, "--samples", "64"])
    assert plan(bare.model, bare.dataset, run_settings(bare)).key != result.key  # the changed defaults bite


def test_ids_that_need_quoting_survive_the_shell(spaced_folder):
    result = _planned_result(TINY_VIT, spaced_folder, AnalysisSettings(samples=6, layers="blocks.*"))
    command = reproduce_command(result)
    assert "my images" in command and "'" in command  # quoted, not split
    args = _parse(command)
    assert args.dataset == spaced_folder and args.model == result.meta.model_id
    assert plan(args.model, args.dataset, run_settings(args)).key == result.key


def test_several_processes_get_a_torchrun_prefix():
    result = _planned_result(TINY_VIT, DATASET, AnalysisSettings(samples=64))
    meta = replace(result.meta, world_size=4, device="cuda:0", batch_size=256)
    words = shlex.split(reproducibility_card(Result(meta=meta, spectra=[]))["reproduce"])
    assert words[:6] == ["torchrun", "--standalone", "--nproc-per-node=4", "-m", "analysis", "run"]
    assert words[words.index("--device") + 1] == "cuda"  # each rank takes its own GPU


def test_a_setting_this_version_does_not_know_is_named_not_guessed():
    result = _planned_result(TINY_VIT, DATASET, AnalysisSettings(samples=64))
    meta = replace(result.meta, key_parts={**result.meta.key_parts, "heads": True})
    with pytest.raises(AnalysisError, match="heads"):
        reproduce_command(Result(meta=meta, spectra=[]))
    card = card_from_meta(meta, 0.99, 0.99)
    assert card["reproduce"] is None and "heads" in card["reproduce_note"]
    assert any(line.startswith("reproduce  not possible") for line in card_lines(card))


# ------------------------------------------------------------------------------------------ end to end
E2E = dict(samples=64, seed=3, tokens_per_image=8, layers="blocks.*,head", uncertainty=False,
           energy_in=0.95, energy_out=0.99)


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("card-cache")
    result = analyze(TINY_VIT, DATASET, cache_dir=str(cache_dir), **E2E)
    return SimpleNamespace(result=result, cache_dir=cache_dir)


def test_running_the_command_recreates_the_result(analysed, tmp_path):
    """The command, run as a user would in a fresh cache, gives the same key and the same per-layer table."""
    result = analysed.result
    words = shlex.split(reproduce_command(result))
    env = {**os.environ, "ANALYSIS_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, *words[1:], "--quiet"], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    printed_key = done.stdout.split("key", 1)[1].split()[0]
    assert printed_key == result.key
    again = ResultCache(tmp_path).load(printed_key)
    assert again is not None and again.key == result.key
    pd.testing.assert_frame_equal(again.at_energy(result.energy_in, result.energy_out).layers, result.layers,
                                  check_exact=True)
    assert reproducibility_card(again.at_energy(result.energy_in, result.energy_out))["reproduce"] == \
        reproduce_command(result)


def test_the_card_names_what_made_the_result(analysed):
    result = analysed.result
    card = reproducibility_card(result)
    assert list(card) == ["key", "model", "dataset", "statistics", "energies", "code", "run", "reproduce"]
    assert card["key"] == result.key
    assert card["model"]["weights_fingerprint"] == result.meta.weights_fingerprint
    assert card["dataset"] == {
        "id": DATASET, "description": result.meta.dataset_description,
        "fingerprint": result.meta.dataset_fingerprint, "images_analysed": 64, "samples": 64, "seed": 3,
        "input_size": [3, 32, 32],
    }
    assert card["statistics"] == {
        "token_set": "all", "token_set_words": "all tokens", "centred": False, "uncertainty": False,
        "tokens_per_image": 8, "precision": "fp32", "layers": ["blocks.*", "head"], "max_width": None,
        "keep_moments": False,
    }
    assert card["energies"] == {"in": 0.95, "out": 0.99}
    assert card["code"]["analysis"] == result.meta.key_parts["code"]
    assert card["code"]["git_commit"] == code_provenance()["git_commit"]  # recorded when it was made
    assert card["code"]["torch"] == code_provenance()["torch"]
    assert card["run"]["device"] == "cpu" and card["run"]["batch_size"] == 32
    json.dumps(card)  # JSON-ready
    at_other = reproducibility_card(result.at_energy(0.9, 0.9))
    assert at_other["energies"] == {"in": 0.9, "out": 0.9} and "--energy-in 0.9 " in at_other["reproduce"]


def test_a_result_made_before_provenance_was_recorded_says_so(analysed):
    old = Result(meta=replace(analysed.result.meta, provenance={}), spectra=[])
    card = reproducibility_card(old)
    assert card["code"]["git_commit"] is None and card["code"]["torch"] is None
    assert any("not recorded" in line for line in card_lines(card))


@pytest.mark.parametrize("fmt", ["json", "parquet", "csv"])
def test_every_export_carries_the_card(analysed, tmp_path, fmt):
    result = analysed.result
    path = export_result(result, tmp_path / f"table.{fmt}")
    expected = reproducibility_card(result)
    if fmt == "json":
        document = json.loads(path.read_text())
        assert document["card"] == expected
    elif fmt == "parquet":
        assert read_parquet_card(path) == expected
        pd.testing.assert_frame_equal(pd.read_parquet(path), result.layers)  # the table is unchanged
    else:
        assert card_path(path) == tmp_path / "table.csv.card.json"
        assert json.loads(card_path(path).read_text()) == expected
        assert list(pd.read_csv(path).columns) == list(result.layers.columns)
    if fmt != "csv":
        assert not card_path(path).exists()


def test_show_and_export_print_the_card(analysed, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ANALYSIS_CACHE_DIR", str(analysed.cache_dir))
    result = analysed.result
    assert main(["show", result.key[:10], "--energy-in", "0.95", "--energy-out", "0.99"]) == 0
    out = capsys.readouterr().out
    assert "reproducibility card" in out
    assert f"reproduce  {reproduce_command(result)}" in out.splitlines()
    assert f"weights    sha256 {result.meta.weights_fingerprint}" in out
    out_csv = tmp_path / "export.csv"
    assert main(["export", result.key, "--format", "csv", "--out", str(out_csv)]) == 0
    out = capsys.readouterr().out
    assert f"card       {out_csv}.card.json" in out and Path(f"{out_csv}.card.json").is_file()
    assert main(["export", result.key, "--format", "parquet", "--out", str(tmp_path / "t.parquet")]) == 0
    assert "inside the parquet file" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ provenance
def test_provenance_without_git_or_outside_a_checkout_is_none(tmp_path, monkeypatch):
    assert git_state(tmp_path) == (None, None)  # not a checkout
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on the PATH
    assert git_state(ROOT) == (None, None)


def test_provenance_in_this_checkout_names_its_commit():
    if not (ROOT / ".git").exists():
        pytest.skip("the project does not run from a git checkout here")
    expected = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if expected.returncode != 0:
        pytest.skip("git is not usable here")
    commit, dirty = git_state(ROOT)
    assert commit == expected.stdout.strip() and len(commit) == 40
    assert isinstance(dirty, bool)
