#!/usr/bin/env python
"""How close the fine-tuned models come to people: Pearson r as a fraction of the raters' split-half r.

Runs a grid on OMI (ridge mode by default; `--modes dense` for the paper's SGD recipe, far slower) twice, with
the paper's seeded 50/50 split and with 10-fold cross-validation (every face predicted once by a model that did
not train on it), for attractive, happy, confident (dominant), intelligent (smart) and trustworthy on both base
nets. Both grids resume where they stopped and reuse the cached
features. Prints per attribute and base: r [95 % CI], the ceiling (the raters' split-half r on the same faces),
r / ceiling, R^2 and Spearman; then the time per fold. Usage:

    python scripts/bench_agreement.py [--out bench_agreement] [--folds 10] [--modes ridge,dense] [--epochs-dense 120]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

ATTRIBUTES = ("attractive", "happy", "confident", "intelligent", "trustworthy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench_agreement"))
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--modes", default="ridge")
    parser.add_argument("--epochs-dense", type=int, default=120)
    parser.add_argument("--epochs-full", type=int, default=30)
    parser.add_argument("--cache-dir", type=Path, help="[default: $PSYATTR_CACHE_DIR or ~/.cache/psyattr]")
    args = parser.parse_args()
    from psyattr.data.rated import read_rated
    from psyattr.grid import collect_runs, run_grid, table_rows, write_table1

    omi = Path(os.environ.get("PSYATTR_DATA_DIR", "../shared/data")) / "omi"
    spec = {"kind": "omi", "path": str(omi.resolve()), "scale": None, "image_column": None}
    data = read_rated("omi", spec["path"])
    epochs = {"dense": args.epochs_dense, "full": args.epochs_full}
    timings = {}
    for label, folds in (("50/50 split", None), (f"{args.folds}-fold CV", args.folds)):
        out = args.out / ("split" if folds is None else f"cv{folds}")
        started = time.perf_counter()
        run_grid(data, out, spec, modes=args.modes.split(","), attributes=ATTRIBUTES, epochs=epochs,
                 cache_dir=args.cache_dir, progress=False, cv=folds)
        timings[label] = time.perf_counter() - started
        runs = collect_runs(out)
        write_table1(runs, out)
        print(f"\n{label} ({out}/table1.md), {timings[label]:.0f} s this run")
        print(f"{'attribute':24s} {'base':6s} {'mode':5s} {'r [95 % CI]':22s} {'ceiling':>7s} {'r/ceil':>6s} "
              f"{'R^2':>6s} {'Spear.':>6s}")
        for r in table_rows(runs):
            label_a = r["attribute"] if r["attribute"] == r["column"] else f"{r['attribute']} ({r['column']})"
            print(f"{label_a:24s} {r['base']:6s} {r['mode']:5s} {r['pearson_r']:.3f} [{r['pearson_r_low']:.3f}, "
                  f"{r['pearson_r_high']:.3f}]   {r['ceiling_r']:7.3f} {r['r_fraction']:6.2f} {r['r2']:6.3f} "
                  f"{r['spearman']:6.3f}")
        if folds:
            per_fold = [run.metrics.get("seconds_per_fold") for run in runs if run.metrics.get("seconds_per_fold")]
            if per_fold:
                print(f"time per fold ({args.modes}): {sum(per_fold) / len(per_fold):.1f} s mean over {len(per_fold)} "
                      "cross-validations trained in this run")


if __name__ == "__main__":
    main()
