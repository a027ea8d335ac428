"""The guard of the real data folder: a run whose test writes into the data folder, here
through a symlink of a mirrored copy as the PTB-XL test once did, fails naming the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from data_integrity import changes, snapshot

pytest_plugins = ["pytester"]
TESTS = Path(__file__).resolve().parent


def _data(root: Path) -> Path:
    (root / "set").mkdir(parents=True)
    (root / "set" / "a.csv").write_text("id,x\n1,2\n")
    (root / "set" / "b.bin").write_bytes(bytes(range(256)) * 100)
    return root


def test_snapshot_sees_a_write_through_a_link(tmp_path: Path) -> None:
    data = _data(tmp_path / "data")
    before = snapshot(data)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    os.symlink(data / "set" / "a.csv", mirror / "a.csv")
    (mirror / "a.csv").write_text("id,x\n1,3\n")  # writes into the data, not the mirror
    (data / "set" / "b.bin").unlink()
    (data / "set" / "new.txt").write_text("x")
    assert changes(before, snapshot(data)) == [
        "changed: set/a.csv",
        "removed: set/b.bin",
        "added: set/new.txt",
    ]
    assert changes(before, before) == []


def test_a_run_that_alters_the_data_fails(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = _data(tmp_path / "data")
    monkeypatch.setenv("MEDMODAL_DATA_DIR", str(data))
    pytester.syspathinsert(TESTS)
    pytester.makeconftest((TESTS / "conftest.py").read_text())
    pytester.makepyfile(
        test_writer=f"""
        from pathlib import Path

        def test_reads():
            assert Path({str(data)!r}, "set", "a.csv").read_text()

        def test_writes_through_a_link(tmp_path):
            link = tmp_path / "a.csv"
            link.symlink_to(Path({str(data)!r}, "set", "a.csv"))
            link.write_text("changed")
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*the test run altered the real data in*changed: set/a.csv*"])
    clean = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-k", "reads")
    clean.assert_outcomes(passed=1, deselected=1)  # reading alone changes nothing
