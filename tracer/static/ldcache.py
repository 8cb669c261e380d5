"""Parser for /etc/ld.so.cache, in both formats glibc has written, bounded on hostile files.

glibc's ld.so consults this file before the default directories, and only it (not
ld.so.conf, which is merely ldconfig's input). A library present on disk but absent from a
stale cache is therefore not found by the real loader in a non-default directory, so the
resolver reads the cache as the loader does.

Formats (glibc sysdeps/generic/dl-cache.h):
- old, "ld.so-1.7.0": a 16-byte header (magic, padding, uint32 nlibs), nlibs entries of
  (int32 flags, uint32 key, uint32 value), string offsets relative to the string table
  that follows the entries;
- new, "glibc-ld.so.cache1.1": a 48-byte header, nlibs entries of (int32 flags, uint32 key,
  uint32 value, uint32 osversion, uint64 hwcap), offsets relative to the header; in the
  "compat" layout it follows the old-format part, at the next aligned offset. Its byte
  order is the one of the machine that ran ldconfig (a cross-built s390x image has a
  big-endian cache), recorded in the header flags.
  An optional extension names the glibc-hwcaps subdirectories; an entry whose hwcap
  field has only DL_CACHE_HWCAP_EXTENSION set in its upper half indexes that list. The
  extension's offsets, and those of the names it lists, count from the start of the file
  (dl-cache.c: `cache_extension_load (cache_new, cache, ...)`, `cache + *left`), not from
  the new header: in a compat file ldconfig writes the names relative to the new header,
  so the loader reads other bytes there and never picks those hwcaps entries (nor does
  `ldconfig -p` print their names); the parser reads what the loader reads.

The image is hostile input: every count and offset is checked against the file before it
is used (the checks are the loader's own where it has them: an entry count must fit the
file; a string must start inside it), and any violation is LdCacheError, an
ImageFormatError naming the file's problem.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from tracer.errors import ImageFormatError

OLD_MAGIC = b"ld.so-1.7.0"
NEW_MAGIC = b"glibc-ld.so.cache1.1"
OLD_HEADER, OLD_ENTRY = 16, 12
NEW_HEADER, NEW_ENTRY = 48, 24
EXTENSION_MAGIC = 0xEAA42174
EXTENSION_HEADER, EXTENSION_SECTION = 8, 16
EXT_TAG_GLIBC_HWCAPS = 1
HWCAP_EXTENSION = 1 << 62
ENDIAN_BIG = 3  # cache_file_new_flags_endian_big; 2 is little, 0 unset (older ldconfig)


class LdCacheError(ImageFormatError):
    """The cache file is truncated or malformed."""


@dataclass(frozen=True)
class LdCacheEntry:
    """One cache line: library `name` lives at `path`."""

    name: str
    path: str
    flags: int
    # glibc-hwcaps subdirectory (e.g. "x86-64-v3") for hwcaps entries; "legacy-hwcap" for
    # pre-2.33 hwcap bits; None for a plain entry
    hwcaps: str | None


def _cstr(data: bytes, start: int, rel: int) -> str:
    """The NUL-terminated string at `start + rel`, which must lie inside `data`."""
    off = start + rel
    if rel < 0 or off >= len(data):
        raise LdCacheError(f"string offset {rel} outside the file")
    end = data.find(b"\0", off)
    if end < 0:
        raise LdCacheError(f"unterminated string at offset {off}")
    return data[off:end].decode("utf-8", "surrogateescape")


def parse_ld_so_cache(data: bytes) -> list[LdCacheEntry]:
    """All entries of a cache file, in file order (the order ld.so prefers on a tie)."""
    if data.startswith(NEW_MAGIC):
        return _parse_new(data, 0)
    if data.startswith(OLD_MAGIC):
        nlibs, bo = _old_count(data)
        new_at = _compat_new_part(data, OLD_HEADER + nlibs * OLD_ENTRY)
        if new_at is not None:
            return _parse_new(data, new_at)
        return _parse_old(data, nlibs, bo)
    raise LdCacheError("unknown ld.so.cache format (bad magic)")


def _old_count(data: bytes) -> tuple[int, str]:
    """Entry count and byte order of an old-format part (old caches are host-endian too)."""
    if len(data) < OLD_HEADER:
        raise LdCacheError("truncated old-format header")
    room = (len(data) - OLD_HEADER) // OLD_ENTRY
    for bo in ("<", ">"):
        (nlibs,) = struct.unpack_from(bo + "I", data, 12)
        if nlibs <= room:
            return nlibs, bo
    raise LdCacheError(f"old-format cache claims {nlibs} entries, file too short")


def _compat_new_part(data: bytes, end_of_old: int) -> int | None:
    """Where the new-format part of a compat cache starts, or None (an old-only cache).

    ldconfig aligns it to the new header's alignment: 8 bytes on 64-bit machines, 4 on
    some 32-bit ones; the loader looks only there, never elsewhere in the file.
    """
    for align in (8, 4):
        at = (end_of_old + align - 1) // align * align
        if data.startswith(NEW_MAGIC, at):
            return at
    return None


def _parse_old(data: bytes, nlibs: int, bo: str) -> list[LdCacheEntry]:
    strings = OLD_HEADER + nlibs * OLD_ENTRY
    out = []
    for i in range(nlibs):
        flags, key, value = struct.unpack_from(bo + "iII", data, OLD_HEADER + i * OLD_ENTRY)
        out.append(LdCacheEntry(_cstr(data, strings, key), _cstr(data, strings, value),
                                flags, None))
    return out


def _parse_new(data: bytes, base: int) -> list[LdCacheEntry]:
    if len(data) - base < NEW_HEADER:
        raise LdCacheError("truncated new-format header")
    room = (len(data) - base - NEW_HEADER) // NEW_ENTRY
    endian = data[base + 28] & 3
    if endian == 1:
        raise LdCacheError("new-format header: invalid byte-order flag")
    orders = (">",) if endian == ENDIAN_BIG else ("<",) if endian else ("<", ">")
    for bo in orders:
        (nlibs,) = struct.unpack_from(bo + "I", data, base + 20)
        if nlibs <= room:
            break
    else:
        raise LdCacheError(f"new-format cache claims {nlibs} entries, file too short")
    (ext_off,) = struct.unpack_from(bo + "I", data, base + 32)
    hwcaps_names = _hwcaps_extension(data, ext_off, bo)
    out = []
    for i in range(nlibs):
        flags, key, value, _osv, hwcap = struct.unpack_from(
            bo + "iIIIQ", data, base + NEW_HEADER + i * NEW_ENTRY)
        sub: str | None = None
        if hwcap >> 32 == HWCAP_EXTENSION >> 32:
            idx = hwcap & 0xFFFFFFFF
            # an index past the list names no subdirectory: the loader never picks it
            sub = hwcaps_names[idx] if idx < len(hwcaps_names) else f"hwcaps#{idx}"
        elif hwcap:
            sub = "legacy-hwcap"
        out.append(LdCacheEntry(_cstr(data, base, key), _cstr(data, base, value), flags, sub))
    return out


def _hwcaps_extension(data: bytes, ext_off: int, bo: str) -> list[str]:
    """Names of the glibc-hwcaps subdirectories that hwcaps entries index into.

    A missing or foreign extension is no extension (the loader then ignores hwcaps
    entries); a glibc-hwcaps section pointing outside the file is an error. All offsets
    count from the start of the file (see the module docstring).
    """
    at = ext_off
    if not ext_off or at + EXTENSION_HEADER > len(data):
        return []
    magic, count = struct.unpack_from(bo + "II", data, at)
    if magic != EXTENSION_MAGIC:
        return []
    names: list[str] = []
    for i in range(count):
        sec = at + EXTENSION_HEADER + i * EXTENSION_SECTION
        if sec + EXTENSION_SECTION > len(data):
            raise LdCacheError(f"cache extension claims {count} sections, file too short")
        tag, _flags, off, size = struct.unpack_from(bo + "IIII", data, sec)
        if tag != EXT_TAG_GLIBC_HWCAPS:
            continue
        if size % 4 or off + size > len(data):
            raise LdCacheError(f"glibc-hwcaps section of {size} bytes at offset {off} "
                               "outside the file")
        for (soff,) in struct.iter_unpack(bo + "I", data[off:off + size]):
            names.append(_cstr(data, 0, soff))
    return names
