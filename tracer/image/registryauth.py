"""Where a registry's credentials come from, found the way skopeo finds them.

tracer never reads a password for itself: skopeo (containers/image 5.23, the library
behind skopeo 1.9, Podman and Buildah) looks credentials up, in this order, the first
file with an entry for the registry winning:

1. `REGISTRY_AUTH_FILE` when set, else `$XDG_RUNTIME_DIR/containers/auth.json` (without
   XDG_RUNTIME_DIR: `/run/containers/UID/auth.json`);
2. `$XDG_CONFIG_HOME/containers/auth.json` (default `~/.config/containers/auth.json`);
3. `$DOCKER_CONFIG/config.json`, default `~/.docker/config.json` (what `docker login`
   writes);
4. `~/.dockercfg` (the legacy format).

In each file a `credHelpers` entry for the registry (a `docker-credential-NAME` program
on PATH) comes first, then `auths` entries for the repository, its namespaces and the
registry. Docker's `credsStore` (one helper for every registry) is not read by
containers/image 5.23; tracer bridges it: when no file has an entry for the registry and
the Docker config names a `credsStore`, skopeo gets a generated auth file in the run's
work directory that holds only `credHelpers: {REGISTRY: STORE}` (the helper's name, never
a secret), so the same helper answers as it does for `docker pull`.

This module repeats that lookup only to say which file was used when a registry refuses
(exit 2 naming it) and to learn the strings that must never appear in a message: every
`auth`, password and token value of the files it read, so skopeo's output can be scrubbed
of them.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from tracer.budgets import DEFAULT
from tracer.errors import BadInput
from tracer.operatorfiles import parse_json, read_regular

_HELPER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SECRET_KEYS = ("auth", "password", "identitytoken", "registrytoken")
_DOCKER_HUB = ("docker.io", "index.docker.io", "registry-1.docker.io")


@dataclass(frozen=True)
class AuthFile:
    """One place credentials may be read from, in lookup order."""

    path: str
    label: str  # how a message names it: "REGISTRY_AUTH_FILE=/x/auth.json"
    legacy: bool = False  # ~/.dockercfg: a bare {registry: entry} map


@dataclass
class Credentials:
    """Where skopeo will find credentials for one registry, and what to scrub."""

    registry: str
    source: str | None = None  # "credHelpers entry (docker-credential-tt) in FILE", ...
    store: str | None = None  # credsStore to bridge (no file has an entry)
    searched: list[str] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set)

    def describe(self) -> str:
        """For a refusal: which credentials were sent, or that none were found where."""
        if self.source:
            return f"credentials from {self.source}"
        return ("no credentials (none for " + self.registry + " in: "
                + ", ".join(self.searched) + ")")


def split_name(name: str) -> tuple[str, str]:
    """(registry host, repository path) of an image name, Docker Hub's defaults filled in
    as every container tool does: `nginx` is docker.io `library/nginx`."""
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, repo = first, rest
    else:
        registry, repo = "docker.io", name
    if registry in _DOCKER_HUB:
        registry = "docker.io"
        if "/" not in repo:
            repo = f"library/{repo}"
    return registry, repo


def auth_files(env: Mapping[str, str] | None = None, uid: int | None = None) -> list[AuthFile]:
    """The files skopeo 1.9 reads credentials from, in its order (module docstring)."""
    env = os.environ if env is None else env
    uid = os.getuid() if uid is None else uid
    home = env.get("HOME") or os.path.expanduser("~")
    files: list[AuthFile] = []
    if env.get("REGISTRY_AUTH_FILE"):
        files.append(AuthFile(env["REGISTRY_AUTH_FILE"],
                              f"REGISTRY_AUTH_FILE={env['REGISTRY_AUTH_FILE']}"))
    elif env.get("XDG_RUNTIME_DIR"):
        if os.path.isdir(env["XDG_RUNTIME_DIR"]):  # skopeo skips a missing runtime dir
            path = os.path.join(env["XDG_RUNTIME_DIR"], "containers", "auth.json")
            files.append(AuthFile(path, path))
    else:
        path = f"/run/containers/{uid}/auth.json"
        files.append(AuthFile(path, path))
    config_home = env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    path = os.path.join(config_home, "containers", "auth.json")
    files.append(AuthFile(path, path))
    if env.get("DOCKER_CONFIG"):
        path = os.path.join(env["DOCKER_CONFIG"], "config.json")
    else:
        path = os.path.join(home, ".docker", "config.json")
    files.append(AuthFile(path, path))
    path = os.path.join(home, ".dockercfg")
    files.append(AuthFile(path, path, legacy=True))
    return files


def _read(file: AuthFile) -> dict | None:
    """The file's JSON object; None when it is absent or unreadable (skopeo then says
    what is wrong with it, in its own error)."""
    if not os.path.exists(file.path):
        return None
    try:
        data = parse_json(read_regular(file.path, "auth file", limit=DEFAULT.json_bytes,
                                       budget="json_bytes"), "auth file", file.path)
    except BadInput:
        return None
    return data if isinstance(data, dict) else None


def _secrets_of(entry: object) -> set[str]:
    out: set[str] = set()
    if not isinstance(entry, dict):
        return out
    for key in _SECRET_KEYS:
        value = entry.get(key)
        if isinstance(value, str) and value:
            out.add(value)
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=False).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            decoded = ""
        user, colon, password = decoded.partition(":")
        if colon and password:
            out.add(password)
            out.add(decoded)
    return out


def _has_credentials(entry: object) -> bool:
    """An `auths` entry skopeo uses: a decodable `user:password` (Docker writes empty
    `{}` entries beside a credsStore; skopeo moves on past them)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("auth"), str):
        return False
    try:
        decoded = base64.b64decode(entry["auth"], validate=False)
    except (binascii.Error, ValueError):
        return False
    return b":" in decoded


