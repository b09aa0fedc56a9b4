"""Readers of age/gender-labelled faces (UTKFace, Adience), the age-group rule, splits and the image cache."""

from __future__ import annotations

import logging
import shutil
from collections import Counter

import numpy as np
import pytest

from psyattr.data.adience import parse_adience_age, read_adience
from psyattr.data.cache import decode_images
from psyattr.data.images import ImageError, load_rgb
from psyattr.data.labels import age_to_group
from psyattr.data.splits import half_split, stratified_split
from psyattr.data.utkface import parse_utkface_name, read_utkface


def test_age_groups_follow_the_midpoint_rule():
    assert [age_to_group(a) for a in (0, 2, 3, 6, 7, 13, 14, 22, 23, 34, 35, 45, 46, 56, 57, 100)] == \
        [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7]
    with pytest.raises(ValueError, match="age must be >= 0"):
        age_to_group(-1)


def test_utkface_reader_skips_the_malformed_names_with_one_warning(utkface_dir, caplog):
    with caplog.at_level(logging.WARNING):
        records = read_utkface(utkface_dir)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 2 malformed entries" in warnings[0]
    assert "61_1_20170109142408075.jpg.chip.jpg" in warnings[0] and "61_3_20170109150557335" in warnings[0]
    assert len(records) == 9778
    genders = Counter(r.gender for r in records)
    assert genders == {0: 4372, 1: 5406}
    groups = Counter(r.age_group for r in records)
    # The data README's counts per group, less the two skipped 61-year-olds in the oldest group.
    assert [groups[g] for g in range(8)] == [1587, 838, 905, 1212, 1619, 935, 1017, 1665]


def test_utkface_name_errors_say_what_is_wrong():
    assert parse_utkface_name("25_1_3_20170116.jpg.chip.jpg") == (25, 1)
    with pytest.raises(ValueError, match="gender must be 0"):
        parse_utkface_name("25_3_1_2017.jpg")
    with pytest.raises(ValueError, match="expected 4 fields"):
        parse_utkface_name("25_1_2017.jpg")


def test_missing_and_empty_folders_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="UTKFace folder not found"):
        read_utkface(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(ValueError, match="no UTKFace images in"):
        read_utkface(tmp_path)


def test_adience_reader_on_a_fixture_in_the_real_layout(tmp_path, utkface_dir, caplog):
    sources = sorted((utkface_dir / "images").glob("*.jpg"))[:3]
    header = "user_id\toriginal_image\tface_id\tage\tgender\tx\ty\tdx\tdy\ttilt_ang\tfiducial_yaw_angle\tfiducial_score"
    rows = [("u1", "a.jpg", "1", "(25, 32)", "f"), ("u1", "b.jpg", "2", "(0, 2)", "m"), ("u2", "c.jpg", "3", "35", "u"),
            ("u2", "d.jpg", "4", "(8, 12)", "m"), ("u3", "e.jpg", "5", "(abc)", "f"), ("u3", "f.jpg", "6", "None", "")]
    for (user, original, face, *_), source in zip(rows, sources):
        target = tmp_path / "aligned" / user / f"landmark_aligned_face.{face}.{original}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
    shutil.copy(sources[0], tmp_path / "aligned" / "u3")  # u3's images: only an unrelated file
    lines = [header] + ["\t".join([*row, "0", "0", "10", "10", "0", "0", "50"]) for row in rows]
    (tmp_path / "fold_0_data.txt").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING):
        records = read_adience(tmp_path)
    assert [(r.age_group, r.gender) for r in records] == [(4, 1), (0, 0), (5, -1)]
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "skipped 3 malformed entries" in warning and "fold_0_data.txt:5" in warning
    assert parse_adience_age("(60, 100)") == 7
    with pytest.raises(FileNotFoundError, match="no fold_\\*_data.txt files"):
        read_adience(tmp_path / "aligned")


def test_stratified_split_keeps_label_shares_and_is_seeded():
    labels = np.repeat([0, 1, 2], [100, 50, 10])
    train, val, test = stratified_split(labels, (0.8, 0.1, 0.1), seed=3)
    assert len(train) + len(val) + len(test) == 160 and not set(train) & set(test)
    assert Counter(labels[test]) == {0: 10, 1: 5, 2: 1}
    assert [p.tolist() for p in stratified_split(labels, seed=3)] == [train.tolist(), val.tolist(), test.tolist()]
    first, second = half_split(1004, seed=0)
    assert len(first) == len(second) == 502


def test_corrupt_images_are_skipped_named_and_counted(tmp_path, utkface_dir, caplog):
    good = sorted((utkface_dir / "images").glob("*.jpg"))[:3]
    bad = tmp_path / "30_0_0_2017.jpg.chip.jpg"
    bad.write_bytes(good[0].read_bytes()[:200])
    with pytest.raises(ImageError, match="30_0_0_2017.jpg.chip.jpg"):
        load_rgb(bad)
    with caplog.at_level(logging.WARNING):
        images, kept = decode_images([good[0], bad, good[1]], size=64, cache_dir=tmp_path / "cache", progress=False)
    assert images.shape == (2, 64, 64, 3) and kept.tolist() == [0, 2]
    assert "skipped 1 image(s) that could not be used: 30_0_0_2017.jpg.chip.jpg: cannot decode" in caplog.text
    again, kept_again = decode_images([good[0], bad, good[1]], size=64, cache_dir=tmp_path / "cache", progress=False)
    assert np.array_equal(again, images) and kept_again.tolist() == [0, 2]
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
