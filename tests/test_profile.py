"""Profile loading: the format of docs/profile.md, and errors that name file, line and field."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from tracer.budgets import DEFAULT, MiB
from tracer.errors import BadInput
from tracer.profile.checker import parse_duration
from tracer.profile.document import ProfileErrors
from tracer.profile.load import (
    Overrides,
    apply_overrides,
    budgets_of,
    load_profile,
    parse_budget_flags,
)
from tracer.profile.model import CommandStep, ExecStep, HttpStep, SleepStep, TcpStep
from tracer.profile.sections import parse_profile
from tracer.report import describe_checks

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


def test_every_shipped_profile_is_valid_and_names_its_own_fixture() -> None:
    profiles = sorted(Path(__file__).resolve().parent.parent.joinpath("profiles").glob("*.yaml"))
    assert len(profiles) >= 4, "profiles/ must hold the ready profiles"
    for path in profiles:
        profile = load_profile(path)
        assert profile.name == path.stem
        assert profile.image == f"docker-daemon:tracer-fixture/{path.stem}:test"
        assert profile.output == f"docker-daemon:tracer-fixture/{path.stem}:test-min"
        assert profile.smoke, f"{path}: a profile without smoke steps proves nothing"
        assert profile.source == path


@pytest.mark.parametrize("text, line, field", [
    ("version: 1\nname: a\nname: b\nimage: x:1\n", 3, "name"),
    ("version: 1\nname: a\nimage: x:1\nrun:\n  mode: job\n  mode: service\n", 6, "run.mode"),
    ("version: 1\nname: a\nimage: x:1\nsmoke:\n  - command: [a]\n    exit: 0\n"
     "    exit: 1\n", 7, "smoke[0].exit"),
    ("version: 1\nname: a\nimage: x:1\nrun:\n  env:\n    A: '1'\n    A: '2'\n", 7,
     "run.env.A"),
    ("version: 1\nname: a\nimage: x:1\nbudgets:\n  layers: 5\n  layers: 6\n", 6,
     "budgets.layers"),
])
def test_a_duplicate_key_is_an_error_never_the_last_value(text: str, line: int,
                                                          field: str) -> None:
    """YAML loaders keep the last of two equal keys; an operator who pasted a key twice
    must be told, wherever it is, at the line of the second one."""
    with pytest.raises(ProfileErrors) as caught:
        parse_profile(text, "p.yaml")
    assert f"p.yaml:{line}: {field}: duplicate key" in caught.value.problems


@pytest.mark.parametrize("field, yaml_text, lo, hi", [
    ("run.exit", "run: {{mode: job, exit: {v}}}", 0, 255),
    ("run.ready.tcp", "run: {{network: host, ready: {{tcp: {v}}}}}", 1, 65535),
    ("smoke[0].tcp.port", "run: {{network: host}}\nsmoke: [{{tcp: {{port: {v}}}}}]", 1, 65535),
    ("smoke[0].http.status",
     "run: {{network: host}}\nsmoke: [{{http: {{url: 'http://127.0.0.1/', status: {v}}}}}]",
     100, 599),
    ("smoke[0].exit", "smoke: [{{command: [a], exit: {v}}}]", 0, 255),
])
def test_integer_bounds_are_inclusive_and_exact(field: str, yaml_text: str, lo: int,
                                                hi: int) -> None:
    """Both ends of every integer range are accepted, one past either end is refused."""
    head = "version: 1\nname: a\nimage: x:1\n"
    for ok in (lo, hi):
        parse_profile(head + yaml_text.format(v=ok), "p.yaml")
    for bad in (lo - 1, hi + 1):
        with pytest.raises(ProfileErrors, match=rf"{re.escape(field)}: expected an integer "
                                                rf"from {lo} to {hi}"):
            parse_profile(head + yaml_text.format(v=bad), "p.yaml")


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


JOB = """\
version: 1
name: report
image: app:1
run:
  mode: job
"""


def test_stdin_inline_for_the_job_and_for_steps() -> None:
    p = parse_profile(JOB + """\
  stdin: "<items><item>a</item></items>\\n"
smoke:
  - command: ["python3", "-c", "import sys; print(sys.stdin.read())"]
    stdin: |
      line one
      line two
