"""What `tracer batch` prints for the operator watching it: a line per job as it starts
and ends (a nightly batch runs for many minutes), and a table in the units of `tracer
minimize`'s summary that says why jobs failed or were skipped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tracer.batch import JobResult, job_line, summary_table

REPO = Path(__file__).resolve().parent.parent


def test_each_job_says_when_it_starts_and_how_it_ended(tmp_path: Path) -> None:
    ok = tmp_path / "gone.yaml"
    ok.write_text("version: 1\nname: gone\nimage: docker-archive:/nonexistent/gone.tar\n")
    (tmp_path / "broken.yaml").write_text("version: 1\nname: broken\nimage: a:1\nrun: 3\n")
    proc = subprocess.run([sys.executable, "-m", "tracer", "batch", str(tmp_path), "--out",
                           str(tmp_path / "out"), "--jobs", "1"], capture_output=True,
                          text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr
    assert f"tracer batch: gone: started ({ok}; log: {tmp_path / 'out' / 'gone' / 'run.log'})" \
        in err
    assert "tracer batch: gone: FAILED after" in err and "/nonexistent/gone" in err
    # a profile that does not load fails on its own, naming its first problem
    assert "tracer batch: broken: FAILED after" in err and "run: expected a mapping" in err
    assert "(log: )" not in proc.stdout  # a job that never ran has no log to point at


def _job(**kw) -> JobResult:
    base = dict(name="web", profile="web.yaml", status="passed", exit_code=0, seconds=12.0,
                size_before=224_570_659, size_after=10_034_393, log="out/web/run.log")
    base.update(kw)
    return JobResult(**base)


def test_the_table_uses_minimizes_units_and_explains_skips_and_failures() -> None:
    table = summary_table([
        _job(),
        _job(name="api", status="skipped", seconds=0.0, size_before=None, size_after=None,
             message="unchanged since the last successful run"),
        _job(name="job", status="failed", exit_code=3, size_after=0,
             message="the smoke test fails on the original image"),
    ])
    assert "224.6 MB" in table and "10.0 MB" in table  # as `tracer minimize` prints sizes
    failed_row = next(line for line in table.splitlines() if line.startswith("job "))
    assert "0.0 MB" not in failed_row and "0 B" not in failed_row  # nothing was written
    assert "job: the smoke test fails on the original image (log: out/web/run.log)" in table
    assert "skipped (api):" in table and "--force" in table


def test_the_line_of_a_passed_job_has_its_sizes() -> None:
    assert job_line(_job()) == "web: passed in 12.0s, 224.6 MB -> 10.0 MB"
    assert job_line(_job(status="failed", exit_code=2, message="invalid profile:\n  a.yaml:3:"
                         " run: bad\n  a.yaml:4: x")).endswith(
        "FAILED after 12.0s: invalid profile: a.yaml:3: run: bad (more below)")
