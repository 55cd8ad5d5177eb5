"""bench/backup_million.py runs end to end at a tiny size (moto on loopback):
the benchmark itself is run by hand (bench/README.md), this only keeps it from
rotting. Its own checks (incremental sends exactly the new blobs, the bucket
holds every blob) are what is asserted, through its exit status and results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from moodleops import REPO_ROOT


def test_backup_million_bench_runs_at_a_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "backup_million.py"), "--blobs", "200",
                           "--new-pct", "5", "--tmp", str(tmp_path), "--results", str(out)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    first, inc = r["phases"]
    assert (first["sent"], first["skipped"]) == (200, 0)
    assert (inc["sent"], inc["skipped"]) == (10, 200)
    assert 0 < first["peak_rss_mb"] < 300 and 0 < inc["peak_rss_mb"] < 300
    # Nothing left behind in the temporary directory but the results.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
