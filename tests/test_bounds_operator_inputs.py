"""Files and values the operator hands tracer fail fast (exit 2), saying what they are.

Each case builds the input that used to hang, eat memory or crash, runs the real command
and asserts exit 2, a message that names the file (and what it is), and bounded time
and peak memory: a stray FIFO `*.yaml` blocked `batch`, `validate`, `minimize` and
`diagnose` forever; a keep-list linked to /dev/zero grew `tracer why` to 23.6 GB; a report
nested 100,000 deep and a budget of 5,000 digits were internal errors (exit 70); a
`run.tmpfs` over `/` failed late (exit 4) and one over tracer's own mounts validated,
then recorded nothing.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest
from image_builders import run_tracer

from tracer.errors import BadInput
from tracer.operatorfiles import read_json, read_regular
from tracer.profile.checker import read_stdin_file
from tracer.profile.load import load_profile

PROFILE = """\
version: 1
name: {name}
image: docker-archive:/nonexistent/app.tar
run:
  mode: job
  {run_extra}
smoke:
  - command: [/bin/true]
"""


def profile(path: Path, name: str = "app", run_extra: str = "") -> Path:
    path.write_text(PROFILE.format(name=name, run_extra=run_extra))
    return path


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def fast(res, seconds: float = 20, mb: float = 150) -> None:
    assert res.seconds < seconds, f"{res.seconds:.1f}s"
    assert res.max_rss_mb < mb, f"{res.max_rss_mb:.0f} MiB"


# --------------------------------------------------------------------------- profiles


@pytest.mark.parametrize("command", [["minimize"], ["diagnose"], ["validate"]])
def test_a_fifo_profile_is_refused_at_once(tmp_path: Path, command: list[str]):
    stray = fifo(tmp_path / "app.yaml")
    res = run_tracer([*command, str(stray)], timeout=30)
    assert res.returncode == 2, res.stderr
    assert f"{stray}: the profile file is a FIFO, not a regular file" in res.stderr
    fast(res)


def test_batch_of_a_directory_with_a_stray_fifo_is_refused_at_once(tmp_path: Path):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    profile(profiles / "good.yaml")
    stray = fifo(profiles / "stray.yaml")
    res = run_tracer(["batch", str(profiles), "--out", str(tmp_path / "out")], timeout=30)
    assert res.returncode == 2, res.stderr
    assert f"{stray}: the profile file is a FIFO, not a regular file" in res.stderr
    assert not (tmp_path / "out").exists()  # refused before anything ran
    fast(res)


def test_a_profile_linked_to_a_device_is_refused(tmp_path: Path):
    link = tmp_path / "app.yaml"
    link.symlink_to("/dev/zero")
    res = run_tracer(["validate", str(link)], timeout=30)
    assert res.returncode == 2, res.stderr
    assert "the profile file is a character device, not a regular file" in res.stderr
    fast(res)


def test_a_fifo_stdin_file_is_a_profile_error(tmp_path: Path):
    fifo(tmp_path / "input.txt")
    prof = tmp_path / "app.yaml"
    prof.write_text(PROFILE.format(name="app", run_extra="").replace(
        "  - command: [/bin/true]", "  - command: [/bin/cat]\n    stdin_file: input.txt"))
    res = run_tracer(["validate", str(prof)], timeout=30)
    assert res.returncode == 2, res.stderr
    assert "smoke[0].stdin_file: 'input.txt'" in res.stderr
    assert "the file is a FIFO, not a regular file" in res.stderr
    fast(res)
    # the same check behind `tracer diagnose --command --stdin-file`
    text, problem = read_stdin_file(tmp_path / "input.txt", 1000)
    assert text is None and problem == "the file is a FIFO, not a regular file"


# --------------------------------------------------------------------------- run files


def test_why_on_a_keeplist_linked_to_dev_zero_is_refused(tmp_path: Path):
    link = tmp_path / "app.keeplist"
    link.symlink_to("/dev/zero")
    res = run_tracer(["why", str(link), "/etc/passwd"], timeout=30)
    assert res.returncode == 2, res.stderr
    assert f"{link}: the keep-list is a character device, not a regular file" in res.stderr
    fast(res)


def test_why_on_a_fifo_keeplist_is_refused(tmp_path: Path):
    stray = fifo(tmp_path / "app.keeplist")
    res = run_tracer(["why", str(stray), "/etc/passwd"], timeout=30)
    assert res.returncode == 2, res.stderr
    assert "the keep-list is a FIFO, not a regular file" in res.stderr
    fast(res)


def test_why_on_a_report_nested_100000_deep_is_exit_2(tmp_path: Path):
    report = tmp_path / "app.json"
    report.write_text("[" * 100_000 + "]" * 100_000)
    res = run_tracer(["why", str(report), "/etc/passwd"], timeout=30)
    assert res.returncode == 2, res.stderr
    assert f"{report}: not a readable tracer report: nested too deeply" in res.stderr
    fast(res)


def test_why_on_an_oversized_keeplist_names_the_budget(tmp_path: Path):
    keeplist = tmp_path / "app.keeplist"
    keeplist.write_bytes(b"/etc/x\ttraced: open\n" * 100_000)  # 2 MB
    res = run_tracer(["why", str(keeplist), "/etc/x", "--budget", "index_bytes=1MiB"],
                     timeout=30)
    assert res.returncode == 2, res.stderr
    assert "over the index_bytes budget of 1MiB" in res.stderr and str(keeplist) in res.stderr
    fast(res)


def test_why_on_a_path_index_gzip_bomb_stops_at_the_budget(tmp_path: Path):
    (tmp_path / "app.keeplist").write_text("/\troot: the image root directory\n")
    bomb = gzip.compress(b"#tracer-path-index\t2\n" + bytes(256 << 20), compresslevel=9)
    assert len(bomb) < 1 << 20
    (tmp_path / "app.paths.gz").write_bytes(bomb)
    res = run_tracer(["why", str(tmp_path / "app.keeplist"), "/etc/x",
                      "--budget", "index_bytes=16MiB"], timeout=60)
    assert res.returncode == 2, res.stderr
    assert "app.paths.gz: the path index decompresses to more than" in res.stderr
    assert "index_bytes" in res.stderr
    fast(res, mb=120)  # 256 MiB of zeros inflated whole used to be held


def test_run_files_tracer_wrote_are_not_followed_when_asked(tmp_path: Path):
    """`tracer batch` reads its own state and reports under --out without following a
    link: a link there was not written by tracer."""
    real = tmp_path / "real.json"
    real.write_text('{"a": 1}')
    link = tmp_path / "state.json"
    link.symlink_to(real)
    assert read_json(real, "state", limit=100, budget="json_bytes") == {"a": 1}
    with pytest.raises(BadInput, match="the state is a symbolic link"):
        read_json(link, "state", limit=100, budget="json_bytes", follow=False)
    with pytest.raises(BadInput, match="over the json_bytes budget of 5"):
        read_regular(real, "state", limit=5, budget="json_bytes")


# --------------------------------------------------------------------------- values


def test_a_budget_of_5000_digits_is_exit_2(tmp_path: Path):
    digits = "9" * 5_000
    res = run_tracer(["validate", str(profile(tmp_path / "app.yaml")),
                      "--budget", f"image_bytes={digits}"], timeout=30)
    assert res.returncode == 2, res.stderr
    assert "--budget: budget image_bytes: expected a positive number" in res.stderr
    assert len(res.stderr) < 1000  # the value is not echoed whole
    fast(res)
    quoted = tmp_path / "quoted.yaml"
    quoted.write_text(PROFILE.format(name="q", run_extra="")
                      + f'budgets: {{image_bytes: "{digits}"}}\n')
    res = run_tracer(["validate", str(quoted)], timeout=30)
    assert res.returncode == 2, res.stderr
    assert "budgets.image_bytes: expected a positive number" in res.stderr
    assert "(at most 9,223,372,036,854,775,807), got" in res.stderr
    assert "(5,000 characters)" in res.stderr
    fast(res)


@pytest.mark.parametrize(("target", "why"), [
    ("/", "the container's root directory cannot be a tmpfs"),
    ("/tmp/..", "the container's root directory cannot be a tmpfs"),
    ("/.tracer", "tracer mounts its recorder at /.tracer"),
    ("/.tracer-out", "tracer mounts its recorder at /.tracer-out"),
    ("/.tracer/lib", "tracer mounts its recorder at /.tracer"),
    ("/proc", "the container runtime mounts /proc itself"),
    ("/dev", "the container runtime mounts /dev itself"),
])
def test_a_tmpfs_over_the_root_or_tracers_mounts_is_refused(tmp_path: Path, target: str,
                                                            why: str):
    prof = profile(tmp_path / "app.yaml", run_extra=f"tmpfs: [/tmp, {target!r}]")
    with pytest.raises(BadInput) as info:
        load_profile(prof)
    assert f"run.tmpfs[1]: {target!r}: {why}" in str(info.value)


def test_ordinary_tmpfs_targets_still_validate(tmp_path: Path):
    prof = profile(tmp_path / "app.yaml", run_extra="tmpfs: [/tmp, /run, /dev/shm, /.tracerx]")
    assert load_profile(prof).run.tmpfs == ["/tmp", "/run", "/dev/shm", "/.tracerx"]
