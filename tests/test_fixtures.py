"""The fixture images behave as the rest of the suite assumes, on the ORIGINAL images.

Every integration test of the minimizer compares a minimized image with its original; that
comparison proves nothing unless the original really serves its page, answers its URLs,
passes its hard-case checks and has the layer structure the flattener is meant to handle.
The sabotage tests prove the in-image checks can fail: remove the file a careless
minimizer would drop, and the check that guards it must report FAIL.

Images come from scripts/fixtures/build. The last part checks the shipped profiles
(profiles/*.yaml): they load, and their smoke tests pass on the original images, which
the profile reference (docs/profile.md) requires before any minimization can prove anything.
"""

from __future__ import annotations

import contextlib
import decimal
import hashlib
import io
import json
import re
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import FIXTURE_IMAGES
from docker import DockerClient
from docker.models.containers import Container
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

from tracer.profile.load import load_profile
from tracer.profile.model import (
    CommandStep,
    ExecStep,
    HttpStep,
    Profile,
    SleepStep,
    SmokeStep,
)

NGINX_PORT = 8080
PYAPP_PORT = 8081
READY_DEADLINE = 60.0  # seconds a service may take to start listening

# every fixture the build script makes (conftest lists them): a new one is covered at once
FIXTURE_NAMES = [name for name in FIXTURE_IMAGES if name != "base"]
HARDCASES_CHECKS = ["privlib", "plugin", "nss", "iconv", "locale", "timezone", "ca", "exec"]
LAYERS_CHECKS = [
    "whiteout",
    "opaque-dir",
    "file-to-dir",
    "dir-to-file",
    "hardlink",
    "setuid",
    "capability",
    "symlink-chain",
]


def _name(prefix: str) -> str:
    """A container name no parallel run can collide with."""
    return f"tracer-test-{prefix}-{uuid.uuid4().hex[:12]}"


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait_port_free(port: int) -> None:
    """Host networking shares ports: wait for another run's server, then fail clearly."""
    deadline = time.monotonic() + READY_DEADLINE
    while _port_in_use(port):
        if time.monotonic() > deadline:
            pytest.fail(f"port {port} on 127.0.0.1 is busy; stop whatever listens there")
        time.sleep(0.5)


@contextlib.contextmanager
def _service(
    docker_client: DockerClient, image: str, port: int | None, prefix: str, **kwargs: object
) -> Iterator[Container]:
    """Run a service image until `port` accepts (host networking), or at once when it has
    no port (network none, checked by its log instead); always remove it."""
    if port is not None:
        _wait_port_free(port)
    network = "host" if port is not None else kwargs.pop("network_mode", "none")
    container = docker_client.containers.run(
        image, detach=True, network_mode=network, name=_name(prefix), **kwargs
    )
    try:
        deadline = time.monotonic() + READY_DEADLINE
        while port is not None and not _port_in_use(port):
            container.reload()
            if container.status not in ("created", "running"):
                logs = container.logs().decode(errors="replace")
                pytest.fail(f"{image} exited ({container.status}) before listening:\n{logs}")
            if time.monotonic() > deadline:
                pytest.fail(f"{image} did not listen on {port} within {READY_DEADLINE}s")
            time.sleep(0.2)
        yield container
    finally:
        container.remove(force=True)


def _get(url: str) -> tuple[int, str]:
    """GET a URL; an HTTP error status is an answer, not an exception."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@dataclass
class JobResult:
    exit_code: int
    stdout: str
    stderr: str

    def lines(self) -> list[str]:
        return self.stdout.splitlines()


def _run_job(docker_client: DockerClient, image: str, prefix: str, **kwargs: object) -> JobResult:
    """Run a job image to completion with no network; always remove the container."""
    return _run_job_on(docker_client, image, prefix, "none", **kwargs)


def _run_job_on(
    docker_client: DockerClient, image: str, prefix: str, network: str, **kwargs: object
) -> JobResult:
    """Run an image to completion; always remove the container."""
    container = docker_client.containers.run(
        image, detach=True, network_mode=network, name=_name(prefix), **kwargs
    )
    try:
        status = container.wait(timeout=120)
        return JobResult(
            exit_code=status["StatusCode"],
            stdout=container.logs(stdout=True, stderr=False).decode(errors="replace"),
            stderr=container.logs(stdout=False, stderr=True).decode(errors="replace"),
        )
    finally:
        container.remove(force=True)


def _status_of(result: JobResult, check: str) -> str:
    """'ok' / 'FAIL' as printed on the check's line (`name: ok detail`)."""
    for line in result.lines():
        name, _, rest = line.partition(": ")
        if name == check:
            return rest.split(" ", 1)[0]
    raise AssertionError(f"no line for check {check!r} in output:\n{result.stdout}")


