"""`tracer why` reads files a run left next to its report; a damaged one is bad input.

A path index whose compressed data is corrupt (a disk error, a truncated copy between
machines) raised zlib.error, which nothing caught: exit 70 instead of 2 naming the file.
"""

from __future__ import annotations

import gzip
from pathlib import Path

from image_builders import run_tracer


def test_why_with_a_corrupt_path_index_is_exit_2_naming_it(tmp_path: Path):
    (tmp_path / "app.keeplist").write_text("/\troot: the image root directory\n")
    data = bytearray(gzip.compress(b"#tracer-path-index\t2\n/etc/x\tfile\t\t644\n" * 1000))
    data[20:60] = bytes(b ^ 0xFF for b in data[20:60])  # the deflate stream, not the header
    (tmp_path / "app.paths.gz").write_bytes(bytes(data))
    res = run_tracer(["why", str(tmp_path / "app.keeplist"), "/etc/x"], timeout=60)
    assert res.returncode == 2, res.stderr
    assert "app.paths.gz: not a readable path index" in res.stderr
