"""The README's zoo table, regenerated from the manifest and from real engine runs (no number typed by hand).

    python -m analysis.training.zoo_table            # rewrite the table between the README markers
    python -m analysis.training.zoo_table --check    # exit 1 if the README's table differs from a regeneration

Columns: model id, regime, training (epochs), the manifest's measured accuracies on the Fashion-MNIST test
split (supervised top-1; linear-probe and k-NN top-1 for every model), and, from an analysis of the model on
the embedded test split (all 10k images) at the default energies ``e_in = e_out = 0.99``: MLU and the fraction
of the counted layers' parameters kept if factorized at the utilized rank. The trajectory column gives the MLU
(same data and energies) at the first, middle and last checkpoint of the model's training series
(:func:`analysis.timeline`, the manifest's ``checkpoints`` list; "-" where a series has no middle point), with
the steps it spans. Models listed in the manifest but not trained yet get a row saying so and the command that
trains them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..defaults import DEFAULT_ENERGY, default_dataset
from ..models.zoo import MANIFEST_PATH, ZOO_NAMES, read_manifest

README = Path(__file__).resolve().parents[2] / "README.md"
START, END = "<!-- zoo-table:start -->", "<!-- zoo-table:end -->"
ENERGY = DEFAULT_ENERGY
HEADER = (f"| model | regime | training | top-1 | linear probe | k-NN | MLU (e = {ENERGY:g}) | params kept "
          "| MLU first / middle / last checkpoint |\n"
          "|---|---|---|---|---|---|---|---|---|")
TWO_POINT_NOTE = (
    "Trajectories: every series above has at most two points, its seed-0 initialisation (bit for bit the backbone "
    "of `zoo:vit-fmnist-random`) and its final model, because these models were trained before the recipes kept "
    "checkpoints; no middle point is made up. Retraining a regime (its recipe, then "
    "`python -m analysis.training.publish --run ...`) lists its checkpoints at step 0 and epochs 1, 2, 4, ...")


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def trajectory(name: str, cache_dir: str | None = None) -> tuple[str, int]:
    """``"first / middle / last (steps a-b)"`` MLUs of ``zoo:<name>``'s series and its number of points."""
    from ..timeline import timeline

    table = timeline(f"zoo:{name}", default_dataset(), energy_in=ENERGY, energy_out=ENERGY, cache_dir=cache_dir).table
    mlus = ["n/a" if row["status"] != "ok" else f"{row['mlu']:.3f}" for _, row in table.iterrows()]
    n = len(mlus)
    middle = mlus[n // 2] if n >= 3 else "-"
    steps = [int(s) for s in table["step"].dropna()]
    if not steps:
        span = ""
    elif n == 1:
        span = f" (step {steps[0]}, 1 point)"
    else:
        span = f" (steps {min(steps)}-{max(steps)}, {n} points)"
    if n == 1:
        return f"{mlus[0]} / - / {mlus[0]}{span}", n
    return f"{mlus[0]} / {middle} / {mlus[-1]}{span}", n


def render(manifest_path: Path = MANIFEST_PATH, cache_dir: str | None = None) -> str:
    """The markdown table (header, one row per zoo model in the product's order, a provenance line)."""
    from ..engine import analyze

    models = read_manifest(manifest_path)["models"]
    rows = [HEADER]
    most_points = 0
    for name in [n for n in ZOO_NAMES if n in models] + sorted(set(models) - set(ZOO_NAMES)):
        entry = models[name]
        if not entry.get("sha256"):
            rows.append(f"| `zoo:{name}` | {entry.get('regime')} | not trained yet: `{entry.get('recipe_command')}` "
                        f"| | | | | | |")
            continue
        acc = entry.get("accuracy") or {}
        result = analyze(f"zoo:{name}", default_dataset(), energy_in=ENERGY, energy_out=ENERGY, cache_dir=cache_dir)
        training = f"{entry.get('epochs')} epochs" if entry.get("epochs") else "none (initialisation)"
        path, points = trajectory(name, cache_dir)
        most_points = max(most_points, points)
        rows.append(
            f"| `zoo:{name}` | {entry.get('regime')} | {training} | {_pct(acc.get('top1'))} | "
            f"{_pct(acc.get('linear_probe_top1'))} | {_pct(acc.get('knn_top1'))} | {result.mlu:.3f} | "
            f"{_pct(result.parameters()['kept'])} | {path} |"
        )
    rows.append("")
    if most_points <= 2:
        rows.append(TWO_POINT_NOTE)
        rows.append("")
    rows.append(f"Accuracies: `analysis/models/zoo_weights/manifest.json` (measured by `python -m analysis.training.publish`). "
                f"MLU and parameters kept: `python -m analysis run --model zoo:<name>` on `{default_dataset()}` "
                f"(10k images). Regenerate with `python -m analysis.training.zoo_table`.")
    return "\n".join(rows)


def splice(readme_text: str, table: str) -> str:
    if START not in readme_text or END not in readme_text:
        raise SystemExit(f"README has no {START} ... {END} markers")
    head, rest = readme_text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.training.zoo_table", description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    p.add_argument("--readme", type=Path, default=README)
    args = p.parse_args(argv)
    text = args.readme.read_text()
    updated = splice(text, render())
    if args.check:
        if updated != text:
            print("README zoo table differs from a fresh regeneration; run python -m analysis.training.zoo_table",
                  file=sys.stderr)
            return 1
        print("README zoo table is up to date")
        return 0
    args.readme.write_text(updated)
    print(f"wrote the zoo table into {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
