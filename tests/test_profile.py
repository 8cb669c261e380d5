"""Profile loading: the contract of PROFILE.md, and errors that name file, line and field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tracer.errors import BadInput
from tracer.profile import ProfileErrors, load_profile, parse_duration, parse_profile
from tracer.profile_model import CommandStep, ExecStep, HttpStep, SleepStep, TcpStep

FULL = """\
version: 1
name: nginx
image: docker-daemon:local/nginx:test
output: docker-daemon:local/nginx:min
run:
  entrypoint: ["/usr/sbin/nginx"]
  cmd: ["-g", "daemon off;"]
  env: {LANG: C.UTF-8}
  user: "33"
  workdir: /srv
  network: host
  tmpfs: [/tmp, /run]
  mode: service
  ready:
    log: "start worker processes"
    tcp: 80
    timeout: 30s
  timeout: 120s
smoke:
  - http: {url: "http://127.0.0.1:80/", status: 200, body: "Welcome to nginx"}
  - tcp:  {port: 6379, send: "PING\\r\\n", expect: "\\\\+PONG"}
  - exec: ["nginx", "-t"]
    exit: 0
    stdout: "syntax is ok"
  - command: ["python3", "-c", "import ssl"]
    exit: 0
  - sleep: 2s
keep:
  paths: ["/etc/nginx/**", "/usr/share/nginx/html/**"]
  binaries: ["/bin/sh"]
  packages: [tzdata, ca-certificates]
exclude: ["/usr/share/doc/**", "/usr/share/man/**"]
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(ProfileErrors) as info:
        parse_profile(textwrap.dedent(text), filename="p.yaml")
    return info.value.problems


def test_the_documented_example_loads_with_every_field() -> None:
    p = parse_profile(FULL, filename="nginx.yaml")
    assert p.name == "nginx" and p.output == "docker-daemon:local/nginx:min"
    assert p.run.entrypoint == ["/usr/sbin/nginx"] and p.run.cmd == ["-g", "daemon off;"]
    assert p.run.env == {"LANG": "C.UTF-8"} and p.run.user == "33"
    assert p.run.tmpfs == ["/tmp", "/run"] and p.run.network == "host"
    assert p.run.ready.log == "start worker processes" and p.run.ready.tcp == 80
    assert p.run.ready.timeout == 30.0 and p.run.timeout == 120.0
    kinds = [type(s.step) for s in p.smoke]
    assert kinds == [HttpStep, TcpStep, ExecStep, CommandStep, SleepStep]
    assert p.smoke[0].step.body == "Welcome to nginx"
    assert p.smoke[1].step.send == "PING\r\n" and p.smoke[1].step.expect == "\\+PONG"
    assert p.smoke[2].step.argv == ["nginx", "-t"] and p.smoke[2].step.stdout == "syntax is ok"
    assert p.smoke[2].label == "smoke[2].exec"
    assert p.smoke[4].step.seconds == 2.0
    assert p.keep.packages == ["tzdata", "ca-certificates"]
    assert p.exclude == ["/usr/share/doc/**", "/usr/share/man/**"]


def test_defaults_follow_the_contract() -> None:
    p = parse_profile("version: 1\nname: app\nimage: local/app:1\n")
    assert p.run.network == "none" and p.run.mode == "service"
    assert p.run.ready.timeout == 30.0 and p.run.timeout == 300.0 and p.run.exit == 0
    assert p.output is None and p.smoke == [] and p.exclude == []


