"""Multi-platform images: `--platform` picks one image of an index, `--all-platforms`
minimizes and verifies each and pushes an index of them.

The images are real: one static C program compiled for amd64, i386 and arm64 by the
compilers scripts/setup installs, in images whose configs name those platforms, pushed
as two indexes (amd64 + i386, which the amd64 engine runs natively; amd64 + arm64, which
it cannot run without a binfmt_misc handler, which this host has not).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from registry import (
    Layout,
    Registry,
    manifest_digest,
    program_layer,
    push_layout,
    repo,
    skopeo,
    static_program,
)

from tracer.errors import BadInput
from tracer.image import flatten, open_image, parse_reference
from tracer.image.platforms import Platform, host_platform
from tracer.image.reference import RefOptions

pytestmark = pytest.mark.integration
REPO_DIR = Path(__file__).resolve().parent.parent

PROGRAM = r"""
#include <stdio.h>
int main(void) {
    char buf[64] = {0};
    FILE *f = fopen("/etc/app.conf", "r");
    if (!f || !fgets(buf, sizeof buf, f)) { puts("no conf"); return 1; }
    printf("app ok on %s: %s", ARCH, buf);
    return 0;
}
"""


def tracer(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracer", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO_DIR, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def multi(plain_registry: Registry, tmp_path_factory) -> dict[str, str]:
    if host_platform() != Platform("linux", "amd64"):
        pytest.skip("the two-platform images are made for an amd64 host")
    tmp = tmp_path_factory.mktemp("multi")
    lay = Layout(tmp / "layout")
    images = {}
    for arch in ("amd64", "386", "arm64"):
        program = static_program(tmp, arch, PROGRAM.replace("ARCH", f'"{arch}"'))
        layer = program_layer(program, {"etc/app.conf": b"conf\n",
                                        "etc/unused.dat": b"x" * 200_000})
        images[arch] = lay.image([layer], arch=arch)
    name = repo("multi")
    refs = {"name": name}
    for tag, archs in (("two", ("amd64", "386")), ("arm", ("amd64", "arm64"))):
        index = lay.index([images[a] for a in archs])
        refs[tag] = plain_registry.ref(name, tag)
        assert push_layout(plain_registry, lay.tag(index, tag), refs[tag], index=True) == \
            index["digest"]
        refs[f"{tag}-digest"] = index["digest"]
    for arch, desc in images.items():
        refs[arch] = desc["digest"]
    return refs


def profile(tmp: Path, image: str, output: str) -> Path:
    path = tmp / "multi.yaml"
    path.write_text(yaml.safe_dump({
        "version": 1, "name": "multi", "image": image, "output": output,
        "run": {"mode": "job", "exit": 0, "stdout": "^app ok on [a-z0-9]+: conf$",
                "timeout": "60s"}}, sort_keys=False))
    return path


def test_an_index_gives_the_platform_asked_for(plain_registry: Registry, multi,
                                               tmp_path: Path) -> None:
    def read(platform: Platform | None, work: str):
        ref = parse_reference(multi["arm"]).with_options(
            RefOptions(tls_verify=False, platform=platform))
        with open_image(ref, tmp_path / work) as image:
            pulled = image.pulled
            flat = flatten(image, tmp_path / work / "root")
        return flat, pulled

    flat, pulled = read(Platform("linux", "arm64"), "arm")
    assert flat.config["architecture"] == "arm64"
    assert pulled.platform == "linux/arm64" and pulled.manifest_digest == multi["arm64"]
    assert pulled.input_digest == multi["arm-digest"]  # what the tag named: the index
    flat, pulled = read(None, "default")  # the engine's own platform
    assert flat.config["architecture"] == "amd64" and pulled.manifest_digest == multi["amd64"]
    with pytest.raises(BadInput, match=r"has no linux/s390x image \(it has: linux/amd64, "
                                       r"linux/arm64\)"):
        read(Platform("linux", "s390x"), "none")
    done = tracer("ldd", multi["arm"], "--platform", "linux/ppc64le", "--tls-verify=false")
    assert done.returncode == 2 and "it has: linux/amd64, linux/arm64" in done.stderr


def test_all_platforms_refuses_when_a_platform_cannot_run_here(
        plain_registry: Registry, multi, host_strace, tmp_path: Path) -> None:
    """The decision pinned: a platform this host cannot run fails the run (exit 4) before
    any work, naming it and why; nothing is written (an index without it would break
    every node of that platform)."""
    out = plain_registry.ref(multi["name"], "arm-min")
    done = tracer("minimize", str(profile(tmp_path, multi["arm"], out)), "--all-platforms",
                  "--tls-verify=false")
    assert done.returncode == 4, done.stderr
    assert "1 of the 2 platforms" in done.stderr and "linux/arm64" in done.stderr
    assert "binfmt_misc" in done.stderr and "nothing was done" in done.stderr
    assert "traced run" not in done.stderr
    assert manifest_digest(plain_registry, out) is None


def test_all_platforms_minimizes_each_and_pushes_an_index(
        plain_registry: Registry, multi, host_strace, docker_client, tmp_path: Path) -> None:
    out = plain_registry.ref(multi["name"], "two-min")
    report_path = tmp_path / "r.json"
    done = tracer("minimize", str(profile(tmp_path, multi["two"], out)), "--all-platforms",
                  "--tls-verify=false", "--report", str(report_path))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    assert report["verified"] is True and report["platform"] == "linux/amd64"
    assert [(p["platform"], p["verified"], p["platform_runs"]) for p in report["platforms"]] \
        == [("linux/amd64", True, "native"), ("linux/386", True, "native")]
    other = json.loads((tmp_path / "r.linux-386.json").read_text())
    assert other["platform"] == "linux/386" and other["input_digest"] == multi["two-digest"]
    assert Path(other["keeplist_file"]).exists()
    for p in report["platforms"]:
        assert p["size_after"] < p["size_before"]  # /etc/unused.dat is gone

    raw = skopeo("inspect", "--raw", "--tls-verify=false", out)
    index = json.loads(raw.stdout)
    assert manifest_digest(plain_registry, out) == report["output_digest"]
    assert [(m["platform"]["os"], m["platform"]["architecture"]) for m in index["manifests"]] \
        == [("linux", "amd64"), ("linux", "386")]

    # each platform's image, pulled back by the reference client, runs and passes
    for arch in ("amd64", "386"):
        local = f"tracer-test/multi:{arch}-{uuid.uuid4().hex[:8]}"
        copied = skopeo("--override-arch", arch, "copy", "--quiet", "--src-tls-verify=false",
                        out, f"docker-daemon:{local}")
        assert copied.returncode == 0, copied.stderr
        try:
            run = subprocess.run(["docker", "run", "--rm", "--network", "none", local],
                                 capture_output=True, text=True, timeout=120)
            assert run.returncode == 0, run.stderr
            assert run.stdout.strip() == f"app ok on {arch}: conf"
        finally:
            subprocess.run(["docker", "rmi", "-f", local], capture_output=True)

    again = tracer("minimize", str(profile(tmp_path, multi["two"], out)), "--all-platforms",
                   "--tls-verify=false", "--report", str(report_path))
    assert again.returncode == 0, again.stderr
    assert json.loads(report_path.read_text())["output_unchanged"] is True
