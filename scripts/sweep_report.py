"""Report a finished (or interrupted) multirun: `python scripts/sweep_report.py multirun/<date>/<time>`.

Writes sweep_report.md, sweep_report.csv (a row per job), sweep_report_grouped.csv (a row per
configuration, its seeds pooled as mean ± std), sweep_report_val_curves.png and
sweep_report_grad_norms.png into the sweep directory and prints the Markdown; the same report the
sweep callback writes when a multirun ends.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

from mlpkit.rundir import HYDRA_DIR, OVERRIDES_FILE  # noqa: E402
from mlpkit.sweeps import find_jobs, write_report  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun directory, e.g. multirun/2024-05-01/12-00-00")
    parser.add_argument("--metric", help="validation metric to sort by (default: the sweep's objective.metric)")
    parser.add_argument("--mode", choices=("min", "max"), help="min or max (default: the sweep's objective.mode)")
    args = parser.parse_args(argv)
    if not find_jobs(args.sweep_dir):
        print(f"sweep_dir={args.sweep_dir} is not valid: expected a multirun directory whose jobs have "
              f"{HYDRA_DIR}/{OVERRIDES_FILE}", file=sys.stderr)
        return 2
    print(write_report(args.sweep_dir, args.metric, args.mode))
    return 0


if __name__ == "__main__":
    sys.exit(main())
