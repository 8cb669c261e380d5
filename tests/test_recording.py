"""The recording format: what `tracer record` writes and `keep.evidence` reads.

A recording is kept in git and compared with diff, so the same uses must give the same
bytes (sorted, no clock but the span); it is input from production hosts, so reading it
is bounded and refuses what is not a recording; a hostile file name stays one line."""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from tracer.analysis.recording import (
    MAX_PROGRAMS,
    PathUse,
    RecordedContainer,
    Recording,
    lines,
    max_line,
    read_recording,
    write_recording,
)
from tracer.budgets import Budgets
from tracer.errors import BadInput
from tracer.trace.recorder import PathTable

SPAN = (1_748_772_000, 1_748_772_300)  # 2025-06-01T10:00:00Z .. 10:05:00Z


def recording(paths: dict[str, PathUse], **kw: object) -> Recording:
    base = Recording(host="web-7", start=SPAN[0], end=SPAN[1], image_id="sha256:" + "ab" * 32,
                     image="shop/api:2.3",
                     containers=[RecordedContainer("api-canary", "3f2a9c0d1b7e", "attached")],
                     paths=paths)
    return replace(base, **kw)


def test_format_is_sorted_escaped_and_names_only_the_span_as_time(tmp_path: Path) -> None:
    rec = recording({
        "/usr/bin/python3.11": PathUse(frozenset({"mapped", "exec"}), ("/usr/bin/python3.11",)),
        "/etc/evil\n/etc/shadow\tx": PathUse(frozenset({"open"}), ("",)),
        "/app/caf\u00e9": PathUse(frozenset({"open"}), ("/bin/sh", "/usr/bin/a")),
    })
    out = tmp_path / "r.rec"
    write_recording(rec, out)
    text = out.read_text(encoding="utf-8")
    assert text.splitlines() == [
        "#tracer-recording\t1",
        "#host\tweb-7",
        "#span\t2025-06-01T10:00:00Z\t2025-06-01T10:05:00Z",
        "#image\tsha256:" + "ab" * 32 + "\tshop/api:2.3",
        "#container\tapi-canary\t3f2a9c0d1b7e\tattached",
        "/app/caf\u00e9\topen\t/bin/sh\t/usr/bin/a",
        "/etc/evil\\n/etc/shadow\\tx\topen\t-",
        "/usr/bin/python3.11\texec,mapped\t/usr/bin/python3.11",
    ]
    back = read_recording(out)
    assert back.paths == rec.paths and back.containers == rec.containers
    assert (back.host, back.start, back.end, back.image) == ("web-7", *SPAN, "shop/api:2.3")
    assert back.date == "2025-06-01"
    # the same uses in another order give the same bytes: recordings diff cleanly
    again = tmp_path / "again.rec"
    write_recording(recording(dict(reversed(list(rec.paths.items())))), again)
    assert again.read_bytes() == out.read_bytes()


def test_written_atomically_and_the_old_file_survives_a_failed_write(tmp_path: Path) -> None:
    out = tmp_path / "r.rec"
    out.write_text("previous recording\n")
    bad = recording({"/x": PathUse(frozenset({"open"}), (object(),))})  # type: ignore[arg-type]
    with pytest.raises(AttributeError):  # fails after the header was written
        write_recording(bad, out)
    assert out.read_text() == "previous recording\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.rec"]  # no temp file left


def test_table_bounds_what_a_busy_recorder_keeps() -> None:
    table = PathTable(max_paths=3, max_bytes=1 << 20)
    for i in range(5):
        table.add(f"/f{i}", "open", "/bin/a")
    table.add("/f0", "open", "/bin/a")  # seen: neither new nor dropped
    assert sorted(table.uses) == ["/f0", "/f1", "/f2"] and table.dropped == 2
    many = PathTable(max_paths=10, max_bytes=1 << 20)
    for i in range(MAX_PROGRAMS + 3):
        many.add("/etc/ld.so.cache", "open", f"/bin/p{i:02}")
    use = many.result()["/etc/ld.so.cache"]
    assert len(use.programs) == MAX_PROGRAMS and use.more == 3
    small = PathTable(max_paths=1000, max_bytes=200)
    for i in range(50):
        small.add(f"/a/rather/long/path/name/{i}", "open", "/bin/a")
    assert 0 < len(small) < 50 and small.dropped == 50 - len(small)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "in.rec"
    path.write_text(text, encoding="utf-8")
    return path


