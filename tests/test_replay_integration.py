"""`tracer diagnose --exec/--command` against the real engine, as an operator uses it.

A report job whose smoke test prints the report in the default encoding is minimized;
production runs it with PYTHONIOENCODING=iso-8859-15 (or asks for the csv format), which
loads modules the smoke test never imported. Replaying that command must show it failing
on the minimized image and name the missing files; the suggested smoke step, pasted into
the profile as the output says, must make the next minimization keep what the command
needs, so the command passes. The same for `--exec` inside a running service (pyapp).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from tracer.profile.model import CommandStep, ExecStep
from tracer.profile.sections import parse_profile

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
ENCODING = "/usr/lib/python3.11/encodings/iso8859_15.py"
CSV = "/usr/lib/python3.11/csv.py"

REPORT_PY = '''\
"""A report job: prints a small sales report; production picks format and encoding."""

import sys

ROWS = [("caf\\u00e9", 3), ("th\\u00e9", 5)]


def main() -> int:
    if sys.argv[1:] == ["csv"]:
        import csv  # only the csv report needs it

        writer = csv.writer(sys.stdout)
        writer.writerow(["item", "count"])
        writer.writerows(ROWS)
        return 0
    print("Rapport des ventes")
    for name, count in ROWS:
        print(f"{name}: {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''

DOCKERFILE = """\
FROM tracer-fixture/pyapp:test
COPY report.py /srv/report/report.py
ENTRYPOINT ["/usr/bin/python3", "/srv/report/report.py"]
CMD []
"""

REPORT_PROFILE = """\
version: 1
name: report
image: docker-daemon:{image}
output: docker-daemon:{output}

run:
  mode: job
  network: none
  stdout: "(?m)^Rapport des ventes$"
  timeout: 120s

keep:
  paths: ["/srv/report/**"]   # the job's own code

