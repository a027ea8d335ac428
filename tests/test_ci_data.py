"""Missing real data: a test skips with the reason, and fails when the CI variable is set."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

NEEDS_DATA = """
def test_reads_mitdb(mitdb):
    assert (mitdb / "100.hea").is_file()

def test_without_data():
    assert True
"""


@pytest.mark.slow  # two pytest processes
@pytest.mark.parametrize("ci", ["", "true"])
def test_missing_data_skips_or_fails_under_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    here = Path(__file__).parent
    pytester.makeconftest((here / "conftest.py").read_text())
    pytester.makepyfile(
        test_data=NEEDS_DATA, data_integrity=(here / "data_integrity.py").read_text()
    )
    empty = pytester.mkdir("no_data")
    monkeypatch.setenv("MEDMODAL_DATA_DIR", str(empty))
    monkeypatch.setenv("CI", ci)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs")
    if ci:
        result.assert_outcomes(passed=1, errors=1)
        result.stdout.fnmatch_lines(["*CI is set, so missing real data fails the run: mitdb*"])
    else:
        result.assert_outcomes(passed=1, skipped=1)
        result.stdout.fnmatch_lines(["*SKIPPED*mitdb data set not found*"])
