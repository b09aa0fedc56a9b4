#!/usr/bin/env python
"""Turn a finished `psyattr pretrain` run into a shipped preset: float16 weights, hash, model card.

    python scripts/make_preset.py RUN_DIR --name utkface [--data-note "..."]

Writes psyattr/models/presets/<task>_<name>.npz and <task>_<name>.md, and records the file's SHA-256 in
presets.json. The held-out test split of the run is re-scored with the float16 weights, so the card
states the accuracy of exactly what ships.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from psyattr.faces.framing import frame_images, get_framing
from psyattr.models import build_base_model
from psyattr.models.levi_hassner import CLASS_NAMES
from psyattr.models.metrics import classification_scores, confusion_matrix
from psyattr.models.weights import PRESET_DIR, PRESET_INDEX, available_presets, save_npz_weights
from psyattr.pretrain import predict_classes

TERMS = {
    "utkface": ("UTKFace (Zhang, Song & Qi, CVPR 2017), part 1 of the aligned-and-cropped release: 9,780 real face "
                "photos, labels from the file names",
                "UTKFace is available for non-commercial research purposes only, and the copyright of the images "
                "belongs to their owners. These weights were trained on it: use them for non-commercial research only."),
}


def _augmentation(config: dict) -> str:
    ranges = config.get("augmentation")
    if not ranges:
        return ""
    return (f", scale +-{ranges['scale']:.0%}, rotation +-{ranges['rotation']:g} degrees, shifts +-{ranges['shift']:g} px, "
            f"brightness +-{ranges['brightness'] * 255:.0f} of 255, contrast and saturation x(1 +-{ranges['contrast']:g}), "
            f"grayscale {ranges['grayscale']:.0%} of the time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--name", required=True, help="preset name, e.g. utkface")
    args = parser.parse_args()

    config = json.loads((args.run_dir / "config.json").read_text())
    state = json.loads((args.run_dir / "state.json").read_text())
    split = json.loads((args.run_dir / "split.json").read_text())
    task = config["task"]
    framing = get_framing(config.get("framing", "none"))
    model = build_base_model(task, weights=args.run_dir / "model.keras", framing=framing.to_json())
    out = PRESET_DIR / f"{task}_{args.name}.npz"
    PRESET_DIR.mkdir(parents=True, exist_ok=True)
    digest = save_npz_weights(model, out, dtype="float16")
    shipped = build_base_model(task, weights=out, framing=framing.to_json())

    from psyattr.data.utkface import parse_utkface_name
    from psyattr.data.labels import age_to_group

    test_paths = [Path(p) for p in split["test"]]
    labels = []
    for p in test_paths:
        age, gender = parse_utkface_name(p.name)
        labels.append(age_to_group(age) if task == "age" else gender)
    images, kept = frame_images(test_paths, framing, progress=False)
    labels = np.asarray(labels)[kept]
    predicted = predict_classes(shipped, images)
    scores = classification_scores(labels, predicted)
    oversampled = classification_scores(labels, predict_classes(shipped, images, oversample=True))
    matrix = confusion_matrix(labels, predicted, len(CLASS_NAMES[task]))

    presets = available_presets()
    presets.setdefault(args.name, {})[task] = {"file": out.name, "sha256": digest, "test": scores,
                                               "test_oversampled": oversampled, "framing": framing.to_json()}
    PRESET_INDEX.write_text(json.dumps(presets, indent=2, sort_keys=True) + "\n")

    data, terms = TERMS.get(args.name, (args.name, "See the data set's own terms."))
    counts = {k: len(v) for k, v in split.items()}
    last = state["history"][-1]
    def describe(result):
        return (f"exact {result['accuracy']:.1%}, one-off {result['one_off_accuracy']:.1%}" if task == "age"
                else f"{result['accuracy']:.1%}")

    accuracy = (f"{describe(scores)} on centre crops; {describe(oversampled)} averaged over 10 crops (the four corners "
                "and the centre, each mirrored: Levi & Hassner's over-sampling)")
    rows = "\n".join(f"| {name} | " + " | ".join(str(v) for v in row) + " |"
                     for name, row in zip(CLASS_NAMES[task], matrix.tolist()))
    card = f"""# {task} net, preset `{args.name}`

`build_base_model("{task}", weights="{args.name}")` — Levi & Hassner's {task} net
({len(CLASS_NAMES[task])} classes: {", ".join(CLASS_NAMES[task])}) trained by psyattr.

## Data
{data}. Malformed file names were skipped. Split: seeded ({config["seed"]}) and stratified by the {task} label into
train / validation / test = {counts["train"]} / {counts["validation"]} / {counts["test"]} images.
Age groups: nearest Adience group by years, boundaries at the midpoints (0-2 | 3-6 | 7-13 | 14-22 | 23-34 | 35-45 |
46-56 | 57+).

## Framing
`{framing.name}`: {framing.description}. Each photo is framed by the similarity transform that puts its eye and mouth
centres (found by psyattr's face-mesh detector) where the template has them; {counts["test"] - scores["count"]} test
photo(s) in which no face was found are left out. Every path of psyattr frames photos this way before this net sees
them (the net records its framing).

## Recipe
Levi & Hassner's, with augmentation for what framing cannot remove: 256 px framed images, random 227 px crops and
mirroring{_augmentation(config)}; Gaussian initialisation (std 0.01 conv and fc8,
0.005 fc6/fc7; bias 1 for conv2/fc6/fc7), SGD with momentum {config["momentum"]}, weight decay {config["weight_decay"]},
dropout {config["dropout"]}, batch {config["batch_size"]}, learning rate {config["learning_rate"]} times
{config["lr_decay"]} every {config["lr_step_epochs"]} epochs, {state["epoch"]} epochs, precision {config["precision"]}
(mixed bfloat16 where the CPU has it), seed {config["seed"]}. Last epoch: training accuracy {last.get("accuracy", 0):.1%},
validation accuracy {last.get("val_accuracy", 0):.1%}.

## Held-out test split ({scores["count"]} images, centre crops, the float16 weights as shipped)
Accuracy: {accuracy}. Levi & Hassner report on Adience: age exact 50.7 %, one-off 84.7 %; gender 86.8 %.

Confusion matrix (rows true, columns predicted):

| true \\ predicted | {" | ".join(CLASS_NAMES[task])} |
|---|{"---|" * len(CLASS_NAMES[task])}
{rows}

## Files
`{out.name}`: float16 weights, SHA-256 `{digest}` (checked on every load).

## Terms
{terms}
"""
    (PRESET_DIR / f"{task}_{args.name}.md").write_text(card)
    # The held-out file names (no images), so that anyone with the data can re-check the card's numbers.
    (PRESET_DIR / f"{task}_{args.name}_test_split.txt").write_text("\n".join(p.name for p in test_paths) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, sha256 {digest[:12]}...); test: {scores}")


if __name__ == "__main__":
    main()
