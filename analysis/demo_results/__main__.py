"""Regenerate the shipped demo entries: ``python -m analysis.demo_results [--check]``.

Computes, from scratch and without any cache, the embedded default analysis and the zoo's regimes comparison
(:func:`demo_analyses`), writes each as a cache entry into ``analysis/demo_results/<key>/`` and rewrites
``index.json`` with the current code fingerprint. Entries of other keys (stale ones) are removed. The numbers
are deterministic (seeded sample, float64 eigen-decompositions); only timings and dates differ between runs.
``--check`` computes nothing: it exits 1 when an entry is missing or the code fingerprint changed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time

from ..cache import KEY_PATTERN, ResultCache, atomic_write_bytes
from ..defaults import DEFAULT_COMPARISON, DEFAULT_DATASET, DEFAULT_MODEL, DEFAULT_SAMPLES
from ..engine import compute, plan
from ..settings import AnalysisSettings
from . import INDEX, SEED_ROOT, code_fingerprint, read_index


def demo_analyses() -> list[tuple[str, str, AnalysisSettings]]:
    """(model id, dataset id, settings) of every shipped entry: the default first, then the comparison set, then
    every checkpoint of the comparison's zoo series (the Timeline page's default), with the settings the app uses
    for them (``ui.state.default_settings``: the default sample count)."""
    from ..timeline import series_checkpoints

    comparison = [m.strip() for m in DEFAULT_COMPARISON if m.strip()]
    checkpoints = [p.model_id for m in comparison if m.startswith("zoo:") for p in series_checkpoints(m)
                   if not p.problem]
    models = list(dict.fromkeys([DEFAULT_MODEL, *comparison, *checkpoints]))
    return [(m, DEFAULT_DATASET, AnalysisSettings(samples=DEFAULT_SAMPLES)) for m in models]


def planned_keys() -> list[str]:
    """The content keys the current code gives the demo analyses (loads the models; reads no images)."""
    return [plan(m, d, s).key for m, d, s in demo_analyses()]


def check() -> list[str]:
    """Why the shipped entries are not current (empty when they are)."""
    problems = []
    index = read_index()
    if index.get("code") != code_fingerprint():
        problems.append(f"code fingerprint {index.get('code')} != current {code_fingerprint()}")
    seeds = ResultCache(SEED_ROOT)
    for key, (model_id, dataset_id, _) in zip(planned_keys(), demo_analyses()):
        if seeds.manifest(key) is None:
            problems.append(f"{model_id} on {dataset_id}: no intact entry {key}")
    return problems


def compute_entry(model_id: str, dataset_id: str, settings: AnalysisSettings, log=print) -> dict:
    """Compute one demo analysis from scratch (no cache read) and store it into the seed folder."""
    start = time.perf_counter()
    the_plan = plan(model_id, dataset_id, settings)
    result, _ = compute(the_plan)
    ResultCache(SEED_ROOT).store(the_plan.key, result)
    log(f"{model_id} on {dataset_id}: key {the_plan.key}, MLU {result.mlu:.4f} "
        f"({time.perf_counter() - start:.0f} s)")
    return _index_row(the_plan.key, model_id, dataset_id, settings, float(result.mlu))


def _index_row(key: str, model_id: str, dataset_id: str, settings: AnalysisSettings, mlu: float) -> dict:
    return {"key": key, "model_id": model_id, "dataset_id": dataset_id, "samples": settings.samples,
            "mlu": round(mlu, 6)}


def regenerate(missing_only: bool = False, log=print) -> dict:
    """Recompute every demo entry into the seed folder (with ``missing_only``, only those whose key has no
    intact entry there: to finish an interrupted regeneration), remove the others, rewrite the index."""
    seeds = ResultCache(SEED_ROOT)
    entries = []
    for model_id, dataset_id, settings in demo_analyses():
        key = plan(model_id, dataset_id, settings).key
        kept = seeds.load(key) if missing_only else None
        if kept is not None:
            log(f"{model_id} on {dataset_id}: key {key} kept (intact)")
            entries.append(_index_row(key, model_id, dataset_id, settings, float(kept.mlu)))
            continue
        entries.append(compute_entry(model_id, dataset_id, settings, log))
    wanted = {e["key"] for e in entries}
    for folder in SEED_ROOT.iterdir():
        if folder.is_dir() and (KEY_PATTERN.fullmatch(folder.name) and folder.name not in wanted
                                or folder.name == ".staging"):
            shutil.rmtree(folder)
    code_fingerprint.cache_clear()
    index = {"code": code_fingerprint(), "entries": entries,
             "note": "written by python -m analysis.demo_results; see analysis/demo_results/__init__.py"}
    atomic_write_bytes(INDEX, (json.dumps(index, indent=1) + "\n").encode())
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.demo_results", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stale or missing entries; exit 1 if any")
    parser.add_argument("--missing", action="store_true",
                        help="keep intact entries of the current keys, compute only the others (resume)")
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            print("shipped demo entries are stale: run python -m analysis.demo_results", file=sys.stderr)
            return 1
        print("shipped demo entries are current")
        return 0
    regenerate(missing_only=args.missing)
    return 0


if __name__ == "__main__":
    sys.exit(main())
