"""`psyattr explain` on real image files of every kind, and the heatmap pictures."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from psyattr.cli import cli
from psyattr.lrp.heatmap import heatmap, heatmap_grid, overlay, render, symmetric_scale


@pytest.fixture(scope="module")
def random_age_model(tmp_path_factory):
    from tests.test_lrp_explainer import random_net

    path = tmp_path_factory.mktemp("model") / "age_random.keras"
    random_net("age", 3, zero_bias=False).save(path)
    return path


def test_explain_writes_heatmap_relevance_and_scores_and_skips_a_broken_file(tmp_path, random_age_model, omi_dir,
                                                                              yale_dir):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("1.jpg", "2.jpg"):
        shutil.copy(omi_dir / "images_256" / name, images / name)
    shutil.copy(yale_dir / "subject01.happy.gif", images / "subject01.happy.gif")  # grayscale GIF, 320x243
    rgba = Image.open(omi_dir / "images_256" / "3.jpg").convert("RGBA").resize((300, 200))
    rgba.save(images / "wide_rgba.png")
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["explain", "--model", str(random_age_model), "--composite", "epsilon",
                                      "--target", "25-32", "--no-progress", "--out", str(out), str(images)])
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and "broken.jpg" in result.output
    assert "explained 4 image(s)" in result.output
    for stem in ("1", "2", "subject01.happy", "wide_rgba"):
        record = json.loads((out / f"{stem}.json").read_text())
        relevance = np.load(out / f"{stem}.relevance.npy")
        assert relevance.shape == (227, 227, 3)
        assert record["target"] == "25-32" and record["method"] == "epsilon"
        assert abs(sum(record["outputs"].values()) - 1.0) < 1e-4  # softmax outputs
        assert record["score"] == pytest.approx(record["pre_activations"]["25-32"], rel=1e-5)
        assert Image.open(out / f"{stem}.png").size == (3 * 227, 227)
    assert not (out / "broken.json").exists()


def test_explain_fails_clearly_when_no_image_is_readable(tmp_path, random_age_model):
    (tmp_path / "a.jpg").write_bytes(b"nope")
    result = CliRunner().invoke(cli, ["explain", "--model", str(random_age_model), "--no-progress",
                                      "--out", str(tmp_path / "o"), str(tmp_path / "a.jpg")])
    assert result.exit_code != 0
    assert "none of the 1 images could be read" in result.output


def test_explain_refuses_unknown_target_and_composite(tmp_path, random_age_model, omi_dir):
    image = str(omi_dir / "images_256" / "1.jpg")
    result = CliRunner().invoke(cli, ["explain", "--model", str(random_age_model), "--target", "happy",
                                      "--out", str(tmp_path), image])
    assert result.exit_code != 0 and "unknown target 'happy': the outputs of model 'age_net' are 0-2" in result.output
    result = CliRunner().invoke(cli, ["explain", "--model", str(random_age_model), "--composite", "magic",
                                      "--out", str(tmp_path), image])
    assert result.exit_code != 0 and "unknown composite 'magic'" in result.output


def test_render_is_centred_on_zero_and_symmetric():
    heat = np.array([[-2.0, 0.0, 2.0]])
    colours = render(heat, scale=2.0)
    assert colours[0, 1].min() >= 250  # white
    red, blue = colours[0, 2], colours[0, 0]
    assert red[0] > 200 and red[2] < 50 and blue[2] > 200 and blue[0] < 50


def test_shared_scale_spans_all_models_and_grid_is_drawn(tmp_path):
    rng = np.random.default_rng(0)
    small, large = rng.normal(0, 1, (2, 8, 8)), rng.normal(0, 10, (2, 8, 8))
    assert symmetric_scale(small, large) > symmetric_scale(small)
    images = rng.uniform(0, 255, (2, 8, 8, 3))
    scale = heatmap_grid(images, {"age-based": small, "gender-based": large}, tmp_path / "grid.png")
    assert scale == pytest.approx(symmetric_scale(small, large))
    assert Image.open(tmp_path / "grid.png").size[0] > 100
    assert overlay(images[0], small[0]).shape == (8, 8, 3)
    assert heatmap(np.ones((2, 4, 4, 3))).shape == (2, 4, 4)


def test_explain_frames_faces_first_and_skips_a_photo_without_one(tmp_path, random_age_model, yale_dir):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(yale_dir / "subject03.happy.gif", images / "subject03.happy.gif")
    Image.new("RGB", (120, 90), (200, 200, 200)).save(images / "wall.png")
    result = CliRunner().invoke(cli, ["explain", "--model", str(random_age_model), "--framing", "omi", "--no-progress",
                                      "--composite", "epsilon", "--out", str(tmp_path / "out"), str(images)])
    assert result.exit_code == 0, result.output
    assert "explained 1 image(s)" in result.output and "no face found in" in result.output
    assert np.load(tmp_path / "out" / "subject03.happy.relevance.npy").shape == (227, 227, 3)


def test_oversized_and_tiny_images_are_skipped_with_reasons_and_the_batch_goes_on(tmp_path, random_age_model,
                                                                                  omi_dir):
    from PIL import Image

    good = omi_dir / "images_256" / "1.jpg"
    # 400 megapixels in a few kB: past PIL's own bomb limit, decoded it would take 400 MB.
    Image.new("1", (20000, 20000)).save(tmp_path / "bomb.png")
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    paths = [str(tmp_path / "bomb.png"), str(good), str(tmp_path / "dot.png")]
    result = CliRunner().invoke(cli, ["predict", "--model", str(random_age_model), "--framing", "none", *paths])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["image"] for line in result.stdout.splitlines()] == [str(good)]
    assert "bomb.png is over psyattr's limit of 50,000,000 pixels" in result.stderr and "--max-pixels" in result.stderr
    assert "dot.png is 1x1 px, under the 40 px minimum" in result.stderr
    # The limit is the user's to set: a 256 x 256 photo is over a limit of 60,000 pixels.
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["explain", "--model", str(random_age_model), "--framing", "none", "--no-progress",
                                      "--composite", "epsilon", "--max-pixels", "60000", "--out", str(out), *paths])
    assert result.exit_code == 1 and "none of the 3 images could be read" in result.output
    assert "1.jpg is 256x256 = 65,536 pixels, over psyattr's limit of 60,000" in result.output and not list(out.glob("*.npy"))
    result = CliRunner().invoke(cli, ["explain", "--model", str(random_age_model), "--framing", "none", "--no-progress",
                                      "--composite", "epsilon", "--out", str(out), *paths])
    assert result.exit_code == 0 and "explained 1 image(s)" in result.output and (out / "1.relevance.npy").exists()
