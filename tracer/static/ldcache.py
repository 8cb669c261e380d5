"""Parser for /etc/ld.so.cache, in both formats glibc has written.

glibc's ld.so consults this file before the default directories, and only it (not
ld.so.conf, which is merely ldconfig's input). A library present on disk but absent from a
stale cache is therefore not found by the real loader in a non-default directory, so the
resolver reads the cache as the loader does.

Formats (glibc sysdeps/generic/dl-cache.h):
- old, "ld.so-1.7.0": nlibs entries of (int32 flags, uint32 key, uint32 value), string
  offsets relative to the string table that follows the entries;
- new, "glibc-ld.so.cache1.1": a 48-byte header, nlibs entries of (int32 flags, uint32 key,
  uint32 value, uint32 osversion, uint64 hwcap), offsets relative to the header; may follow
  an old-format part in the same file. Its byte order is the one of the machine that ran
  ldconfig (a cross-built s390x image has a big-endian cache), recorded in the header flags.
  An optional extension names the glibc-hwcaps subdirectory of hwcaps entries.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

OLD_MAGIC = b"ld.so-1.7.0"
NEW_MAGIC = b"glibc-ld.so.cache1.1"
EXTENSION_MAGIC = 0xEAA42174
EXT_TAG_GLIBC_HWCAPS = 1
HWCAP_EXTENSION = 1 << 62


class LdCacheError(Exception):
    """The cache file is truncated or malformed."""


@dataclass(frozen=True)
class LdCacheEntry:
    """One cache line: library `name` lives at `path`."""

    name: str
    path: str
    flags: int
    hwcaps: str | None  # glibc-hwcaps subdirectory (e.g. "x86-64-v3") for hwcaps entries


def _cstr(data: bytes, off: int) -> str:
    if off < 0 or off >= len(data):
        raise LdCacheError(f"string offset {off} outside the file")
    end = data.find(b"\0", off)
    if end < 0:
        raise LdCacheError(f"unterminated string at offset {off}")
    return data[off:end].decode("utf-8", "surrogateescape")


def parse_ld_so_cache(data: bytes) -> list[LdCacheEntry]:
    """All entries of a cache file, in file order (the order ld.so prefers on a tie)."""
    new_at = data.find(NEW_MAGIC)
    if data.startswith(NEW_MAGIC) or (data.startswith(OLD_MAGIC) and new_at > 0):
        return _parse_new(data, new_at)
    if data.startswith(OLD_MAGIC):
        return _parse_old(data)
    raise LdCacheError("unknown ld.so.cache format (bad magic)")


def _parse_old(data: bytes) -> list[LdCacheEntry]:
    if len(data) < 16:
        raise LdCacheError("truncated old-format header")
    (nlibs,) = struct.unpack_from("<I", data, 12)
    if nlibs > len(data) // 12:  # try the other byte order (old caches are host-endian too)
        (nlibs,) = struct.unpack_from(">I", data, 12)
        bo = ">"
    else:
        bo = "<"
    strings = 16 + nlibs * 12
    if strings > len(data):
        raise LdCacheError(f"old-format cache claims {nlibs} entries, file too short")
    out = []
    for i in range(nlibs):
        flags, key, value = struct.unpack_from(bo + "iII", data, 16 + i * 12)
        out.append(
            LdCacheEntry(_cstr(data, strings + key), _cstr(data, strings + value), flags, None)
        )
    return out


def _parse_new(data: bytes, base: int) -> list[LdCacheEntry]:
    if len(data) < base + 48:
        raise LdCacheError("truncated new-format header")
    endian = data[base + 28] & 3
    bo = ">" if endian == 3 else "<"
    nlibs, len_strings = struct.unpack_from(bo + "II", data, base + 20)
    if endian == 0 and nlibs * 24 > len(data):
        bo = ">"
        nlibs, len_strings = struct.unpack_from(bo + "II", data, base + 20)
    if base + 48 + nlibs * 24 > len(data):
        raise LdCacheError(f"new-format cache claims {nlibs} entries, file too short")
    (ext_off,) = struct.unpack_from(bo + "I", data, base + 32)
    hwcaps_names = _hwcaps_extension(data, base, ext_off, bo)
    out = []
    for i in range(nlibs):
        flags, key, value, _osv, hwcap = struct.unpack_from(bo + "iIIIQ", data, base + 48 + i * 24)
        sub: str | None = None
        if hwcap & HWCAP_EXTENSION:
            idx = hwcap & 0xFFFFFFFF
            sub = hwcaps_names[idx] if idx < len(hwcaps_names) else f"hwcaps#{idx}"
        elif hwcap:
            sub = "legacy-hwcap"
        out.append(LdCacheEntry(_cstr(data, base + key), _cstr(data, base + value), flags, sub))
    return out


def _hwcaps_extension(data: bytes, base: int, ext_off: int, bo: str) -> list[str]:
    """Names of the glibc-hwcaps subdirectories that hwcaps entries index into."""
    if not ext_off or base + ext_off + 8 > len(data):
        return []
    magic, count = struct.unpack_from(bo + "II", data, base + ext_off)
    if magic != EXTENSION_MAGIC:
        return []
    names: list[str] = []
    for i in range(count):
        at = base + ext_off + 8 + i * 16
        if at + 16 > len(data):
            break
        tag, _flags, off, size = struct.unpack_from(bo + "IIII", data, at)
        if tag != EXT_TAG_GLIBC_HWCAPS:
            continue
        for j in range(size // 4):
            (soff,) = struct.unpack_from(bo + "I", data, base + off + j * 4)
            names.append(_cstr(data, base + soff))
    return names
