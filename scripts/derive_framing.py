#!/usr/bin/env python
"""Derive the `utkface` framing's template from UTKFace's own photos, with the shipped face-mesh detector.

    PSYATTR_DATA_DIR=../shared/data python scripts/derive_framing.py

Finds the eye and mouth centres of every UTKFace photo (as the base nets were trained: resized to 256 px), and
prints their medians, spreads and the left-right symmetric template that psyattr/faces/framing.py records,
next to the template it holds now. About two minutes on two cores.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from psyattr.data.images import TRAIN_SIZE, decode_rgb
from psyattr.data.utkface import read_utkface
from psyattr.faces.framing import UTKFACE, anchor_points, detect_face_landmarks
from psyattr.faces.framing import _symmetric as symmetric  # the registry's own rule


def main() -> None:
    folder = Path(os.environ.get("PSYATTR_DATA_DIR", "")) / "utkface_part1"
    if not folder.is_dir():
        sys.exit("set PSYATTR_DATA_DIR to the folder holding utkface_part1/ (e.g. ../shared/data)")
    anchors, missed = [], 0
    for record in tqdm(read_utkface(folder), desc="finding faces", unit="photo"):
        image = decode_rgb(record.path)
        try:
            landmarks, _ = detect_face_landmarks(image, source=record.path.name)
        except ValueError:
            missed += 1
            continue
        scale = np.array([TRAIN_SIZE / image.shape[1], TRAIN_SIZE / image.shape[0]])
        anchors.append(anchor_points(landmarks) * scale)
    anchors = np.stack(anchors)
    median, spread = np.median(anchors, axis=0), anchors.std(axis=0)
    print(f"{len(anchors)} photos with a face, {missed} without (256 px frame; right eye, left eye, mouth):")
    for name, (x, y), (sx, sy) in zip(("right eye", "left eye", "mouth"), median, spread):
        print(f"  {name:9s} median ({x:6.2f}, {y:6.2f})  std ({sx:.2f}, {sy:.2f})")
    template = symmetric(*(tuple(round(float(v), 2) for v in point) for point in median))
    print(f"symmetric template: {template}")
    print(f"registered now:     {UTKFACE.template}")


if __name__ == "__main__":
    main()
