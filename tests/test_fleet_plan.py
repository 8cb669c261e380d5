"""Deciding a fleet's base from what its jobs need: grouping, union, pins, what changed,
and the base descriptor a later batch reads back (an operator's file: checked)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from image_builders import M, flat_from_layers, layer

from tracer.errors import BadInput
from tracer.fleet.descriptor import BaseDescriptor, read_base_descriptor
from tracer.fleet.plan import Fleet, changes, decide, group, held_for

A, B, C, D = ("sha256:" + c * 64 for c in "abcd")


def test_jobs_are_grouped_by_their_lowest_layers() -> None:
    fleets, alone = group({"web": [A, B, C], "api": [A, B, D], "cron": [A, C],
                           "other": [D], "unknown": []})
    assert [(f.layers, f.jobs) for f in fleets] == [([A], ["web", "api", "cron"])]
    assert sorted(alone) == ["other", "unknown"]
    fleets, _ = group({"web": [A, B, C], "api": [A, B, D]})
    assert fleets[0].layers == [A, B] and fleets[0].name.startswith("base-")


def _index(tmp: Path):
    return flat_from_layers(tmp, layer(
        M("lib", "dir"), M("lib/libc.so", data=b"c" * 100), M("lib/libz.so", data=b"z" * 50),
        M("lib/libssl.so", data=b"s" * 70), M("etc", "dir"), M("etc/hosts", data=b"h")))


def test_a_pinned_base_stays_while_it_covers_every_job(tmp_path: Path) -> None:
    index = _index(tmp_path)
    fleet = Fleet("base-x", [A], ["one", "two"])
    needs = {"one": ["/lib", "/lib/libc.so"], "two": ["/lib", "/lib/libz.so"]}
    fresh = decide(fleet, needs, index, None)
    assert fresh.paths == ["/lib", "/lib/libc.so", "/lib/libz.so"] and not fresh.pinned
    pin = BaseDescriptor("base-x", [A], B, 1, 1,
                         ["/etc", "/etc/hosts", "/lib", "/lib/libc.so", "/lib/libz.so"])
    kept = decide(fleet, needs, index, pin)
    assert kept.pinned and kept.paths == pin.paths and "covers every job" in kept.pin_note
    more = decide(fleet, {**needs, "two": ["/lib/libssl.so"]}, index, pin)
    assert not more.pinned and more.paths == ["/lib", "/lib/libc.so", "/lib/libssl.so"]
    assert "two needs 1 path(s) it lacks (e.g. /lib/libssl.so)" in more.pin_note
    moved = decide(Fleet("base-y", [C], ["one"]), needs, index, pin)
    assert not moved.pinned and "other layers" in moved.pin_note


def test_changes_say_what_joining_and_leaving_did(tmp_path: Path) -> None:
    index = _index(tmp_path)
    before = BaseDescriptor("base-x", [A], B, 1, 1, ["/lib", "/lib/libc.so"],
                            {"one": ["/lib", "/lib/libc.so"], "gone": ["/lib/libc.so"]})
    needs = {"one": ["/lib", "/lib/libc.so"], "new": ["/lib", "/lib/libssl.so"]}
    paths = ["/lib", "/lib/libc.so", "/lib/libssl.so"]
    change = changes(before, needs, paths, C, index, pinned=False)
    assert change.added == ["/lib/libssl.so"] and change.removed == []
    text = "\n".join(change.lines)
    assert "new joined the fleet: the base grows by 1 path(s) (70 B) only it needs" in text
    assert "gone left the fleet: the base keeps what the others need" in text
    same = changes(before, {"one": ["/lib", "/lib/libc.so"]}, before.paths, B, index, False)
    assert same.lines[0].startswith("shared base unchanged")
    # a pinned base keeps what a job that left needed, and says so the next time; what
    # the staying jobs still need is held for no one who left
    assert held_for(before, {"one": ["/lib", "/lib/libc.so"]}, paths) == {}
    before2 = BaseDescriptor("base-x", [A], B, 1, 1, paths, needs)
    held = held_for(before2, {"one": ["/lib", "/lib/libc.so"]}, paths)
    assert held == {"new": ["/lib/libssl.so"]}
    after = BaseDescriptor("base-x", [A], B, 1, 1, paths, {"one": ["/lib", "/lib/libc.so"]},
                           held_for=held)
    back = changes(after, {"one": ["/lib", "/lib/libc.so"]}, ["/lib", "/lib/libc.so"], D, index,
                   False)
    assert any("held for new" in line and "left the base" in line for line in back.lines)
    # a name in an image may hold a newline: it never forges a line of the batch's log
    forged = changes(before, {"one": ["/lib/x\ntracer batch: all passed"]},
                     ["/lib/x\ntracer batch: all passed"], C, index, False)
    assert all("\n" not in line for line in forged.lines)
    assert any("/lib/x\\ntracer batch" in line for line in forged.lines)


def test_a_descriptor_reads_back_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    desc = BaseDescriptor("base-x", [A], B, 10, 5, ["/lib", "/lib/libc.so"],
                          {"one": ["/lib/libc.so"], "two": ["/lib", "/lib/libc.so"]}, "1.0")
    path = tmp_path / "base-x.json"
    desc.write(path)
    back = read_base_descriptor(path)
    assert back == desc and back.jobs_needing("/lib/libc.so") == ["one", "two"]
    doc = json.loads(path.read_text())
    for broken, message in ((dict(doc, format="x"), "format"),
                            (dict(doc, diff_id="sha256:zz"), "diff_id"),
                            (dict(doc, needed_by={"one": [7]}), "needed_by.one"),
                            (dict(doc, paths=["relative"]), "paths"),
                            (dict(doc, size=-1), "size")):
        path.write_text(json.dumps(broken))
        with pytest.raises(BadInput, match=message):
            read_base_descriptor(path)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(BadInput, match="FIFO"):
        read_base_descriptor(fifo)
