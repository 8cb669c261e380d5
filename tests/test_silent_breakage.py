"""Silent breakage against the real engine: a check that exits as on the original but
prints something else fails, with the difference, in `tracer diagnose --command` and in
`tracer minimize`; and the smoke step diagnose suggests checks a stable part of the
output, whatever class of output the command has.

The image is the Debian base fixture; the profile is a job that runs `sh`, so its
minimized image has `sh` and the C library and nothing else (no `seq`, no `sha256sum`).
One test per class of output: on stderr only, long, varying between runs, binary.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from test_replay_integration import paste_by_hand

from tracer.profile.load import load_profile
from tracer.profile.model import CommandStep
from tracer.profile.sections import parse_profile

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent

JOB = """\
version: 1
name: {name}
image: docker-daemon:tracer-fixture/base:bookworm
output: docker-daemon:{output}
run:
  mode: job
  entrypoint: ["/bin/sh", "-c", "echo ready"]
  cmd: []
  stdout: "^ready$"
  timeout: 120s
"""


def tracer(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracer", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def shjob(docker_client, fixture_image, host_strace, tmp_path_factory):
    """The job's profile and its minimized image (removed afterwards)."""
    fixture_image("base")
    work = tmp_path_factory.mktemp("silent")
    output = f"tracer-test/silent-sh:min-{uuid.uuid4().hex[:8]}"
    profile = work / "sh.yaml"
    profile.write_text(JOB.format(name="shjob", output=output))
    try:
        proc = tracer("minimize", str(profile), "--quiet")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        yield profile
    finally:
        with contextlib.suppress(Exception):
            docker_client.images.remove(output, force=True)


def replay(profile: Path, *argv: str, options: tuple[str, ...] = ()) -> tuple[int, dict]:
    proc = tracer("diagnose", str(profile), "--json", "--quiet", "--command", *options, "--",
                  *argv)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def pasted_step(profile: Path, answer: dict) -> CommandStep:
    """The suggested smoke step, pasted by hand where the answer says: it must read back."""
    [smoke] = [s for s in answer["suggestions"] if s["kind"] == "smoke"]
    text = paste_by_hand(profile, smoke["edits"])
    return parse_profile(text, str(profile), source=profile).smoke[-1].step


def test_output_on_stderr_only_is_checked_on_stderr(shjob: Path) -> None:
    code, answer = replay(shjob, "sh", "-c", "echo fixed 1>&2")
    assert code == 0 and answer["passed"] is True
    assert answer["original"]["stderr"] == "fixed\n" and answer["original"]["stdout"] == ""
    assert answer["smoke_step"] == {"command": ["sh", "-c", "echo fixed 1>&2"], "exit": 0,
                                    "stderr": "fixed"}
    assert "changes between runs" not in answer["smoke_step_note"]
    assert pasted_step(shjob, answer) == CommandStep(argv=["sh", "-c", "echo fixed 1>&2"],
                                                     stderr="fixed")


def test_long_output_is_checked_on_a_stable_line(shjob: Path) -> None:
    """`seq` is not in the minimized image: the step exits 127 there; the suggested step
    checks the line every run printed, not only the exit code."""
    code, answer = replay(shjob, "sh", "-c", "echo x; seq 1 100")
    assert code == 1 and answer["minimized"]["exit_code"] == 127
    assert answer["original"]["stdout"].startswith("x\n1\n2\n") and \
        answer["original"]["stdout"].endswith("\n100\n")
    assert answer["smoke_step"] == {"command": ["sh", "-c", "echo x; seq 1 100"], "exit": 0,
                                    "stdout": "x"}
    assert "only its exit code" not in answer["smoke_step_note"]
    assert "/usr/bin/seq" in {m["image_path"] for m in answer["missing"]}
    assert answer["diagnosis"]["suggested_keep_binaries"] == ["/usr/bin/seq"]


def test_output_that_varies_between_runs(shjob: Path) -> None:
    """A random token alone: only the exit code can be checked, and the answer says why;
    its output is not compared. Next to a stable line: that line is checked."""
    token = 'read x < /proc/sys/kernel/random/uuid; echo "$x"'
    code, answer = replay(shjob, "sh", "-c", token)
    assert code == 0 and answer["passed"] is True
    assert answer["smoke_step"] == {"command": ["sh", "-c", token], "exit": 0}
    note = answer["smoke_step_note"]
    assert "only its exit code is checked, because its output changes between runs of the " \
           "original image (stdout line 1: '" in note
    assert "not compared" in answer["output_not_compared"][0]
    assert answer["output_changes"] == []

    mixed = 'read x < /proc/sys/kernel/random/uuid; echo "session $x"; echo "status: ready"'
    code, answer = replay(shjob, "sh", "-c", mixed)
    assert code == 0 and answer["smoke_step"]["stdout"] == "status: ready"


def test_binary_output_is_checked_on_its_printable_part(shjob: Path) -> None:
    png = r'printf "\211PNG\r\n\032\n\000\000\000\rIHDR\000\001\377\n"'
    code, answer = replay(shjob, "sh", "-c", png)
    assert code == 0 and answer["passed"] is True
    assert answer["smoke_step"]["stdout"] == ".PNG"
    assert re.search(answer["smoke_step"]["stdout"], answer["original"]["stdout"])
    assert pasted_step(shjob, answer).stdout == ".PNG"


