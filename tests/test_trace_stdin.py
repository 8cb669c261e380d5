"""Standard input of jobs and steps: given bytes are fed and closed; none means empty and
closed (a program reading stdin sees end of file at once, it never waits for a terminal).
A stdin_file is any bytes (a document, an image): it arrives byte for byte."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tracer.profile.load import load_profile
from tracer.profile.model import CommandStep, ExecStep, Profile, Ready, RunSpec, SmokeStep
from tracer.trace.run import run_smoke

pytestmark = pytest.mark.integration

XML = b"<report><item>alpha</item><item>beta</item></report>\n"
COUNT = "n=$(grep -o '<item>' | wc -l); echo \"items: $n\""


@pytest.mark.parametrize("traced", [False, True])
def test_a_job_reads_the_profiles_stdin(docker_client, fixture_image, tmp_path, traced):
    base = fixture_image("base")
    profile = Profile(name="stdin-job", image=base, run=RunSpec(
        mode="job", entrypoint=["sh", "-c", COUNT], cmd=[], stdin=XML, stdout="^items: 2$",
        timeout=60))
    r = run_smoke(profile, base, traced=traced, workdir=tmp_path)
    assert r.passed, (r.failure, r.steps)


@pytest.mark.parametrize("traced", [False, True])
def test_without_stdin_a_job_and_its_steps_read_end_of_file_at_once(
    docker_client, fixture_image, tmp_path, traced
):
    base = fixture_image("base")
    reads = "cat; echo \"eof:$?\"; [ -t 0 ] && echo tty || echo notty"
    want = "^eof:0\nnotty$"
    profile = Profile(
        name="no-stdin", image=base,
        run=RunSpec(mode="job", entrypoint=["sh", "-c", reads], cmd=[], stdout=want, timeout=60),
        smoke=[SmokeStep(0, CommandStep(argv=["sh", "-c", reads], stdout=want, timeout=20))],
    )
    r = run_smoke(profile, base, traced=traced, workdir=tmp_path)
    assert r.passed, (r.failure, r.steps)


@pytest.mark.parametrize("traced", [False, True])
def test_exec_and_command_steps_get_their_own_stdin(docker_client, fixture_image, tmp_path,
                                                    traced):
    base = fixture_image("base")
    profile = Profile(
        name="stdin-steps", image=base,
        run=RunSpec(entrypoint=["sh", "-c", "echo ready; exec sleep 1000"], cmd=[],
                    ready=Ready(log="ready", timeout=60), timeout=120),
        smoke=[
            SmokeStep(0, ExecStep(argv=["sh", "-c", COUNT], stdin=XML, stdout="^items: 2$")),
            SmokeStep(1, ExecStep(argv=["sh", "-c", "cat; echo eof"], stdout="^eof$",
                                  timeout=20)),
            SmokeStep(2, CommandStep(argv=["sh", "-c", COUNT], stdin=XML * 3,
                                     stdout="^items: 6$")),
        ],
    )
    r = run_smoke(profile, base, traced=traced, workdir=tmp_path)
    assert r.passed, (r.failure, r.steps)
    if traced:
        assert any(a.path == "/usr/bin/grep" and a.step == "smoke[0].exec" for a in r.accesses)


# every byte value, runs of NULs, invalid UTF-8 (a lone continuation byte, a truncated
# sequence, an overlong NUL), CR LF and a last line without a newline
BINARY = (bytes(range(256)) * 3 + b"\x00" * 64 + b"\x80\xc3\x28\xe2\x82\xc0\x80"
          + b"PK\x03\x04\r\n\x1a\n" + b"\xff" * 17)


@pytest.mark.parametrize("traced", [False, True])
def test_a_binary_stdin_file_reaches_the_job_and_its_steps_byte_for_byte(
        docker_client, fixture_image, tmp_path: Path, traced: bool) -> None:
    """The profile names the file; the job, an exec step and a command step each hash
    what they read (sha256sum and od see the raw bytes), and the hash must be the file's."""
    base = fixture_image("base")
    (tmp_path / "scan.bin").write_bytes(BINARY)
    digest = hashlib.sha256(BINARY).hexdigest()
    count = f"(?m)^{len(BINARY)}$"
    service = tmp_path / "service.yaml"
    service.write_text(f"""\
version: 1
name: binary-stdin
image: docker-daemon:{base}
run:
  entrypoint: ["sh", "-c", "echo ready; exec sleep 1000"]
  cmd: []
  ready: {{log: ready, timeout: 60s}}
  timeout: 120s
smoke:
  - exec: ["sha256sum"]
    stdin_file: scan.bin
    stdout: "^{digest}  -$"
  - command: ["sha256sum"]
    stdin_file: scan.bin
    stdout: "^{digest}  -$"
  - command: ["sh", "-c", "od -An -v -tx1 | wc -w"]
    stdin_file: scan.bin
    stdout: "{count}"
""")
    r = run_smoke(load_profile(service), base, traced=traced, workdir=tmp_path / "service")
    assert r.passed, (r.failure, r.steps)
    job = tmp_path / "job.yaml"
    job.write_text(f"""\
version: 1
name: binary-stdin-job
image: docker-daemon:{base}
run:
  mode: job
  entrypoint: ["sha256sum"]
  cmd: []
  stdin_file: scan.bin
  stdout: "^{digest}  -$"
  timeout: 60s
""")
    r = run_smoke(load_profile(job), base, traced=traced, workdir=tmp_path / "job")
    assert r.passed, (r.failure, r.steps)
    # and a wrong expectation fails: the check is real
    job.write_text(job.read_text().replace(digest, hashlib.sha256(BINARY[:-1]).hexdigest()))
    r = run_smoke(load_profile(job), base, traced=False, workdir=tmp_path / "wrong")
    assert not r.passed and "stdout does not match" in (r.failure or "")
