"""The spine report's must-show figures over N report phantoms and N follow-up pairs, from a seed.

Measured on the phantoms' ground-truth labels (``research.report_figures``): heights (mean
absolute error per height under HFS, FFS, HFP and oblique geometries, and their spread),
the Genant grade on fractured and normal vertebrae, trabecular HU, the SINS CT components,
and, over the pairs, the lesion volume change and the new lesions and collapses reported.
Targets (issue 16): heights <= 1 mm, Genant >= 90 % / >= 95 %, HU <= 10, SINS equal, volume
change within 10 %.

    .venv/bin/python benchmarks/spine_report_phantoms.py --n 8 --pairs 6 --seed 1
"""
from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="report phantoms (each measured under 4 acquisitions)")
    parser.add_argument("--pairs", type=int, default=6, help="follow-up pairs")
    parser.add_argument("--seed", type=int, default=1, help="first seed")
    args = parser.parse_args()
    from research.report_figures import pair_figures, report_figures

    t0 = time.perf_counter()
    figures = report_figures(args.n, args.seed)
    pairs = pair_figures(args.pairs, args.seed) if args.pairs else None
    print(json.dumps({"phantoms": args.n, "seed": args.seed, **figures, "follow_up": pairs,
                      "seconds": round(time.perf_counter() - t0, 1)}, indent=1))


if __name__ == "__main__":
    main()