""")
    assert p.run.stdin == b"<items><item>a</item></items>\n"
    assert p.smoke[0].step.stdin == b"line one\nline two\n"


def test_without_stdin_it_is_none_meaning_empty_and_closed() -> None:
    p = parse_profile(JOB + "smoke:\n  - command: [cat]\n")
    assert p.run.stdin is None and p.smoke[0].step.stdin is None


def test_stdin_file_is_read_relative_to_the_profile(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "in.xml").write_text("<x>\u00e9</x>\n", encoding="utf-8")
    (tmp_path / "step.txt").write_text("hello\n")
    prof = tmp_path / "p.yaml"
    prof.write_text(JOB + "  stdin_file: data/in.xml\nsmoke:\n  - command: [cat]\n"
                    "    stdin_file: step.txt\n")
    p = load_profile(prof)
    assert p.run.stdin == "<x>\u00e9</x>\n".encode() and p.smoke[0].step.stdin == b"hello\n"


def test_stdin_file_takes_any_bytes_as_they_are(tmp_path: Path) -> None:
    """A document or an image is no text: every byte value, NULs and invalid UTF-8
    included, reaches the model unchanged."""
    data = bytes(range(256)) + b"\x00\x00\xff\xfe\xc3\x28" + "caf\u00e9".encode("latin-1")
    (tmp_path / "scan.png").write_bytes(data)
    prof = tmp_path / "p.yaml"
    prof.write_text(JOB + "  stdin_file: scan.png\nsmoke:\n  - command: [cat]\n"
                    "    stdin_file: scan.png\n")
    p = load_profile(prof)
    assert p.run.stdin == data and p.smoke[0].step.stdin == data


def test_stdin_file_problems_name_the_field(tmp_path: Path) -> None:
    (tmp_path / "big.txt").write_bytes(b"x" * 2000)
    prof = tmp_path / "p.yaml"
    prof.write_text(JOB + """\
  stdin: inline
  stdin_file: other.txt
smoke:
  - command: [cat]
    stdin_file: missing.txt
  - command: [cat]
    stdin_file: big.txt
  - command: [cat]
    stdin_file: .
""")
    with pytest.raises(ProfileErrors) as info:
        load_profile(prof, Overrides(budgets={"profile_bytes": 1000}))
    problems = [p.replace(str(prof), "p.yaml") for p in info.value.problems]
    assert problems[0] == "p.yaml:7: run.stdin_file: give stdin or stdin_file, not both"
    assert problems[1].startswith("p.yaml:10: smoke[0].stdin_file: 'missing.txt' (relative to ")
    assert problems[1].endswith("): no such file")
    assert problems[2].startswith("p.yaml:12: smoke[1].stdin_file: 'big.txt'")
    assert "over the profile_bytes budget of 1000; raise it with --budget" in problems[2]
    assert problems[3].startswith("p.yaml:14: smoke[2].stdin_file: '.'")
    assert "not a regular file" in problems[3]
    assert len(problems) == 4


def test_stdin_is_only_for_exec_and_command_steps() -> None:
    problems = errors_of("""\
        version: 1
        name: app
        image: app:1
        run: {network: host}
        smoke:
          - http: {url: "http://127.0.0.1:1/"}
            stdin: x
        """)
    assert problems == ["p.yaml:7: smoke[0].stdin: only for exec and command steps, not http"]


def test_unknown_keys_say_did_you_mean() -> None:
    problems = errors_of("""\
        version: 1
        name: app
        image: app:1
        run:
          entrypiont: ["/app"]
        smoke:
          - comand: [x]
        kep: {}
        """)
    assert problems[0].startswith(
        "p.yaml:5: run.entrypiont: unknown key; did you mean 'entrypoint'? (expected one of:")
    assert problems[1].startswith("p.yaml:7: smoke[0].comand: unknown key; did you mean "
                                  "'command'?")
    assert problems[2].startswith("p.yaml:8: kep: unknown key; did you mean 'keep'?")
    assert len(problems) == 3  # the typo'd step kind is one problem, not two
    nothing_close = errors_of("version: 1\nname: a\nimage: a:1\nzzzz: 1\n")
    assert nothing_close[0].startswith("p.yaml:4: zzzz: unknown key (expected one of:")


def test_granularity_and_budgets_in_the_profile() -> None:
    p = parse_profile("""\
