"""The files a run leaves next to its report: the keep-list and the path index.

`REPORT.keeplist` has one line per kept path, `PATH<TAB>REASON; REASON ...`, sorted, so two
nightly runs can be compared with a plain `diff`. `REPORT.paths.gz` lists every path of
the original image (kind, link target, mode) and the image's PATH, so `tracer why` can
follow the image's symlinks and find programs without the image.

File names in images are hostile input: a name may hold a newline, a tab, a backslash or
bytes that are not UTF-8. Written raw, `/etc/x<NEWLINE>/etc/shadow<TAB>keep.paths: ...`
would forge a line. So every name (and every reason, which quotes names) is escaped the
one way profiles/README.md documents:

    \\\\  a backslash        \\t  a tab        \\n  a newline        \\r  a carriage return
    \\xHH  any other control or invisible character, and every byte that is not UTF-8
          (the byte, in hex; a character is written as its UTF-8 bytes)

and, inside a reason only, `;` as `\\x3b` (reasons are separated by `; `). Printable
UTF-8 is written as it is. `unescape(escape(name)) == name` for every name, and one name
is always exactly one line.
"""

from __future__ import annotations

import gzip
import os
import re
import unicodedata
import zlib
from dataclasses import dataclass
from pathlib import Path

from tracer.budgets import DEFAULT, BudgetExceeded
from tracer.errors import BadInput
from tracer.image.model import Entry, FlatImage
from tracer.operatorfiles import open_regular, read_regular

_NAMED = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_UNNAMED = {"t": b"\t", "n": b"\n", "r": b"\r", "\\": b"\\"}
# Unicode categories that are escaped: controls, format characters (bidi overrides can
# make a line read as another), line/paragraph separators, private use, surrogates.
_INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp", "Co", "Cs"})
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|[tnr\\])|\\")
REASON_SEPARATOR = "; "
INDEX_HEADER = "#tracer-path-index\t2"
KINDS = frozenset({"file", "dir", "symlink", "hardlink", "char", "block", "fifo"})


def escape(name: str, also: str = "") -> str:
    """`name` as one line-safe, tab-free text (see the module docstring); `also` lists
    further characters to write as `\\xHH`."""
    if name.isascii() and name.isprintable() and "\\" not in name \
            and not any(ch in name for ch in also):
        return name  # the common case, without the per-character walk below
    out: list[str] = []
    for ch in name:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (os.fsdecode's escape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch in _NAMED:
            out.append(_NAMED[ch])
        elif ch in also or (code > 0x7E or code < 0x20) and \
                unicodedata.category(ch) in _INVISIBLE:
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8", "surrogatepass"))
        else:
            out.append(ch)
    return "".join(out)


def unescape(text: str) -> str:
    """The name `escape` wrote as `text`; ValueError for a backslash that escapes nothing."""
    if "\\" not in text:
        return text
    raw = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(text):
        raw += text[pos:m.start()].encode("utf-8", "surrogateescape")
        code = m.group(1)
        if code is None:
            raise ValueError(f"a lone backslash at column {m.start() + 1}")
        raw += bytes([int(code[1:], 16)]) if code[0] == "x" else _UNNAMED[code]
        pos = m.end()
    raw += text[pos:].encode("utf-8", "surrogateescape")
    return os.fsdecode(bytes(raw))


def keeplist_line(path: str, reasons: list[str]) -> str:
    """One keep-list line: the escaped path, a tab, the escaped reasons joined by `; `."""
    return escape(path) + "\t" + REASON_SEPARATOR.join(escape(r, also=";") for r in reasons)


def parse_keeplist_line(line: str) -> tuple[str, list[str]]:
    """(path, reasons) of one keep-list line; ValueError if it is not one."""
    name, sep, reasons = line.partition("\t")
    if not sep or not name.startswith("/"):
        raise ValueError("not a keep-list line (PATH<TAB>reasons)")
    return unescape(name), [unescape(r) for r in reasons.split(REASON_SEPARATOR) if r]


def read_keeplist(path: Path, limit: int = DEFAULT.index_bytes, *,
                  follow: bool = True) -> dict[str, list[str]]:
    """Every kept path (the real name, unescaped) with its reasons; BadInput if unreadable.

    At most `limit` bytes (index_bytes: a keep-list names at most every path of the
    image); a FIFO or device is refused by tracer.operatorfiles, saying what it is, and
    so is a symbolic link with `follow=False`.
    """
    data = read_regular(path, "keep-list", limit=limit, budget="index_bytes", follow=follow)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path}: not a keep-list (not UTF-8 text: {exc.reason})") from None
    kept: dict[str, list[str]] = {}
    for number, line in enumerate(text.split("\n"), 1):
        if not line:
            continue
        try:
            name, reasons = parse_keeplist_line(line)
        except ValueError as exc:
            raise BadInput(f"{path}:{number}: {exc}") from None
        kept[name] = reasons
    return kept


