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
    ("docker://127.0.0.1:5000/app:1.4", ImageRef("docker", None, "127.0.0.1:5000/app", "1.4")),
    ("docker://registry.example/team/app",
     ImageRef("docker", None, "registry.example/team/app", None)),
    ("docker://localhost:5000/app@sha256:" + "a" * 64,
     ImageRef("docker", None, "localhost:5000/app", None, "sha256:" + "a" * 64)),
    ("docker://nginx:1.25", ImageRef("docker", None, "nginx", "1.25")),
])
def test_parse_and_round_trip_text(text: str, want: ImageRef) -> None:
    ref = parse_reference(text)
    assert ref == want
    assert parse_reference(str(ref)) == ref


@pytest.mark.parametrize("text,msg", [
    ("", "empty"),
    ("dir:/x", "transport 'dir' is not supported"),
    ("oci-archive:/x.tar", "not supported"),
    ("docker:nginx", "docker://HOST/REPO:TAG"),
    ("docker://", "docker://HOST/REPO:TAG"),
    ("docker://h:5000/app:1@sha256:" + "a" * 64, "a tag or a digest, not both"),
    ("docker://h:5000/app@sha256:abc", "invalid digest"),
    ("docker://h:5000/app@md5:" + "a" * 32, "invalid digest"),
    ("docker://h:5000/App:1", "invalid image name"),
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


def test_registry_default_outputs_and_options() -> None:
    """A registry input's default output is a tag of the same repository (by digest: a
    tag naming that digest); the command line's options travel with the reference but
    are no part of its identity."""
    from tracer.image.platforms import Platform
    from tracer.image.reference import RefOptions

    ref = parse_reference("docker://127.0.0.1:5000/app:1.4")
    assert str(default_output(ref)) == "docker://127.0.0.1:5000/app:1.4-min"
    digest = "sha256:" + "0123456789ab" + "c" * 52
    by_digest = parse_reference(f"docker://127.0.0.1:5000/app@{digest}")
    assert str(default_output(by_digest)) == "docker://127.0.0.1:5000/app:sha256-0123456789ab-min"
    opts = RefOptions(tls_verify=False, cert_dir="/certs", platform=Platform("linux", "arm64"))
    with_opts = ref.with_options(opts)
    assert with_opts == ref and str(with_opts) == str(ref)
    assert default_output(with_opts).options == opts
    assert ref.pinned(digest) == by_digest


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
    # registries: Docker Hub's spellings are one repository; an engine image is not it
    assert p("docker://nginx").same_place(p("docker://docker.io/library/nginx:latest"))
    assert not p("docker://h:5000/app:1").same_place(p("docker://h:5000/app:1-min"))
    assert not p("docker://h:5000/app:1").same_place(p("docker-daemon:h:5000/app:1"))
    digest = "sha256:" + "a" * 64
    assert p(f"docker://h:5000/app@{digest}").same_place(p(f"docker://h:5000/app@{digest}"))
    assert not p(f"docker://h:5000/app@{digest}").same_place(p("docker://h:5000/app"))
