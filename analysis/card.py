"""Reproducibility card of a result: what was analysed, how, by which code, and the command that redoes it.

:func:`reproducibility_card` reads a result's meta (no arrays) and returns an ordered, JSON-ready dict:

==============  =============================================================================================
section         fields
==============  =============================================================================================
``key``         the content key (the same key means the same model weights, images, settings and code)
``model``       id, description, architecture, weights fingerprint (sha256 of the weights)
``dataset``     id, description, fingerprint (source identity and selected image indices), images analysed,
                samples requested (None: the whole dataset), seed, input size ``[C, H, W]``
``statistics``  token set (spec and words), centred, uncertainty, tokens per image (None: all), precision,
                layer patterns, max width, keep moments: every setting that is part of the key
``energies``    ``e_in``, ``e_out`` of the numbers shown (not in the key: re-thresholded from stored spectra)
``code``        analysis version, git commit (and whether ``analysis/``/``kernels/`` had uncommitted edits),
                python/torch/timm/numpy versions, as recorded when the result was made
                (:mod:`analysis.provenance`; ``None`` for results made before they were recorded)
``run``         device, batch size and process count: not part of the key (the same statistics up to float
                rounding on any device, batch size or number of processes)
``reproduce``   :func:`reproduce_command`
==============  =============================================================================================

:func:`reproduce_command` gives the ``python -m analysis run ...`` line (shell-quoted) whose settings plan the
same cache key: every keyed setting is spelled out, defaults included where the CLI can say them
(``--seed 0``, ``--tokens all``, ``--no-centred``, ``--uncertainty``, ``--precision fp32``), so a later change
of a default does not change what the line asks for. Options whose absence means "everything"
(``--samples``, ``--tokens-per-image``, ``--max-width``, ``--layers``) are left out when unset. The device and
batch size are given as recorded, and the energies of the card, so the printed table is the same too. A run
made by several processes gets a ``torchrun`` prefix.

The key also holds the weights' and the dataset's fingerprints and the code version: the command gives the same
key only where the model id loads the same weights, the dataset id reads the same images, and the same code
version runs. The card states all three, so a mismatch can be told apart from a settings difference.
"""

from __future__ import annotations

import json
import shlex

from .errors import AnalysisError
from .meta import ResultMeta
from .result import Result
from .tokens import label as token_set_label

KEY_DERIVED = ("code", "model_id", "weights", "dataset_id", "dataset", "input")
"""Key parts that come from the model, the dataset and the code, not from a command-line setting."""

KEYED_SETTINGS = ("samples", "seed", "tokens_per_image", "precision", "keep_moments", "max_width", "layers",
                  "token_set", "centred", "uncertainty")
"""Every setting in the cache key (``AnalysisSettings.key_parts``) that :func:`reproduce_command` spells out;
a test checks this list against the settings, so a new keyed setting cannot be forgotten here."""

CARD_SUFFIX = ".card.json"
PARQUET_METADATA_KEY = b"reproducibility_card"


def _settings(meta: ResultMeta) -> dict:
    """The keyed settings of ``meta``: from its key parts, falling back to its fields (older entries)."""
    parts = meta.key_parts or {}
    fallback = {
        "samples": meta.samples, "seed": meta.seed, "tokens_per_image": meta.tokens_per_image,
        "precision": meta.precision, "keep_moments": False, "max_width": None, "layers": None,
        "token_set": meta.token_set, "centred": meta.centred, "uncertainty": meta.uncertainty,
    }
    return {name: parts.get(name, fallback[name]) for name in KEYED_SETTINGS}


def _number(value: float) -> str:
    """Shortest text that reads back as the same float (``0.99``, ``0.999``)."""
    return repr(float(value))


