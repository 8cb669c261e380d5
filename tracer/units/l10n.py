"""Languages in use, and the message catalogs of those languages in the image.

A program prints its messages in the language of LANGUAGE, LC_ALL, LC_MESSAGES or LANG
from the catalogs under `/usr/share/locale/<lang>/LC_MESSAGES/DOMAIN.mo`. Debian ships
many of them apart from the program: libc's (strerror: "Datei oder Verzeichnis nicht
gefunden") in libc-l10n, util-linux's in util-linux-locales, and those packages depend
on the program, not the other way round. A catalog nobody opened during the smoke test
is then in no kept unit, and errors come out in English (or half in English), which
breaks checks and operators' alerts on them. So from `package` granularity on, every
catalog of a language in use is kept, whichever package ships it.

A language is in use when a variable above (each entry of LANGUAGE) names it in the
run's environment, or a catalog of it was kept at file level (a program opened it). The
language of `de_AT.UTF-8@euro` is `de`, and it covers every `de*` directory; C and POSIX
name none.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

from tracer.units.model import Unit

LOCALE_DIR = "/usr/share/locale"
CATALOG_DIRS = (LOCALE_DIR, "/usr/share/locale-langpack")  # the second: Ubuntu's packs
LANGUAGE_VARS = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")


def language_of(name: str) -> str | None:
    """`de_AT.UTF-8@euro` -> `de`; None for C, POSIX and empty names."""
    base = re.split(r"[_.@]", name, maxsplit=1)[0].lower()
    return None if base in ("", "c", "posix") else base


def language_sources(kept: Iterable[str], env: Mapping[str, str]) -> dict[str, str]:
    """Languages in use, each with why: `{"de": "LANG=de_DE.UTF-8"}`."""
    used: dict[str, str] = {}
    for var in LANGUAGE_VARS:
        for item in (env.get(var) or "").split(":"):
            lang = language_of(item.strip())
            if lang:
                used.setdefault(lang, f"{var}={env[var]}")
    prefix = LOCALE_DIR + "/"
    for path in sorted(kept):
        if path.startswith(prefix) and "/" in path[len(prefix):]:
            lang = language_of(path[len(prefix):].split("/", 1)[0])
            if lang:
                used.setdefault(lang, f"{path} was kept")
    return used


def languages_in_use(kept: Iterable[str], env: Mapping[str, str]) -> set[str]:
    """The languages whose message catalogs are kept (see the module docstring)."""
    return set(language_sources(kept, env))


def catalog_language(path: str) -> str | None:
    """The language of a message catalog path (`.../locale/de_CH/LC_MESSAGES/x.mo` -> de)."""
    for base in CATALOG_DIRS:
        if path.startswith(base + "/"):
            parts = path[len(base) + 1:].split("/")
            if len(parts) == 3 and parts[1] == "LC_MESSAGES" and parts[2]:
                return language_of(parts[0])
    return None


def catalogs(paths: Iterable[str], languages: Mapping[str, str],
             owner: Callable[[str], Unit | None]) -> dict[str, str]:
    """`path -> reason detail` for every catalog among `paths` of a language in use.

    `paths` are the image's files and links (not directories); `languages` is
    `language_sources()`; `owner(path)` names the unit that ships it, for the reason.
    """
    out: dict[str, str] = {}
    if not languages:
        return out
    for path in paths:
        lang = catalog_language(path)
        if lang is None or lang not in languages:
            continue
        unit = owner(path)
        out[path] = (f"a message catalog of {lang}, a language in use ({languages[lang]})"
                     + (f", from {unit.label}" if unit is not None else ""))
    return out