def keeplist_paths(path: Path) -> set[str]:
    """The kept paths of a keep-list file as its lines write them (escaped), for diffs
    shown to people and written to JSON; empty when the file is missing or unreadable.
    For the files tracer wrote itself (`tracer batch --out`): a link is not followed."""
    if not os.path.lexists(path):
        return set()
    try:
        return {escape(p) for p in read_keeplist(path, follow=False)}
    except BadInput:
        return set()


# -- the path index -------------------------------------------------------------------------

@dataclass
class PathIndex:
    """The original image's paths as an index-only FlatImage, and the image's PATH."""

    image: FlatImage
    path_env: str | None  # None: not recorded (an index written by an older tracer)


def image_path_env(flat: FlatImage) -> str | None:
    """PATH from the image config's Env, as the container runtime would start with it."""
    cfg = flat.config.get("config") if isinstance(flat.config, dict) else None
    env = cfg.get("Env") if isinstance(cfg, dict) else None
    for item in env if isinstance(env, list) else []:
        if isinstance(item, str) and item.startswith("PATH="):
            return item[len("PATH="):]
    return None


def write_path_index(flat: FlatImage, path: Path, path_env: str | None = None) -> None:
    """Every path of the original image with its kind, link target and mode, gzipped.

    Lets `tracer why` say "not in the image", follow the image's symlinks
    (`/lib/x/libc.so.6` is `/usr/lib/x/libc.so.6` under merged /usr) and look programs up
    on the image's PATH (`path_env`, default the image config's) without the image.
    """
    env = path_env if path_env is not None else image_path_env(flat)
    tmp = path.with_name(path.name + ".tmp")
    lines = [INDEX_HEADER]
    if env is not None:
        lines.append(f"#PATH\t{escape(env)}")
    for p in sorted(flat.entries):
        e = flat.entries[p]
        lines.append(f"{escape(p)}\t{e.kind}\t{escape(e.linkname)}\t{e.mode & 0o7777:o}")
    lines.append("")
    # One write at level 6: gzip's default 9 and a write per line cost 0.1 s per run on a
    # 7,000-path image for a file a few percent smaller.
    with gzip.open(tmp, "wb", compresslevel=6) as f:
        f.write("\n".join(lines).encode("utf-8", "surrogateescape"))
    os.replace(tmp, path)


def read_path_index(path: Path, limit: int = DEFAULT.index_bytes) -> PathIndex | None:
    """The index a run wrote next to its report; None if there is none; BadInput if it is
    not one. Also reads the unescaped three-column files of earlier versions. The file
    and its decompressed text are each at most `limit` bytes (index_bytes)."""
    if not path.exists():
        return None
    fd = open_regular(path, "path index")
    try:
        with os.fdopen(fd, "rb") as raw, gzip.GzipFile(fileobj=raw) as f:
            if os.fstat(fd).st_size > limit:
                raise BudgetExceeded("index_bytes", limit, f"{path}: the path index")
            data = f.read(limit + 1)
    except (OSError, EOFError, zlib.error) as exc:  # zlib.error: corrupt compressed data
        raise BadInput(f"{path}: not a readable path index: {exc}") from None
    if len(data) > limit:  # a gzip bomb: its text would be kept whole
        raise BudgetExceeded("index_bytes", limit, f"{path}: the path index decompresses to "
                             f"more than {limit:,} bytes")
    text = data.decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    escaped = bool(lines) and lines[0] == INDEX_HEADER
    entries: dict[str, Entry] = {}
    path_env: str | None = None
    for number, line in enumerate(lines[1:] if escaped else lines, 2 if escaped else 1):
        if not line:
            continue
        fields = line.split("\t")
        try:
            if escaped and fields[0] == "#PATH":
                path_env = unescape(fields[1])
                continue
            name = unescape(fields[0]) if escaped else fields[0]
            kind = fields[1] if len(fields) > 1 and fields[1] else "file"
            link = (unescape(fields[2]) if escaped else fields[2]) if len(fields) > 2 else ""
            mode = int(fields[3], 8) if len(fields) > 3 else 0o755
        except (ValueError, IndexError) as exc:
            raise BadInput(f"{path}:{number}: not a path index line: {exc}") from None
        if not name.startswith("/") or kind not in KINDS:
            raise BadInput(f"{path}:{number}: not a path index line (PATH<TAB>KIND...)")
        entries[name] = Entry(path=name, kind=kind, mode=mode, uid=0, gid=0, mtime=0.0,
                              size=0, linkname=link, xattrs={}, layer=0)
    for name, e in entries.items():  # a hardlink whose target is not listed: a plain file
        if e.kind == "hardlink" and e.linkname not in entries:
            entries[name] = Entry(path=name, kind="file", mode=e.mode, uid=0, gid=0,
                                  mtime=0.0, size=0, linkname="", xattrs={}, layer=0)
    entries.setdefault("/", Entry(path="/", kind="dir", mode=0o755, uid=0, gid=0, mtime=0.0,
                                  size=0, linkname="", xattrs={}, layer=0))
    return PathIndex(FlatImage(entries=entries, root=None, config={}, source_digest=""),
                     path_env)