# --- nginx ---------------------------------------------------------------------------


@pytest.mark.integration
def test_nginx_serves_page_and_dlopened_module(docker_client, fixture_image) -> None:
    with _service(docker_client, fixture_image("nginx"), NGINX_PORT, "nginx") as container:
        status, body = _get(f"http://127.0.0.1:{NGINX_PORT}/")
        assert status == 200
        assert "tracer-nginx-fixture-page" in body

        # /echo is answered by the dynamic echo module: the dlopen hard case.
        status, body = _get(f"http://127.0.0.1:{NGINX_PORT}/echo")
        assert (status, body.strip()) == (200, "tracer-echo-module-ok")

        status, _ = _get(f"http://127.0.0.1:{NGINX_PORT}/no-such-page")
        assert status == 404

        code, output = container.exec_run(["nginx", "-t"])
        assert code == 0
        assert b"syntax is ok" in output


@pytest.mark.integration
def test_nginx_echo_module_is_a_dlopened_plugin(docker_client, fixture_image) -> None:
    """The module is a separate .so named only in a load_module line, not a DT_NEEDED:
    without that line the configuration that uses `echo` no longer parses."""
    script = (
        "cat /etc/nginx/modules-enabled/*echo*.conf"
        " && test -f /usr/lib/nginx/modules/ngx_http_echo_module.so"
        " && nginx -t 2>&1"
        " && rm /etc/nginx/modules-enabled/*echo*.conf"
        " && nginx -t 2>&1; echo exit=$?"
    )
    result = _run_job(
        docker_client,
        fixture_image("nginx"),
        "nginx-mod",
        entrypoint=["/bin/sh", "-c"],
        command=[script],
    )
    assert "load_module modules/ngx_http_echo_module.so;" in result.stdout
    assert "syntax is ok" in result.stdout  # first nginx -t, module present
    assert 'unknown directive "echo"' in result.stdout  # second, module line removed
    assert result.stdout.rstrip().endswith("exit=1")


# --- pyapp ---------------------------------------------------------------------------


@pytest.mark.integration
def test_pyapp_answers_every_url(docker_client, fixture_image) -> None:
    data = b"tracer " * 100
    expected = {
        "/": "tracer-pyapp-ok",
        "/json": '{"app": "tracer-pyapp", "items": [1, 2, 3]}',
        "/sqlite": "sqlite-sum=55",
        "/hash": "sha256=" + hashlib.sha256(b"tracer").hexdigest(),
        "/decimal": "decimal="
        + str(decimal.Context(prec=30).divide(decimal.Decimal(1), decimal.Decimal(7))),
        "/zlib": f"zlib-crc32={zlib.crc32(data)} roundtrip=True",
        "/xml": "xml-items=a,b,c",
    }
    with _service(docker_client, fixture_image("pyapp"), PYAPP_PORT, "pyapp"):
        for path, body in expected.items():
            assert _get(f"http://127.0.0.1:{PYAPP_PORT}{path}") == (200, body + "\n"), path
        assert _get(f"http://127.0.0.1:{PYAPP_PORT}/no-such-url")[0] == 404


