"""Package-unit readers stay linear in the image's index, and derived memory is budgeted.

Every package database and every path of an image is hostile input. Each case builds an
index (and the database files it needs) in the shape that made a reader superlinear,
then asserts the reader is fast, its peak memory is bounded, and its answer is still
right: a Perl pattern that backtracked on `/auto/auto/...` paths (10,000 paths: 168 s), a
Ruby reader that tried every gem home for every path (5,000 x 405,000: 371 s), stdlib
and Composer readers that looked up each ancestor of a 2,000-deep path as a string,
Python and dpkg readers that compared every record with every other. Records that name
long paths in few bytes (a RECORD line `x` below a 4,000-byte directory) are charged to
package_db_bytes as they are derived, and lazily split files trip the entries budget
before they become millions of strings.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from tracer.budgets import BudgetExceeded, Budgets
from tracer.rootfs import RootFS
from tracer.units import UnitIndex

T = TypeVar("T")
MiB = 1 << 20


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


def measured(fn: Callable[[], T]) -> tuple[T, float, float]:
    """fn()'s result, its wall seconds and how many MiB this process's peak RSS grew by.

    The kernel's high-water mark is reset first (clear_refs 5, Linux >= 4.0), so the peak
    is fn's own, at no cost to its speed (tracemalloc made these cases 5x slower).
    """
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    t0 = time.monotonic()
    result = fn()
    seconds = time.monotonic() - t0
    return result, seconds, (_status_kib("VmHWM") - before) / 1024


def raises(fn: Callable[[], object], exc: type[BaseException]) -> Callable[[], BaseException]:
    """A callable returning the exception fn raises (so measured() can time the refusal)."""
    def call() -> BaseException:
        with pytest.raises(exc) as info:
            fn()
        return info.value
    return call


def write(base: Path, files: dict[str, str | bytes]) -> RootFS:
    for path, data in files.items():
        host = base / path.lstrip("/")
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_bytes(data.encode() if isinstance(data, str) else data)
    return RootFS(base)


# --------------------------------------------------------------------------- perl


def test_perl_auto_auto_paths_do_not_backtrack(tmp_path: Path):
    packlist = "/usr/local/lib/perl5/auto/Foo/Bar/.packlist"
    root = write(tmp_path, {packlist: "/usr/local/lib/perl5/Foo/Bar.pm\n"})
    deep = "/" + "auto/" * 815  # a 4,076-byte path of /auto/ components
    paths = [f"{deep}f{i}" for i in range(10_000)] + [packlist, "/usr/local/lib/perl5/Foo/Bar.pm"]
    index, seconds, peak = measured(lambda: UnitIndex.build(root, paths=paths))
    assert seconds < 5, f"{seconds:.1f}s for 10,000 /auto/auto/... paths (was 168 s)"
    assert peak < 200, f"{peak:.0f} MiB"
    unit = index.unit_of("/usr/local/lib/perl5/Foo/Bar.pm")
    assert unit is not None and unit.name == "Foo::Bar"


def test_perl_packlist_lines_of_many_attributes_are_linear(tmp_path: Path):
    packlist = "/usr/local/lib/perl5/auto/Foo/.packlist"
    # 1,000 lines of 4,000 bytes: a path, 1,320 ` a=` words, then one that is no
    # attribute, so a lazy path + repeated attributes pattern retried every split point
    lines = [f"/usr/local/lib/perl5/Foo{i:04d}.pm" + " a=" * 1_320 + " !" for i in range(1_000)]
    root = write(tmp_path, {packlist: "\n".join(lines) + "\n/usr/local/lib/perl5/Foo/x.pm "
                            "type=file from=/usr/bin/x\n"})
    index, seconds, _ = measured(lambda: UnitIndex.build(root, paths=[packlist]))
    assert seconds < 5, f"{seconds:.1f}s for a 4 MB packlist"
    (unit,) = index.find("Foo", "perl")
    assert "/usr/local/lib/perl5/Foo/x.pm" in unit.paths  # its attributes are stripped
    assert lines[999] in unit.paths  # `!` is no attribute: the whole line is the path


# --------------------------------------------------------------------------- ruby


def test_ruby_gem_homes_times_paths_is_linear(tmp_path: Path):
    root = RootFS(tmp_path)  # the gem reader reads no file: the index is the input
    homes = [f"/srv/home{i}" for i in range(5_000)]
    paths = [f"{h}/specifications/rack-3.0.{i}.gemspec" for i, h in enumerate(homes)]
    paths += [f"{h}/gems/rack-3.0.{i}/lib/f{j}.rb" for i, h in enumerate(homes)
              for j in range(80)]
    paths += [f"/data/other{j}" for j in range(5_000)]
    assert len(paths) == 410_000
    index, seconds, peak = measured(lambda: UnitIndex.build(root, paths=paths))
    assert seconds < 10, f"{seconds:.1f}s for 5,000 gem homes x 405,000 paths (was 371 s)"
    assert peak < 400, f"{peak:.0f} MiB"
    assert len([u for u in index.units.values() if u.kind == "gem"]) == 5_000
    unit = index.unit_of("/srv/home77/gems/rack-3.0.77/lib/f3.rb")
    assert unit is not None and unit.version == "3.0.77"
    assert len(unit.paths) == 81  # its 80 files and its gemspec
    assert index.unit_of("/data/other1") is None


def test_ruby_nested_gem_homes_count_every_membership(tmp_path: Path):
    """A path inside gems vendored in gems vendored in gems belongs to each of them; each
    membership is counted as it is found, so a deep nest trips the entries budget."""
    home, paths = "", []
    for level in range(200):
        paths.append(f"{home}/specifications/g{level}-1.gemspec")
        home = f"{home}/gems/g{level}-1"
    paths += [f"{home}/f{i}" for i in range(20_000)]
    small = Budgets(entries=1_000_000)
    err, seconds, peak = measured(raises(
        lambda: UnitIndex.build(RootFS(tmp_path), paths=paths, budgets=small), BudgetExceeded))
    assert isinstance(err, BudgetExceeded) and err.name == "entries"
    assert seconds < 10 and peak < 200, (seconds, peak)


# --------------------------------------------------------------------------- python


def test_python_stdlib_roots_and_deep_paths_are_linear(tmp_path: Path):
    root = RootFS(tmp_path)
    roots = [f"/opt/py{i}/lib/python3.11" for i in range(3_000)]
    paths = [f"{r}/os.py" for r in roots] + [f"{r}/pkg{j}/__init__.py" for r in roots
                                              for j in range(10)]
    # 2,000 paths 2,000 directories deep in one stdlib package
    deep = roots[0] + "/deep" + "/d" * 2_000
    paths += [f"{deep}/m{i}.py" for i in range(2_000)]
    index, seconds, peak = measured(lambda: UnitIndex.build(root, paths=paths))
    assert seconds < 10, f"{seconds:.1f}s"
    assert peak < 300, f"{peak:.0f} MiB"
    unit = index.unit_of(f"{deep}/m5.py")
    assert unit is not None and unit.name == roots[0] + "/deep"
    assert len(unit.paths) == 2_000
    assert index.unit_of(roots[2_999] + "/pkg9/__init__.py").name == roots[2_999] + "/pkg9"


def test_python_many_distributions_are_linear(tmp_path: Path):
    files: dict[str, str | bytes] = {}
    for i in range(20_000):
        files[f"/venv{i % 2}/site/req{i}-1.0.dist-info/RECORD"] = f"req{i}/__init__.py,,\n"
    files["/venv0/site/dup-1.0.dist-info/RECORD"] = "dup/a.py,,\n"
    files["/venv1/site/dup-2.0.dist-info/RECORD"] = "dup/a.py,,\n"
    root = write(tmp_path, files)
    index, seconds, _ = measured(lambda: UnitIndex.build(root, paths=list(files)))
    assert seconds < 20, f"{seconds:.1f}s for 20,000 distributions"
    assert len([u for u in index.units.values() if u.kind == "python-dist"]) == 20_002
    assert index.unit_of("/venv1/site/dup/a.py").name == "dup (/venv1/site/dup-2.0.dist-info)"


def test_record_lines_naming_long_paths_are_charged(tmp_path: Path):
    """A 2 MB RECORD of `x` lines below a 3,800-byte directory names 2 GB of paths: the
    derived bytes trip package_db_bytes while memory stays near that budget."""
    site = "/" + "/".join(["s" * 199] * 19)  # 3,800 bytes, within the host's PATH_MAX
    record = f"{site}/big-1.0.dist-info/RECORD"
    root = write(tmp_path, {record: "".join(f"{i:x}\n" for i in range(500_000))})
    small = Budgets(package_db_bytes=32 * MiB)
    err, seconds, peak = measured(raises(
        lambda: UnitIndex.build(root, paths=[record], budgets=small), BudgetExceeded))
    assert isinstance(err, BudgetExceeded) and err.name == "package_db_bytes"
    assert "paths named in" in str(err) and record in str(err)
    assert seconds < 10 and peak < 120, (seconds, peak)


# --------------------------------------------------------------------------- composer


def test_composer_deep_paths_find_their_package_in_one_walk(tmp_path: Path):
    manifest = "/app/vendor/composer/installed.json"
    root = write(tmp_path, {manifest: '{"packages": [{"name": "acme/lib", "version": "1.0"}]}'})
    deep = "/app/vendor/acme/lib" + "/d" * 2_000
    paths = [manifest] + [f"{deep}/f{i}.php" for i in range(2_000)]
    index, seconds, peak = measured(lambda: UnitIndex.build(root, paths=paths))
    assert seconds < 10, f"{seconds:.1f}s"
    assert peak < 200, f"{peak:.0f} MiB"
    unit = index.unit_of(f"{deep}/f7.php")
    assert unit is not None and unit.name == "acme/lib" and len(unit.paths) == 2_000


# --------------------------------------------------------------------------- dpkg and apk


def test_dpkg_many_architectures_of_one_name_are_linear(tmp_path: Path):
    n = 20_000
    status = "".join(f"Package: libx\nStatus: install ok installed\nArchitecture: a{i}\n"
                     f"Version: {i}\n\n" for i in range(n))
    files: dict[str, str | bytes] = {"/var/lib/dpkg/status": status}
    for i in range(n):
        files[f"/var/lib/dpkg/info/libx:a{i}.list"] = f"/usr/lib/a{i}/libx.so\n"
    root = write(tmp_path, files)
    index, seconds, _ = measured(lambda: UnitIndex.build(root, paths=["/usr"]))
    assert seconds < 20, f"{seconds:.1f}s for {n} architectures of one package"
    unit = index.unit_of("/usr/lib/a19999/libx.so")
    assert unit is not None and unit.arch == "a19999" and unit.version == "19999"


def test_dpkg_list_of_tiny_lines_trips_entries_before_it_is_held(tmp_path: Path):
    """8 million 3-byte lines: the entries budget stops reading after its 100,000th path,
    instead of after splitting all of them into 8 million strings (~500 MB)."""
    root = write(tmp_path, {"/var/lib/dpkg/info/x.list": b"/a\n" * 8_000_000})
    small = Budgets(entries=100_000)
    err, seconds, peak = measured(raises(
        lambda: UnitIndex.build(root, paths=["/var"], budgets=small), BudgetExceeded))
    assert isinstance(err, BudgetExceeded) and err.name == "entries"
    assert seconds < 10, f"{seconds:.1f}s"
    assert peak < 24 * 2 + 40, f"{peak:.0f} MiB for a 24 MB file"  # its bytes, its text, a little


def test_apk_long_directory_and_many_files_are_charged(tmp_path: Path):
    """`F:` of 4,000 bytes then a million one-letter `R:` lines: 4 GB of paths if joined
    and held; charged as derived, they stop at package_db_bytes."""
    db = "P:evil\nV:1\nF:" + "d" * 4_000 + "\n" + "R:x\n" * 1_000_000
    root = write(tmp_path, {"/lib/apk/db/installed": db})
    small = Budgets(package_db_bytes=32 * MiB)
    err, seconds, peak = measured(raises(
        lambda: UnitIndex.build(root, paths=["/lib"], budgets=small), BudgetExceeded))
    assert isinstance(err, BudgetExceeded) and err.name == "package_db_bytes"
    assert seconds < 10 and peak < 100, (seconds, peak)

