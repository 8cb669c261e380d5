"""Package granularity against the real engine, on the fixture images.

The index answers from flattened fixture images (nothing extracted): Debian's Python
stdlib belongs to libpython3.11-stdlib, a pip-style distribution in /usr/local is its
own unit. Then the end-to-end claim of the package granularity, through `tracer minimize
--granularity file|package`: the codecs
fixture's production uses (another output encoding, another time zone, another output
format) fail on the image minimized at file granularity and pass on the one widened to
whole units, while the profile's smoke test passes on both, and the per-unit sizes add up.
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
from image_builders import flatten_ref

from tracer.explain.runfiles import read_keeplist
from tracer.units import UnitIndex

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent

# (what production does differently, extra env, extra args, stdout that proves it worked)
PRODUCTION = [
    ("latin-9 output", {"PYTHONIOENCODING": "iso-8859-15"}, [],
     re.compile(rb"Gr\xf6\xdfe +5 \xa4\n.*encoding=iso8859-15\n.*report: done\n", re.S)),
    ("another time zone", {"TZ": "America/New_York"}, [],
     re.compile(rb"\nzone=EST\nreport: done\n")),
    ("csv output", {}, ["--format", "csv"],
     re.compile(rb"^name,amount,unit\nGr\xc3\xb6\xc3\x9fe,5,\xe2\x82\xac\n.*report: done\n",
                re.S)),
]


def run_job(image: str, env: dict[str, str], args: list[str]) -> tuple[int, bytes]:
    """Run the image's entrypoint with `args` once, as production would; (exit, stdout).

    Through `docker run`, attached: its stdout is the container's raw bytes (the engine's
    log driver would store them as JSON strings, turning latin-9 bytes into U+FFFD).
    """
    name = f"tracer-test-packages-{uuid.uuid4().hex[:10]}"
    env_args = [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
    try:
        proc = subprocess.run(["docker", "run", "--rm", "--name", name, "--network", "none",
                               *env_args, image, *args], capture_output=True, timeout=180)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    return proc.returncode, proc.stdout


@pytest.mark.parametrize("what", [p[0] for p in PRODUCTION])
def test_production_uses_pass_on_the_original_image(fixture_image, what: str) -> None:
    _, env, args, expected = next(p for p in PRODUCTION if p[0] == what)
    code, out = run_job(fixture_image("codecs"), env, args)
    assert code == 0 and expected.search(out), out


def test_index_of_flattened_fixture_images(fixture_image, tmp_path: Path) -> None:
    flat = flatten_ref(f"docker-daemon:{fixture_image('codecs')}", tmp_path / "codecs")
    root = flat.rootfs()
    index = UnitIndex.build(root, paths=flat.entries)
    assert index.warnings == []
    # the Debian package first, then the stdlib's directory-level unit (all of encodings/)
    enc = "/usr/lib/python3.11/encodings"
    utf8 = index.units_of(f"{enc}/utf_8.py")
    assert [(u.kind, u.name, u.arch) for u in utf8] == [
        ("dpkg", "libpython3.11-minimal", "amd64"), ("python-stdlib", enc, None)]
    assert f"{enc}/iso8859_15.py" in utf8[0].paths
    assert f"{enc}/iso8859_15.py" in utf8[1].paths
    assert index.unit_of("/usr/lib/python3.11/csv.py").kind == "dpkg"
    assert index.unit_of("/lib/x86_64-linux-gnu/libc.so.6").name == "libc6"
    assert index.unit_of("/usr/share/zoneinfo/America/New_York").name == "tzdata"
    site = "/usr/local/lib/python3.11/dist-packages"
    fmt = index.unit_of(f"{site}/reportfmt/textout.py")
    assert (fmt.kind, fmt.name, fmt.version) == ("python-dist", "reportfmt", "1.0")
    assert set(fmt.paths) >= {f"{site}/reportfmt/csvout.py",
                                        f"{site}/reportfmt-1.0.dist-info/RECORD"}
    pyapp = flatten_ref(f"docker-daemon:{fixture_image('pyapp')}", tmp_path / "pyapp")
    pyindex = UnitIndex.build(pyapp.rootfs(), paths=pyapp.entries)
    decoder = pyindex.units_of("/usr/lib/python3.11/json/decoder.py")
    assert [u.kind for u in decoder] == ["dpkg", "python-stdlib"]
    assert "/usr/lib/python3.11/json/encoder.py" in decoder[1].paths
    # every dpkg-listed file of the python3.11 packages is in the image under its name
    for unit in index.find("libpython3.11-stdlib") + index.find("python3.11-minimal"):
        for path in unit.paths:
            assert path.startswith("/usr/share/doc") or path in flat.entries, path


def minimize(granularity: str, tmp_path: Path) -> tuple[str, dict, dict[str, str]]:
    """`tracer minimize profiles/codecs.yaml --granularity G`: (output image, report,
    keep-list lines by path)."""
    output = f"tracer-test/packages-codecs:{granularity}-{uuid.uuid4().hex[:8]}"
    report_path = tmp_path / f"{granularity}.json"
    proc = subprocess.run([sys.executable, "-m", "tracer", "minimize",
                           str(REPO / "profiles" / "codecs.yaml"), "--quiet",
                           "--granularity", granularity, "--output", f"docker-daemon:{output}",
                           "--report", str(report_path)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    keeplist = {p: "; ".join(r) for p, r in
                read_keeplist(tmp_path / f"{granularity}.keeplist").items()}
    return output, json.loads(report_path.read_text()), keeplist


def test_package_granularity_survives_production_uses_file_granularity_does_not(
        docker_client, fixture_image, host_strace, tmp_path: Path) -> None:
    """The whole pipeline at both granularities: both verify; the production uses fail at
    file granularity and pass at package granularity; the report prices each unit."""
    fixture_image("codecs")
    outputs: list[str] = []
    try:
        file_out, file_report, file_kept = minimize("file", tmp_path)
        outputs.append(file_out)
        pkg_out, report, kept = minimize("package", tmp_path)
        outputs.append(pkg_out)
        assert report["verified"] and report["granularity"] == "package"
        assert file_report["granularity"] == "file" and file_report["package_granularity"] is None

        iso = "/usr/lib/python3.11/encodings/iso8859_15.py"
        assert iso not in file_kept
        assert re.search(r"package: package libpython3\.11-minimal, because /usr/lib/python3"
                         r"\.11/\S+ was (opened|looked up) by \S*python3\S* in ", kept[iso])
        assert not any(p.startswith("/usr/share/doc/") for p in kept)

        # the price: what file granularity keeps, per unit, adding up to the totals
        prices = report["package_granularity"]
        assert report["size_file_granularity"] == file_report["size_after"]
        assert prices["file_bytes"] == file_report["size_after"]
        assert prices["package_bytes"] == report["size_after"]
        assert sum(u["added_bytes"] for u in prices["units"]) == prices["added_bytes"] > 0
        assert "/usr/share/doc/**" in prices["expansion"]["default_excludes"]
        assert file_report["size_after"] < report["size_after"] < report["size_before"] * 0.6

        for what, extra_env, args, expected in PRODUCTION:
            code, out = run_job(pkg_out, extra_env, args)
            assert code == 0 and expected.search(out), (what, code, out)
            code, out = run_job(file_out, extra_env, args)
            assert code != 0 or not expected.search(out), (what, "passed at file level")
    finally:
        for ref in outputs:
            with contextlib.suppress(Exception):
                docker_client.images.remove(ref, force=True)