@pytest.mark.integration
def test_pyapp_extension_modules_are_not_loaded_at_startup(docker_client, fixture_image) -> None:
    """The lazy imports really are lazy: a run that never hits the URLs never loads them."""
    with _service(docker_client, fixture_image("pyapp"), PYAPP_PORT, "pyapp-lazy") as container:
        code, maps = container.exec_run(["cat", "/proc/1/maps"])
        assert code == 0
        assert b"python3" in maps
        for ext in (b"_sqlite3", b"_hashlib", b"_decimal", b"pyexpat"):
            assert ext not in maps, ext
        _get(f"http://127.0.0.1:{PYAPP_PORT}/sqlite")
        _, maps = container.exec_run(["cat", "/proc/1/maps"])
        assert b"_sqlite3" in maps
        assert b"libsqlite3" in maps


# --- hardcases -----------------------------------------------------------------------


@pytest.mark.integration
def test_hardcases_all_checks_pass(docker_client, fixture_image) -> None:
    result = _run_job(docker_client, fixture_image("hardcases"), "hardcases")
    assert result.exit_code == 0, result.stdout + result.stderr
    for check in HARDCASES_CHECKS:
        assert _status_of(result, check) == "ok", result.stdout
    assert result.lines()[-1] == "hardcases: all ok"


@pytest.mark.integration
def test_hardcases_binary_uses_runpath_origin(docker_client, fixture_image) -> None:
    """The private library is reachable only through RUNPATH $ORIGIN/../lib."""
    image = docker_client.images.get(fixture_image("hardcases"))
    container = docker_client.containers.create(image, name=_name("hardcases-elf"))
    try:
        stream, _ = container.get_archive("/opt/hard/bin/hard")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as outer:
            member = outer.extractfile("hard")
            assert member is not None
            elf = ELFFile(io.BytesIO(member.read()))
        tags: dict[str, list] = {}
        for section in elf.iter_sections():
            if isinstance(section, DynamicSection):
                for tag in section.iter_tags():
                    tags.setdefault(tag.entry.d_tag, []).append(tag)
    finally:
        container.remove(force=True)
    assert [t.runpath for t in tags["DT_RUNPATH"]] == ["$ORIGIN/../lib"]
    assert "libhardpriv.so" in [t.needed for t in tags["DT_NEEDED"]]


# Each entry: the check, and a shell command deleting what that check depends on.
SABOTAGE = {
    "plugin": "rm /opt/hard/plugins/libplug_zebra.so",
    "nss": "rm /usr/lib/*/libnss_compat.so.2",
    "iconv": "rm /usr/lib/*/gconv/ISO8859-15.so",
    "locale": "rm /usr/lib/locale/locale-archive",
    "timezone": "rm /usr/share/zoneinfo/Europe/Berlin",
    "ca": "rm /etc/ssl/certs/ca-certificates.crt",
    "exec": "rm /usr/bin/tr",
}


@pytest.mark.integration
@pytest.mark.parametrize("check", sorted(SABOTAGE))
def test_hardcases_check_fails_when_its_file_is_missing(
    docker_client, fixture_image, check
) -> None:
    result = _run_job(
        docker_client,
        fixture_image("hardcases"),
        f"hardcases-{check}",
        entrypoint=["/bin/sh", "-c"],
        command=[f"{SABOTAGE[check]} && exec /opt/hard/bin/hard"],
    )
    assert result.exit_code == 1, result.stdout + result.stderr
    assert _status_of(result, check) == "FAIL", result.stdout
    others = [c for c in HARDCASES_CHECKS if c != check]
    assert all(_status_of(result, c) == "ok" for c in others), result.stdout


@pytest.mark.integration
def test_hardcases_fails_to_start_without_private_library(docker_client, fixture_image) -> None:
    result = _run_job(
        docker_client,
        fixture_image("hardcases"),
        "hardcases-privlib",
        entrypoint=["/bin/sh", "-c"],
        command=["rm /opt/hard/lib/libhardpriv.so && exec /opt/hard/bin/hard"],
    )
    assert result.exit_code == 127
    assert "libhardpriv.so" in result.stderr


# --- layers --------------------------------------------------------------------------


@pytest.mark.integration
def test_layers_runtime_checks_pass(docker_client, fixture_image) -> None:
    result = _run_job(docker_client, fixture_image("layers"), "layers")
    assert result.exit_code == 0, result.stdout + result.stderr
    for check in LAYERS_CHECKS:
        assert _status_of(result, check) == "ok", result.stdout
    assert result.lines()[-1] == "layers: all ok"


