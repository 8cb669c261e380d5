"""The granularity dial on a real application: what each position keeps of production.

tracer-fixture/prodapps (scripts/fixtures/prodapps) is a shop's nightly invoice job made
of Debian's own programs: sh, flock, bzip2, PHP 8.2, ImageMagick 6, coreutils, in a
German image. Its profile's smoke test runs the job; production also runs other
programs of the same packages. Each use below stands for one class of breakage the
issue tracker names, and the test pins where on the dial it is fixed:

    use                                 class                                 file pkg deps
    bzgrep -c Berlin orders.csv.bz2     a package's script runs Essential tools  -   -   ok
    convert -font DejaVu-Sans label:..  data in a package a kept one depends on  -   -   ok
    php8.2 checkout.php (sessions)      a directory a dependency owns            -   -   ok
    identify logo.png                   /usr/bin/NAME -> /etc/alternatives/NAME  -   ok  ok
    php total.php                       the same, for php8.2-cli                 -   ok  ok
    flock -n archiv/lock true           catalogs in an l10n package              -   ok  ok
    getservbyname("https")              netbase: nothing depends on it           -   -   -

The last row is a limit, not a goal: no package of the image declares netbase, so no
dial position finds /etc/services; a smoke step (or a recording of production) that
uses it does. The three minimizations run once for the module (about 40 s), each
verified by the profile's smoke test; every use is then run on the original and on
each minimized image, as production would run it (`docker run`).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tracer.explain.runfiles import read_keeplist

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent
PROFILE = REPO / "profiles" / "prodapps.yaml"
POSITIONS = ("file", "package", "deps")


@dataclass(frozen=True)
class Use:
    name: str
    argv: list[str]
    expect: str  # regex on stdout + stderr of a good run (exit 0 unless `exit`)
    fixed_at: str | None  # the first position it passes at; None: none does
    exit: int = 0


USES = [
    Use("essential-tools-of-a-script", ["bzgrep", "-c", "Berlin", "orders.csv.bz2"],
        r"^2\n$", "deps"),
    Use("font-in-a-dependency", ["convert", "-font", "DejaVu-Sans", "-size", "240x40",
                                 "label:Rechnung", "-format", "%wx%h colors=%k", "info:"],
        r"^240x40 colors=([2-9]|\d\d+)$", "deps"),
    Use("session-dir-of-a-dependency", ["php8.2", "/srv/app/checkout.php"],
        r"^checkout: session stored in /var/lib/php/sessions\n$", "deps"),
    Use("alternatives-identify", ["identify", "logo.png"], r"^logo\.png PNG 16x16 ", "package"),
    Use("alternatives-php", ["php", "/srv/app/total.php"], r"^total: 0 orders, 0,00 EUR\n$",
        "package"),
    Use("catalog-in-an-l10n-package", ["flock", "-n", "/srv/invoices/archiv/lock", "true"],
        r"^flock: Sperrdatei »/srv/invoices/archiv/lock« konnte nicht geöffnet werden: "
        r"Datei oder Verzeichnis nicht gefunden\n$", "package", exit=66),
    Use("network-database-nothing-declares",
        ["php8.2", "-r", 'echo getservbyname("https", "tcp"), "\\n";'], r"^443\n$", None),
]


def run_use(image: str, use: Use) -> tuple[int, str]:
    """Run one production use in a fresh container of `image`: (exit code, output)."""
    name = f"tracer-test-dial-{uuid.uuid4().hex[:10]}"
    try:
        proc = subprocess.run(["docker", "run", "--rm", "--name", name, "--network", "none",
                               "--entrypoint", use.argv[0], image, *use.argv[1:]],
                              capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")


def passes(image: str, use: Use) -> tuple[bool, str]:
    code, out = run_use(image, use)
    return code == use.exit and re.search(use.expect, out) is not None, f"exit {code}: {out}"


@dataclass
class Minimized:
    image: str
    report: dict
    keeplist: dict[str, str]  # path -> its reasons, as the keep-list file says them
    stdout: str
    report_path: Path


@pytest.fixture(scope="module")
def dial(docker_client, fixture_image, host_strace, tmp_path_factory
         ) -> Iterator[dict[str, Minimized]]:
    """`tracer minimize profiles/prodapps.yaml --granularity G` for each position."""
    fixture_image("prodapps")
    work = tmp_path_factory.mktemp("dial")
    out: dict[str, Minimized] = {}
    try:
        for position in POSITIONS:
            image = f"tracer-test/dial-prodapps:{position}-{uuid.uuid4().hex[:8]}"
            report = work / f"{position}.json"
            proc = subprocess.run([sys.executable, "-m", "tracer", "minimize", str(PROFILE),
                                   "--quiet", "--granularity", position, "--output",
                                   f"docker-daemon:{image}", "--report", str(report)],
                                  capture_output=True, text=True, timeout=600)
            out[position] = Minimized(image, {}, {}, proc.stdout, report)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            out[position].report = json.loads(report.read_text())
            out[position].keeplist = {p: "; ".join(r) for p, r in
                                      read_keeplist(work / f"{position}.keeplist").items()}
        yield out
    finally:
        for done in out.values():
            with contextlib.suppress(Exception):
                docker_client.images.remove(done.image, force=True)


@pytest.mark.parametrize("use", USES, ids=[u.name for u in USES])
def test_each_production_use_passes_where_the_dial_promises(dial, fixture_image,
                                                            use: Use) -> None:
    ok, out = passes(fixture_image("prodapps"), use)
    assert ok, f"{use.name} fails on the original image: {out}"
    for position in POSITIONS:
        ok, out = passes(dial[position].image, use)
        want = use.fixed_at is not None and POSITIONS.index(position) >= POSITIONS.index(
            use.fixed_at)
        assert ok == want, (f"{use.name} {'fails' if want else 'passes'} at {position} "
                            f"granularity: {out}")


FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
CATALOG = "/usr/share/locale/de/LC_MESSAGES/util-linux.mo"


def test_every_added_path_says_which_chain_pulled_it_in(dial) -> None:
    kept = dial["deps"].keeplist
    assert re.search(r"deps: package fonts-dejavu-core: [^;]*-> fontconfig-config -> "
                     r"fonts-dejavu-core", kept[FONT]), kept[FONT]
    assert re.search(r"deps: package php-common: [^;]*php8\.2-common -> php-common",
                     kept["/var/lib/php/sessions"])
    assert re.search(r"deps: package sed: \S+ -> sed \(sed is Essential and \S+ ships the "
                     r"script /usr/bin/\S+ \(#!/bin/sh\)\)", kept["/usr/bin/sed"])
    assert kept["/usr/bin/identify"].startswith(
        "alternatives: /usr/bin/identify -> /etc/alternatives/identify -> "
        "/usr/bin/identify-im6.q16, the current choice of alternative identify (package "
        "imagemagick-6.q16)")
    assert kept[CATALOG].startswith("l10n: a message catalog of de, a language in use "
                                    "(LANG=de_DE.UTF-8), from package util-linux-locales")
    package, file = dial["package"].keeplist, dial["file"].keeplist
    assert "/usr/bin/identify" in package and CATALOG in package
    for path in (FONT, "/var/lib/php/sessions", "/usr/bin/sed"):
        assert path not in package and path not in file, path
    assert "/usr/bin/identify" not in file and CATALOG not in file
    # the report lists each unit the walk pulled in with its chain
    units = {u["name"]: u for u in dial["deps"].report["package_granularity"]["deps"]["units"]}
    assert units["fonts-dejavu-core"]["chain"][-2:] == ["fontconfig-config", "fonts-dejavu-core"]
    assert units["sed"]["chain"][-1] == "sed"


def test_tracer_why_tells_the_chain(dial) -> None:
    proc = subprocess.run([sys.executable, "-m", "tracer", "why", str(dial["deps"].report_path),
                           FONT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"{FONT} is KEPT because:" in proc.stdout
    assert "-> fontconfig-config -> fonts-dejavu-core" in proc.stdout


def test_the_report_and_the_console_price_each_position(dial) -> None:
    sizes = {p: dial[p].report["size_after"] for p in POSITIONS}
    assert sizes["file"] < sizes["package"] < sizes["deps"] < dial["deps"].report["size_before"]
    deps = dial["deps"].report
    assert deps["granularity"] == "deps"
    assert deps["sizes_by_granularity"] == sizes
    assert dial["package"].report["sizes_by_granularity"] == {
        "file": sizes["file"], "package": sizes["package"]}
    prices = deps["package_granularity"]
    assert sum(u["added_bytes"] for u in prices["units"]) == prices["added_bytes"] \
        == sizes["deps"] - sizes["file"]
    console = dial["deps"].stdout
    assert "granularity: deps; package granularity would keep" in console
    lines = console[console.index("deps granularity keeps "):].splitlines()
    header = re.search(r"\(\+[\d.]+ [KMG]?B from (\d+) units?( and files of no unit)?\)",
                       lines[0])
    assert header and lines[1].split() == ["unit", "file", "package", "deps", "added"], console
    shown = 0
    for line in lines[2:]:
        if not line.startswith("  ") or (line.startswith("  (") and
                                         not line.startswith("  (no unit) ")):
            break
        shown += 1
    more = re.search(r"^  \((\d+) more, \+", console, re.M)
    assert int(header.group(1)) + bool(header.group(2)) == shown + (
        int(more.group(1)) if more else 0)
