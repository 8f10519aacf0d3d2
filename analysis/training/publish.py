"""Publish trained runs into the zoo: evaluate, copy the safetensors, hash, and rewrite the manifest.

    python -m analysis.training.publish --run zoo_logs/supervised [--run zoo_logs/random ...]
    python -m analysis.training.publish            # only (re)writes placeholder entries for untrained models

For each ``--run DIR`` (holding ``model.safetensors`` and ``run.json`` from a recipe) it measures, on the
Fashion-MNIST test split, the head's top-1, the linear-probe top-1 and the k-NN top-1
(:mod:`analysis.training.evaluate`), copies the weights to ``analysis/models/zoo_weights/<name>.safetensors``,
and writes the manifest entry (recipe command, seed, epochs, architecture, data config, sha256, accuracies,
wall time, hardware, date). No number in the manifest is typed by hand.

Checkpoints: a run's intermediate checkpoints (``<run>/checkpoints.json``, written by the recipe's
:class:`analysis.training.common.Checkpointer`) are copied to ``zoo_weights/checkpoints/<name>/`` (float16,
sha256 checked after the copy) and listed under the model as ``checkpoints``, ordered by step; the run's last
checkpoint is replaced by the published float32 model itself (``model_id`` ``zoo:<name>``), whose accuracies are
the full evaluation's, and a seed-0 run's step 0 by ``zoo:vit-fmnist-random`` (below): one file and one analysis
for the shared initialisation of every regime. Each listed checkpoint loads as ``zoo:<name>?step=<step>``. Size budget:
:data:`CHECKPOINT_BUDGET_MB` per regime for the intermediate files (a zoo ViT is 0.92 MB in float16, so up to 10
points: step 0, three points inside the first epoch and epochs 1, 2, 4, ..., 16 fit); publishing refuses a run over budget.

A model published before checkpoints were kept (no ``checkpoints.json``) gets the only honest series it has:
its step-0 initialisation and its final weights. Every recipe builds its model with
``common.build_model(seed)``, so with seed 0 the step-0 backbone is bit for bit the backbone of
``zoo:vit-fmnist-random`` (checked in ``tests/test_timeline.py``), which is listed as step 0 (its head is
that model's linear probe; the regime's own step-0 head was untrained, and heads are not counted in the MLU).
No intermediate point is ever derived. Models not yet published keep an
entry with their recipe command and ``sha256: null`` so that ``zoo:<name>`` explains how to obtain them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ..models.zoo import ARCH_KWARGS, ARCH_NAME, DATA_CONFIG, MANIFEST_PATH, read_manifest, sha256_file
from . import common
from .evaluate import evaluate_file

REGIMES: dict[str, dict[str, str]] = {
    "supervised": {"name": "vit-fmnist-supervised",
                   "command": "python -m analysis.training.supervised --out zoo_logs/supervised --seed 0 --epochs 25"},
    "mae": {"name": "vit-fmnist-mae", "command": "python -m analysis.training.mae --out zoo_logs/mae --seed 0 --epochs 10"},
    "dino": {"name": "vit-fmnist-dino", "command": "python -m analysis.training.dino --out zoo_logs/dino --seed 0 --epochs 4"},
    "random": {"name": "vit-fmnist-random",
               "command": "python -m analysis.training.random_init --out zoo_logs/random --seed 0"},
}

EVALUATION = (
    "Fashion-MNIST test split (10k, embedded). top1: the supervised classifier head. head_top1: the stored head "
    "(for mae/dino/random that head is a linear probe). linear_probe_top1: multinomial logistic regression "
    "(L-BFGS up to 1000 iterations, L2 1e-6, standardised features) on frozen CLS features of the 60k train images. knn_top1: k=20 "
    "cosine k-NN on the same features, votes weighted exp(sim/0.07)."
)


ARCH_RATIONALE = (
    "Width 96, depth 6, 4 heads, MLP ratio 2, patch 4 (49 tokens + CLS), ~0.46 M parameters: training runs niced on a "
    "shared 2-core CPU, where a measured training step ran ~1.6x faster at width 96 than at width 128 (180-380 vs "
    "60-240 images/s under contention), i.e. more epochs in the same time; 6 blocks give 24 analysed layers for "
    "per-depth charts. in_chans=3 because the product repeats grey images to 3 channels for every model (one data "
    "pipeline); the zoo is trained on exactly that input. Consequence: patch_embed.proj has d_in=48 but inputs of "
    "rank <= 16 (equal channels), so its utilization is <= 1/3 by construction (a flagged layer)."
)


CHECKPOINT_BUDGET_MB = 10.0
"""Most megabytes of intermediate checkpoints kept in the repository per regime."""

CHECKPOINT_POLICY = (
    "Intermediate checkpoints: the backbone (+ head) at step 0, after 1/8, 1/4 and 1/2 of the first epoch and after "
    "epochs 1, 2, 4, 8, ... of training, "
    "stored in float16 (not an exact reload of the float32 training weights: relative error <= 2^-11 per weight, "
    "immaterial to the analysed ranks), at most " + f"{CHECKPOINT_BUDGET_MB:g}" + " MB per regime; the last point is "
    "the published float32 model. Accuracies at intermediate checkpoints: probe and k-NN fitted on the first "
    "train_images training images, measured on test_images test images (see each record's evaluation). "
    "Models published before checkpoints were kept list two points: step 0 (the seed-0 initialisation, bit for bit "
    "the backbone of zoo:vit-fmnist-random) and the final model; no intermediate point is derived."
)

RANDOM_NAME = REGIMES["random"]["name"]


def placeholder(regime: str) -> dict[str, Any]:
    info = REGIMES[regime]
    return {"name": info["name"], "regime": regime, "file": f"{info['name']}.safetensors",
            "recipe_command": info["command"], "sha256": None, "status": "not trained yet"}


def publish_run(run_dir: Path, weights_dir: Path, train_limit: int | None = None,
                test_limit: int | None = None, random_entry: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate ``run_dir/model.safetensors``, copy it into ``weights_dir`` and return its manifest entry.

    ``random_entry`` (the published ``zoo:vit-fmnist-random`` entry, if any) replaces a seed-0 run's step-0
    checkpoint (:func:`initialisation_record`)."""
    run = json.loads((run_dir / "run.json").read_text())
    regime = run["regime"]
    name = REGIMES[regime]["name"]
    src = run_dir / "model.safetensors"
    common.log(f"evaluating {src} ({regime})")
    acc = evaluate_file(src, train_limit, test_limit)
    weights_dir.mkdir(parents=True, exist_ok=True)
    dst = weights_dir / f"{name}.safetensors"
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    start = initialisation_record(random_entry or {}, {"seed": run["seed"]},
                                  "the run's own float16 step-0 file is not kept")
    checkpoints = copy_checkpoints(run_dir, weights_dir, name, {run.get("steps")} | ({0} if start else set()))
    entry = {
        "name": name,
        "regime": regime,
        "file": dst.name,
        "recipe_command": run["recipe_command"],
        "publish_command": f"python -m analysis.training.publish --run {common._relative_argv([str(run_dir)])[0]}",
        "seed": run["seed"],
        "epochs": run["epochs"],
        "steps": run.get("steps"),
        "arch": ARCH_NAME,
        "arch_kwargs": ARCH_KWARGS,
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in DATA_CONFIG.items()},
        "sha256": sha256_file(dst),
        "size_bytes": dst.stat().st_size,
        "head": run.get("head"),
        "accuracy": {
            "top1": acc["head_top1"] if regime == "supervised" else None,
            "head_top1": acc["head_top1"],
            "linear_probe_top1": acc["linear_probe_top1"],
            "knn_top1": acc["knn_top1"],
        },
        "evaluation": EVALUATION + ("" if train_limit is None and test_limit is None
                                    else f" (LIMITED: train {train_limit}, test {test_limit})"),
        "train_seconds": run.get("train_seconds"),
        "hardware": run.get("hardware"),
        "trained_date": run.get("date"),
        "published_date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "hyperparameters": run.get("hyperparameters"),
        "status": "published",
    }
    if checkpoints is not None:
        entry["checkpoints"] = ([start] if start else []) + checkpoints + [final_checkpoint(entry)]
    return entry


