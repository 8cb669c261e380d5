"""Package granularity against the real engine, on the fixture images.

The index answers from flattened fixture images (nothing extracted): Debian's Python
stdlib belongs to libpython3.11-stdlib, a pip-style distribution in /usr/local is its
own unit. Then the end-to-end claim of the package granularity, with the pipeline's own
parts (traced run, ELF closure, keep-list, image writer, smoke runner): the codecs
fixture's production uses (another output encoding, another time zone, another output
format) fail on the image minimized at file granularity and pass on the one widened to
whole units, while the profile's smoke test passes on both, and the per-unit sizes add up.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import uuid
from pathlib import Path

import pytest
from image_builders import flatten_ref

from tracer.budgets import DEFAULT
from tracer.evidence import build_keeplist
from tracer.image import parse_reference
from tracer.image.daemon import EngineImages
from tracer.image.prepare import prepare
from tracer.image.sink import write_image
from tracer.keeplist import KeepList, KeepListBuilder, Reason, size_of
from tracer.pipeline import static_closure
from tracer.profile import load_profile
from tracer.progress import Progress
from tracer.trace.run import run_smoke
from tracer.units import UnitIndex, package_granularity
from tracer.workdir import workdir

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
    assert f"{enc}/iso8859_15.py" in index.files_of(utf8[0])
    assert f"{enc}/iso8859_15.py" in index.files_of(utf8[1])
    assert index.unit_of("/usr/lib/python3.11/csv.py").kind == "dpkg"
    assert index.unit_of("/lib/x86_64-linux-gnu/libc.so.6").name == "libc6"
    assert index.unit_of("/usr/share/zoneinfo/America/New_York").name == "tzdata"
    site = "/usr/local/lib/python3.11/dist-packages"
    fmt = index.unit_of(f"{site}/reportfmt/textout.py")
    assert (fmt.kind, fmt.name, fmt.version) == ("python-dist", "reportfmt", "1.0")
    assert set(index.files_of(fmt)) >= {f"{site}/reportfmt/csvout.py",
                                        f"{site}/reportfmt-1.0.dist-info/RECORD"}
    pyapp = flatten_ref(f"docker-daemon:{fixture_image('pyapp')}", tmp_path / "pyapp")
    pyindex = UnitIndex.build(pyapp.rootfs(), paths=pyapp.entries)
    decoder = pyindex.units_of("/usr/lib/python3.11/json/decoder.py")
    assert [u.kind for u in decoder] == ["dpkg", "python-stdlib"]
    assert "/usr/lib/python3.11/json/encoder.py" in pyindex.files_of(decoder[1])
    # every dpkg-listed file of the python3.11 packages is in the image under its name
    for unit in index.find("libpython3.11-stdlib") + index.find("python3.11-minimal"):
        for path in index.files_of(unit):
            assert path.startswith("/usr/share/doc") or path in flat.entries, path


def rebuild(profile, prepared, file_level: KeepList) -> KeepListBuilder:
    """A builder holding the file-level evidence (the pipeline keeps its own builder)."""
    flat = prepared.flat
    builder = KeepListBuilder(flat.entries, prepared.root, profile.keep.paths, profile.exclude,
                              hardlink_group=flat.hardlink_group)
    for path, reasons in file_level.kept.items():
        for reason in reasons:
            builder.add(path, reason, follow=False)
    builder.add_keep_paths()
    return builder


def test_package_granularity_survives_production_uses_file_granularity_does_not(
        docker_client, fixture_image, host_strace) -> None:
    fixture_image("codecs")
    profile = load_profile(REPO / "profiles" / "codecs.yaml")
    progress = Progress(quiet=True)
    engine = EngineImages()
    tags: list[str] = []
    try:
        with workdir("tracer-test-packages-") as work:
            prepared = prepare(profile.image, profile.name, work / "input", engine, progress, {})
            flat = prepared.flat
            trace = run_smoke(profile, prepared.engine_ref, traced=True,
                              workdir=work / "trace", progress=progress)
            assert trace.passed, trace.failure
            closure, binaries = static_closure(profile, prepared, trace, DEFAULT)
            file_level = build_keeplist(profile, prepared, trace, closure, binaries)

            builder = rebuild(profile, prepared, file_level)
            assert builder.build().kept.keys() == file_level.kept.keys()
            env = prepared.config.environment(profile.run.env)
            result = package_granularity(builder, file_level, prepared.root, flat.entries,
                                         env=env)
            widening, package_level, table = result.widening, result.keeplist, result.sizes
            assert result.warnings == []

            pulled = {p.unit.name: p for p in widening.expansion.pulled}
            assert {"libpython3.11-minimal", "tzdata", "reportfmt"} <= set(pulled)
            minimal = pulled["libpython3.11-minimal"].reason
            assert re.match(r"package libpython3\.11-minimal, because /usr/lib/python3\.11/"
                            r"\S+ was (opened|looked up) by \S*python3\S* in ", minimal), minimal
            iso = package_level.kept["/usr/lib/python3.11/encodings/iso8859_15.py"]
            assert iso == [Reason("package", minimal)]
            assert "/usr/lib/python3.11/encodings/iso8859_15.py" not in file_level.kept
            assert not any(p.startswith("/usr/share/doc/") for p in package_level.kept)

            assert table.file_total == size_of(flat.entries, file_level.kept)
            assert table.package_total == size_of(flat.entries, package_level.kept)
            assert sum(r.file_bytes for r in table.rows) == table.file_total
            assert sum(r.added_bytes for r in table.rows) == \
                table.package_total - table.file_total
            assert table.file_total < table.package_total < flat.content_size() * 0.6
            print(table.format_text())
            report = result.to_json()
            assert sum(u["added_bytes"] for u in report["units"]) == report["added_bytes"] > 0
            assert "/usr/share/doc/**" in report["expansion"]["default_excludes"]
            assert report["unresolved_after_expansion"] == []

            images = {}
            for name, keeplist in (("file", file_level), ("package", package_level)):
                tag = f"packages-{name}-{uuid.uuid4().hex[:8]}"
                ref = f"tracer-test/packages-codecs:{tag}"
                tags.append(ref)
                write_image(flat, sorted(keeplist.kept), parse_reference(f"docker-daemon:{ref}"),
                            workdir=work / f"write-{name}", comment=f"tracer test: {name}")
                images[name] = ref
                # the profile verifies at both granularities
                verification = run_smoke(profile, ref, traced=False,
                                         workdir=work / f"verify-{name}", progress=progress)
                assert verification.passed, (name, verification.failure)

            for what, extra_env, args, expected in PRODUCTION:
                code, out = run_job(images["package"], extra_env, args)
                assert code == 0 and expected.search(out), (what, code, out)
                code, out = run_job(images["file"], extra_env, args)
                assert code != 0 or not expected.search(out), (what, "passed at file level")
    finally:
        engine.cleanup()
        for ref in tags:
            with contextlib.suppress(Exception):
                docker_client.images.remove(ref, force=True)
