"""The test infrastructure's own rules: a run without peers refuses peer programs, and a missing
shared data folder skips the ``real_data`` tests with the reason (both in a child process, so that
this session keeps its peers and its data)."""
from __future__ import annotations

import os
import subprocess
import sys

from support.paths import REPO

GUARDED = """
import subprocess, sys
from support.programs import PeerProgramRefused, forbid_peer_programs
forbid_peer_programs()
try:
    subprocess.run([sys.argv[1], "--version"], capture_output=True)
except PeerProgramRefused as refused:
    print("refused:", refused)
else:
    print("started")
print("python:", subprocess.run([sys.executable, "-c", "print(7)"], capture_output=True, text=True).stdout.strip())
"""


def _guarded(program: str) -> str:
    run = subprocess.run([sys.executable, "-c", GUARDED, program], capture_output=True, text=True, timeout=60,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "tests")})
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_without_peers_a_peer_program_is_refused_before_it_starts_and_python_still_runs():
    for program in ("storescp", "/usr/bin/storescu", "dciodvfy", "/usr/sbin/Orthanc", "psql"):
        out = _guarded(program)
        assert f"refused: {os.path.basename(program)} started in a run without peers" in out, out
        assert "python: 7" in out


def test_without_peers_a_program_that_is_no_peer_starts():
    assert "started" in _guarded("true")


def test_a_real_data_test_is_skipped_with_the_reason_where_the_shared_data_folder_is_absent(tmp_path):
    missing = tmp_path / "no-shared-data"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                          "tests/test_evaluation.py::test_real_verse_crop_is_found_as_a_verse_case"],
                         capture_output=True, text=True, timeout=300, cwd=REPO,
                         env={**os.environ, "SPINE_NODE_TEST_SHARED_DATA": str(missing)})
    assert "1 skipped" in run.stdout, run.stdout[-2000:]
    assert f"real_data: the shared data folder {missing} is not present" in run.stdout