def final_checkpoint(entry: dict[str, Any]) -> dict[str, Any]:
    """The series' last point: the published float32 model itself."""
    acc = entry.get("accuracy") or {}
    return {"model_id": f"zoo:{entry['name']}", "kind": "final", "file": entry["file"], "step": entry.get("steps") or 0,
            "epoch": entry.get("epochs") or 0, "sha256": entry["sha256"], "dtype": "float32",
            "accuracy": {k: acc.get(k) for k in ("head_top1", "linear_probe_top1", "knn_top1")},
            "evaluation": {"train_images": 60000, "test_images": 10000}}


def copy_checkpoints(run_dir: Path, weights_dir: Path, name: str, skip_steps: set) -> list[dict[str, Any]] | None:
    """Copy the run's intermediate checkpoints (all but ``skip_steps``: the final step, whose point is the published
    float32 model, and step 0 where :func:`initialisation_record` stands for it) and return their manifest records,
    or None when the run kept none. Raises when the files exceed :data:`CHECKPOINT_BUDGET_MB` or a copy's sha256
    differs."""
    records_path = run_dir / common.CHECKPOINT_RECORDS
    if not records_path.is_file():
        return None
    records = [r for r in json.loads(records_path.read_text()) if r["step"] not in skip_steps]
    total = sum(int(r["size_bytes"]) for r in records)
    if total > CHECKPOINT_BUDGET_MB * 2**20:
        raise SystemExit(f"{run_dir}: {len(records)} intermediate checkpoints take {total / 2**20:.1f} MB, over the "
                         f"{CHECKPOINT_BUDGET_MB:g} MB budget per regime; publish fewer (edit {records_path})")
    folder = weights_dir / common.CHECKPOINT_DIR / name
    if folder.is_dir():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    out = []
    for record in sorted(records, key=lambda r: r["step"]):
        src = run_dir / record["file"]
        dst = folder / Path(record["file"]).name
        shutil.copyfile(src, dst)
        if sha256_file(dst) != record["sha256"]:
            raise SystemExit(f"{src}: sha256 differs from {records_path}; the run's checkpoint was modified")
        out.append({"model_id": f"zoo:{name}?step={record['step']}", "kind": "intermediate",
                    **{**record, "file": str(dst.relative_to(weights_dir))}})
    return out


