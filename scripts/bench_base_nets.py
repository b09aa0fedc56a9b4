#!/usr/bin/env python
"""How well the base nets read age and gender on faces they never saw: OMI's 1,004 faces, from the raw files.

    PSYATTR_DATA_DIR=../shared/data python scripts/bench_base_nets.py [--age age] [--gender gender] [--framing F]

Runs `psyattr predict` (the command users run) on every OMI photo as it comes (256 px, FFHQ framing) and
compares with the human ratings: the Spearman correlation of the age net's expected age (group probabilities
times the group midpoints) with the mean human `age` rating, and the gender net's accuracy on the faces whose
human `gender` rating is clear-cut (< 35 or > 65 on 0..100; high means male-looking). Each photo is framed as
the net records (utkface for the shipped presets) unless --framing says otherwise.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats

CLEAR = (35.0, 65.0)


def predict(model: str, images: Path, framing: str | None) -> tuple[dict[str, dict], float]:
    """`psyattr predict` on a folder; rows by file stem, and the seconds it took."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "predictions.csv"
        command = [sys.executable, "-m", "psyattr", "predict", "--model", model, str(images), "--out", str(out)]
        if framing:
            command += ["--framing", framing]
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        with open(out, newline="") as handle:
            return {Path(row["image"]).stem: row for row in csv.DictReader(handle)}, seconds


def measure(age_model: str, gender_model: str, framing: str | None, omi: Path) -> dict:
    """The two measures and what they were computed on."""
    with open(omi / "attribute_means.csv", newline="") as handle:
        human = {row["stimulus"]: row for row in csv.DictReader(handle)}
    images = omi / "images_256"
    ages, age_seconds = predict(age_model, images, framing)
    genders, gender_seconds = predict(gender_model, images, framing)
    scored = [s for s in human if s in ages and not ages[s]["error"]]
    expected = np.array([float(ages[s]["expected_age"]) for s in scored])
    rated_age = np.array([float(human[s]["age"]) for s in scored])
    clear = [s for s in human if s in genders and not genders[s]["error"]
             and not CLEAR[0] <= float(human[s]["gender"]) <= CLEAR[1]]
    male_looking = np.array([float(human[s]["gender"]) > CLEAR[1] for s in clear])
    said_male = np.array([float(genders[s]["prob_male"]) > 0.5 for s in clear])
    return {
        "age_model": age_model, "gender_model": gender_model, "framing": framing or "as the net records",
        "faces": len(human),
        "age": {"spearman": float(stats.spearmanr(expected, rated_age).statistic),
                "pearson": float(np.corrcoef(expected, rated_age)[0, 1]), "scored": len(scored),
                "failed": len(human) - len(scored), "in_60_100": int(np.sum(
                    np.argmax([[float(ages[s][f"prob_{g}"]) for g in ("0_2", "4_6", "8_12", "15_20", "25_32",
                                                                      "38_43", "48_53", "60_100")] for s in scored],
                              axis=1) == 7)),
                "seconds": age_seconds},
        "gender": {"accuracy_clear": float(np.mean(said_male == male_looking)), "clear_faces": len(clear),
                   "seconds": gender_seconds},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--age", default="age", help="age net: a base net name, preset or .keras file")
    parser.add_argument("--gender", default="gender")
    parser.add_argument("--framing", choices=["utkface", "omi", "none"], help="[default: as the net records]")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    data = Path(os.environ.get("PSYATTR_DATA_DIR", "")) / "omi"
    if not (data / "attribute_means.csv").is_file():
        sys.exit("set PSYATTR_DATA_DIR to the folder holding omi/ (e.g. ../shared/data)")
    result = measure(args.age, args.gender, args.framing, data)
    age, gender = result["age"], result["gender"]
    print(f"OMI, {result['faces']} faces from the raw files, framing: {result['framing']}")
    print(f"  age ({args.age}): Spearman of the expected age with the human age rating {age['spearman']:.3f} "
          f"(Pearson {age['pearson']:.3f}); {age['scored']} scored, {age['failed']} not; "
          f"{age['in_60_100']} put in 60-100; {age['seconds']:.0f} s")
    print(f"  gender ({args.gender}): {gender['accuracy_clear']:.1%} right on the {gender['clear_faces']} clear-cut "
          f"faces (human gender < {CLEAR[0]:g} or > {CLEAR[1]:g}); {gender['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
