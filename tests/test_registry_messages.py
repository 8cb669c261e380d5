"""What skopeo says, given meaning; where credentials come from; no secret in a message.

The messages are skopeo 1.9's own, as it printed them against the test registries and
the hostile servers of tests/test_registry_transport.py (which checks the same end to
end); the auth files are written here in the formats `skopeo login` and `docker login`
write.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from tracer.errors import BadInput, EnvironmentProblem, ImageFormatError
from tracer.image.registryauth import auth_files, bridge_file, lookup, split_name
from tracer.image.skopeo import RegistryError, Scrubber, classify, meaning, skopeo_message

SEEN = {
    "notfound": 'reading manifest nope in 127.0.0.1:5000/explore/hardcases: manifest unknown: '
                'manifest unknown',
    "auth": "reading manifest 1 in 127.0.0.1:5443/x: unauthorized: authentication required",
    "tls": 'pinging container registry 127.0.0.1:5443: Get "https://127.0.0.1:5443/v2/": '
           "x509: certificate signed by unknown authority",
    "digest": "writing blob: happened during read: Digest did not match, expected "
              "sha256:8a56, got sha256:c5b2",
    "toolarge": "exceeded maximum allowed size of 4194304 bytes",
    "redirect": 'Get "/v2/a/b/manifests/1xxxxxxxxxx": stopped after 10 redirects',
    "transient": "reading manifest 1 in 127.0.0.1:18555/a/b: received unexpected HTTP status: "
                 "503 Service Unavailable",
}


@pytest.mark.parametrize("kind", sorted(SEEN))
def test_skopeo_messages_are_classified(kind: str) -> None:
    assert classify(SEEN[kind]) == kind


@pytest.mark.parametrize("text", [
    "reading manifest 1 in h/a/b: StatusCode: 429, ",
    'pinging container registry h: Get "http://h/v2/": dial tcp h: connect: connection refused',
    "reading blob sha256:1: Get \"http://h/v2/a/blobs/sha256:1\": EOF",
])
def test_what_passes_is_transient(text: str) -> None:
    assert classify(text) == "transient"


def test_the_fatal_message_is_taken_from_skopeo_stderr() -> None:
    stderr = ('time="2026-12-07T19:26:04Z" level=warning msg="Failed, retrying in 1s ... '
              '(1/2)"\ntime="2026-12-07T19:23:13Z" level=fatal msg="Error parsing image name '
              '\\"docker://127.0.0.1:5000/explore/hardcases:nope\\": reading manifest nope in '
              '127.0.0.1:5000/explore/hardcases: manifest unknown: manifest unknown"\n')
    assert skopeo_message(stderr) == SEEN["notfound"]
    assert skopeo_message("plain last line\n") == "plain last line"


def test_meanings_are_the_exit_codes_of_the_contract() -> None:
    from tracer.image.registryauth import Credentials

    creds = Credentials("h:5000", source="auths entry 'h:5000' in REGISTRY_AUTH_FILE=/a.json")
    err = meaning(RegistryError("auth", "resolve x: " + SEEN["auth"]), creds)
    assert isinstance(err, BadInput) and err.exit_code == 2
    assert "REGISTRY_AUTH_FILE=/a.json" in str(err)
    assert meaning(RegistryError("notfound", "x"), creds).exit_code == 2
    assert isinstance(meaning(RegistryError("digest", "x"), creds), ImageFormatError)
    assert meaning(RegistryError("tls", "x"), creds).exit_code == 4
    assert meaning(RegistryError("transient", "x"), creds).exit_code == 4
    pushed = meaning(RegistryError("other", "push x: 400"), creds, pushing=True)
    assert isinstance(pushed, EnvironmentProblem) and "nothing was written" in str(pushed)
    # pushing: an unknown blob is a failed push, not a missing image
    assert meaning(RegistryError("notfound", "blob unknown"), creds, pushing=True).exit_code == 4


def test_the_scrubber_removes_known_secrets_and_their_shapes() -> None:
    scrub = Scrubber(["s3cret-pass", "dXNlcjpzM2NyZXQtcGFzcw=="])
    text = scrub('auth "dXNlcjpzM2NyZXQtcGFzcw==" password s3cret-pass; Authorization: Bearer '
                 'eyJhbGciOi.abc.def; https://user:pw@h/v2/; "password":"other"')
    for secret in ("s3cret-pass", "dXNlcjpzM2NyZXQtcGFzcw==", "eyJhbGciOi", "user:pw",
                   '"other"'):
        assert secret not in text
    assert "Bearer ***" in text and "https://***@h/v2/" in text


# ---------------------------------------------------------------- credentials


def token(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def write(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def test_auth_files_in_skopeos_order(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    env = {"HOME": "/home/u", "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    assert [f.path for f in auth_files(env, 1000)] == [
        f"{tmp_path}/run/containers/auth.json", "/home/u/.config/containers/auth.json",
        "/home/u/.docker/config.json", "/home/u/.dockercfg"]
    env = {"HOME": "/home/u", "REGISTRY_AUTH_FILE": "/a.json", "XDG_CONFIG_HOME": "/cfg",
           "DOCKER_CONFIG": "/dc"}
    files = auth_files(env, 1000)
    assert [f.path for f in files] == ["/a.json", "/cfg/containers/auth.json",
                                       "/dc/config.json", "/home/u/.dockercfg"]
    assert files[0].label == "REGISTRY_AUTH_FILE=/a.json" and files[-1].legacy
    assert auth_files({"HOME": "/h"}, 7)[0].path == "/run/containers/7/auth.json"
    # a runtime dir that does not exist is skipped, as skopeo does
    assert auth_files({"HOME": "/h", "XDG_RUNTIME_DIR": "/nonexistent"}, 7)[0].path == \
        "/h/.config/containers/auth.json"


def test_the_first_file_with_an_entry_wins(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write(home / ".config/containers/auth.json",
          {"auths": {"other.example": {"auth": token("a", "pw-other")}}})
    write(home / ".docker/config.json",
          {"auths": {"reg.example:5000": {"auth": token("u", "pw-docker")}}})
    creds = lookup("reg.example:5000/team/app", {"HOME": str(home)}, 0)
    assert creds.source == f"auths entry 'reg.example:5000' in {home}/.docker/config.json"
    assert {"pw-other", "pw-docker"} <= creds.secrets  # every file's secrets are scrubbed
    env = {"HOME": str(home), "REGISTRY_AUTH_FILE": str(write(
        tmp_path / "a.json", {"auths": {"reg.example:5000/team": {"auth": token("t", "x1")}}}))}
    creds = lookup("reg.example:5000/team/app", env, 0)
    assert creds.source == \
        f"auths entry 'reg.example:5000/team' in REGISTRY_AUTH_FILE={tmp_path}/a.json"


def test_cred_helpers_come_before_auths_and_credsstore_is_bridged(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write(home / ".docker/config.json", {"credHelpers": {"reg.example": "ecr-login"},
                                         "auths": {"reg.example": {"auth": token("u", "p1")}}})
    creds = lookup("reg.example/app", {"HOME": str(home)}, 0)
    assert "docker-credential-ecr-login" in str(creds.source) and creds.store is None
    write(home / ".docker/config.json", {"auths": {"reg.example": {}}, "credsStore": "pass"})
    creds = lookup("reg.example/app", {"HOME": str(home)}, 0)
    assert creds.store == "pass" and "bridged by tracer" in str(creds.source)
    assert json.loads(bridge_file(creds) or b"") == {"auths": {},
                                                     "credHelpers": {"reg.example": "pass"}}
    write(home / ".docker/config.json", {"credsStore": "../../bin/evil"})
    with pytest.raises(BadInput, match="not a credential helper name"):
        lookup("reg.example/app", {"HOME": str(home)}, 0)


def test_no_credentials_names_every_place_looked_in(tmp_path: Path) -> None:
    creds = lookup("reg.example/app", {"HOME": str(tmp_path)}, 0)
    assert creds.source is None
    assert f"{tmp_path}/.docker/config.json" in creds.describe()


def test_docker_hub_names() -> None:
    assert split_name("nginx") == ("docker.io", "library/nginx")
    assert split_name("index.docker.io/team/app") == ("docker.io", "team/app")
    assert split_name("localhost/app") == ("localhost", "app")
    assert split_name("127.0.0.1:5000/a/b") == ("127.0.0.1:5000", "a/b")
