"""The README's zoo table, regenerated from the manifest and from real engine runs (no number typed by hand).

    python -m analysis.training.zoo_table            # rewrite the table between the README markers
    python -m analysis.training.zoo_table --check    # exit 1 if the README's table differs from a regeneration

Columns: model id, regime, training (epochs), the manifest's measured accuracies on the Fashion-MNIST test
split (supervised top-1; linear-probe and k-NN top-1 for every model), and, from an analysis of the model on
the embedded test split (all 10k images) at the default energies ``e_in = e_out = 0.99``: MLU and the fraction
of the counted layers' parameters kept if factorized at the utilized rank. Models listed in the manifest but
not trained yet get a row saying so and the command that trains them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..defaults import default_dataset
from ..models.zoo import MANIFEST_PATH, ZOO_NAMES, read_manifest

README = Path(__file__).resolve().parents[2] / "README.md"
START, END = "<!-- zoo-table:start -->", "<!-- zoo-table:end -->"
ENERGY = 0.99
HEADER = ("| model | regime | training | top-1 | linear probe | k-NN | MLU (e = 0.99) | params kept |\n"
          "|---|---|---|---|---|---|---|---|")


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def render(manifest_path: Path = MANIFEST_PATH, cache_dir: str | None = None) -> str:
    """The markdown table (header, one row per zoo model in the product's order, a provenance line)."""
    from ..engine import analyze

    models = read_manifest(manifest_path)["models"]
    rows = [HEADER]
    for name in [n for n in ZOO_NAMES if n in models] + sorted(set(models) - set(ZOO_NAMES)):
        entry = models[name]
        if not entry.get("sha256"):
            rows.append(f"| `zoo:{name}` | {entry.get('regime')} | not trained yet: `{entry.get('recipe_command')}` "
                        f"| | | | | |")
            continue
        acc = entry.get("accuracy") or {}
        result = analyze(f"zoo:{name}", default_dataset(), energy_in=ENERGY, energy_out=ENERGY, cache_dir=cache_dir)
        training = f"{entry.get('epochs')} epochs" if entry.get("epochs") else "none (initialisation)"
        rows.append(
            f"| `zoo:{name}` | {entry.get('regime')} | {training} | {_pct(acc.get('top1'))} | "
            f"{_pct(acc.get('linear_probe_top1'))} | {_pct(acc.get('knn_top1'))} | {result.mlu:.3f} | "
            f"{_pct(result.parameters()['kept'])} |"
        )
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