def test_exit_alike_with_other_output_is_a_failure_with_the_difference(shjob: Path) -> None:
    """The command finds `seq` on the original and not on the minimized image, and says so
    only in its output: exit 0 both, the suggested regex ("report") matches both."""
    script = "echo report; if [ -e /usr/bin/seq ]; then echo full; else echo partial; fi"
    code, answer = replay(shjob, "sh", "-c", script)
    assert code == 1 and answer["passed"] is False
    assert answer["minimized"]["exit_code"] == 0 == answer["original"]["exit_code"]
    [change] = answer["output_changes"]
    assert change["stream"] == "stdout" and change["how"] == "same"
    assert change["diff"].splitlines()[-3:] == [" report", "-full", "+partial"]
    assert answer["minimized"]["message"] == change["message"]
    assert "exit 0 as on the original image, but its stdout differs" in change["message"]
    assert answer["diagnosis"]["passed"] is False
    assert "/usr/bin/seq" in {m["image_path"] for m in answer["missing"]}
    text = tracer("diagnose", str(shjob), "--quiet", "--command", "--", "sh", "-c", script)
    assert text.returncode == 1
    assert "-full\n  +partial" in text.stdout


def test_a_binary_stdin_file_reaches_the_replayed_command(shjob: Path, tmp_path: Path) -> None:
    data = bytes(range(256)) * 2 + b"\x00" * 16 + b"\xc3\x28\xff"
    (shjob.parent / "scan.bin").write_bytes(data)
    code, answer = replay(shjob, "sha256sum", options=("--stdin-file",
                                                       str(shjob.parent / "scan.bin")))
    assert answer["original"]["stdout"] == f"{hashlib.sha256(data).hexdigest()}  -\n"
    assert answer["smoke_step"]["stdin_file"] == "scan.bin"
    assert code == 1  # sha256sum is not in the minimized image
    step = pasted_step(shjob, answer)
    assert step.stdin == data and re.search(step.stdout, answer["original"]["stdout"])


SILENT = JOB + """\
smoke:
  - command: ["/bin/sh", "-c", "echo report; if [ -e /etc/debian_version ]; then echo debian;
               else echo unknown; fi"]
    stdout: "^report$"
  - command: ["/bin/sh", "-c", "read x < /proc/sys/kernel/random/uuid; echo \\"token $x\\";
               echo done 1>&2"]
"""


def test_minimize_fails_an_image_that_prints_otherwise(docker_client, fixture_image,
                                                       host_strace, tmp_path: Path) -> None:
    """An exclude rule removes a file a check only reports on: every check passes on the
    minimized image, and its output differs from the original's, which never varies:
    verification fails (exit 1), with the difference and the file. The check that prints a
    random token is not compared, and a profile with only such a check passes."""
    fixture_image("base")
    outputs = [f"tracer-test/silent-min:{uuid.uuid4().hex[:8]}" for _ in range(2)]
    broken = tmp_path / "broken.yaml"
    broken.write_text(SILENT.format(name="silent", output=outputs[0])
                      + 'exclude: ["/etc/debian_version"]\n')
    fine = tmp_path / "fine.yaml"
    fine.write_text(SILENT.format(name="fine", output=outputs[1]))
    assert len(load_profile(broken).smoke) == 2
    try:
        proc = tracer("minimize", str(broken), "--quiet", "--report", str(tmp_path / "b.json"))
        assert proc.returncode == 1, proc.stdout + proc.stderr
        report = json.loads((tmp_path / "b.json").read_text())
        assert report["verified"] is False and report["output_digest"] is None
        [change] = report["output_changes"]
        assert (change["label"], change["stream"], change["exit_code"]) == (
            "smoke[0].command", "stdout", 0)
        assert "-debian\n+unknown" in change["diff"]
        assert report["failure"] == change["message"]
        assert report["output_not_compared"][0].startswith("smoke[1].command stdout: not "
                                                           "compared")
        assert "/etc/debian_version" in {m["image_path"] for m in report["diagnosis"]["missing"]}
        assert "verified: NO - smoke[0].command: exit 0 as on the original image" in proc.stdout
        assert "    -debian\n    +unknown" in proc.stdout
        import docker

        with pytest.raises(docker.errors.ImageNotFound):  # the output was not written
            docker_client.images.get(outputs[0])

        proc = tracer("minimize", str(fine), "--quiet", "--report", str(tmp_path / "f.json"))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        report = json.loads((tmp_path / "f.json").read_text())
        assert report["verified"] is True and report["output_changes"] == []
        assert report["output_not_compared"][0].startswith("smoke[1].command stdout")
    finally:
        for ref in outputs:
            with contextlib.suppress(Exception):
                docker_client.images.remove(ref, force=True)


def test_diagnose_profile_names_a_check_that_prints_otherwise(shjob: Path,
                                                             tmp_path: Path) -> None:
    """`tracer diagnose PROFILE --image REF`: the profile's own checks all pass on an image
    without /etc/debian_version, one of them printing otherwise: exit 1, with the diff."""
    minimized = load_profile(shjob).output
    assert minimized is not None
    profile = tmp_path / "silent.yaml"
    profile.write_text(SILENT.format(name="silent", output=minimized.split(":", 1)[1]))
    proc = tracer("diagnose", str(profile), "--quiet", "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["passed"] is False and answer["step_failures"] == []
    [change] = answer["output_changes"]
    assert change["label"] == "smoke[0].command" and "+unknown" in change["diff"]
    assert "/etc/debian_version" in {m["image_path"] for m in answer["missing"]}
    text = tracer("diagnose", str(profile), "--quiet")
    assert text.returncode == 1
    assert "checks that end as on the original image but print something else:" in text.stdout
