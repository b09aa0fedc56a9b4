"""Finding OMI and fetching it from a local folder (the download path needs internet and is not run here)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from psyattr.cli import cli
from psyattr.data.fetch import FetchError, find_omi
from psyattr.data.rated import read_omi


def test_fetch_from_a_local_folder_gives_a_readable_copy(tmp_path, omi_dir):
    result = CliRunner().invoke(cli, ["data", "fetch", "omi", "--from", str(omi_dir), "--dest", str(tmp_path),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    copy = tmp_path / "omi"
    assert f"OMI is in {copy}" in result.output
    data = read_omi(copy)
    assert len(data) == 1004 and data.problems == []
    assert (copy / "LICENSE.txt").exists()
    again = CliRunner().invoke(cli, ["data", "fetch", "omi", "--from", str(omi_dir), "--dest", str(tmp_path),
                                     "--no-progress"])
    assert again.exit_code == 0  # a second fetch keeps what is there


def test_find_omi_prefers_the_given_folder_then_the_environment(tmp_path, omi_dir, monkeypatch):
    assert find_omi(omi_dir) == omi_dir
    monkeypatch.setenv("PSYATTR_DATA_DIR", str(omi_dir.parent))
    monkeypatch.setenv("PSYATTR_DATA_HOME", str(tmp_path / "home"))
    assert find_omi() == omi_dir / ""
    monkeypatch.delenv("PSYATTR_DATA_DIR")
    with pytest.raises(FetchError, match="psyattr data fetch omi"):
        find_omi()


def test_fetch_from_a_folder_that_is_not_omi_is_refused(tmp_path):
    (tmp_path / "src").mkdir()
    result = CliRunner().invoke(cli, ["data", "fetch", "omi", "--from", str(tmp_path / "src"), "--dest",
                                      str(tmp_path / "dest")])
    assert result.exit_code != 0 and "is not an OMI folder" in result.output