@pytest.mark.integration
@pytest.mark.parametrize(
    ("check", "sabotage"),
    [
        ("symlink-chain", "rm /data/c"),
        ("capability", "setcap -r /usr/local/bin/cap-true"),
        ("setuid", "chmod u-s /usr/local/bin/suid-true"),
        ("whiteout", "echo back > /data/deleted"),
        ("opaque-dir", "echo old > /d/old-only"),
    ],
)
def test_layers_check_fails_when_broken(docker_client, fixture_image, check, sabotage) -> None:
    result = _run_job(
        docker_client,
        fixture_image("layers"),
        f"layers-{check}",
        entrypoint=["/bin/sh", "-c"],
        command=[f"{sabotage} && exec /usr/local/bin/check-layers"],
    )
    assert result.exit_code == 1, result.stdout
    assert _status_of(result, check) == "FAIL", result.stdout


@dataclass
class Entry:
    """One member of one layer tarball, as `docker save` wrote it."""

    layer: int
    name: str
    type: bytes
    mode: int
    linkname: str
    pax: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def layer_entries(
    docker_client: DockerClient,
    fixture_image: Callable[[str], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> list[Entry]:
    """Every member of every layer of the saved layers image, in layer order."""
    image = docker_client.images.get(fixture_image("layers"))
    archive = Path(tmp_path_factory.mktemp("layers-save")) / "image.tar"
    with archive.open("wb") as out:
        for chunk in image.save(named=True):
            out.write(chunk)
    entries: list[Entry] = []
    with tarfile.open(archive) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))
        for index, layer_name in enumerate(manifest[0]["Layers"]):
            with tarfile.open(fileobj=outer.extractfile(layer_name)) as layer:
                for m in layer:
                    entries.append(
                        Entry(
                            index,
                            m.name.removeprefix("./").rstrip("/"),
                            m.type,
                            m.mode,
                            m.linkname,
                            dict(m.pax_headers),
                        )
                    )
    return entries


def _find(entries: list[Entry], name: str) -> list[Entry]:
    return [e for e in entries if e.name == name]


@pytest.mark.integration
def test_layers_image_has_many_layers(docker_client, fixture_image, layer_entries) -> None:
    image = docker_client.images.get(fixture_image("layers"))
    assert len(image.attrs["RootFS"]["Layers"]) >= 12
    assert len({e.layer for e in layer_entries}) >= 12


@pytest.mark.integration
def test_layers_whiteout_and_opaque_entries_are_in_the_tarballs(layer_entries) -> None:
    (created,) = [e for e in _find(layer_entries, "data/deleted") if e.type == tarfile.REGTYPE]
    (whiteout,) = _find(layer_entries, "data/.wh.deleted")
    assert whiteout.layer > created.layer

    (opaque,) = _find(layer_entries, "d/.wh..wh..opq")
    new_f = [e for e in _find(layer_entries, "d/f") if e.layer == opaque.layer]
    assert new_f, "the opaque layer must carry the recreated d/f"
    assert any(e.layer < opaque.layer for e in _find(layer_entries, "d/old-only"))

    (hl_whiteout,) = _find(layer_entries, "data/.wh.hl-a")
    group = [e for e in layer_entries if e.name in ("data/hl-a", "data/hl-b", "data/hl-c")]
    assert {e.layer for e in group} == {group[0].layer} and group[0].layer < hl_whiteout.layer
    links = [e for e in group if e.type == tarfile.LNKTYPE]
    assert len(links) == 2 and {e.linkname.removeprefix("./") for e in links} == {"data/hl-a"}


@pytest.mark.integration
def test_layers_type_replacements_are_in_the_tarballs(layer_entries) -> None:
    f2d = _find(layer_entries, "data/f2d")
    assert [e.type for e in f2d] == [tarfile.REGTYPE, tarfile.DIRTYPE]
    d2f = [
        e for e in _find(layer_entries, "data/d2f") if e.type in (tarfile.REGTYPE, tarfile.DIRTYPE)
    ]
    assert [e.type for e in d2f] == [tarfile.DIRTYPE, tarfile.REGTYPE]


