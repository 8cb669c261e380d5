"""`tracer init`: a starting profile from the image config that validates as written,
and, for a service with an exposed port and a healthcheck, minimizes as is."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import uuid
from pathlib import Path

import jsonschema
import pytest
import yaml
from image_builders import M, docker_archive, flat_from_layers, layer
from prereq import missing

from tracer.image.config import ImageConfig
from tracer.image.reference import parse_reference
from tracer.profile.schema import json_schema_text
from tracer.profile.sections import parse_profile
from tracer.profile.starter import (
    Companions,
    find_companions,
    healthcheck_argv,
    profile_name,
    quote,
    render_profile,
)
from tracer.rootfs import RootFS

REPO = Path(__file__).resolve().parent.parent
BOOKWORM_ROOT = Path("/var/cache/tracer/rootfs-bookworm")
SCHEMA = json.loads(json_schema_text())


def tracer(*args: str, cwd: Path = REPO, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracer", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout)


def valid(text: str):
    """The profile as tracer loads it; it also passes the shipped JSON Schema."""
    jsonschema.validate(yaml.safe_load(text), SCHEMA)
    return parse_profile(text, filename="init.yaml")


SERVICE = ImageConfig(
    entrypoint=["/docker-entrypoint.sh"], cmd=["nginx", "-g", "daemon off;"],
    env={"PATH": "/usr/sbin:/usr/bin", "LANG": "de_DE.UTF-8", "TZ": "Europe/Berlin",
         "NGINX_VERSION": "1.25"},
    user="www-data", workdir="/srv", exposed_ports=["443/tcp", "80/tcp", "53/udp"],
    volumes=["/var/cache/nginx"],
    healthcheck=["CMD-SHELL", "curl -fsS http://127.0.0.1/ || exit 1"])


def test_a_service_gets_ready_tcp_host_network_and_the_healthcheck_as_exec() -> None:
    comp = Companions("/usr/sbin/nginx", ["nginx-core"], ["/usr/sbin/nginx-debug"])
    text = render_profile(parse_reference("registry.local/web/nginx:1.25"), SERVICE, comp)
    p = valid(text)
    assert p.name == "nginx" and p.image == "docker-daemon:registry.local/web/nginx:1.25"
    assert p.run.entrypoint == ["/docker-entrypoint.sh"]
    assert p.run.cmd == ["nginx", "-g", "daemon off;"]
    assert p.run.user == "www-data" and p.run.workdir == "/srv"
    assert p.run.env == {"LANG": "de_DE.UTF-8", "TZ": "Europe/Berlin"}  # what decides files
    assert p.run.mode == "service" and p.run.network == "host" and p.run.ready.tcp == 80
    assert [s.kind for s in p.smoke] == ["exec"]
    assert p.smoke[0].step.argv == ["/bin/sh", "-c", "curl -fsS http://127.0.0.1/ || exit 1"]
    assert '#   - "/usr/sbin/nginx-debug"' in text and "# binaries:" in text
    assert "(nginx-core)" in text and "NGINX_VERSION" in text and "VOLUME /var/cache/nginx" \
        in text
    assert text.count("# TODO:") >= 4
    assert p.keep.binaries == [] and p.keep.granularity == "file"


def test_nothing_exposed_is_a_job_with_a_todo_for_its_output() -> None:
    cfg = ImageConfig(cmd=["python3", "/app/report.py"], healthcheck=["CMD", "true"])
    text = render_profile(parse_reference("oci:/srv/images/report:v2"), cfg, Companions(
        note="x"))
    p = valid(text)
    assert p.run.mode == "job" and p.run.network == "none" and p.run.exit == 0
    assert p.run.entrypoint is None and p.run.cmd == ["python3", "/app/report.py"]
    assert p.smoke == [] and p.name == "report"
    assert "# TODO: give stdout" in text and "stdin is empty and closed" in text
    assert "HEALTHCHECK needs a running service" in text


def test_healthcheck_forms() -> None:
    assert healthcheck_argv(["CMD", "/bin/app", "--check"]) == ["/bin/app", "--check"]
    assert healthcheck_argv(["CMD-SHELL", "a | b"]) == ["/bin/sh", "-c", "a | b"]
    assert healthcheck_argv(["NONE"]) is None and healthcheck_argv([]) is None


def test_an_image_without_a_command_still_validates() -> None:
    cfg = ImageConfig(exposed_ports=["5432"])
    p = valid(render_profile(parse_reference("docker-archive:/tmp/db.tar"), cfg, Companions()))
    assert p.name == "db" and p.run.ready.tcp == 5432 and p.smoke == []


def test_hostile_image_strings_stay_inside_their_values() -> None:
    """Env values, commands and file names come from an untrusted image."""
    evil = 'x"\n  user: root\n\\ \x00\x7f\x85\u2028\ufeff\U0001f600 \t#'
    cfg = ImageConfig(entrypoint=[evil], cmd=[evil], env={"LANG": evil, f"K{evil}": "v"},
                      user=evil, workdir="/" + evil, exposed_ports=["8080/tcp"],
                      volumes=["/v" + evil], healthcheck=["CMD", evil])
    comp = Companions("/bin/x", [evil], ["/bin/" + evil])
    text = render_profile(parse_reference("evil:1"), cfg, comp)
    p = valid(text)
    assert p.run.entrypoint == [evil] and p.run.cmd == [evil] and p.run.user == evil
    assert p.run.workdir == "/" + evil and p.run.env == {"LANG": evil}
    assert p.smoke[0].step.argv == [evil]
    data = yaml.safe_load(text)
    assert set(data["run"]) == {"entrypoint", "cmd", "user", "workdir", "env", "network",
                                "mode", "ready"}
    assert all(line == "" or line.startswith(("#", " ", "version", "name", "image", "run",
                                              "smoke", "keep", "exclude"))
               for line in text.splitlines())


@pytest.mark.parametrize("value", ["plain", "", "a\"b\\c", "\x01\x1b[31m", "é ü 中",
                                   "\U0001f600", "\ud800"[:0] + "\x85\u2028\u2029"])
def test_quote_reads_back_exactly(value: str) -> None:
    assert yaml.safe_load(f"v: {quote(value)}\n") == {"v": value}


@pytest.mark.parametrize("ref,name", [("nginx", "nginx"), ("a/b/my_app:1", "my_app"),
                                      ("oci:/x/Layout.Dir:t", "layout.dir"),
                                      ("docker-archive:/x/--app.tar", "app")])
def test_profile_names_are_valid(ref: str, name: str) -> None:
    assert profile_name(parse_reference(ref)) == name


def test_companions_come_from_the_entrypoints_debian_packages() -> None:
    """Real dpkg database of the debootstrap root (merged /usr, symlinked programs)."""
    if not (BOOKWORM_ROOT / "var/lib/dpkg/info").is_dir():
        missing(f"{BOOKWORM_ROOT} is not there; run scripts/setup")
    root = RootFS(BOOKWORM_ROOT)
    perl = find_companions(root, ImageConfig(cmd=["perl", "-e", "1"]))
    assert perl.program == "/usr/bin/perl" and perl.packages == ["perl-base"]
    assert perl.programs == ["/usr/bin/perl5.36.0"]
    getent = find_companions(root, ImageConfig(entrypoint=["/bin/sh", "-c"],
                                                cmd=["exec getent passwd"]))
    assert "libc-bin" in getent.packages and "dash" in getent.packages
    assert {"/usr/bin/iconv", "/usr/bin/locale", "/usr/sbin/ldconfig"} <= set(getent.programs)
    assert "/usr/bin/getent" not in getent.programs
    gzip = find_companions(root, ImageConfig(cmd=["/bin/gzip"]))  # /bin is a link to usr/bin
    assert gzip.packages == ["gzip"] and "/usr/bin/zcat" in gzip.programs
    assert "/bin/gzip" not in gzip.programs
    nothing = find_companions(root, ImageConfig(cmd=["/no/such"]))
    assert nothing.programs == [] and "no program found" in nothing.note


def test_companions_from_an_apk_database(tmp_path: Path) -> None:
    installed = (b"P:busybox\nV:1.36\nF:bin\nR:busybox\nR:sh\n\n"
                 b"P:memcached\nV:1.6\nF:usr/bin\nR:memcached\nR:memcflush\nR:memcstat\n"
                 b"F:usr/share/doc\nR:README\n\n")
    flat = flat_from_layers(tmp_path, layer(
        M("bin", "dir"), M("bin/busybox", data=b"x", mode=0o755),
        M("bin/sh", "symlink", linkname="busybox"),
        M("usr", "dir"), M("usr/bin", "dir"),
        M("usr/bin/memcached", data=b"x", mode=0o755),
        M("usr/bin/memcflush", data=b"x", mode=0o755),
        M("usr/bin/memcstat", data=b"x", mode=0o644),  # not executable: no candidate
        M("lib", "dir"), M("lib/apk", "dir"), M("lib/apk/db", "dir"),
        M("lib/apk/db/installed", data=installed)))
    comp = find_companions(flat.rootfs(), ImageConfig(cmd=["memcached", "-u", "nobody"],
                                                      env={"PATH": "/usr/bin:/bin"}))
    assert comp.packages == ["memcached"] and comp.programs == ["/usr/bin/memcflush"]


def test_init_reads_an_archive_end_to_end_and_never_overwrites(tmp_path: Path) -> None:
    """docker-archive input (no engine): config from image_builders.BASE_CONFIG, a dpkg
    database in the layer."""
    archive = docker_archive(tmp_path / "app.tar", [layer(
        M("bin", "dir"), M("bin/app", data=b"#!/bin/sh\n", mode=0o755),
        M("bin/app-ctl", data=b"#!/bin/sh\n", mode=0o755),
        M("var", "dir"), M("var/lib", "dir"), M("var/lib/dpkg", "dir"),
        M("var/lib/dpkg/info", "dir"),
        M("var/lib/dpkg/info/app:amd64.list", data=b"/.\n/bin\n/bin/app\n/bin/app-ctl\n"))],
        repo_tag="hand/app:2")
    out = tmp_path / "app.yaml"
    proc = tracer("init", f"docker-archive:{archive}", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stderr
    text = out.read_text()
    p = valid(text)
    assert p.name == "app" and p.run.entrypoint == ["/bin/app"] and p.run.cmd == ["--serve"]
    assert p.run.user == "1000:1000" and p.run.workdir == "/srv" and p.run.ready.tcp == 8080
    assert p.smoke[0].step.argv == ["/bin/app", "--check"]
    assert '#   - "/bin/app-ctl"' in text and "(app:amd64)" in text
    assert tracer("validate", str(out)).returncode == 0
    again = tracer("init", f"docker-archive:{archive}", "-o", str(out))
    assert again.returncode == 2 and "never overwrites" in again.stderr
    assert out.read_text() == text
    printed = tracer("init", f"docker-archive:{archive}")
    assert printed.returncode == 0 and printed.stdout == text


def test_init_bad_reference_is_exit_2(tmp_path: Path) -> None:
    proc = tracer("init", f"docker-archive:{tmp_path}/none.tar")
    assert proc.returncode == 2 and "none.tar" in proc.stderr


DOCKERFILE = """\
FROM tracer-fixture/base:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends python3 \\
    && rm -rf /var/lib/apt/lists/*
RUN mkdir -p /srv/www && echo tracer-init-page > /srv/www/index.html
WORKDIR /srv/www
ENV LANG=C.UTF-8
EXPOSE 18431
HEALTHCHECK CMD ["python3", "-c", "import urllib.request as u; \\
u.urlopen('http://127.0.0.1:18431/index.html', timeout=5).read()"]
CMD ["python3", "-m", "http.server", "18431", "--bind", "127.0.0.1"]
"""


@pytest.mark.integration
def test_init_output_minimizes_as_is(tmp_path: Path, docker_client, fixture_image,
                                     host_strace) -> None:
    """A python3 http.server image with EXPOSE and HEALTHCHECK: `tracer init` then
    `tracer minimize` on the unchanged profile passes (verified minimized image)."""
    import docker

    fixture_image("base")
    tag = f"tracer-test/profile-init:{uuid.uuid4().hex[:8]}"
    (tmp_path / "Dockerfile").write_text(DOCKERFILE)
    build = subprocess.run(["docker", "build", "--network", "host", "--force-rm", "-q", "-t",
                            tag, str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stderr
    out_ref = f"docker-daemon:{tag}-min"
    try:
        prof = tmp_path / "init.yaml"
        init = tracer("init", f"docker-daemon:{tag}", "-o", str(prof))
        assert init.returncode == 0, init.stderr
        text = prof.read_text()
        p = valid(text)
        assert p.run.mode == "service" and p.run.ready.tcp == 18431
        assert p.smoke[0].kind == "exec" and p.smoke[0].step.argv[0] == "python3"
        assert '#   - "/usr/bin/py3compile"' in text  # from python3's own packages
        run = tracer("minimize", str(prof), "--quiet", "--report", str(tmp_path / "r.json"),
                     timeout=900)
        assert run.returncode == 0, run.stdout + run.stderr
        report = json.loads((tmp_path / "r.json").read_text())
        assert report["verified"] is True and report["output"] == out_ref
    finally:
        for ref in (f"{tag}-min", tag):
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker_client.images.remove(ref, force=True)


def test_a_job_gets_its_own_program_as_the_example_step_and_only_useful_excludes() -> None:
    """The commented step names the image's program, not a placeholder; exclude rules for
    directories the image does not have (apk's cache in a Debian image) are left out."""
    cfg = ImageConfig(entrypoint=["/usr/local/bin/report"])
    comp = Companions(program="/usr/local/bin/report", note="not from a package")
    debian = {"/usr/share/doc", "/usr/share/man", "/var/lib/apt", "/var/cache/apt"}
    text = render_profile(parse_reference("report:1"), cfg, comp, present=debian.__contains__)
    p = valid(text)
    assert '# - command: ["/usr/local/bin/report"]' in text
    assert p.exclude == ["/usr/share/doc/**", "/usr/share/man/**", "/var/lib/apt/**",
                         "/var/cache/apt/**"]
    bare = render_profile(parse_reference("scratch-app:1"), cfg, comp, present=lambda _: False)
    assert valid(bare).exclude == []


def test_init_says_it_is_reading_on_stderr_only(tmp_path: Path) -> None:
    """Reading a big image takes a while: init says so on stderr, so `tracer init IMAGE >
    app.yaml` still gets exactly the profile on stdout."""
    archive = docker_archive(tmp_path / "app.tar", [layer(
        M("bin", "dir"), M("bin/app", data=b"#!/bin/sh\n", mode=0o755))], repo_tag="hand/app:2")
    proc = tracer("init", f"docker-archive:{archive}")
    assert proc.returncode == 0, proc.stderr
    assert "tracer: reading docker-archive:" in proc.stderr and " done in " in proc.stderr
    assert "tracer: " not in proc.stdout
    valid(proc.stdout)
    quiet = tracer("init", f"docker-archive:{archive}", "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == proc.stdout


def test_exposed_ports_that_are_not_plain_numbers_are_left_out() -> None:
    """Image config is hostile input: `²/tcp` or a 5,000-digit port must not crash init."""
    from tracer.image.config import ImageConfig
    from tracer.profile.starter import _tcp_ports

    cfg = ImageConfig(exposed_ports=["²/tcp", "1" * 5000 + "/tcp", "0/tcp", "8080/tcp",
                                     "53/udp", "80"])
    assert _tcp_ports(cfg) == [80, 8080]
