"""The two readers of an engine image refuse the same inputs, by the same budget.

An engine image is read in place (overlay.py) or through `docker save` (the docker-archive
reader); which one depends on the host, not on the image. A budget one of them applies
and the other does not is a hole an image walks through on the other kind of host
(`--budget entries=N` used to bind the in-place reader only: the archive reader flattened
under the defaults). So for every budget that reading an image spends, one hostile image
over it is refused by both readers, naming that budget; and an image within its budgets is
accepted by both, even when `docker save`'s own packaging (its members, its manifest.json)
would be over a small `entries` budget.

`expansion` and `expansion_floor` bind compressed layers only: the engine decompresses
layers when it loads them, and both readers get them uncompressed (checked below, so a
change of that is noticed here). `image_bytes` is checked against the engine's own size
claim before either reader starts, then counted while reading.

The first tests use a hand-made engine storage (no engine, root only) against the
docker-archive reader of the same layers; the integration test loads each image into the
real engine and reads it both ways, through `read_image` as a run does.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from image_builders import M, docker_archive, layer
from overlay_storage import read_in_place
from prereq import missing

from tracer.budgets import BudgetExceeded, Budgets
from tracer.engine import connect
from tracer.image import parse_reference, read_image
from tracer.image.daemon import choose_reader, inspect, open_engine_image
from tracer.image.interface import InDirectory, InFile
from tracer.image.model import FlatImage


@dataclass
class Case:
    """A hostile image (layers of members, extra config fields) and the small budgets it
    is over: `budget` is the one that must refuse it."""

    budget: str
    layers: list[list[M]]
    budgets: Budgets
    config_extra: dict | None = None


def _deep(depth: int) -> str:
    return "/".join(["d"] * depth) + "/f"


CASES = [
    Case("layers", [[M(f"f{i}", data=b"x")] for i in range(3)], Budgets(layers=2)),
    Case("entries", [[M(f"f{i:03d}", data=b"x") for i in range(60)]], Budgets(entries=40)),
    Case("path_length", [[M("n" * 150 + "/" + "m" * 150, data=b"x")]],
         Budgets(path_length=200)),
    Case("index_bytes", [[M(f"{i:03d}" + "x" * 90, data=b"x") for i in range(80)]],
         Budgets(index_bytes=5000)),
    Case("path_walk", [[M(_deep(40), data=b"x")]], Budgets(path_walk=30)),
    Case("image_bytes", [[M("a", data=os.urandom(150_000))], [M("b", data=os.urandom(150_000))]],
         Budgets(image_bytes=200_000)),
    Case("json_bytes", [[M("a", data=b"x")]], Budgets(json_bytes=20_000),
         config_extra={"comment": "c" * 30_000}),
]
# what reading an image spends, from budgets.py; a new one must get a case here
READING = {"image_bytes", "expansion", "expansion_floor", "layers", "entries", "path_length",
           "index_bytes", "path_walk", "json_bytes"}
NOT_FOR_ENGINE_IMAGES = {"expansion", "expansion_floor"}  # see the module docstring


def test_every_reading_budget_has_a_case() -> None:
    assert {c.budget for c in CASES} == READING - NOT_FOR_ENGINE_IMAGES


def _tars(case: Case) -> list[bytes]:
    return [layer(*ms) for ms in case.layers]


def _refused_by(read: Callable[[], FlatImage]) -> str | None:
    try:
        read()
    except BudgetExceeded as exc:
        return exc.name
    return None


@pytest.mark.parametrize("case", CASES, ids=[c.budget for c in CASES])
def test_hand_made_storage_and_archive_refuse_alike(case: Case, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        missing("in-place reading is for root only")
    archive = docker_archive(tmp_path / "in.tar", _tars(case), config_extra=case.config_extra)
    by_archive = _refused_by(lambda: read_image(parse_reference(f"docker-archive:{archive}"),
                                                tmp_path / "archive", case.budgets)[0])
    by_storage = _refused_by(lambda: read_in_place(tmp_path / "storage", case.layers,
                                                   case.budgets, case.config_extra))
    assert (by_storage, by_archive) == (case.budget, case.budget)


# ---------------------------------------------------------------- the real engine


def _load(case: Case, tmp_path: Path) -> str:
    tag = f"tracer-test/reader-twins-{case.budget.replace('_', '-')}:{uuid.uuid4().hex[:8]}"
    archive = docker_archive(tmp_path / f"{case.budget}.tar", _tars(case), repo_tag=tag,
                             config_extra=case.config_extra)
    subprocess.run(["docker", "load", "-i", str(archive)], check=True, capture_output=True)
    return tag


def _read_both(tag: str, budgets: Budgets, tmp_path: Path, monkeypatch
               ) -> tuple[str | None, str | None]:
    """(budget refused by, ...) for the in-place reader and for `docker save`."""
    ref = parse_reference(tag)
    engine = connect()
    image = inspect(engine, tag)
    assert image is not None
    monkeypatch.setenv("TRACER_IMAGE_READER", "auto")
    storage, why = choose_reader(engine, image, Budgets())
    if storage is None:
        missing(f"in-place reading is not possible here: {why}")
    work = tmp_path / uuid.uuid4().hex[:8]
    in_place = _refused_by(lambda: read_image(ref, work / "in-place", budgets)[0])
    monkeypatch.setenv("TRACER_IMAGE_READER", "save")
    saved = _refused_by(lambda: read_image(ref, work / "saved", budgets)[0])
    return in_place, saved


@pytest.mark.integration
def test_the_engine_readers_refuse_alike_and_accept_alike(docker_client, tmp_path: Path,
                                                          monkeypatch) -> None:
    tags = []
    try:
        for case in CASES:
            tags.append(_load(case, tmp_path))
            assert _read_both(tags[-1], case.budgets, tmp_path, monkeypatch) == \
                (case.budget, case.budget), case.budget
        # within its budgets: accepted by both, although `docker save` packs the three
        # files into more archive members than the image has paths
        small = Case("none", [[M("a", data=b"1"), M("b", data=b"2"), M("c", data=b"3")]],
                     Budgets(entries=4))
        tags.append(_load(small, tmp_path))
        assert _read_both(tags[-1], small.budgets, tmp_path, monkeypatch) == (None, None)
    finally:
        for tag in tags:
            docker_client.images.remove(tag, force=True)


@pytest.mark.integration
def test_neither_engine_reader_decompresses_a_layer(docker_client, tmp_path: Path,
                                                    monkeypatch) -> None:
    """Why expansion budgets cannot tell the two apart: both read every layer of an
    engine image uncompressed, in place (no stream is decompressed or spooled)."""
    case = Case("gzip", [[M("a", data=b"x" * 100_000)], [M("b", data=b"y")]], Budgets())
    tag = _load(case, tmp_path)
    try:
        for reader, placement in (("auto", InDirectory), ("save", InFile)):
            monkeypatch.setenv("TRACER_IMAGE_READER", reader)
            with open_engine_image(connect(), parse_reference(tag), tmp_path / reader,
                                   Budgets()) as image:
                if reader == "auto" and image.reader.startswith("docker save"):
                    missing(f"in-place reading is not possible here: {image.reader}")
                for lyr in image.layers:
                    stream = lyr.open(Budgets())
                    try:
                        assert isinstance(stream.placement, placement), (reader, lyr.where)
                    finally:
                        stream.close()
    finally:
        docker_client.images.remove(tag, force=True)
