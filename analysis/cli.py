"""Command line: ``python -m analysis run | list | show | compare | export | compress | timeline | image`` (README,
section Command line).

Exit codes: 0 success; 2 a bad id, setting or input (one line ``error: ...`` on stderr); 130 interrupted.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from . import defaults
from .defaults import DEFAULT_ENERGY
from .tokens import label as token_label
from .errors import AnalysisError, SettingsError

if TYPE_CHECKING:
    from .settings import AnalysisSettings

SHOWN_COLUMNS = ["layer", "kind", "d_in", "d_out", "k_in", "k_out", "rank", "utilization",
                 "params_dense", "params_factorized", "preservation_error", "w_stable_rank", "status"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other bad input
        self.exit(2, f"error: {message} (see python -m analysis {self.prog.split()[-1]} --help)\n")


def add_settings_options(command: argparse.ArgumentParser, exclude: Sequence[str] = ()) -> None:
    """One option per :class:`~analysis.settings.AnalysisSettings` field (but ``exclude``), generated from the
    dataclass: ``--<name-with-dashes>`` (or the field's ``flag``), its type, default, choices and help text;
    a true/false field gets ``--x/--no-x``, the layer patterns one comma-separated string. The parsed value of
    each lands under the field's own name (:func:`settings_from_args`)."""
    from .settings import setting_fields, setting_types

    types = setting_types()
    for spec in setting_fields():
        if spec.name in exclude:
            continue
        meta = spec.metadata
        options: dict = {"dest": spec.name, "default": spec.default, "help": meta.get("help")}
        kind = _option_type(types[spec.name])
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = kind
        for name in ("choices", "metavar"):
            if name in meta:
                options[name] = meta[name]
        command.add_argument(meta.get("flag", "--" + spec.name.replace("_", "-")), **options)


def _option_type(annotation) -> type:
    """``int | None`` -> int; ``tuple[str, ...] | None`` -> str (validated into patterns later); bool; str."""
    import typing

    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    kind = typing.get_origin(args[0]) or args[0]
    return str if kind is tuple else kind


def settings_from_args(args: argparse.Namespace, **overrides) -> "AnalysisSettings":
    """The settings a parsed command line asks for (the fields :func:`add_settings_options` added; not yet
    validated), with ``overrides``."""
    from .settings import AnalysisSettings, setting_names

    given = {name: getattr(args, name) for name in setting_names() if hasattr(args, name)}
    return AnalysisSettings(**{**given, **overrides})


def build_parser() -> argparse.ArgumentParser:
    from .data import id_forms

    DEFAULT_MODEL, DEFAULT_DATASET = defaults.default_model(), defaults.default_dataset()
    dataset_forms = ", ".join(id_forms())  # from the dataset-family registry
    parser = _Parser(prog="python -m analysis", description="Layer-utilization analysis of trained networks.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="analyse a model on a dataset (cached)")
    run.add_argument("--model", default=DEFAULT_MODEL, help=f"model id (default {DEFAULT_MODEL})")
    run.add_argument("--dataset", default=DEFAULT_DATASET, help=f"dataset id: {dataset_forms} (default {DEFAULT_DATASET}; see `list datasets`)")
    add_settings_options(run)
    run.add_argument("--no-cache", action="store_true", help="recompute and do not store")
    run.add_argument("--export", default=None, help="also write the table to PATH.csv|.parquet|.json")
    run.add_argument("--quiet", action="store_true", help="no progress bar")

    listing = sub.add_parser("list", help="list models, datasets or cached analyses")
    listing.add_argument("what", nargs="?", default="cache", choices=["models", "datasets", "cache"])

    show = sub.add_parser("show", help="show a cached analysis")
    show.add_argument("key")
    show.add_argument("--energy-in", type=float, default=None)
    show.add_argument("--energy-out", type=float, default=None)
    show.add_argument("--heads", action="store_true",
                      help="also print per-head utilization of q, k, v and of the output projection's input")

    compare = sub.add_parser("compare", help="compare cached analyses layer by layer")
    compare.add_argument("keys", nargs="+")
    compare.add_argument("--energy-in", type=float, default=None)
    compare.add_argument("--energy-out", type=float, default=None)

    export = sub.add_parser("export", help="export a cached analysis")
    export.add_argument("key")
    export.add_argument("--format", required=True, choices=["csv", "parquet", "json"])
    export.add_argument("--out", required=True)

    comp = sub.add_parser("compress", help="factorize at the utilized rank, evaluate, fine-tune, export")
    comp.add_argument("--model", default=DEFAULT_MODEL, help=f"model id (default {DEFAULT_MODEL})")
    comp.add_argument("--dataset", default="fashion-mnist:train",
                      help=f"analysis + fine-tuning data: {dataset_forms} (default fashion-mnist:train)")
    comp.add_argument("--eval-dataset", default=None,
                      help="labelled split for top-1 (default: fashion-mnist:test for fashion-mnist:train, else --dataset)")
    comp.add_argument("--samples", type=int, default=None, help="analysis images (default: the whole dataset)")
    comp.add_argument("--eval-samples", type=int, default=None, help="evaluation images (default: all)")
    comp.add_argument("--seed", type=int, default=0)
    comp.add_argument("--energy-in", type=float, default=DEFAULT_ENERGY)
    comp.add_argument("--energy-out", type=float, default=DEFAULT_ENERGY)
    comp.add_argument("--keep", type=float, default=None,
                      help="parameter budget: fraction of the counted layers' parameters to keep (overrides energies)")
    comp.add_argument("--finetune-steps", type=int, default=0)
    comp.add_argument("--finetune-lr", type=float, default=1e-4)
    comp.add_argument("--finetune-batch-size", type=int, default=64)
    comp.add_argument("--objective", default="labels", choices=["labels", "distill"],
                      help="fine-tuning loss (labels falls back to distill when the classifier does not fit the data)")
    comp.add_argument("--sweep", default=None,
                      help="comma-separated energies: print accuracy against parameters kept (e_in = e_out) instead")
    comp.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    comp.add_argument("--batch-size", type=int, default=None, help="analysis batch size")
    comp.add_argument("--export", default=None, help="write the factorized model to PATH.safetensors (+ .ranks.json)")
    comp.add_argument("--summary", default=None, help="also write the JSON summary to PATH (always stored in the cache)")
    comp.add_argument("--quiet", action="store_true", help="no progress output")

    image = sub.add_parser("image", help="one image of a cached analysis against its subspaces, layer by layer")
    image.add_argument("key", help="cache key (or a unique prefix) of the analysis")
    image.add_argument("--index", type=int, required=True, help="image index in the analysed selection (0-based)")
    image.add_argument("--layer", default=None, help="only this layer, with its residual heatmap")
    image.add_argument("--energy-in", type=float, default=None, help="default: the analysis' own")
    image.add_argument("--energy-out", type=float, default=None, help="default: the analysis' own")
    image.add_argument("--quiet", action="store_true", help="no progress bar (when the moments must be computed)")

    tl = sub.add_parser("timeline", help="analyse every checkpoint of a training series (cached)")
    tl.add_argument("--series", action="append", required=True,
                    help="zoo:<name>, folder-of-checkpoints:<path>?arch=<timm arch>, or a model id (repeatable)")
    tl.add_argument("--dataset", default=DEFAULT_DATASET, help=f"dataset id (default {DEFAULT_DATASET})")
    add_settings_options(tl, exclude=("layers",))  # --layers prints the per-layer table here
    tl.add_argument("--layers", dest="print_layers", action="store_true",
                    help="also print the per-layer utilization (long format)")
    tl.add_argument("--export", default=None, help="also write the wide table to PATH.csv|.parquet|.json")
    tl.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _stage_progress(quiet: bool, unit: str = "it"):
    """``progress(stage, done, total, **postfix)`` as one tqdm bar per stage on stderr."""
    if quiet:
        return None, lambda: None
    from tqdm import tqdm

    state = {"stage": None, "bar": None}

    def update(stage: str, done: int, total: int, **postfix: str) -> None:
        if stage != state["stage"]:
            if state["bar"] is not None:
                state["bar"].close()
            state["stage"], state["bar"] = stage, tqdm(total=total, unit=unit, desc=stage, file=sys.stderr,
                                                       dynamic_ncols=True)
        state["bar"].n = done
        if postfix:
            state["bar"].set_postfix(postfix, refresh=False)
        state["bar"].refresh()

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].close()

    return update, close


def _progress_bar(quiet: bool):
    """``progress(Progress)`` of an analysis as one tqdm bar of batches (images in the postfix)."""
    update, close = _stage_progress(quiet, unit="batch")
    if update is None:
        return None, close

    def on_batch(p) -> None:
        update(p.stage, p.done, p.total, images=f"{p.items_done}/{p.items_total}")

    return on_batch, close


def _print_result(result, out=None) -> None:
    out = out or sys.stdout
    summary = result.summary()
    print(f"key        {summary['key']}", file=out)
    print(f"model      {summary['model']}  ({result.meta.model_description})", file=out)
    print(f"dataset    {summary['dataset']}  ({summary['images']} images)", file=out)
    print(f"energies   in {result.energy_in:g}  out {result.energy_out:g}", file=out)
    print(f"vectors    {token_label(result.meta.token_set)}, {'centred' if result.meta.centred else 'uncentred'}",
          file=out)
    error = "" if math.isnan(summary["mlu_err"]) else f" ± {summary['mlu_err']:.4f} (split half)"
    print(f"MLU        {summary['mlu']:.4f}{error}  over {summary['layers_in_mlu']} layers "
          f"({_flagged_labels()} reported, not counted"
          f"{'; ' + str(summary['layers_flagged']) + ' flagged layers not counted' if summary['layers_flagged'] else ''})",
          file=out)
    print(f"parameters {summary['params_factorized']:,} of {summary['params_dense']:,} kept if factorized "
          f"({summary['kept']:.1%})", file=out)
    with pd.option_context("display.max_rows", 500, "display.width", 200, "display.float_format", "{:.4g}".format):
        print(result.layers[SHOWN_COLUMNS].to_string(index=False), file=out)
    if result.not_applicable:
        names = ", ".join(item["layer"] for item in result.not_applicable[:6])
        more = "" if len(result.not_applicable) <= 6 else f" and {len(result.not_applicable) - 6} more"
        print(f"not analysed (grouped/depthwise convolutions, or left out by --layers/--max-width): {names}{more}",
              file=out)
    print(coverage_line(result.meta), file=out)
    for line in result.warnings:
        print(f"warning: {line}", file=sys.stderr)


def _flagged_labels() -> str:
    """``patch embedding / stem, position encoding MLP and classifier head`` (from the kinds registry)."""
    from .models.kinds import FLAGGED_KINDS, KIND_NAMES, kind_label

    labels = [kind_label(k) for k in KIND_NAMES if k in FLAGGED_KINDS]
    return ", ".join(labels[:-1]) + " and " + labels[-1] if len(labels) > 1 else "".join(labels)


def coverage_line(meta) -> str:
    """``weights    92.3 % of the parameters analysed; skipped: CondConv2d (10.7M), LSTM (11.1M)``."""
    fraction, skipped = meta.weights_analysed_fraction, meta.skipped_module_types or {}
    if fraction is None:
        return "weights    analysed fraction not recorded (result from an older version)"
    listed = ", ".join(f"{name} ({count / 1e6:.2g}M)" if count >= 1e5 else f"{name} ({count:,})"
                       for name, count in list(skipped.items())[:6])
    more = "" if len(skipped) <= 6 else f" and {len(skipped) - 6} more"
    return f"weights    {fraction:.1%} of the parameters analysed" + (f"; skipped: {listed}{more}" if listed else "")


def _with_energies(result, e_in, e_out):
    if e_in is None and e_out is None:
        return result
    return result.at_energy(result.energy_in if e_in is None else e_in,
                            result.energy_out if e_out is None else e_out)


def _load_cached(key: str):
    from .cache import ResultCache

    cache = ResultCache()
    full = cache.resolve(key)
    result = cache.load(full)
    if result is None:
        raise AnalysisError(f"cache entry {full} is damaged or incomplete; run the analysis again to recompute it")
    return result


def run_settings(args, device: str | None = None) -> "AnalysisSettings":
    """The settings a parsed ``run`` command line asks for (not yet validated); ``device`` overrides
    ``--device`` (under torchrun each rank's own GPU). :func:`analysis.card.reproduce_command` relies on
    this mapping: its tests parse the command and plan these settings."""
    return settings_from_args(args, **({"device": device} if device else {}))


def cmd_run(args) -> int:
    from .engine import analyze
    from .table_export import export_result, format_from_path

    if args.export:
        format_from_path(args.export)  # fail on a bad name before the long run
    from . import distributed

    device = distributed.init_from_env(args.device)  # under torchrun: join the group, one GPU per rank
    rank, world_size = distributed.world()
    update, close = _progress_bar(args.quiet or rank != 0)
    try:
        result = analyze(args.model, args.dataset, run_settings(args, device), use_cache=not args.no_cache,
                         progress=update)
    finally:
        close()
        distributed.shutdown()
    if rank != 0:
        return 0
    if world_size > 1:
        print(f"ranks      {world_size} (samples sharded, statistics all-reduced)")
    _print_result(result)
    if args.export:
        _print_export(export_result(result, args.export), format_from_path(args.export))
    return 0


def _print_export(path: Path, fmt: str) -> None:
    """``exported   PATH``, and where the reproducibility card went (inside, or the CSV's sidecar)."""
    from .table_export import card_path

    print(f"exported   {path}")
    if fmt == "csv":
        print(f"card       {card_path(path)}  (reproducibility card; CSV has no room for it)")
    else:
        where = 'under "card"' if fmt == "json" else "in the file metadata, key reproducibility_card"
        print(f"card       inside the {fmt} file ({where})")


def cmd_list(args) -> int:
    if args.what == "models":
        from .models import catalogue

        for entry in catalogue():
            print(f"{entry.model_id:45s} {entry.group:22s} {entry.description}")
        print("also: timm:<name>[.<tag>], random:<timm arch>, file:<path>?arch=<timm arch>, tv:<torchvision name>, "
              "hf:<model folder>")
    elif args.what == "datasets":
        from .data import dataset_templates, list_datasets

        for entry in list_datasets():
            state = "available" if entry.available else f"unavailable: {entry.reason}"
            print(f"{entry.dataset_id:28s} {entry.description}  [{state}]")
        print("also: " + ", ".join(template for template, _ in dataset_templates()))
    else:
        from .cache import ResultCache

        entries = list(ResultCache().entries())
        if not entries:
            print("no cached analyses")
        for entry in entries:
            meta = entry.meta
            print(f"{entry.key}  {meta.model_id:35s} {meta.dataset_id:22s} {meta.n_images:>7} images")
    return 0


def cmd_show(args) -> int:
    """The result's table and summary (and its attention heads with ``--heads``), then its reproducibility
    card and the command that recreates it."""
    from .card import card_lines, reproducibility_card

    result = _with_energies(_load_cached(args.key), args.energy_in, args.energy_out)
    _print_result(result)
    if args.heads:
        _print_heads(result)
    print()
    print("reproducibility card")
    for line in card_lines(reproducibility_card(result)):
        print(line)
    return 0


def _print_heads(result, out=None) -> None:
    """The head table of :func:`analysis.heads.head_table` (whole-part rows have no head), and why the
    attention layers without head numbers have none."""
    from .heads import head_reasons, head_table, layouts_line

    out = out or sys.stdout
    table = head_table(result)
    print(file=out)
    if table.empty:
        print("per-head utilization: none in this result (no attention layers with a known head layout, or "
              "a result computed before per-head analysis existed)", file=out)
    else:
        print(f"per-head utilization (q, k, v at e_out {result.energy_out:g}: u = min(k_in, k) / min(d_in, d); "
              f"proj_in at e_in {result.energy_in:g}: u = k / d; an empty head is the whole part)", file=out)
        shown = table[["layer", "part", "head", "d", "k", "rank", "utilization"]].astype({"head": "object"})
        shown["head"] = shown["head"].map(lambda h: "" if h is pd.NA else h)
        with pd.option_context("display.max_rows", None, "display.width", 200, "display.float_format", "{:.4g}".format):
            print(shown.to_string(index=False), file=out)
        print(f"head layouts: {layouts_line(result)}", file=out)
    for layer, reason in head_reasons(result).items():
        print(f"no head numbers for {layer}: {reason}", file=out)


def cmd_compare(args) -> int:
    from .compare import compare_results

    results = [_with_energies(_load_cached(k), args.energy_in, args.energy_out) for k in args.keys]
    if len(results) < 2:
        raise SettingsError("compare needs at least two keys")
    summary, per_layer = compare_results(results)
    with pd.option_context("display.max_rows", 500, "display.width", 200, "display.float_format", "{:.4g}".format):
        print(summary.to_string(index=False))
        print()
        print(per_layer.to_string(index=False))
    return 0


def cmd_export(args) -> int:
    from .table_export import export_result

    _print_export(export_result(_load_cached(args.key), args.out, args.format), args.format)
    return 0


def _parse_energies(text: str) -> tuple[float, ...]:
    from .result import check_energy

    try:
        return tuple(check_energy(float(part), "sweep energy") for part in text.split(",") if part.strip())
    except ValueError:
        raise SettingsError(f"--sweep must be comma-separated numbers in (0, 1], got {text!r}") from None


def cmd_compress(args) -> int:
    import json

    from .cache import atomic_write_bytes
    from .compression import CompressionRequest, FinetuneSettings, compress, store_summary, sweep

    if args.export and not args.export.lower().endswith(".safetensors"):
        raise SettingsError(f"--export must name a .safetensors file, got {args.export!r}")
    request = CompressionRequest(
        model=args.model, dataset=args.dataset, eval_dataset=args.eval_dataset, samples=args.samples,
        eval_samples=args.eval_samples, seed=args.seed, energy_in=args.energy_in, energy_out=args.energy_out,
        keep=args.keep, device=args.device, batch_size=args.batch_size,
        finetune=FinetuneSettings(steps=args.finetune_steps, lr=args.finetune_lr, batch_size=args.finetune_batch_size,
                                  objective=args.objective, seed=args.seed),
    ).validated()
    update, close = _stage_progress(args.quiet)
    progress = None if update is None else (lambda p: update(p.stage, p.done, p.total))
    try:
        if args.sweep:
            table = sweep(request, _parse_energies(args.sweep), progress=progress)
        else:
            report = compress(request, export=args.export, progress=progress)
    finally:
        close()
    if args.sweep:
        text = table.to_json(orient="records", indent=2)
        print(table.to_string(index=False, float_format="{:.4f}".format))
        if args.summary:
            atomic_write_bytes(Path(args.summary).expanduser(), text.encode())
        return 0
    summary = report.summary
    summary["stored"] = str(store_summary(summary))
    text = json.dumps(summary, indent=2, default=str)
    if args.summary:
        atomic_write_bytes(Path(args.summary).expanduser(), text.encode())
    print(text)
    return 0


TIMELINE_COLUMNS = ["series", "checkpoint", "step", "epoch", "linear_probe_top1", "knn_top1", "mlu", "kept", "images",
                    "status"]


def cmd_timeline(args) -> int:
    """Print the timeline table; exit 2 (after the table) when any checkpoint could not be analysed, with one
    ``error: ...`` line per such checkpoint on stderr."""
    from .table_export import format_from_path, write_table
    from .timeline import timeline

    if args.export:
        format_from_path(args.export)
    update, close = _progress_bar(args.quiet)
    try:
        result = timeline(args.series, args.dataset, settings_from_args(args), progress=update)
    finally:
        close()
    table = result.table
    print(f"dataset    {args.dataset}  energies in {result.energy_in:g} out {result.energy_out:g}")
    with pd.option_context("display.max_rows", 500, "display.width", 250, "display.max_colwidth", 60,
                           "display.float_format", "{:.4g}".format):
        shown = table[TIMELINE_COLUMNS].assign(status=table["status"].str.slice(0, 60))
        print(shown.to_string(index=False))
        if args.print_layers:
            print()
            print(result.layers().to_string(index=False))
    if args.export:
        print(f"exported   {write_table(table, args.export)}")
    failed = [e for e in result.errors if e]
    for error in failed:
        print(f"error: {error}", file=sys.stderr)
    return 2 if failed else 0


def cmd_image(args) -> int:
    from .one_image import open_analysis, one_image

    update, close = _progress_bar(args.quiet)
    stage, close_stage = _stage_progress(args.quiet, unit="layer")
    try:
        measured = open_analysis(args.key, progress=update, eigen_progress=None if stage is None else
                                 lambda done, total, _s: stage("subspaces", done, total))
    finally:
        close()
        close_stage()
    report = one_image(measured, args.index, args.energy_in, args.energy_out,
                       layers=[args.layer] if args.layer else None)
    meta = measured.result.meta
    print(f"key        {report.key}")
    print(f"model      {meta.model_id}")
    print(f"image      {report.index} of {len(measured.dataset)} in {meta.dataset_id} (label {report.label})")
    print(f"energies   in {report.energy_in:g}  out {report.energy_out:g}")
    print("columns    energy_fraction = ||X V_k||^2 / ||X||^2 (share of the image's input energy in the dataset's "
          "top-k_in subspace); own_rank = the image's own k at e_in; loss = ||(W - W')X||^2 / ||WX||^2 on this "
          "image; dataset_error = the same over the dataset")
    with pd.option_context("display.max_rows", 500, "display.width", 200, "display.float_format", "{:.4g}".format):
        print(report.table().to_string(index=False))
    for name, reason in report.missing.items():
        print(f"not reached {name}: {reason}")
    if args.layer:
        item = report.layer(args.layer)
        for name, value in item.prefix_losses().items():
            print(f"{name:10s} loss {value:.4g}")
        heatmap = item.heatmap()
        if heatmap is None:
            print(f"heatmap    none: {item.grid.reason}")
        else:
            print(f"heatmap    per-vector loss on the {heatmap.shape[0]}x{heatmap.shape[1]} grid (row-major):")
            with np.printoptions(precision=3, linewidth=200):
                print(np.array2string(heatmap, formatter={"float_kind": "{:.3g}".format}))
    return 0


COMMANDS = {"run": cmd_run, "list": cmd_list, "show": cmd_show, "compare": cmd_compare, "export": cmd_export,
            "compress": cmd_compress, "timeline": cmd_timeline, "image": cmd_image}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except AnalysisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
