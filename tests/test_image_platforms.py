"""Platforms of multi-platform images and which ones this host can run (platforms.py).

binfmt_misc entries are read in the kernel's own text format; the directories here hold
entries written as the kernel shows them (qemu-user-static registers these), since a
test cannot register handlers on a shared host.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tracer.errors import BadInput
from tracer.image.platforms import (
    Platform,
    host_platform,
    of_descriptor,
    parse_platform,
    runnable,
)

AARCH64_MAGIC = "7f454c460201010000000000000000000200b700"
AARCH64_MASK = "ffffffffffffff00fffffffffffffffffeffffff"


def binfmt(tmp: Path, **entries: str) -> Path:
    d = tmp / "binfmt_misc"
    d.mkdir()
    (d / "status").write_text("enabled\n")
    (d / "register").write_text("")
    for name, text in entries.items():
        (d / name).write_text(text)
    return d


def qemu_entry(flags: str = "OCF", enabled: bool = True) -> str:
    return ("enabled\n" if enabled else "disabled\n") + \
        "interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n" \
        f"flags: {flags}\noffset 0\nmagic {AARCH64_MAGIC}\nmask {AARCH64_MASK}\n"


@pytest.mark.parametrize("text,want", [
    ("linux/amd64", Platform("linux", "amd64")),
    ("linux/arm/v7", Platform("linux", "arm", "v7")),
    (" linux/arm64 ", Platform("linux", "arm64")),
])
def test_parse(text: str, want: Platform) -> None:
    assert parse_platform(text) == want
    assert parse_platform(str(want)) == want


@pytest.mark.parametrize("text", ["amd64", "linux/", "linux/amd64/v2/x", "Linux/AMD64",
                                  "linux/am d64", ""])
def test_bad_platforms_name_the_flag(text: str) -> None:
    with pytest.raises(BadInput, match="--platform .*expected OS/ARCH"):
        parse_platform(text)


def test_a_platform_without_variant_takes_any_variant() -> None:
    assert Platform("linux", "arm").matches(Platform("linux", "arm", "v7"))
    assert not Platform("linux", "arm", "v6").matches(Platform("linux", "arm", "v7"))
    assert not Platform("linux", "arm64").matches(Platform("linux", "amd64"))
    assert of_descriptor({"platform": {"os": "linux", "architecture": "arm64",
                                       "variant": "v8"}}) == Platform("linux", "arm64", "v8")
    assert of_descriptor({"platform": {"os": "linux"}}) is None


def test_the_engine_runs_its_own_platform_and_no_other_without_a_handler(tmp_path) -> None:
    here = runnable(Platform("linux", "amd64"), binfmt(tmp_path), tmp_path / "noabi")
    assert here.why_not(Platform("linux", "amd64")) is None
    assert here.describe(Platform("linux", "amd64")) == "native"
    why = here.why_not(Platform("linux", "arm64"))
    assert why and "no binfmt_misc handler with the F flag" in why and "arm64" in why
    assert "windows" in (here.why_not(Platform("windows", "amd64")) or "")


def test_i386_runs_natively_on_an_amd64_kernel_with_32_bit_emulation(tmp_path) -> None:
    abi = tmp_path / "abi"
    abi.mkdir()
    (abi / "vsyscall32").write_text("1\n")
    here = runnable(Platform("linux", "amd64"), binfmt(tmp_path), abi)
    assert here.why_not(Platform("linux", "386")) is None
    assert here.describe(Platform("linux", "386")) == "native"


def test_a_qemu_handler_with_the_f_flag_runs_arm64_and_is_named(tmp_path) -> None:
    here = runnable(Platform("linux", "amd64"), binfmt(tmp_path, **{"qemu-aarch64":
                                                                       qemu_entry()}))
    assert here.why_not(Platform("linux", "arm64")) is None
    assert "binfmt_misc qemu-aarch64" in here.describe(Platform("linux", "arm64"))


@pytest.mark.parametrize("entry,note", [
    (qemu_entry(flags="OC"), "lacks the F flag"),
    (qemu_entry(enabled=False), "is disabled"),
])
def test_an_unusable_handler_is_said_why(tmp_path, entry: str, note: str) -> None:
    here = runnable(Platform("linux", "amd64"), binfmt(tmp_path, **{"qemu-aarch64": entry}))
    why = here.why_not(Platform("linux", "arm64"))
    assert why and note in why


def test_no_binfmt_misc_mounted(tmp_path) -> None:
    here = runnable(Platform("linux", "amd64"), tmp_path / "absent")
    assert "is not mounted" in (here.why_not(Platform("linux", "arm64")) or "")


def test_this_host_runs_its_own_platform() -> None:
    here = runnable(host_platform())
    assert here.why_not(host_platform()) is None