exclude: ["/usr/share/doc/**", "/usr/share/man/**"]
"""


def tracer(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracer", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def paste_by_hand(profile: Path, edits: list[dict]) -> str:
    """Make the edits as the operator is told to (they come bottom of the file first)."""
    lines = profile.read_text().splitlines(keepends=True)
    for e in edits:
        new = e["text"].splitlines(keepends=True)
        if e["after_line"] is not None:
            lines[e["after_line"]:e["after_line"]] = new
        else:
            first, last = e["replace_lines"]
            lines[first - 1:last] = new
    return "".join(lines)


@pytest.fixture(scope="module")
def report(docker_client, fixture_image, host_strace, tmp_path_factory):
    """The report image (built FROM the pyapp fixture, which has python3), its profile,
    and its minimized image; every image made here is removed afterwards."""
    fixture_image("pyapp")
    work = tmp_path_factory.mktemp("replay-report")
    (work / "report.py").write_text(REPORT_PY)
    (work / "Dockerfile").write_text(DOCKERFILE)
    tag = uuid.uuid4().hex[:8]
    image = f"tracer-test/replay-report:{tag}"
    made = [image, f"{image}-min", f"{image}-min2"]
    try:
        docker_client.images.build(path=str(work), tag=image, rm=True, forcerm=True,
                                   network_mode="none")
        profile = work / "report.yaml"
        profile.write_text(REPORT_PROFILE.format(image=image, output=f"{image}-min"))
        proc = tracer("minimize", str(profile), "--quiet")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        yield profile, image
    finally:
        for ref in made:
            with contextlib.suppress(Exception):
                docker_client.images.remove(ref, force=True)


def test_production_encoding_fails_minimized_and_the_suggested_step_fixes_it(report) -> None:
    profile, image = report
    replay = ("--command", "--env", "PYTHONIOENCODING=iso-8859-15", "--",
              "python3", "/srv/report/report.py")
    proc = tracer("diagnose", str(profile), "--json", "--quiet", *replay)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["passed"] is False
    assert answer["original"]["passed"] is True and answer["original"]["exit_code"] == 0
    assert answer["original"]["output"].startswith("Rapport des ventes")
    assert answer["minimized"]["passed"] is False and answer["minimized"]["reached"] is True
    assert "/.tracer/" not in answer["minimized"]["output"]
    missing = {m["image_path"] for m in answer["missing"]}
    assert ENCODING in missing and "/usr/bin/env" in missing
    # best first: the command as a smoke step, then keep.binaries + exact paths
    kinds = [s["kind"] for s in answer["suggestions"]]
    assert kinds[:2] == ["smoke", "keep"]
    assert answer["smoke_step"] == {
        "command": ["env", "PYTHONIOENCODING=iso-8859-15", "python3", "/srv/report/report.py"],
        "exit": 0, "stdout": "Rapport des ventes"}
    diagnosis = answer["diagnosis"]
    assert diagnosis["suggested_keep_binaries"] == ["/usr/bin/env"]
    assert ENCODING in diagnosis["suggested_keep_paths"]
    for path in diagnosis["suggested_keep_paths"] + diagnosis["suggested_keep_globs"]:
        assert path.count("/") >= 3 and not path.startswith("/usr/lib/*"), path

    # the operator pastes suggestion 1 where the output says, and minimizes again
    fixed = profile.with_name("report-fixed.yaml")
    text = paste_by_hand(profile, answer["suggestions"][0]["edits"])
    fixed.write_text(text.replace(f"{image}-min\n", f"{image}-min2\n"))
    step = parse_profile(fixed.read_text()).smoke[-1].step
    assert step == CommandStep(argv=answer["smoke_step"]["command"], exit=0,
                               stdout="Rapport des ventes")
    proc = tracer("minimize", str(fixed), "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = tracer("diagnose", str(fixed), "--json", "--quiet", *replay)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    again = json.loads(proc.stdout)
    assert again["passed"] is True and again["minimized"]["exit_code"] == 0
    assert again["missing"] == []


def test_another_module_is_named_and_the_text_answer_pastes_as_printed(report) -> None:
    profile, _ = report
    proc = tracer("diagnose", str(profile), "--quiet", "--command", "--",
                  "python3", "/srv/report/report.py", "csv")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert "ModuleNotFoundError: No module named 'csv'" in out
    assert f"{CSV}  [" in out
    pasted = paste_printed(out, profile, suggestion=1)
    step = parse_profile(pasted).smoke[-1].step
    assert step == CommandStep(argv=["python3", "/srv/report/report.py", "csv"], exit=0,
                               stdout="item,count")
    # suggestion 2 (exact keep.paths) pastes too and names the module
    keep = parse_profile(paste_printed(out, profile, suggestion=2)).keep
    assert CSV in keep.paths and "/srv/report/**" in keep.paths


def paste_printed(out: str, profile: Path, suggestion: int) -> str:
    """Follow the printed text: under `# N. ...`, each `# insert after line L of FILE` or
    `# replace line(s) A[-B] of FILE` header is followed by the lines to paste."""
    block = out.split(f"\n# {suggestion}. ", 1)[1].split(f"\n# {suggestion + 1}. ", 1)[0]
    edits, current = [], None
    for line in block.split("\n")[1:]:
        m = re.match(r"# (insert after line (\d+)|replace lines? (\d+)(?:-(\d+))?) of ", line)
        if m:
            current = {"after_line": int(m[2]) if m[2] else None, "text": "",
                       "replace_lines": [int(m[3]), int(m[4] or m[3])] if m[3] else None}
            edits.append(current)
        elif line.startswith("#"):
            continue
        elif current is not None:
            current["text"] += line + "\n"
    assert edits, block
    return paste_by_hand(profile, edits)


def test_a_command_that_fails_on_the_original_exits_3(report) -> None:
    profile, _ = report
    proc = tracer("diagnose", str(profile), "--quiet", "--command", "--exit", "0", "--",
                  "python3", "-c", "print('half done'); raise SystemExit(3)")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "the command fails on the original image" in proc.stderr
    assert "half done" in proc.stderr and "pass --exit 3" in proc.stderr


def test_exec_replays_inside_the_running_service(docker_client, fixture_image, host_strace,
                                                 tmp_path: Path) -> None:
    fixture_image("pyapp")
    data = yaml.safe_load((REPO / "profiles/pyapp.yaml").read_text())
    output = f"tracer-test/replay-pyapp:min-{uuid.uuid4().hex[:8]}"
    data["output"] = f"docker-daemon:{output}"
    profile = tmp_path / "pyapp.yaml"
    profile.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        proc = tracer("minimize", str(profile), "--quiet")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        code = "import csv, sys; csv.writer(sys.stdout).writerow(['item', 'count'])"
        proc = tracer("diagnose", str(profile), "--quiet", "--exec", "--", "python3", "-c",
                      code)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        n = len(data["smoke"])
        assert proc.stdout.startswith(f"replayed as smoke[{n}].exec, inside the running "
                                      "service container: python3 -c")
        assert f"{CSV}  [" in proc.stdout
        step = parse_profile(paste_printed(proc.stdout, profile, suggestion=1)).smoke[-1]
        assert step.index == n
        assert step.step == ExecStep(argv=["python3", "-c", code], exit=0, stdout="item,count")
    finally:
        with contextlib.suppress(Exception):
            docker_client.images.remove(output, force=True)