@pytest.mark.parametrize("text,seconds", [("500ms", 0.5), ("30s", 30), ("5m", 300), ("7", 7),
                                          ("1.5s", 1.5)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_wrong_type_names_file_line_and_field() -> None:
    text = FULL.replace("status: 200", "status: ok")
    problems = errors_of(text)
    assert problems == ["p.yaml:20: smoke[0].http.status: expected an integer, got 'ok'"]


def test_unknown_keys_are_errors_not_ignored() -> None:
    problems = errors_of("""\
        version: 1
        name: app
        image: app:1
        run:
          entrypiont: ["/app"]
        keep:
          path: ["/x"]
        """)
    assert problems[0].startswith("p.yaml:5: run.entrypiont: unknown key")
    assert problems[1].startswith("p.yaml:7: keep.path: unknown key")


def test_every_problem_is_reported_at_once() -> None:
    problems = errors_of("""\
        version: 2
        name: Bad Name
        image: "docker-archive:"
        run: {network: bridge, ready: {log: "(unclosed"}}
        smoke:
          - sleep: soon
          - http: {url: "ftp://x"}
          - exec: []
        """)
    text = "\n".join(problems)
    assert "p.yaml:1: version: unsupported profile version 2" in text
    assert "p.yaml:2: name: expected [a-z0-9][a-z0-9._-]*" in text
    assert "p.yaml:3: image:" in text
    assert "p.yaml:4: run.network: expected one of none, host, got 'bridge'" in text
    assert "p.yaml:4: run.ready.log: invalid regular expression" in text
    assert "p.yaml:6: smoke[0].sleep: expected a positive duration" in text
    assert "p.yaml:7: smoke[1].http.url: expected an http:// or https:// URL" in text
    assert "p.yaml:8: smoke[2].exec: expected a non-empty list" in text


def test_required_fields() -> None:
    problems = errors_of("name: app\n")
    assert "p.yaml:1: version: required" in problems
    assert "p.yaml:1: image: required" in problems


def test_step_with_two_kinds_is_rejected() -> None:
    problems = errors_of("""\
        version: 1
        name: app
        image: app:1
        smoke:
          - sleep: 1s
            exec: ["true"]
        """)
    assert problems == ["p.yaml:5: smoke[0]: expected exactly one of http, tcp, exec, command, "
                        "sleep, got exec, sleep"]


def test_network_steps_need_host_network_and_a_service() -> None:
    problems = errors_of("""\
        version: 1
        name: app
        image: app:1
        run: {mode: job, exit: 3}
        smoke:
          - http: {url: "http://127.0.0.1:8080/"}
          - exec: ["true"]
        """)
    text = "\n".join(problems)
    assert "p.yaml:6: smoke[0].http: needs run.network: host" in text
    assert "p.yaml:6: smoke[0].http: http needs a running service" in text
    assert "p.yaml:7: smoke[1].exec: exec needs a running container" in text


def test_job_fields_are_rejected_in_service_mode() -> None:
    problems = errors_of("""\
        version: 1
        name: app
        image: app:1
        run: {exit: 1}
        """)
    assert problems == ["p.yaml:4: run.exit: only for mode: job"]


def test_paths_must_be_absolute() -> None:
    problems = errors_of("""\
        version: 1
        name: app
        image: app:1
        keep: {paths: ["etc/x"]}
        exclude: ["/ok", "rel/**"]
        """)
    assert problems == [
        "p.yaml:4: keep.paths[0]: expected an absolute path, got 'etc/x'",
        "p.yaml:5: exclude[1]: expected an absolute path, got 'rel/**'",
    ]


def test_invalid_yaml_names_the_line() -> None:
    problems = errors_of("version: 1\nname: [unclosed\nimage: x\n")
    assert len(problems) == 1 and problems[0].startswith("p.yaml:")
    assert "not valid YAML" in problems[0]


def test_load_profile_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="nope.yaml: no such profile file"):
        load_profile(tmp_path / "nope.yaml")


def test_every_shipped_profile_is_valid() -> None:
    profiles = sorted(Path(__file__).resolve().parent.parent.joinpath("profiles").glob("*.yaml"))
    assert profiles, "profiles/ must hold the ready profiles"
    for path in profiles:
        load_profile(path)


def test_version_must_be_the_integer_1_and_name_a_string() -> None:
    problems = errors_of("version: 1.0\nname: 12\nimage: app:1\n")
    assert problems[0].startswith("p.yaml:1: version: unsupported profile version 1.0")
    assert problems[1] == "p.yaml:2: name: expected a string, got 12; quote it"


def test_smoke_steps_only_talk_to_loopback() -> None:
    problems = errors_of("""\
        version: 1
        name: app
        image: app:1
        run: {network: host}
        smoke:
          - http: {url: "http://10.0.0.5:8080/"}
          - http: {url: "http://127.0.0.2:8080/"}
          - tcp: {port: 80, host: 192.168.1.1}
        """)
    assert problems == [
        "p.yaml:6: smoke[0].http.url: only loopback addresses are allowed (127.0.0.1, "
        "localhost, ::1), got '10.0.0.5'",
        "p.yaml:8: smoke[2].tcp.host: only loopback addresses are allowed",
    ]
