"""Readers of rated faces: OMI, 10k US Adult Faces (a fixture in the real layout) and generic CSV files."""

from __future__ import annotations

import csv
import logging
import shutil

import numpy as np
import openpyxl
import pytest

from psyattr.data.rated import RatingsError, read_omi, read_rated, read_rated_csv, read_us10k


def test_omi_reads_all_faces_with_the_papers_names(omi_dir):
    data = read_omi(omi_dir)
    assert len(data) == 1004 and data.scale == (0.0, 100.0)
    assert data.resolve("intelligent") == "smart" and data.resolve("confident") == "dominant"
    assert data.resolve("happy") == "happy" and data.resolve("well-groomed") == "well-groomed"
    assert "dominant" in data.note("confident")
    happy = data.normalised("happy")
    assert happy.min() >= 0 and happy.max() <= 1 and not np.isnan(happy).any()
    assert data.problems == []
    with pytest.raises(RatingsError, match=r"OMI has no attribute 'sleepy'; it has: trustworthy, attractive"):
        data.resolve("sleepy")


def write_us10k_fixture(root, omi_dir, rows, listed):
    """The 10k US Adult Faces layout: filenames list, xlsx sheet 'Final Values', numbered images + landmarks."""
    (root / "Full Attribute Scores").mkdir(parents=True)
    (root / "psychology attributes").mkdir()
    images = root / "Face Annotations" / "Images and Annotations"
    images.mkdir(parents=True)
    (root / "Full Attribute Scores" / "target-filenames.txt").write_text(
        "\n".join(f"{number},{name}" for number, name in listed) + "\n")
    for number, _ in listed[:-1]:  # the last listed image is absent
        shutil.copy(omi_dir / "images_256" / f"{number}.jpg", images / f"{number}.jpg")
        (images / f"{number}_landmarks.txt").write_text("\n".join(f"{i} {i}" for i in range(77)) + "\n")
    book = openpyxl.Workbook()
    book.active.title = "About"
    sheet = book.create_sheet("Final Values")
    sheet.append(["Filename", "Image #", "attractive", "happy", "confident", "intelligent", "trustworthy"])
    for row in rows:
        sheet.append(list(row))
    book.save(root / "psychology attributes" / "psychology-attributes.xlsx")


def test_us10k_fixture_in_the_real_layout_is_read(tmp_path, omi_dir, caplog):
    listed = [(1, "Google_1_Ann.jpg"), (2, "Google_2_Bo.jpg"), (3, "Google_3_Cy.jpg"), (4, "Google_4_Di.jpg")]
    rows = [("Google_1_Ann.jpg", 1, 5.5, 7.25, 4.0, 6.0, 5.0),
            ("Google_2_Bo.jpg", 2, 3.0, "n/a", 6.5, 5.5, 4.5),
            ("Google_3_Cy.jpg", 3, 8.0, 2.5, None, 7.0, 6.0),
            ("Google_3_Cy.jpg", 3, 1.0, 1.0, 1.0, 1.0, 1.0),  # duplicated id
            ("Google_4_Di.jpg", 4, 4.0, 4.0, 4.0, 4.0, 4.0)]  # image absent
    write_us10k_fixture(tmp_path, omi_dir, rows, listed)
    with caplog.at_level(logging.WARNING):
        data = read_us10k(tmp_path)
    assert data.ids == ["Google_1_Ann.jpg", "Google_2_Bo.jpg", "Google_3_Cy.jpg"]
    assert [p.name for p in data.paths] == ["1.jpg", "2.jpg", "3.jpg"]
    assert data.scale == (1.0, 9.0) and data.resolve("confident") == "confident"
    np.testing.assert_allclose(data.ratings["attractive"], [5.5, 3.0, 8.0])
    np.testing.assert_allclose(data.normalised("happy")[[0, 2]], [(7.25 - 1) / 8, (2.5 - 1) / 8])
    assert np.isnan(data.ratings["happy"][1]) and np.isnan(data.ratings["confident"][2])
    assert set(data.landmarks) == set(data.ids)
    text = caplog.text
    assert "1 duplicated id(s), first kept: Google_3_Cy.jpg" in text
    assert "1 image(s) named in the ratings are missing: 4.jpg" in text
    assert "1 missing, non-numeric or out-of-scale rating(s) of 'happy' (ids Google_2_Bo.jpg)" in text


def test_us10k_csv_export_is_read_too(tmp_path, omi_dir):
    listed = [(5, "a.jpg"), (6, "b.jpg"), (7, "c.jpg")]
    write_us10k_fixture(tmp_path, omi_dir, [], listed)
    (tmp_path / "psychology attributes" / "psychology-attributes.xlsx").unlink()
    with open(tmp_path / "psychology attributes" / "psychology-attributes.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Filename", "Image #", "happy"])
        writer.writerows([["a.jpg", 5, 6.5], ["b.jpg", 6, 3.5]])
    data = read_rated("10k", tmp_path)
    assert data.ids == ["a.jpg", "b.jpg"] and data.ratings["happy"].tolist() == [6.5, 3.5]


def test_generic_csv_reports_bad_rows_and_stops_when_nothing_is_left(tmp_path, omi_dir):
    for name in ("1.jpg", "2.jpg", "3.jpg"):
        shutil.copy(omi_dir / "images_256" / name, tmp_path / name)
    (tmp_path / "ratings.csv").write_text("image,warmth\n1.jpg,3\n2.jpg,x\n3.jpg,12\nmissing.jpg,4\n")
    data = read_rated_csv(tmp_path / "ratings.csv", (1, 7))
    assert data.ids == ["1.jpg", "2.jpg", "3.jpg"]
    assert np.isnan(data.ratings["warmth"][1:]).all()
    assert any("2 missing, non-numeric or out-of-scale rating(s) of 'warmth'" in p for p in data.problems)
    (tmp_path / "empty.csv").write_text("image,warmth\nmissing.jpg,4\n")
    with pytest.raises(RatingsError, match="no rated image is left"):
        read_rated_csv(tmp_path / "empty.csv", (1, 7))
    (tmp_path / "noimage.csv").write_text("face,warmth\n1.jpg,4\n")
    with pytest.raises(RatingsError, match=r"no image column .* columns are face, warmth"):
        read_rated_csv(tmp_path / "noimage.csv", (1, 7))
    with pytest.raises(RatingsError, match="needs its rating scale"):
        read_rated("csv", tmp_path / "ratings.csv")


def test_omi_folder_without_ratings_is_named(tmp_path):
    with pytest.raises(RatingsError, match="attribute_means.csv not found"):
        read_omi(tmp_path)
