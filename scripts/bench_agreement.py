#!/usr/bin/env python
"""How close the fine-tuned models come to people: Pearson r as a fraction of the raters' split-half r.

Runs the grid on OMI (its default modes: ridge, dense and full on the split, ridge and dense under CV) with
the paper's seeded 50/50 split and with 10-fold cross-validation (every face predicted once by a model that did
not train on it), for attractive, happy, confident (dominant), intelligent (smart) and trustworthy on both base
nets. Both grids resume where they stopped and reuse the cached features. Prints per attribute and base: r
[95 % CI], the ceiling (the raters' split-half r on the same faces), r / ceiling, R^2 and Spearman; the time per
run and per fold; and, where dense and full mode both ran, in how many base/attribute pairs full mode's r is at
least dense mode's. Usage:

    python scripts/bench_agreement.py [--out bench_agreement] [--folds 10] [--modes ridge,dense,full]
                                      [--protocols split,cv] [--epochs-dense 120] [--epochs-full 15]
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
    parser.add_argument("--modes", help="comma-separated [default: the grid's: ridge,dense,full on the split, "
                                        "ridge,dense under CV]")
    parser.add_argument("--epochs-dense", type=int, default=120)
    parser.add_argument("--epochs-full", type=int, default=15)
    parser.add_argument("--protocols", default="split,cv", help="split (the 50/50 split), cv (K-fold), or both")
    parser.add_argument("--attributes", default=",".join(ATTRIBUTES))
    parser.add_argument("--cache-dir", type=Path, help="[default: $PSYATTR_CACHE_DIR or ~/.cache/psyattr]")
    args = parser.parse_args()
    from psyattr.data.rated import read_rated
    from psyattr.grid import collect_runs, default_modes, run_grid, table_rows, write_table1

    omi = Path(os.environ.get("PSYATTR_DATA_DIR", "../shared/data")) / "omi"
    spec = {"kind": "omi", "path": str(omi.resolve()), "scale": None, "image_column": None}
    data = read_rated("omi", spec["path"])
    epochs = {"dense": args.epochs_dense, "full": args.epochs_full}
    timings = {}
    protocols = {"split": ("50/50 split", None), "cv": (f"{args.folds}-fold CV", args.folds)}
    for label, folds in (protocols[name] for name in args.protocols.split(",")):
        out = args.out / ("split" if folds is None else f"cv{folds}")
        started = time.perf_counter()
        modes = args.modes.split(",") if args.modes else default_modes(folds)
        run_grid(data, out, spec, modes=modes, attributes=args.attributes.split(","), epochs=epochs,
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
        key, unit = ("seconds_per_fold", "fold") if folds else ("seconds", "run")
        for mode in modes:
            seconds = [run.metrics[key] for run in runs if run.config.get("mode") == mode and run.metrics.get(key)]
            if seconds:
                print(f"time per {mode} {unit}: {sum(seconds) / len(seconds):.0f} s, mean over {len(seconds)} "
                      f"{'cross-validations' if folds else 'runs'} trained by the session that finished them")
        chosen = [run.metrics.get("selected", {}).get("stage") for run in runs if run.config.get("mode") == "full"]
        if any(chosen):
            print(f"full mode kept the whole net's best epoch in {chosen.count('whole net')} of {len(chosen)} runs "
                  "(else the warmed-up head, which no whole-net epoch beat on the validation slice)")
        compare_modes(table_rows(runs))


def compare_modes(rows: list[dict]) -> None:
    """Print full mode's r against dense mode's for each base/attribute pair that has both."""
    by_pair: dict[tuple[str, str], dict[str, float]] = {}
    for r in rows:
        by_pair.setdefault((r["base"], r["attribute"]), {})[r["mode"]] = r["pearson_r"]
    pairs = {pair: modes for pair, modes in by_pair.items() if {"dense", "full"} <= set(modes)}
    if not pairs:
        return
    print("\nfull vs dense mode, Pearson r:")
    for (base, attribute), modes in sorted(pairs.items()):
        print(f"  {base:6s} {attribute:24s} dense {modes['dense']:.3f}  full {modes['full']:.3f}  "
              f"({modes['full'] - modes['dense']:+.3f})")
    wins = sum(modes["full"] >= modes["dense"] for modes in pairs.values())
    print(f"full >= dense in {wins} of {len(pairs)} pairs")


if __name__ == "__main__":
    main()