@pytest.mark.integration
def test_layers_setuid_and_capability_are_in_the_tarballs(layer_entries) -> None:
    (suid,) = _find(layer_entries, "usr/local/bin/suid-true")
    assert suid.mode & 0o4000
    (cap,) = _find(layer_entries, "usr/local/bin/cap-true")
    assert "SCHILY.xattr.security.capability" in cap.pax


@pytest.mark.integration
def test_layers_symlink_chain_spans_three_layers(layer_entries) -> None:
    (a,) = _find(layer_entries, "data/a")
    (b,) = _find(layer_entries, "data/b")
    (c,) = _find(layer_entries, "data/c")
    assert (a.type, a.linkname) == (tarfile.SYMTYPE, "b")
    assert (b.type, b.linkname) == (tarfile.SYMTYPE, "c")
    assert c.type == tarfile.REGTYPE
    assert len({a.layer, b.layer, c.layer}) == 3


# --- scripts/fixtures/build -----------------------------------------------------------

BUILD_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "fixtures" / "build"


def _build(*args: str, script: Path = BUILD_SCRIPT) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(script), *args], capture_output=True, text=True, timeout=1800
    )


@pytest.mark.integration
def test_build_script_second_run_only_checks(docker_client, fixture_image) -> None:
    for name in FIXTURE_NAMES:
        fixture_image(name)  # skip (or fail in CI) when a fixture was never built
    _build()  # bring everything up to date, whatever the state
    result = _build()
    assert result.returncode == 0, result.stderr
    for name in FIXTURE_NAMES:
        assert f"fixtures: {name}: tracer-fixture/{name}:test up to date" in result.stdout
    assert "building" not in result.stdout
    for name in FIXTURE_NAMES:
        labels = docker_client.images.get(fixture_image(name)).labels
        assert len(labels["tracer.fixture.hash"]) == 64
        assert labels["tracer.fixture.name"] == name


@pytest.mark.integration
def test_build_script_names_the_fixture_that_failed(docker_client, fixture_image, tmp_path) -> None:
    """A changed, broken build context fails loudly and leaves the existing image alone."""
    before = docker_client.images.get(fixture_image("layers")).id
    copy = tmp_path / "fixtures"
    shutil.copytree(BUILD_SCRIPT.parent, copy)
    (copy / "layers" / "Dockerfile").write_text(
        "FROM tracer-fixture/base:bookworm\nRUN echo broken-on-purpose && false\n"
    )
    result = _build("layers", script=copy / "build")
    assert result.returncode != 0
    assert "fixtures: ERROR: layers: docker build of tracer-fixture/layers:test" in result.stderr
    assert "build context changed" in result.stdout
    assert docker_client.images.get(fixture_image("layers")).id == before


def test_build_script_rejects_unknown_fixture() -> None:
    result = _build("no-such-fixture")
    assert result.returncode == 1
    assert "unknown fixture 'no-such-fixture'" in result.stderr


# --- profiles/*.yaml ------------------------------------------------------------------

PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"
PROFILE_NAMES = FIXTURE_NAMES


def _load_profile(name: str) -> Profile:
    """Load with the real parser: a shipped profile the parser rejects is a defect."""
    return load_profile(PROFILES_DIR / f"{name}.yaml")


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_profile_loads_and_targets_its_fixture(name) -> None:
    profile = _load_profile(name)
    assert profile.name == name
    assert profile.image == f"docker-daemon:tracer-fixture/{name}:test"
    assert profile.smoke, "a profile without smoke steps proves nothing"
    assert "/usr/share/doc/**" in profile.exclude
    assert "/usr/share/man/**" in profile.exclude
    if profile.run.mode == "job":
        assert profile.run.stdout, "a job profile must say what a good run prints"
    else:
        assert profile.run.ready.tcp or profile.run.ready.log, \
            "a service profile must say when it is up"


