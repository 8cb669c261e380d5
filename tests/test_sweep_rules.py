"""The sweep's security rule, without an engine: it removes only what it can judge as a
dead tracer process's own, and an engine that fails or answers garbage never makes it
remove more. The engine-backed tests (test_security_sweep, test_leftovers) show the same
with real containers; these pin every branch of the rule, including the ones a real
engine rarely takes (an image that cannot be inspected, labels of the wrong type).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import docker.errors
import pytest
import requests.exceptions

from tracer.workdir import OWNER_LABEL, TEMP_REPOSITORY, Owner, current_owner, sweep_engine

ME = current_owner()
# the same host, another boot: a process that cannot be running any more
DEAD = dataclasses.replace(ME, pid=1, start=1, boot="00000000-dead-0000-0000-000000000000")
ALIVE = ME


class FakeApi:
    """The four calls the sweep makes, answering from plain data; removals are recorded."""

    def __init__(self, containers: Any = (), images: Any = (),
                 image_configs: dict[str, Any] | None = None,
                 fail: dict[str, BaseException] | None = None) -> None:
        self._containers = containers
        self._images = images
        self._configs = image_configs or {}
        self._fail = fail or {}
        self.removed: list[str] = []

    def _maybe_fail(self, call: str) -> None:
        if call in self._fail:
            raise self._fail[call]

    def containers(self, **_: Any) -> Any:
        self._maybe_fail("containers")
        return list(self._containers) if isinstance(self._containers, tuple) else \
            self._containers

    def images(self, **_: Any) -> Any:
        self._maybe_fail("images")
        return list(self._images) if isinstance(self._images, tuple) else self._images

    def inspect_image(self, image_id: str) -> Any:
        self._maybe_fail("inspect_image")
        if image_id not in self._configs:
            raise docker.errors.ImageNotFound(image_id)
        return {"Config": self._configs[image_id]}

    def remove_container(self, cid: str, **_: Any) -> None:
        self._maybe_fail("remove_container")
        self.removed.append(cid)

    def remove_image(self, tag: str) -> None:
        self._maybe_fail("remove_image")
        self.removed.append(tag)


class FakeClient:
    def __init__(self, api: FakeApi) -> None:
        self.api = api


def container(cid: str, owner: Owner | None, image: str = "sha256:img",
              **extra: Any) -> dict[str, Any]:
    return {"Id": cid, "Names": [f"/{cid}"], "ImageID": image,
            "Labels": owner.labels() if owner else {}, **extra}


def sweep(api: FakeApi) -> list[str]:
    return [r.name for r in sweep_engine(FakeClient(api), ME)]


def test_a_dead_owners_container_is_removed_and_a_live_ones_stays() -> None:
    api = FakeApi([container("dead", DEAD), container("alive", ALIVE)],
                  image_configs={"sha256:img": {"Labels": None}})
    assert sweep(api) == ["dead"]
    assert api.removed == ["dead"]


def test_owner_labels_inherited_from_the_image_are_not_tracers() -> None:
    """The image says it is a dead tracer's: every container of it would look like one."""
    api = FakeApi([container("victim", DEAD)],
                  image_configs={"sha256:img": {"Labels": DEAD.labels()}})
    assert sweep(api) == [] and api.removed == []


@pytest.mark.parametrize("config", [
    pytest.param(None, id="image-gone"),  # inspect raises ImageNotFound
    pytest.param({"Labels": ["not", "a", "mapping"]}, id="labels-not-a-mapping"),
    pytest.param({"Labels": {OWNER_LABEL: 5}}, id="label-not-a-string"),
    pytest.param("garbage", id="config-not-a-mapping"),
])
def test_what_cannot_be_judged_stays(config: Any) -> None:
    configs = {} if config is None else {"sha256:img": config}
    api = FakeApi([container("unjudged", DEAD)], image_configs=configs)
    assert sweep(api) == [] and api.removed == []


@pytest.mark.parametrize("error", [
    docker.errors.APIError("500 Server Error"),
    requests.exceptions.ReadTimeout("engine hung"),
    requests.exceptions.ConnectionError("refused"),
    ConnectionResetError("reset"),
])
@pytest.mark.parametrize("call", ["containers", "images", "inspect_image",
                                  "remove_container", "remove_image"])
def test_an_engine_error_leaves_things_where_they_are(call: str, error: Exception) -> None:
    api = FakeApi([container("dead", DEAD)],
                  [{"RepoTags": [TEMP_REPOSITORY + "x:tag"], "Labels": DEAD.labels()}],
                  image_configs={"sha256:img": {"Labels": None}}, fail={call: error})
    names = sweep(api)  # never raised: a sweep does not stop a run
    if call == "containers":
        assert "dead" not in names
    if call in ("inspect_image", "remove_container"):
        assert "dead" not in names and "dead" not in api.removed
    if call in ("images", "remove_image"):
        assert TEMP_REPOSITORY + "x:tag" not in names


@pytest.mark.parametrize("answer", [None, "text", {"Id": "x"}, [None, 5, "x"],
                                    [{"Id": 5, "Labels": DEAD.labels()}],
                                    [{"Id": "c", "Labels": "owner"}]])
def test_garbage_answers_remove_nothing(answer: Any) -> None:
    api = FakeApi(answer, answer, image_configs={"sha256:img": {"Labels": None}})
    assert sweep(api) == [] and api.removed == []


def test_only_temporary_tags_of_dead_owners_are_removed() -> None:
    published = "local/app:min"
    api = FakeApi(images=[
        {"RepoTags": [TEMP_REPOSITORY + "dead:1", published], "Labels": DEAD.labels()},
        {"RepoTags": [TEMP_REPOSITORY + "alive:1"], "Labels": ALIVE.labels()},
        {"RepoTags": [TEMP_REPOSITORY + "nobody:1"], "Labels": {}},
        {"RepoTags": ["other/dead:1"], "Labels": DEAD.labels()},
    ])
    assert sweep(api) == [TEMP_REPOSITORY + "dead:1"]
    assert published not in api.removed


def test_a_bug_in_tracer_is_not_taken_for_an_engine_error() -> None:
    """A sweep wrapped in suppress(Exception) hid every bug in it for ever; only engine
    errors are swallowed."""
    api = FakeApi([container("dead", DEAD)], fail={"containers": TypeError("a bug")})
    with pytest.raises(TypeError):
        sweep(api)
