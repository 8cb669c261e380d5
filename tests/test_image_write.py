"""Writing one-layer images from hand-made inputs and reading them back."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest
from image_builders import BASE_CONFIG, M, docker_archive, flat_from_layers, flatten_ref, layer

from tracer.errors import BadInput, ImageFormatError
from tracer.image import parse_reference, write_image

CAP = b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"


def _flat(tmp_path: Path):
    return flat_from_layers(
        tmp_path,
        layer(M("usr", "dir"), M("usr/bin", "dir", mode=0o751, uid=2),
              M("usr/bin/app", data=b"A" * 3000, mode=0o4755, uid=0, gid=50),
              M("usr/bin/app-link", "hardlink", linkname="usr/bin/app", mode=0o4755, gid=50),
              M("usr/bin/ping", data=b"P", mode=0o755, xattrs={"security.capability": CAP}),
              M("usr/bin/sh", "symlink", linkname="dash"),
              M("usr/share", "dir"), M("usr/share/doc", data=b"docs" * 1000),
              M("var", "dir"), M("var/x", data=b"x"), M("var/x2", "hardlink", linkname="var/x"),
              M("dev", "dir"), M("dev/null", "char", mode=0o666, devmajor=1, devminor=3)),
        layer(M("usr/share/.wh.doc"), M("n" * 150, data=b"long")),
    )


def _members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path) as tf:
        return {m.name: m for m in tf}


def test_docker_archive_keeps_exact_paths_metadata_and_config(tmp_path: Path) -> None:
    flat = _flat(tmp_path)
    out = parse_reference(f"docker-archive:{tmp_path}/out.tar:min/app:1")
    keep = ["/usr/bin/app-link", "/usr/bin/ping", "/usr/bin/sh", "/dev/null", "/var/x2",
            "/" + "n" * 150]
    w = write_image(flat, keep, out, workdir=tmp_path / "work", comment="tracer test")
    assert w.file_count == 10 and w.image_id.startswith("sha256:")
    # read it back with the same reader as any input
    back = flatten_ref(str(out), tmp_path / "back")
    assert set(back.entries) == {"/", "/usr", "/usr/bin", "/usr/bin/app-link", "/usr/bin/ping",
                                 "/usr/bin/sh", "/dev", "/dev/null", "/var", "/var/x2",
                                 "/" + "n" * 150}
    e = back.entries
    # the hardlink whose target was not kept became the file, with the inode's metadata
    assert e["/usr/bin/app-link"].kind == "file" and e["/usr/bin/app-link"].mode == 0o4755
    assert e["/usr/bin/app-link"].gid == 50
    with back.open_content("/usr/bin/app-link") as f:
        assert f.read() == b"A" * 3000
    assert e["/usr/bin"].mode == 0o751 and e["/usr/bin"].uid == 2
    assert e["/usr/bin/ping"].xattrs == {"security.capability": CAP}
    assert e["/usr/bin/sh"].linkname == "dash"
    assert (e["/dev/null"].kind, e["/dev/null"].devmajor, e["/dev/null"].devminor) == (
        "char", 1, 3)
    cfg = back.config
    assert cfg["config"] == BASE_CONFIG["config"]
    assert (cfg["architecture"], cfg["os"]) == ("amd64", "linux")
    assert cfg["history"][-1]["created_by"] == "tracer test"
    assert all(h.get("empty_layer") for h in cfg["history"][:-1])
    assert cfg["rootfs"]["diff_ids"] == [w.layer_digest]
    assert back.source_digest == w.image_id
    # member names as Docker writes them; the manifest carries the tag
    members = _members(Path(out.path))
    with tarfile.open(out.path) as tf:
        manifest = json.loads(tf.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert manifest[0]["RepoTags"] == ["min/app:1"]
    assert members[manifest[0]["Layers"][0]].size == w.layer_size


def test_hardlinks_written_as_links_when_target_kept(tmp_path: Path) -> None:
    flat = _flat(tmp_path)
    out = parse_reference(f"docker-archive:{tmp_path}/out.tar")
    write_image(flat, ["/usr/bin/app", "/usr/bin/app-link"], out, workdir=tmp_path / "w",
                comment="c")
    back = flatten_ref(str(out), tmp_path / "back")
    assert back.hardlink_group("/usr/bin/app") == ("/usr/bin/app", "/usr/bin/app-link")
    assert back.entries["/usr/bin/app-link"].kind == "hardlink"
    assert back.content_size() == 3000


def test_oci_output_is_readable_and_keeps_other_tags(tmp_path: Path) -> None:
    flat = _flat(tmp_path)
    layout = tmp_path / "layout"
    write_image(flat, ["/var/x"], parse_reference(f"oci:{layout}:one"), workdir=tmp_path / "w",
                comment="c")
    w2 = write_image(flat, ["/usr/bin/ping"], parse_reference(f"oci:{layout}:two"),
                     workdir=tmp_path / "w", comment="c")
    assert w2.manifest_digest
    one = flatten_ref(f"oci:{layout}:one", tmp_path / "b1")
    two = flatten_ref(f"oci:{layout}:two", tmp_path / "b2")
    assert "/var/x" in one.entries and "/usr/bin/ping" not in one.entries
    assert "/usr/bin/ping" in two.entries and "/var/x" not in two.entries
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_failed_write_leaves_previous_output_untouched(tmp_path: Path) -> None:
    flat = _flat(tmp_path)
    out = parse_reference(f"docker-archive:{tmp_path}/out.tar")
    write_image(flat, ["/var/x"], out, workdir=tmp_path / "w", comment="c")
    before = Path(out.path).read_bytes()
    ref = flat.content_ref("/usr/bin/ping")
    os.truncate(ref.blob, ref.offset)  # the layer data the content is read from was cut
    with pytest.raises(ImageFormatError, match="content of /usr/bin/ping ends .* short"):
        write_image(flat, ["/usr/bin/ping"], out, workdir=tmp_path / "w", comment="c")
    assert Path(out.path).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tar", "out.tar", "w", "work"]


def test_keep_list_errors_name_the_path(tmp_path: Path) -> None:
    flat = _flat(tmp_path)
    out = parse_reference(f"docker-archive:{tmp_path}/out.tar")
    with pytest.raises(BadInput, match="/usr/share/doc is not in the image"):
        write_image(flat, ["/usr/share/doc"], out, workdir=tmp_path / "w", comment="c")
    with pytest.raises(BadInput, match="not an absolute"):
        write_image(flat, ["usr/bin/app"], out, workdir=tmp_path / "w", comment="c")
    with pytest.raises(BadInput, match="overwrite the input"):
        write_image(flat, ["/var/x"], parse_reference(f"docker-archive:{tmp_path}/in.tar"),
                    workdir=tmp_path / "w", comment="c")


def test_interrupted_oci_write_leaves_previous_layout(tmp_path: Path, monkeypatch) -> None:
    import tracer.image.layerwrite as lw

    flat = _flat(tmp_path)
    layout = tmp_path / "layout"
    write_image(flat, ["/var/x"], parse_reference(f"oci:{layout}:one"), workdir=tmp_path / "w",
                comment="c")
    before = {p.relative_to(layout): p.read_bytes() for p in layout.rglob("*") if p.is_file()}

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(lw, "_content", interrupted)  # Ctrl-C in the middle of the layer
    with pytest.raises(KeyboardInterrupt):
        write_image(flat, ["/usr/bin/ping"], parse_reference(f"oci:{layout}:one"),
                    workdir=tmp_path / "w", comment="c")
    after = {p.relative_to(layout): p.read_bytes() for p in layout.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tar", "layout", "w", "work"]


def test_interrupted_flatten_removes_its_extraction(tmp_path: Path) -> None:
    from tracer.image import flatten, open_image

    archive = docker_archive(tmp_path / "in.tar", [layer(M("a", data=b"1")),
                                                   layer(M("b", data=b"2"))])

    def progress(msg: str) -> None:
        if "layer 1" in msg:
            raise KeyboardInterrupt

    with open_image(parse_reference(f"docker-archive:{archive}"), tmp_path / "w") as src, \
            pytest.raises(KeyboardInterrupt):
        flatten(src, tmp_path / "w" / "root", progress)
    assert not (tmp_path / "w" / "root").exists()


def test_output_directory_must_exist(tmp_path: Path) -> None:
    flat = _flat(tmp_path)
    with pytest.raises(BadInput, match="does not exist"):
        write_image(flat, ["/var/x"], parse_reference(f"docker-archive:{tmp_path}/no/o.tar"),
                    workdir=tmp_path / "w", comment="c")


def test_config_override_is_carried_instead_of_the_source(tmp_path: Path) -> None:
    flat = _flat(tmp_path)
    override = json.loads(json.dumps(flat.config))
    override["config"]["Env"] = ["ONLY=this"]
    out = parse_reference(f"docker-archive:{tmp_path}/out.tar")
    write_image(flat, ["/var/x"], out, workdir=tmp_path / "w", comment="c", config=override)
    back = flatten_ref(str(out), tmp_path / "back")
    assert back.config["config"]["Env"] == ["ONLY=this"]
    assert back.config["config"]["Entrypoint"] == BASE_CONFIG["config"]["Entrypoint"]
    assert flat.config["config"]["Env"] == BASE_CONFIG["config"]["Env"]  # source untouched