HEAD = "#tracer-recording\t1\n#host\th\n#span\t2025-06-01T10:00:00Z\t2025-06-01T10:05:00Z\n"


@pytest.mark.parametrize("text,message", [
    ("", "1: not a tracer recording"),
    ("hello\n", "1: not a tracer recording"),
    ("#tracer-recording\t2\n", "version '2'; this tracer reads version 1"),
    ("#tracer-recording\t1\n#span\t2025-06-01T10:00:00Z\t2025-06-01T10:05:00Z\n", "no #host"),
    ("#tracer-recording\t1\n#host\th\n#span\tyesterday\ttoday\n", "#span: expected two UTC"),
    (HEAD + "etc/passwd\topen\t-\n", "4: path 'etc/passwd': expected an absolute"),
    (HEAD + "/etc/../etc/passwd\topen\t-\n", "4: path '/etc/../etc/passwd': expected an"),
    (HEAD + "/etc/passwd\tread\t-\n", "4: kinds 'read'"),
    (HEAD + "/etc/passwd\n", "4: expected PATH<TAB>KINDS"),
    (HEAD + "/etc/pass\\wd\topen\t-\n", "4: path"),
    (HEAD + "/etc/passwd\topen\t-\n#dropped\t3\n", "5: a header line after the first path"),
    (HEAD + "#container\tx\tnot-hex\tstart\n", "4: a container name or id"),
    (HEAD + "/a\topen" + "\t/p" * (MAX_PROGRAMS + 1) + "\n", "4: more than 8 programs"),
])
def test_a_bad_recording_is_bad_input_naming_file_and_line(tmp_path: Path, text: str,
                                                           message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(BadInput, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("?", r"\?").replace("*", r"\*")) as info:
        read_recording(path)
    assert str(path) in str(info.value)


def test_reading_is_bounded_in_bytes_lines_entries_and_path_length(tmp_path: Path) -> None:
    budgets = Budgets(recording_bytes=4096, entries=3, path_length=64)
    body = "".join(f"/p{i}\topen\t-\n" for i in range(4))
    with pytest.raises(BadInput, match="more than 3 paths .the entries budget"):
        read_recording(write(tmp_path, HEAD + body), budgets)
    with pytest.raises(BadInput, match="over the recording_bytes budget of 4KiB"):
        read_recording(write(tmp_path, HEAD + "/p\topen\t-\n" * 500), budgets)
    long = "/" + "x" * (max_line(budgets) + 10)
    with pytest.raises(BadInput, match=r"in.rec:4: a line longer than"):
        read_recording(write(tmp_path, HEAD + long + "\topen\t-\n"),
                       Budgets(entries=3, path_length=64))
    with pytest.raises(BadInput, match="longer than the path_length budget of 64"):
        read_recording(write(tmp_path, HEAD + "/" + "y" * 80 + "\topen\t-\n"), budgets)
    # unknown header keys of a later minor version are read past; duplicates add up
    ok = read_recording(write(tmp_path, HEAD + "#future\tx\n/a\topen\t/b\n/a\texec\t/c\n"))
    assert ok.paths["/a"] == PathUse(frozenset({"open", "exec"}), ("/b", "/c"))


def test_a_fifo_or_a_device_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.rec"
    os.mkfifo(fifo)
    with pytest.raises(BadInput, match="not a regular file"):
        read_recording(fifo)
    with pytest.raises(BadInput, match="not a regular file"):
        read_recording(Path("/dev/zero"))
    with pytest.raises(BadInput, match="no such recording"):
        read_recording(tmp_path / "missing.rec")


def test_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bin.rec"
    path.write_bytes(HEAD.encode() + b"/caf\xe9\topen\t-\n")
    with pytest.raises(BadInput, match="in.rec|bin.rec:4: not UTF-8"):
        read_recording(path)


def test_two_recordings_of_the_same_uses_diff_empty(tmp_path: Path) -> None:
    """What an operator does with recordings in git."""
    uses = {"/etc/app.conf": PathUse(frozenset({"open"}), ("/usr/bin/app",))}
    a, b = tmp_path / "a.rec", tmp_path / "b.rec"
    write_recording(recording(uses), a)
    write_recording(recording({**uses, "/usr/lib/x.so": PathUse(frozenset({"open"}),
                                                              ("/usr/bin/app",))}), b)
    diff = subprocess.run(["diff", str(a), str(b)], capture_output=True, text=True).stdout
    assert diff.splitlines() == ["6a7", "> /usr/lib/x.so\topen\t/usr/bin/app"]
    assert len(list(lines(recording(uses)))) == 6


def test_attach_reads_the_mappings_on_the_containers_filesystem_only() -> None:
    """What a running container had loaded before the recorder came, from its maps: files
    of its root filesystem (device 00:2a here), names unescaped as the kernel writes them."""
    from tracer.trace.recorder import _mapped_files

    maps = b"\n".join([
        b"5639dd8c1000-5639dd8c3000 r--p 00000000 00:2a 1532417    /usr/bin/sleep",
        b"7f56-7f57 r-xp 00026000 00:2a 1525935                    /usr/lib/libc.so.6",
        b"7f58-7f59 r--p 00000000 00:2a 99                         /opt/a\\012b.so (deleted)",
        b"7f60-7f61 r--p 00000000 fd:01 42                         /data/volume.db",
        b"7ffd-7ffe rw-p 00000000 00:00 0                          [stack]",
        b"7f62-7f63 rw-p 00000000 00:00 0 ",
    ])
    assert list(_mapped_files(maps, os.makedev(0, 0x2a))) == [
        "/usr/bin/sleep", "/usr/lib/libc.so.6", "/opt/a\nb.so"]


def test_a_new_containers_overlay_is_told_apart_by_its_layers() -> None:
    """`--image` marks an overlay when its second lower layer is the image's top layer:
    the container's -init layer sits right on it; an image built on this one does not."""
    from tracer.trace.mountwatch import is_container_of, overlay_mounts

    root = "/var/lib/docker/overlay2"
    info = "\n".join([
        f"52 45 0:40 / {root}/b2a0/merged rw,relatime shared:2 - overlay overlay "
        f"rw,lowerdir={root}/l/INIT1:{root}/l/TOP:{root}/l/BASE,upperdir={root}/b2a0/diff,"
        f"workdir={root}/b2a0/work",
        f"53 45 0:41 / {root}/c3b1/merged rw,relatime shared:3 - overlay overlay "
        "rw,lowerdir=l/INIT2:l/CHILD:l/TOP:l/BASE,upperdir=x,workdir=y",
        "54 45 0:42 / /mnt/with\\040space rw - overlay overlay rw,lowerdir=/a\\072b:l/TOP",
        "36 35 98:0 / / rw,noatime master:1 - ext4 /dev/vda rw",
    ])
    mounts = overlay_mounts(info)
    assert sorted(mounts) == ["/mnt/with space", f"{root}/b2a0/merged", f"{root}/c3b1/merged"]
    ours = mounts[f"{root}/b2a0/merged"]
    assert ours.dev == os.makedev(0, 40) and is_container_of(ours, "TOP")
    assert not is_container_of(mounts[f"{root}/c3b1/merged"], "TOP")  # a child image's
    assert is_container_of(mounts["/mnt/with space"], "TOP")
    assert not is_container_of(ours, "BASE")


def test_a_podman_containers_overlay_is_told_apart_without_an_init_layer() -> None:
    """Podman's overlay has no -init layer: the first lower layer is the image's top."""
    from tracer.engine import FLAVOURS
    from tracer.trace.mountwatch import is_container_of, overlay_mounts

    root = "/var/lib/containers/storage/overlay"
    init = FLAVOURS["podman"].init_layers
    mounts = overlay_mounts("\n".join([
        f"73 46 0:52 / {root}/7e3e/merged rw,relatime - overlay overlay "
        f"rw,lowerdir={root}/l/TOP:{root}/l/BASE,upperdir={root}/7e3e/diff,"
        f"workdir={root}/7e3e/work",
        f"74 46 0:53 / {root}/9f00/merged rw,relatime - overlay overlay "
        f"rw,lowerdir={root}/l/CHILD:{root}/l/TOP:{root}/l/BASE,upperdir=x,workdir=y"]))
    assert is_container_of(mounts[f"{root}/7e3e/merged"], "TOP", init)
    assert not is_container_of(mounts[f"{root}/9f00/merged"], "TOP", init)  # a child image's
    assert not is_container_of(mounts[f"{root}/7e3e/merged"], "TOP")  # Docker's rule
