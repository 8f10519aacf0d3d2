"""``python -m analysis.jobs run-worker <key> --cache-dir <dir> [--token <attempt>]``: the worker process."""

from __future__ import annotations

import argparse
import sys

from ..errors import AnalysisError
from .worker import install_stop_signals, run_worker


def main(argv: list[str] | None = None) -> int:
    """Parse the worker command line and run the job; returns the worker's exit code."""
    parser = argparse.ArgumentParser(prog="python -m analysis.jobs", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("run-worker", help="run one submitted job in this process")
    worker.add_argument("key", help="the job's content key")
    worker.add_argument("--cache-dir", default=None, help="cache root (default: $ANALYSIS_CACHE_DIR or ./cache)")
    worker.add_argument("--token", default=None, help="the attempt handed over by submit (internal)")
    args = parser.parse_args(argv)
    try:
        return run_worker(args.key, args.cache_dir, args.token)
    except AnalysisError as exc:  # e.g. a malformed key: nothing was started
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    install_stop_signals()  # only in the worker process, never in a caller of main()
    sys.exit(main())