def _keys(registry: str, repo: str) -> list[str]:
    """`auths` keys that serve REGISTRY/REPO, most specific first (containers-auth.json(5))."""
    parts = repo.split("/")
    keys = [registry + "/" + "/".join(parts[:i]) for i in range(len(parts), 0, -1)]
    return [*keys, registry]


def _normalized(key: str, legacy: bool) -> str:
    stripped = key.removeprefix("http://").removeprefix("https://")
    if legacy or stripped != key:
        stripped = stripped.split("/", 1)[0]
    return "docker.io" if stripped in _DOCKER_HUB else stripped


def lookup(name: str, env: Mapping[str, str] | None = None,
           uid: int | None = None) -> Credentials:
    """Where skopeo finds credentials for image `name` (module docstring), and the
    secrets of every auth file read."""
    registry, repo = split_name(name)
    found = Credentials(registry)
    files = auth_files(env, uid)
    docker_config = files[-2]
    store: str | None = None
    for file in files:
        found.searched.append(file.label)
        doc = _read(file)
        if doc is None:
            continue
        auths = doc if file.legacy else doc.get("auths")
        auths = auths if isinstance(auths, dict) else {}
        for entry in auths.values():
            found.secrets |= _secrets_of(entry)
        if found.source:
            continue
        helpers = {} if file.legacy else doc.get("credHelpers")
        helpers = helpers if isinstance(helpers, dict) else {}
        helper = helpers.get(registry)
        if registry == "docker.io" and helper is None:
            helper = next((helpers[h] for h in _DOCKER_HUB if h in helpers), None)
        if isinstance(helper, str):
            found.source = (f"credHelpers entry for {registry} (docker-credential-{helper}) "
                            f"in {file.label}")
            continue
        keys = [registry] if file.legacy else _keys(registry, repo)
        key = next((k for k in keys if _has_credentials(auths.get(k))), None)
        if key is None:
            key = next((k for k, v in auths.items() if isinstance(k, str)
                        and _normalized(k, file.legacy) == registry and _has_credentials(v)),
                       None)
        if key is not None:
            found.source = f"auths entry {key!r} in {file.label}"
            continue
        if file is docker_config and isinstance(doc.get("credsStore"), str):
            store = doc["credsStore"]
    if found.source is None and store is not None:
        if not _HELPER_NAME.match(store):
            raise BadInput(f"{docker_config.label}: credsStore {store[:80]!r} is not a "
                           "credential helper name")
        found.store = store
        found.source = (f"credsStore (docker-credential-{store}) of {docker_config.label}, "
                        "bridged by tracer (skopeo 1.9 does not read credsStore)")
    return found


def bridge_file(creds: Credentials) -> bytes | None:
    """The auth file that makes skopeo ask the credsStore helper (None: not needed)."""
    if creds.store is None:
        return None
    return json.dumps({"auths": {}, "credHelpers": {creds.registry: creds.store}}).encode()