def reproduce_argv(meta: ResultMeta, energy_in: float, energy_out: float) -> list[str]:
    """:func:`reproduce_command` as an argument list (``["python", "-m", "analysis", "run", ...]``).

    Raises :class:`AnalysisError` when the key holds a setting this code does not know (a result made by a
    newer version: no command of this version can ask for it)."""
    unknown = sorted(set(meta.key_parts or {}) - set(KEY_DERIVED) - set(KEYED_SETTINGS))
    if unknown:
        raise AnalysisError(f"result {meta.key} was made with settings this version does not know "
                            f"({', '.join(unknown)}); reproduce it with the code version on its card")
    parts = meta.key_parts or {}
    settings = _settings(meta)
    model_id = parts.get("model_id", meta.model_id)
    dataset_id = parts.get("dataset_id", meta.dataset_id)
    if not model_id or not dataset_id:
        raise AnalysisError(f"result {meta.key} records no model or dataset id; it cannot be reproduced")
    objects = [i for i in (model_id, dataset_id) if str(i).startswith("object:")]
    if objects:
        raise AnalysisError(f"result {meta.key} was made from Python objects ({', '.join(objects)}): no command "
                            "recreates it; analyze() the same objects again (same weights and data, same key)")
    world_size = max(1, int(meta.world_size or 1))
    device = str(meta.device or "cpu")
    prefix = ["python", "-m", "analysis", "run"]
    if world_size > 1:  # each rank takes its own GPU (analysis.distributed.init_from_env)
        prefix = ["torchrun", "--standalone", f"--nproc-per-node={world_size}", "-m", "analysis", "run"]
        device = device.split(":")[0]
    argv = prefix + ["--model", model_id, "--dataset", dataset_id]
    if settings["samples"] is not None:
        argv += ["--samples", str(settings["samples"])]
    argv += ["--seed", str(settings["seed"]), "--tokens", str(settings["token_set"] or "all"),
             "--centred" if settings["centred"] else "--no-centred",
             "--uncertainty" if settings["uncertainty"] else "--no-uncertainty"]
    if settings["tokens_per_image"] is not None:
        argv += ["--tokens-per-image", str(settings["tokens_per_image"])]
    argv += ["--precision", str(settings["precision"])]
    if settings["max_width"] is not None:
        argv += ["--max-width", str(settings["max_width"])]
    if settings["layers"]:
        argv += ["--layers", ",".join(settings["layers"])]
    if settings["keep_moments"]:
        argv += ["--keep-moments"]
    argv += ["--energy-in", _number(energy_in), "--energy-out", _number(energy_out), "--device", device]
    if meta.batch_size:
        argv += ["--batch-size", str(meta.batch_size)]
    return argv


def reproduce_command(result: Result) -> str:
    """The shell line that recreates ``result`` (same key, same table): see the module docstring."""
    return shlex.join(reproduce_argv(result.meta, result.energy_in, result.energy_out))


def card_from_meta(meta: ResultMeta, energy_in: float, energy_out: float) -> dict:
    """The card of a result with this meta shown at these energies (:func:`reproducibility_card`); for
    listings that hold a cache entry's meta but not its arrays."""
    settings = _settings(meta)
    parts = meta.key_parts or {}
    code = dict(meta.provenance or {})
    try:
        command, reason = shlex.join(reproduce_argv(meta, energy_in, energy_out)), None
    except AnalysisError as exc:
        command, reason = None, str(exc)
    card = {
        "key": meta.key,
        "model": {
            "id": meta.model_id,
            "description": meta.model_description,
            "arch": meta.arch,
            "weights_fingerprint": meta.weights_fingerprint,
        },
        "dataset": {
            "id": meta.dataset_id,
            "description": meta.dataset_description,
            "fingerprint": meta.dataset_fingerprint,
            "images_analysed": meta.n_images,
            "samples": settings["samples"],
            "seed": settings["seed"],
            "input_size": list(parts["input"]) if parts.get("input") is not None else None,
        },
        "statistics": {
            "token_set": settings["token_set"],
            "token_set_words": token_set_label(settings["token_set"]),
            "centred": settings["centred"],
            "uncertainty": settings["uncertainty"],
            "tokens_per_image": settings["tokens_per_image"],
            "precision": settings["precision"],
            "layers": list(settings["layers"]) if settings["layers"] else None,
            "max_width": settings["max_width"],
            "keep_moments": settings["keep_moments"],
        },
        "energies": {"in": float(energy_in), "out": float(energy_out)},
        "code": {
            "analysis": parts.get("code", meta.version) or None,
            "git_commit": code.get("git_commit"),
            "git_dirty": code.get("git_dirty"),
            "python": code.get("python"),
            "torch": code.get("torch"),
            "timm": code.get("timm"),
            "numpy": code.get("numpy"),
        },
        "run": {
            "device": meta.device,
            "batch_size": meta.batch_size or None,
            "processes": meta.world_size,
            "note": "not part of the key",
        },
        "reproduce": command,
    }
    if reason is not None:
        card["reproduce_note"] = reason
    return card


