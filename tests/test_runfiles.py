"""The files a run leaves (keep-list, path index) stay one line per name whatever the name
holds: newline, tab, backslash, bytes that are not UTF-8, Unicode line separators."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from pathlib import Path

import pytest
from image_builders import M, flat_from_layers, layer

from tracer.analysis.keeplist import KeepList, KeepListBuilder, Reason, compile_globs, first_match
from tracer.batch import _keeplist_paths
from tracer.errors import BadInput
from tracer.explain.runfiles import (
    escape,
    keeplist_line,
    read_keeplist,
    read_path_index,
    unescape,
    write_path_index,
)
from tracer.explain.why import why

FORGED = "/etc/x\n/etc/shadow\tkeep.paths: /**"
HOSTILE = [
    FORGED,
    "/etc/tab\there",
    "/etc/back\\slash\\n-not-a-newline",
    "/etc/cr\rreturn",
    os.fsdecode(b"/etc/latin1-\xe9\xff"),
    "/etc/nul-free\x01\x1b[31mred",
    "/etc/sep\u2028line\u2029para\x85nel\x1c\x1d\x1e",
    "/etc/bidi\u202eevil",
    "/etc/plain caf\u00e9 \u65e5\u672c",
    "/etc/semi; colon",
]


@pytest.mark.parametrize("name", HOSTILE + [os.fsdecode(bytes([b])) for b in range(1, 256)])
def test_escape_is_one_line_without_tabs_and_round_trips(name: str) -> None:
    text = escape(name)
    assert "\t" not in text and len(text.splitlines()) <= 1 and "\n" not in text
    assert unescape(text) == name
    assert os.fsencode(unescape(text)) == os.fsencode(name)
    assert escape(name, also=";").count(";") == 0


def _invisible_characters() -> list[str]:
    """Every code point a reader's terminal or editor may not show as itself: controls,
    format characters (bidi overrides and isolates, zero-width joiners), line and
    paragraph separators, private use."""
    import unicodedata

    return [chr(c) for c in range(0x110000)
            if not 0xD800 <= c <= 0xDFFF
            and unicodedata.category(chr(c)) in ("Cc", "Cf", "Zl", "Zp", "Co")]


def test_invisible_and_bidi_characters_are_escaped_never_written() -> None:
    """A keep-list line is read by people: `/etc/bidi\u202eevil` must not display as
    another path, so no invisible character reaches the file as itself."""
    import unicodedata

    chars = _invisible_characters()
    assert "\u202e" in chars and "\u2066" in chars and "\u200d" in chars
    for start in range(0, len(chars), 512):
        name = "/etc/" + "x".join(chars[start:start + 512])
        text = escape(name)
        shown = {unicodedata.category(ch) for ch in text}
        assert not shown & {"Cc", "Cf", "Zl", "Zp", "Co", "Cs"}, start
        assert unescape(text) == name


def test_printable_names_are_written_as_they_are() -> None:
    assert escape("/usr/share/zoneinfo/Europe/Berlin") == "/usr/share/zoneinfo/Europe/Berlin"
    assert escape("/etc/plain caf\u00e9") == "/etc/plain caf\u00e9"
    assert escape("/a\\b\tc\nd") == "/a\\\\b\\tc\\nd"
    assert escape(os.fsdecode(b"/x\xff")) == "/x\\xff"


def test_unescape_refuses_what_escape_never_writes() -> None:
    for bad in ("/a\\", "/a\\q", "/a\\x4"):
        with pytest.raises(ValueError):
            unescape(bad)


def hostile_keeplist(tmp_path: Path, names: list[str]) -> Path:
    kl = KeepList(kept={n: [Reason("traced", f"openat of {n} by /app in run")] for n in names})
    kl.kept["/etc"] = [Reason("parent", "holds " + FORGED)]
    out = tmp_path / "r.keeplist"
    kl.write(out)
    return out


def test_keeplist_has_one_line_per_path_and_reads_back_exactly(tmp_path: Path) -> None:
    out = hostile_keeplist(tmp_path, HOSTILE)
    raw = out.read_bytes()
    lines = raw.decode("utf-8").split("\n")[:-1]
    assert len(lines) == len(HOSTILE) + 1 == len(raw.splitlines())
    assert lines == sorted(lines) and all(line.count("\t") == 1 for line in lines)
    assert not [line for line in lines if line.startswith("/etc/shadow")], "no forged line"
    back = read_keeplist(out)
    assert set(back) == set(HOSTILE) | {"/etc"}
    assert back[FORGED] == [f"traced: openat of {FORGED} by /app in run"]
    assert back["/etc/semi; colon"] == ["traced: openat of /etc/semi; colon by /app in run"]
    assert _keeplist_paths(out) == {escape(n) for n in [*HOSTILE, "/etc"]}


def test_a_plain_diff_shows_one_line_per_changed_path(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    before = hostile_keeplist(tmp_path / "a", HOSTILE[1:])
    after = hostile_keeplist(tmp_path / "b", HOSTILE)
    diff = subprocess.run(["diff", str(before), str(after)], capture_output=True, text=True)
    changed = [line for line in diff.stdout.splitlines() if line[:2] in ("< ", "> ")]
    assert changed == ["> " + keeplist_line(FORGED, [f"traced: openat of {FORGED} by /app "
                                                     "in run"])]


def test_why_answers_for_hostile_names_given_raw_or_escaped(tmp_path: Path) -> None:
    entries = [M("etc", "dir")] + [M(n.lstrip("/"), data=b"x") for n in HOSTILE]
    entries.append(M("etc/link\nname", "symlink", linkname="tab\there"))
    flat = flat_from_layers(tmp_path, layer(*entries))
    b = KeepListBuilder(flat.entries, flat.rootfs())
    for name in HOSTILE[:4]:
        b.add(name, Reason("traced", "openat by /app in run"))
    kl = b.build()
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"name": "r", "excluded_paths": kl.excluded_json()}))
    kl.write(tmp_path / "r.keeplist")
    write_path_index(flat, tmp_path / "r.paths.gz")
    index = read_path_index(tmp_path / "r.paths.gz")
    assert index is not None and set(index.image.entries) == set(flat.entries)
    assert index.image.entries["/etc/link\nname"].linkname == "tab\there"
    for name in HOSTILE[:4]:
        for asked in (name, escape(name)):
            answer = why(report, asked)
            assert answer.kept and answer.path == name, asked
    untouched = why(report, HOSTILE[4])
    assert not untouched.kept and untouched.in_image is True
    through = why(report, "/etc/link\nname")
    assert through.in_image is True and not through.kept
    with gzip.open(tmp_path / "r.paths.gz", "rt", encoding="utf-8") as f:
        assert len(f.read().split("\n")) == len(flat.entries) + 3  # header, PATH, final ""


def test_globs_match_names_with_a_newline(tmp_path: Path) -> None:
    globs = compile_globs(["/etc/**"])
    assert first_match(FORGED, globs) == "/etc/**"
    assert first_match("/etc/a\nb/c", compile_globs(["/etc/*/c"])) == "/etc/*/c"
    flat = flat_from_layers(tmp_path, layer(M("etc", "dir"), M("etc/a\nb", data=b"x"),
                                            M("etc/ok", data=b"y")))
    b = KeepListBuilder(flat.entries, flat.rootfs(), keep_paths=["/etc/**"])
    b.add_keep_paths()
    assert "/etc/a\nb" in b.build().kept
    b = KeepListBuilder(flat.entries, flat.rootfs(), exclude=["/etc/**"])
    b.add("/etc/a\nb", Reason("traced", "openat"))
    assert "/etc/a\nb" in b.build().excluded


def test_broken_run_files_are_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "bad.keeplist"
    bad.write_text("no tab here\n")
    with pytest.raises(BadInput, match="bad.keeplist:1"):
        read_keeplist(bad)
    assert _keeplist_paths(bad) == set() and _keeplist_paths(tmp_path / "none") == set()
    index = tmp_path / "bad.paths.gz"
    index.write_bytes(b"not gzip at all")
    with pytest.raises(BadInput, match="not a readable path index"):
        read_path_index(index)


def test_why_on_the_command_line_prints_hostile_names_escaped(tmp_path: Path) -> None:
    """`tracer why` with a name holding a newline and bytes that are not UTF-8, given raw in
    argv: exit 0, one escaped line for the name, valid JSON with --json."""
    import sys

    name = os.fsdecode(b"/etc/evil\n/etc/shadow\t\xff")
    kl = KeepList(kept={"/": [Reason("root", "r")], name: [Reason("traced", f"openat {name}")]})
    kl.write(tmp_path / "r.keeplist")
    (tmp_path / "r.json").write_text(json.dumps({"name": "r", "excluded_paths": {}}))
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    for asked in (os.fsencode(name), os.fsencode(escape(name))):
        proc = subprocess.run([sys.executable, "-m", "tracer", "why", str(tmp_path / "r.json"),
                               asked], capture_output=True, env=env,
                              cwd=Path(__file__).resolve().parent.parent)
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout.decode("utf-8")
        assert out.splitlines()[0] == f"{escape(name)} is KEPT because:"
        assert not [line for line in out.splitlines() if line.startswith("/etc/shadow")]
    proc = subprocess.run([sys.executable, "-m", "tracer", "why", str(tmp_path / "r.json"),
                           os.fsencode(name), "--json"], capture_output=True, env=env,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0 and json.loads(proc.stdout)["kept"] is True


def test_diagnosis_text_shows_hostile_names_escaped(tmp_path: Path) -> None:
    from tracer.explain.diagnose import diagnose
    from tracer.trace.result import Access, SmokeResult

    name = "/etc/a\nb"
    flat = flat_from_layers(tmp_path, layer(M("etc", "dir"), M("etc/a\nb", data=b"x")))
    result = SmokeResult(passed=False, accesses=[Access(
        path=name, syscall="openat", ok=False, errno="ENOENT", pid=1, program="/bin/x\ty",
        cmdline=("x", "\n--fake"), step="run")])
    text = diagnose(result, flat.rootfs()).format_text()
    assert "    /etc/a\\nb  [openat -> ENOENT]" in text
    assert "  in run, /bin/x\\ty (x \\n--fake):" in text
    assert '\n    - "/etc/a\\nb"' in text  # a YAML string that means the real name
