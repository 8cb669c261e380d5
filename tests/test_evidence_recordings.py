"""keep.evidence: recordings of production merged into the keep-list, on a real image with
real ELF files (compiled here), through the pipeline's own analysis.

A recorded path goes through the closure a traced one does: the names the loader looks
for (fanotify names a library by its real file, `libfoo.so.1.0.0`, never the soname link
`libfoo.so.1`), its parents, exclude; a Python cache file brings its source; what the
image lacks is listed, never kept; `tracer why` explains both."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from image_builders import M, flat_from_layers, layer

from tracer.analysis.evidence import python_source
from tracer.analysis.recording import PathUse, RecordedContainer, Recording, write_recording
from tracer.budgets import DEFAULT
from tracer.explain.runfiles import write_path_index
from tracer.explain.why import why
from tracer.image.config import ImageConfig
from tracer.image.reference import parse_reference
from tracer.pipeline import Plan, analyse
from tracer.profile.model import KeepSpec, Profile
from tracer.report import evidence_lines
from tracer.trace.result import SmokeResult

SPAN = (1_748_772_000, 1_748_772_300)  # 2025-06-01T10:00:00Z .. 10:05:00Z


def compiled(tmp_path: Path, gcc: str) -> tuple[bytes, bytes]:
    """libfoo.so.1.0.0 (soname libfoo.so.1) and mod.so, which needs it: a plugin as a
    Python extension module or an nginx module is."""
    (tmp_path / "foo.c").write_text("int foo(void) { return 42; }\n")
    (tmp_path / "mod.c").write_text("int foo(void);\nint mod(void) { return foo(); }\n")
    subprocess.run([gcc, "-shared", "-fPIC", "-Wl,-soname,libfoo.so.1", "-o",
                    tmp_path / "libfoo.so.1.0.0", tmp_path / "foo.c"], check=True)
    (tmp_path / "libfoo.so").symlink_to("libfoo.so.1.0.0")
    subprocess.run([gcc, "-shared", "-fPIC", "-o", tmp_path / "mod.so", tmp_path / "mod.c",
                    f"-L{tmp_path}", "-lfoo"], check=True)
    return (tmp_path / "libfoo.so.1.0.0").read_bytes(), (tmp_path / "mod.so").read_bytes()


def image(tmp_path: Path, gcc: str):
    (tmp_path / "build").mkdir()
    libfoo, mod = compiled(tmp_path / "build", gcc)
    (tmp_path / "img").mkdir()
    return flat_from_layers(tmp_path / "img", layer(
        M("usr", "dir"), M("usr/lib", "dir"), M("usr/bin", "dir"), M("etc", "dir"),
        M("usr/lib/x86_64-linux-gnu", "dir"),
        M("usr/lib/x86_64-linux-gnu/libfoo.so.1.0.0", data=libfoo, mode=0o644),
        M("usr/lib/x86_64-linux-gnu/libfoo.so.1", "symlink", linkname="libfoo.so.1.0.0"),
        M("usr/lib/plugins", "dir"), M("usr/lib/plugins/mod.so", data=mod, mode=0o644),
        M("usr/lib/plugins/unused.so", data=mod, mode=0o644),
        M("usr/bin/app", data=b"#!/bin/sh\n", mode=0o755),
        M("srv", "dir"), M("srv/app", "dir"), M("srv/app/report.py", data=b"x = 1\n"),
        M("srv/app/__pycache__", "dir"),
        M("srv/app/__pycache__/report.cpython-311.pyc", data=b"pyc"),
        M("etc/app.conf", data=b"a=1\n"), M("etc/secret.conf", data=b"s\n")))


def rec(source: Path | None = None) -> Recording:
    uses = {
        "/usr/lib/plugins/mod.so": PathUse(frozenset({"open"}), ("/usr/bin/app",)),
        "/usr/lib/x86_64-linux-gnu/libfoo.so.1.0.0": PathUse(frozenset({"open"}),
                                                              ("/usr/bin/app",)),
        "/srv/app/__pycache__/report.cpython-311.pyc": PathUse(frozenset({"open"}),
                                                                ("/usr/bin/python3.11",)),
        "/etc/app.conf": PathUse(frozenset({"open"}), ("/usr/bin/app", "")),
        "/etc/secret.conf": PathUse(frozenset({"open"}), ("/usr/bin/app",)),
        "/var/lib/app/session-1": PathUse(frozenset({"open"}), ("/usr/bin/app",)),
    }
    return Recording(host="web-7", start=SPAN[0], end=SPAN[1], image="shop/api:2.3",
                     containers=[RecordedContainer("api-canary", "3f2a9c0d1b7e", "attached")],
                     paths=uses, source=source)


def run_analysis(flat, recordings: list[Recording]):
    profile = Profile(name="t", image="docker-daemon:t:1", exclude=["/etc/secret.conf"],
                      keep=KeepSpec(evidence=[str(r.source) for r in recordings]))
    plan = Plan(profile, parse_reference(profile.image), parse_reference("t:min"),
                DEFAULT, "file", None, "test", recordings)
    prepared = SimpleNamespace(flat=flat, root=flat.rootfs(),
                               config=ImageConfig.from_image_json(flat.config, "test image"))
    return analyse(plan, prepared, SmokeResult(passed=True))


def test_recorded_paths_are_kept_with_their_reason_and_closure(tmp_path: Path,
                                                               gcc: str) -> None:
    flat = image(tmp_path, gcc)
    analysis = run_analysis(flat, [rec(tmp_path / "canary.rec")])
    kept = analysis.keeplist.kept
    reason = ("evidence: seen in production: /usr/bin/app, recorded 2025-06-01 from "
              "api-canary on web-7 (canary.rec)")
    assert f"{kept['/usr/lib/plugins/mod.so'][0].kind}: " \
        f"{kept['/usr/lib/plugins/mod.so'][0].detail}" == reason
    # the loader asks for libfoo.so.1: the ELF closure of the recorded module keeps it
    link = "/usr/lib/x86_64-linux-gnu/libfoo.so.1"
    assert [r.kind for r in kept[link]] == ["elf"]
    assert "/usr/lib/plugins/mod.so -> libfoo.so.1" in kept[link][0].detail
    assert "/usr/lib/plugins/unused.so" not in kept
    assert kept["/usr/lib/plugins"][0].kind == "parent"
    # Python's cache brings its source, saying why
    assert "read report.cpython-311.pyc, whose source Python checks first" in \
        kept["/srv/app/report.py"][0].detail
    assert python_source("/usr/lib/python3.11/__pycache__/os.cpython-311.pyc") == \
        "/usr/lib/python3.11/os.py"
    assert python_source("/srv/app/report.pyc") is None
    # an unknown program is said honestly
    assert "production: /usr/bin/app and an unidentified process, recorded" in \
        kept["/etc/app.conf"][0].detail
    # exclude still wins; what the image lacks is listed and ignored
    assert "/etc/secret.conf" not in kept
    assert analysis.keeplist.excluded["/etc/secret.conf"].reasons[0].kind == "evidence"
    [summary] = analysis.evidence
    assert summary.not_in_image == ["/var/lib/app/session-1"]
    assert (summary.paths, summary.kept) == (6, 5)
    assert "/var/lib/app/session-1" not in kept
    text = "\n".join(evidence_lines([summary.to_json()]))
    assert "5 of 6 recorded paths are in the image" in text
    assert "1 not in this image, ignored: /var/lib/app/session-1" in text


def test_recordings_from_several_hosts_add_up(tmp_path: Path, gcc: str) -> None:
    flat = image(tmp_path, gcc)
    other = rec(tmp_path / "staging.rec")
    other.host = "stage-2"
    other.paths = {"/etc/app.conf": PathUse(frozenset({"open"}), ("/usr/bin/app",))}
    analysis = run_analysis(flat, [rec(tmp_path / "canary.rec"), other])
    details = [r.detail for r in analysis.keeplist.kept["/etc/app.conf"]]
    assert any("on web-7 (canary.rec)" in d for d in details)
    assert any("on stage-2 (staging.rec)" in d for d in details)


def test_why_explains_recorded_paths_kept_and_missing(tmp_path: Path, gcc: str) -> None:
    flat = image(tmp_path, gcc)
    source = tmp_path / "canary.rec"
    write_recording(rec(), source)
    analysis = run_analysis(flat, [rec(source)])
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"evidence": [e.to_json() for e in analysis.evidence],
                                  "excluded_paths": analysis.keeplist.excluded_json()}))
    analysis.keeplist.write(tmp_path / "r.keeplist")
    write_path_index(flat, tmp_path / "r.paths.gz")
    kept = why(report, "/usr/lib/plugins/mod.so").format_text()
    assert "KEPT because:\n  - evidence: seen in production: /usr/bin/app" in kept
    missing = why(report, "/var/lib/app/session-1").format_text()
    assert "not in the original image at all, although production used it (recorded in " \
        f"{source})" in missing
    assert "recorded paths the image lacks are ignored" in missing
    excluded = why(report, "/etc/secret.conf").format_text()
    assert "exclude rule '/etc/secret.conf' removed it" in excluded
    assert "seen in production" in excluded


@pytest.mark.parametrize("entry,message", [
    ("missing.rec", "keep.evidence[0]: 'missing.rec' (relative to"),
    ("", "keep.evidence[0]: expected a file name"),
    (".", "not a regular file"),
])
def test_keep_evidence_is_checked_when_the_profile_loads(tmp_path: Path, entry: str,
                                                         message: str) -> None:
    from tracer.errors import BadInput
    from tracer.profile.load import load_profile

    profile = tmp_path / "p.yaml"
    profile.write_text(f"version: 1\nname: p\nimage: p:1\nkeep:\n  evidence: ['{entry}']\n")
    with pytest.raises(BadInput, match=re.escape(message)):
        load_profile(profile)


def test_keep_evidence_and_the_command_line_add_up(tmp_path: Path) -> None:
    from tracer.profile.load import Overrides, evidence_flags, load_profile

    (tmp_path / "evidence").mkdir()
    write_recording(rec(), tmp_path / "evidence" / "a.rec")
    write_recording(rec(), tmp_path / "b.rec")
    profile = tmp_path / "p.yaml"
    profile.write_text("version: 1\nname: p\nimage: p:1\nkeep:\n  evidence: [evidence/a.rec]\n")
    flags = evidence_flags([tmp_path / "b.rec", tmp_path / "evidence" / "a.rec"])
    loaded = load_profile(profile, Overrides(evidence=flags))
    assert loaded.keep.evidence == [str(tmp_path / "evidence" / "a.rec"),
                                    str(tmp_path / "b.rec")]
    assert Overrides(evidence=flags).argv() == [f"--evidence={tmp_path / 'b.rec'}",
                                                f"--evidence={tmp_path / 'evidence/a.rec'}"]


def test_batch_reruns_a_profile_whose_recording_changed(tmp_path: Path) -> None:
    """An unchanged profile with a new recording of production is a new job."""
    from tracer.batch import _fingerprint
    from tracer.profile.load import load_profile

    (tmp_path / "in.tar").write_bytes(b"an archive's bytes")
    evidence = tmp_path / "prod.rec"
    write_recording(rec(), evidence)
    profile = tmp_path / "p.yaml"
    profile.write_text(f"version: 1\nname: p\nimage: docker-archive:{tmp_path}/in.tar\n"
                       "keep:\n  evidence: [prod.rec]\n")
    before = _fingerprint(profile, load_profile(profile))
    assert _fingerprint(profile, load_profile(profile)) == before
    changed = rec()
    changed.paths = {"/etc/other.conf": PathUse(frozenset({"open"}), ("/usr/bin/app",))}
    write_recording(changed, evidence)
    assert _fingerprint(profile, load_profile(profile))["profile_sha256"] != \
        before["profile_sha256"]