def reproducibility_card(result: Result) -> dict:
    """The ordered, JSON-ready card of ``result`` at its energies (module docstring)."""
    return card_from_meta(result.meta, result.energy_in, result.energy_out)


def card_json(card: dict) -> str:
    """The card as indented JSON text (what exports and downloads store)."""
    return json.dumps(card, indent=1)


def card_rows(card: dict) -> list[tuple[str, str]]:
    """``(field, value)`` text pairs in card order (``model.id``, ...), the command left out: for listings."""
    rows = []
    for section, value in card.items():
        if section in ("reproduce", "reproduce_note"):
            continue
        if isinstance(value, dict):
            rows += [(f"{section}.{name}", _text(item)) for name, item in value.items()]
        else:
            rows.append((section, _text(value)))
    return rows


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) if value else "-"
    return str(value)


def card_lines(card: dict) -> list[str]:
    """The card as aligned text lines for the terminal (``python -m analysis show``)."""
    model, dataset, stats, code = card["model"], card["dataset"], card["statistics"], card["code"]
    run = card["run"]
    commit = code["git_commit"] or "not recorded (not a git checkout, or made before commits were recorded)"
    if code["git_commit"] and code["git_dirty"]:
        commit += " (with uncommitted changes to analysis/ or kernels/)"
    images = f"{dataset['images_analysed']} images"
    images += " (the whole dataset)" if dataset["samples"] is None else f" (samples {dataset['samples']})"
    lines = [
        f"key        {card['key']}",
        f"model      {model['id']}  ({model['description']})",
        f"weights    sha256 {model['weights_fingerprint']}",
        f"dataset    {dataset['id']}  ({dataset['description']})",
        f"images     {images}, seed {dataset['seed']}, input {'x'.join(map(str, dataset['input_size'])) if dataset['input_size'] else '-'}, "
        f"fingerprint {dataset['fingerprint']}",
        f"tokens     {stats['token_set']} ({stats['token_set_words']}), "
        f"{'every token' if stats['tokens_per_image'] is None else str(stats['tokens_per_image']) + ' per image'}",
        f"moments    {'centred' if stats['centred'] else 'uncentred'}, uncertainty {_text(stats['uncertainty'])}, "
        f"precision {stats['precision']}, keep moments {_text(stats['keep_moments'])}",
        f"layers     {_text(stats['layers']) if stats['layers'] else 'all'}"
        f"{'' if stats['max_width'] is None else ', max width ' + str(stats['max_width'])}",
        f"energies   in {card['energies']['in']:g}  out {card['energies']['out']:g}",
        f"code       analysis {_text(code['analysis'])}, commit {commit}",
        f"libraries  python {_text(code['python'])}, torch {_text(code['torch'])}, timm {_text(code['timm'])}, "
        f"numpy {_text(code['numpy'])}",
        f"ran on     {_text(run['device'])}, batch size {_text(run['batch_size'])}, "
        f"{run['processes']} process{'es' if run['processes'] != 1 else ''} (not part of the key)",
    ]
    if card["reproduce"]:
        lines.append(f"reproduce  {card['reproduce']}")
    else:
        lines.append(f"reproduce  not possible: {card.get('reproduce_note')}")
    return lines