version: 1
name: app
image: app:1
keep: {granularity: package}
budgets: {image_bytes: 64GiB, layers: 1000, http_body: 512KiB}
""")
    assert p.keep.granularity == "package"
    assert p.budgets == {"image_bytes": 64 << 30, "layers": 1000, "http_body": 512 << 10}
    b = budgets_of(p)
    assert b.layers == 1000 and b.entries == DEFAULT.entries
    assert parse_profile("version: 1\nname: a\nimage: a:1\n").keep.granularity == "file"


def test_bad_granularity_and_budgets_name_line_and_field() -> None:
    problems = errors_of("""\
        version: 1
        name: app
        image: app:1
        keep: {granularity: pakage}
        budgets:
          layer: 10
          entries: many
          profile_bytes: 10MiB
          http_body: 0
        """)
    assert problems[0] == ("p.yaml:4: keep.granularity: expected one of file, package, deps, got "
                           "'pakage'; did you mean 'package'?")
    assert problems[1].startswith("p.yaml:6: budgets.layer: unknown key; did you mean 'layers'?")
    assert problems[2] == ("p.yaml:7: budgets.entries: expected a positive number or a size "
                           "like 512KiB, 64MiB, 2GiB, got 'many'")
    assert problems[3].startswith("p.yaml:8: budgets.profile_bytes: only --budget "
                                  "profile_bytes=N raises it")
    assert problems[4].startswith("p.yaml:9: budgets.http_body: expected a positive number")


def test_command_line_overrides_win_over_the_profile() -> None:
    p = parse_profile("version: 1\nname: a\nimage: a:1\nkeep: {granularity: package}\n"
                      "budgets: {layers: 1000, entries: 5}\n")
    flags = parse_budget_flags(["layers=2000", "image_bytes=1GiB"])
    assert flags == {"layers": 2000, "image_bytes": 1 << 30}
    o = Overrides(budgets=flags, granularity="file")
    q = apply_overrides(p, o)
    assert q.keep.granularity == "file" and p.keep.granularity == "package"
    assert q.budgets == {"layers": 2000, "entries": 5, "image_bytes": 1 << 30}
    assert apply_overrides(p, Overrides()) is p
    assert o.argv() == ["--budget=image_bytes=1073741824", "--budget=layers=2000",
                        "--granularity=file"]


@pytest.mark.parametrize("flag,message", [
    ("layers", "expected NAME=VALUE"),
    ("layer=3", "unknown budget 'layer'; did you mean 'layers'?"),
    ("layers=many", "budget layers: expected a positive number or size"),
    ("layers=0", "budget layers: expected a positive number or size"),
])
def test_bad_budget_flags_are_bad_input(flag: str, message: str) -> None:
    with pytest.raises(BadInput, match=message.replace("?", "\\?")):
        parse_budget_flags([flag])


def test_keep_binaries_take_absolute_globs_or_bare_program_names() -> None:
    p = parse_profile("version: 1\nname: a\nimage: a:1\n"
                      "keep: {binaries: ['/usr/bin/memc*', '/usr/lib/x/[a-c]?', getent]}\n")
    assert p.keep.binaries == ["/usr/bin/memc*", "/usr/lib/x/[a-c]?", "getent"]
    problems = errors_of("""\
        version: 1
        name: a
        image: a:1
        keep: {binaries: ["memc*", "bin/sh", "", "/x/[\\\\]"]}
        """)
    assert problems == [
        "p.yaml:4: keep.binaries[0]: a glob must be an absolute path (/usr/bin/memc*), got "
        "'memc*'",
        "p.yaml:4: keep.binaries[1]: expected an absolute path or glob (/usr/bin/x, /usr/bin/x*) "
        "or a bare program name, got 'bin/sh'",
        "p.yaml:4: keep.binaries[2]: expected an absolute path or glob (/usr/bin/x, /usr/bin/x*) "
        "or a bare program name, got ''",
        "p.yaml:4: keep.binaries[3]: invalid glob '/x/[\\\\]': unterminated character set at "
        "position 3",
    ]


def test_http_max_body_is_a_size() -> None:
    p = parse_profile("version: 1\nname: a\nimage: a:1\nrun: {network: host}\nsmoke:\n"
                      "  - http: {url: 'http://127.0.0.1:1/', max_body: 64KiB}\n"
                      "  - http: {url: 'http://127.0.0.1:1/'}\n")
    assert p.smoke[0].step.max_body == 64 << 10 and p.smoke[1].step.max_body is None


def test_validate_counts_checks_the_way_minimize_reports_them() -> None:
    service = parse_profile(FULL)
    assert describe_checks(service) == "6 checks (the ready check + 5 smoke steps)"
    job = parse_profile(JOB + "smoke:\n  - command: [x]\n")
    assert describe_checks(job) == "2 checks (the job's own run + 1 smoke step)"


def test_deep_nesting_is_bad_input_with_file_and_line() -> None:
    problems = errors_of("version: 1\nname: a\nimage: a:1\nexclude: " + "[" * 50_000 + "\n")
    assert problems == ["p.yaml:4: nested deeper than 64 levels"]


def test_alias_expansion_is_bounded() -> None:
    lines = ["version: 1", "name: a", "image: a:1",
             'l0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    problems = errors_of("\n".join(lines) + "\nexclude: *a9\n")
    assert len(problems) == 1 and problems[0].startswith("p.yaml:")
    assert "aliases expand the document by more than 100,000 nodes" in problems[0]


def test_a_recursive_alias_is_refused() -> None:
    problems = errors_of("version: 1\nname: a\nimage: a:1\nexclude: &x [*x]\n")
    assert problems == ["p.yaml:4: an alias refers to a node that contains it (a recursive "
                        "structure is not a profile)"]


def test_modest_aliases_still_work() -> None:
    p = parse_profile("version: 1\nname: a\nimage: a:1\nrun: {network: host}\n"
                      "smoke:\n  - &get {http: {url: 'http://127.0.0.1:1/'}}\n  - *get\n"
                      "exclude: &docs ['/usr/share/doc/**']\nkeep: {paths: *docs}\n")
    assert len(p.smoke) == 2 and p.keep.paths == p.exclude == ["/usr/share/doc/**"]


@pytest.mark.parametrize("value,message", [
    ("1" + "0" * 5000, "run.ready.tcp: not a valid value (Exceeds the limit"),
    ("2001-13-45", "run.ready.tcp: not a valid value"),
])
def test_values_yaml_cannot_construct_are_errors(value: str, message: str) -> None:
    problems = errors_of(f"version: 1\nname: a\nimage: a:1\nrun: {{network: host, ready: "
                         f"{{tcp: {value}}}}}\n")
    assert len(problems) == 1 and problems[0].startswith("p.yaml:4: " + message)


def test_pathological_regexes_and_durations_are_errors() -> None:
    problems = errors_of(f"""\
        version: 1
        name: a
        image: a:1
        run: {{mode: job, stdout: "{'(' * 50_000}", stderr: "a{{99999999999}}", timeout: 99999h}}
        """)
    assert problems[0].startswith("p.yaml:4: run.stdout: regular expression too large or too "
                                  "deeply nested")
    assert problems[1].startswith("p.yaml:4: run.stderr: regular expression too large")
    assert problems[2] == "p.yaml:4: run.timeout: at most 24h, got '99999h'"


def test_the_profile_size_is_checked_before_parsing(tmp_path: Path) -> None:
    prof = tmp_path / "big.yaml"
    prof.write_text("version: 1\nname: a\nimage: a:1\n# " + "x" * (2 * MiB) + "\n")
    with pytest.raises(BadInput) as info:
        load_profile(prof)
    assert str(info.value) == (
        f"{prof}: the profile is larger than the profile_bytes budget of 1MiB; if this file is "
        "trusted, raise it with --budget profile_bytes=N (a profile cannot raise it itself)")
    assert load_profile(prof, Overrides(budgets={"profile_bytes": 4 * MiB})).name == "a"


def test_many_problems_are_capped_in_the_message() -> None:
    text = "version: 1\nname: a\nimage: a:1\nexclude:\n" + "  - rel\n" * 500
    with pytest.raises(ProfileErrors) as info:
        parse_profile(text, filename="p.yaml")
    assert len(info.value.problems) == 500
    assert str(info.value).count("\n") == 101 and str(info.value).endswith("... and 400 more "
                                                                        "problems")