def initialisation_record(random_entry: dict[str, Any], entry: dict[str, Any], why: str) -> dict[str, Any] | None:
    """Step 0 of a seed-0 regime as ``zoo:vit-fmnist-random``'s float32 file (its backbone is bit for bit
    ``common.build_model(0)``'s, the initialisation every recipe starts from), or None when either is not seed 0
    or the random model is not published. One file and one analysis then serve as step 0 of every regime."""
    if not (random_entry.get("sha256") and entry.get("seed") == 0 and random_entry.get("seed") == 0):
        return None
    acc = random_entry.get("accuracy") or {}
    return {
        "model_id": f"zoo:{RANDOM_NAME}", "kind": "initialisation", "file": random_entry["file"], "step": 0,
        "epoch": 0, "sha256": random_entry["sha256"], "dtype": "float32",
        "accuracy": {"head_top1": None, "linear_probe_top1": acc.get("linear_probe_top1"),
                     "knn_top1": acc.get("knn_top1")},
        "evaluation": {"train_images": 60000, "test_images": 10000},
        "note": "common.build_model(0) backbone, bit for bit that of zoo:vit-fmnist-random (whose head is a linear "
                f"probe; this regime's step-0 head was untrained); {why}",
    }


def two_point_series(entries: dict[str, dict[str, Any]]) -> None:
    """For published models without checkpoints: ``[step 0 = zoo:vit-fmnist-random's file, final]`` (see the
    module docstring; only for seed 0, whose initialisation that file holds). The random model's series is itself."""
    random_entry = entries.get(RANDOM_NAME) or {}
    for name, entry in entries.items():
        if not entry.get("sha256"):
            continue
        derived = [c.get("kind") for c in entry.get("checkpoints") or []] in (["initialisation"],
                                                                               ["initialisation", "final"])
        if "checkpoints" in entry and not derived:  # a real series from a run: keep it
            continue
        if name == RANDOM_NAME:
            entry["checkpoints"] = [{**final_checkpoint(entry), "kind": "initialisation"}]
            continue
        start = initialisation_record(random_entry, entry, "published before checkpoints were kept, so no "
                                                           "intermediate point exists")
        series = [start] if start is not None else []
        entry["checkpoints"] = series + [final_checkpoint(entry)]


def write_manifest(entries: dict[str, dict[str, Any]], path: Path) -> None:
    data = {
        "description": "Project zoo: one small ViT for 28x28 Fashion-MNIST (timm VisionTransformer, arch_kwargs), "
                       "four pre-training regimes. Written by python -m analysis.training.publish; do not edit.",
        "architecture": {"arch": ARCH_NAME, "timm_class": "timm.models.vision_transformer.VisionTransformer",
                         "arch_kwargs": ARCH_KWARGS, "rationale": ARCH_RATIONALE},
        "checkpoint_policy": {"text": CHECKPOINT_POLICY, "budget_mb_per_regime": CHECKPOINT_BUDGET_MB,
                              "schedule": "step 0, epochs 1/8, 1/4, 1/2, 1, 2, 4, 8, ..., last", "dtype": "float16"},
        "models": {k: entries[k] for k in sorted(entries)},
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.training.publish", description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, action="append", default=[], help="a recipe's --out folder (repeatable)")
    p.add_argument("--manifest", type=Path, default=MANIFEST_PATH)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train-limit", type=int, default=None, help="evaluation on fewer images (tests only)")
    p.add_argument("--test-limit", type=int, default=None, help="evaluation on fewer images (tests only)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    entries = dict(read_manifest(args.manifest)["models"])
    for regime in REGIMES:  # refresh placeholders (recipe commands) of models not published yet
        name = REGIMES[regime]["name"]
        if not (entries.get(name) or {}).get("sha256"):
            entries[name] = placeholder(regime)
    for run_dir in args.run:
        entry = publish_run(run_dir, args.manifest.parent, args.train_limit, args.test_limit,
                            random_entry=entries.get(RANDOM_NAME))
        entries[entry["name"]] = entry
        two_point_series(entries)
        write_manifest(entries, args.manifest)
        common.log(f"published {entry['name']}: {json.dumps(entry['accuracy'])}")
    two_point_series(entries)
    write_manifest(entries, args.manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