def _run_kwargs(profile: Profile) -> dict[str, object]:
    """docker SDK arguments for the profile's `run` section (defaults from the image)."""
    run = profile.run
    kwargs: dict[str, object] = {"network_mode": run.network, "environment": dict(run.env)}
    if run.entrypoint is not None:
        kwargs["entrypoint"] = run.entrypoint
    if run.cmd is not None:
        kwargs["command"] = run.cmd
    if run.user is not None:
        kwargs["user"] = run.user
    if run.workdir is not None:
        kwargs["working_dir"] = run.workdir
    if run.tmpfs:
        kwargs["tmpfs"] = {path: "" for path in run.tmpfs}
    return kwargs


def _check_output(label: str, pattern: str | None, text: str) -> None:
    if pattern is not None:
        assert re.search(pattern, text), f"{label}: /{pattern}/ not found in:\n{text}"


def _run_step(
    docker_client: DockerClient, profile: Profile, container: Container | None, smoke: SmokeStep
) -> None:
    """Execute one smoke step the way docs/profile.md defines it; assert it passed."""
    step, label = smoke.step, smoke.label
    if isinstance(step, HttpStep):
        status, body = _get(step.url)
        if step.status is not None:
            assert status == step.status, f"{label}: status {status}"
        _check_output(f"{label}.body", step.body, body)
    elif isinstance(step, ExecStep):
        assert container is not None, f"{label}: exec needs a running service"
        code, (out, err) = container.exec_run(step.argv, demux=True)
        assert code == step.exit, f"{label}: exit {code}"
        _check_output(f"{label}.stdout", step.stdout, (out or b"").decode())
        _check_output(f"{label}.stderr", step.stderr, (err or b"").decode())
    elif isinstance(step, CommandStep):
        kwargs = _run_kwargs(profile)
        kwargs.update(entrypoint=step.argv[:1], command=step.argv[1:])
        network = kwargs.pop("network_mode")
        container_name = _name(f"{profile.name}-cmd")
        one = docker_client.containers.run(
            profile.image.removeprefix("docker-daemon:"),
            detach=True,
            network_mode=network,
            name=container_name,
            **kwargs,
        )
        try:
            code = one.wait(timeout=step.timeout)["StatusCode"]
            out = one.logs(stdout=True, stderr=False).decode(errors="replace")
            err = one.logs(stdout=False, stderr=True).decode(errors="replace")
        finally:
            one.remove(force=True)
        assert code == step.exit, f"{label}: exit {code}\n{out}{err}"
        _check_output(f"{label}.stdout", step.stdout, out)
        _check_output(f"{label}.stderr", step.stderr, err)
    elif isinstance(step, SleepStep):
        time.sleep(step.seconds)
    else:
        pytest.fail(f"{label}: this test does not know how to run a {smoke.kind} step")


@pytest.mark.integration
@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_profile_smoke_passes_on_original_image(docker_client, fixture_image, name) -> None:
    profile = _load_profile(name)
    ref = fixture_image(name)
    assert profile.image == f"docker-daemon:{ref}"
    if profile.run.mode == "job":
        kwargs = _run_kwargs(profile)
        network = kwargs.pop("network_mode")
        result = _run_job_on(docker_client, ref, name, network, **kwargs)
        assert result.exit_code == profile.run.exit, result.stdout + result.stderr
        _check_output("run.stdout", profile.run.stdout, result.stdout)
        _check_output("run.stderr", profile.run.stderr, result.stderr)
        for smoke in profile.smoke:
            _run_step(docker_client, profile, None, smoke)
        return
    kwargs = _run_kwargs(profile)
    if profile.run.ready.tcp is not None:
        assert profile.run.network == "host", "a port is probed on 127.0.0.1"
        kwargs.pop("network_mode")
    with _service(docker_client, ref, profile.run.ready.tcp, name, **kwargs) as container:
        if profile.run.ready.log:
            deadline = time.monotonic() + profile.run.ready.timeout
            while not re.search(profile.run.ready.log, container.logs().decode()):
                assert time.monotonic() < deadline, "ready.log never appeared"
                time.sleep(0.2)
        for smoke in profile.smoke:
            _run_step(docker_client, profile, container, smoke)
