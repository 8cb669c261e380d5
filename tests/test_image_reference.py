"""Image reference parsing and default outputs (docs/profile.md, "Image references")."""

from __future__ import annotations

import pytest

from tracer.errors import BadInput
from tracer.image import ImageRef, default_output, parse_reference


@pytest.mark.parametrize("text,want", [
    ("docker-daemon:local/nginx:test", ImageRef("docker-daemon", None, "local/nginx", "test")),
    ("local/nginx", ImageRef("docker-daemon", None, "local/nginx", None)),
    ("nginx:1.25", ImageRef("docker-daemon", None, "nginx", "1.25")),
    ("localhost:5000/app:v1", ImageRef("docker-daemon", None, "localhost:5000/app", "v1")),
    ("docker-archive:/tmp/x.tar", ImageRef("docker-archive", "/tmp/x.tar", None, None)),
    ("docker-archive:/tmp/x.tar:app:v2", ImageRef("docker-archive", "/tmp/x.tar", "app", "v2")),
    ("docker-archive:x.tar:app", ImageRef("docker-archive", "x.tar", "app", None)),
    ("oci:/srv/layout", ImageRef("oci", "/srv/layout", None, None)),
    ("oci:/srv/layout:stable", ImageRef("oci", "/srv/layout", None, "stable")),
])
def test_parse_and_round_trip_text(text: str, want: ImageRef) -> None:
    ref = parse_reference(text)
    assert ref == want
    assert parse_reference(str(ref)) == ref


@pytest.mark.parametrize("text,msg", [
    ("", "empty"),
    ("docker://nginx", "transport 'docker' is not supported"),
    ("oci-archive:/x.tar", "not supported"),
    ("Local/Nginx", "invalid image name"),
    ("nginx:bad tag", "invalid tag"),
    ("docker-archive:", "needs a path"),
    ("nginx@sha256:" + "a" * 64, "digest references"),
])
def test_bad_references_are_clear_errors(text: str, msg: str) -> None:
    with pytest.raises(BadInput, match=msg):
        parse_reference(text)


def test_default_outputs_never_equal_the_input() -> None:
    assert str(default_output(parse_reference("local/nginx:test"))) == \
        "docker-daemon:local/nginx:test-min"
    assert default_output(parse_reference("local/nginx")).tag == "latest-min"
    out = default_output(parse_reference("docker-archive:/d/app.tar:app:1"))
    assert (out.path, out.name, out.tag) == ("/d/app-min.tar", "app", "1-min")
    assert default_output(parse_reference("docker-archive:/d/app")).path == "/d/app-min.tar"
    out = default_output(parse_reference("oci:/d/layout:v1"))
    assert (out.path, out.tag) == ("/d/layout-min", "v1")


def test_same_place_ignores_spelling(tmp_path) -> None:
    """Writing the output must never touch the input, however either is spelled."""
    from tracer.image import parse_reference as p

    assert p("nginx").same_place(p("docker-daemon:docker.io/library/nginx:latest"))
    assert not p("nginx:1").same_place(p("nginx:1-min"))
    (tmp_path / "d").mkdir()
    assert p(f"oci:{tmp_path}/d:v1").same_place(p(f"oci:{tmp_path}/./d"))
    assert p(f"docker-archive:{tmp_path}/a.tar").same_place(
        p(f"docker-archive:{tmp_path}/x/../a.tar:n:t"))
    assert not p(f"docker-archive:{tmp_path}/a.tar").same_place(p(f"oci:{tmp_path}/a.tar"))
