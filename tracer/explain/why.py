""""Why is this file kept?" / "why is it not?", answered from a run's saved files.

`tracer minimize --report R.json` leaves R.json (with the exclude decisions), R.keeplist
(every kept path with its reasons) and R.paths.gz (every path of the original image and
its PATH; formats in tracer.explain.runfiles). Those three answer the question without the image
or the engine, which is what someone debugging a production failure at 3 a.m. has at
hand. A bare program name (`memcflush`) is looked up on the image's PATH, the way
`tracer ldd` and the container would find it.
"""

from __future__ import annotations

import contextlib
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path

from tracer.analysis.keeplist import ROOT_REASON
from tracer.budgets import DEFAULT, Budgets
from tracer.errors import BadInput
from tracer.explain.runfiles import PathIndex, escape, read_keeplist, read_path_index, unescape
from tracer.fleet.descriptor import read_base_descriptor
from tracer.operatorfiles import read_json
from tracer.rootfs import SymlinkLoop
from tracer.static import which
from tracer.static.script import DEFAULT_PATH

# Programs that read a standard library or scripts at run time: keeping the binary alone
# (keep.paths) gives an interpreter that cannot start its first script.
_INTERPRETER = re.compile(r"(python|perl|ruby|php|node|nodejs|java|lua|tclsh|guile)"
                          r"[0-9.]*(-[a-z]+)?")
_SHELL = re.compile(r"(sh|bash|dash|ash|zsh|ksh|mksh|busybox)")
# Where Debian puts each interpreter's library tree, for the example in the advice.
_LIBRARY_TREES = {"perl": "/usr/share/perl/** and /usr/lib/x86_64-linux-gnu/perl/**",
                  "ruby": "/usr/lib/ruby/**", "php": "/usr/share/php/**",
                  "node": "/usr/share/nodejs/** and your app's node_modules/**",
                  "nodejs": "/usr/share/nodejs/**", "java": "/usr/lib/jvm/**",
                  "lua": "/usr/share/lua/**", "tclsh": "/usr/share/tcltk/**",
                  "guile": "/usr/share/guile/**"}
NOTHING_NEEDED_IT = ("not in the ELF closure of what runs or of keep.binaries, not touched "
                     "by the traced smoke test, not matched by keep.paths or keep.packages")


@dataclass
class WhyAnswer:
    path: str
    kept: bool
    image_path: str | None = None  # the same file with the image's symlinks resolved
    reasons: list[str] = field(default_factory=list)
    excluded_by: str | None = None
    # kept although this exclude rule matches it (the closure needs it)
    overridden_rule: str | None = None
    in_image: bool | None = None  # None: unknown (no image path list at hand)
    program: str | None = None  # the bare program name asked for, when one was
    search_path: str | None = None  # the PATH it was looked up on
    executable: bool = False  # an executable file in the image (from the path index)
    recorded_by: list[str] = field(default_factory=list)  # recordings that saw it, not kept
    # tracer batch --share-base: the fleet whose shared base holds the path, the other
    # images it is kept there for, and whether this image's own layer hides it
    shared_base: str | None = None
    shared_for: list[str] = field(default_factory=list)
    shared_hidden: bool = False

    def format_text(self) -> str:
        """The answer for people: names are shown escaped (tracer.explain.runfiles), so a name with
        a newline or bytes that are not UTF-8 can neither break nor fake the output."""
        lead = ""
        if self.program is not None:
            program, where = escape(self.program), escape(self.search_path or "")
            if self.in_image is False and self.path == self.program:
                return (f"{program} is NOT kept: no program of that name is on the image's "
                        f"PATH ({where}); give the path if it is elsewhere")
            lead = f"{program} is {escape(self.path)} on the image's PATH ({where}).\n"
        if self.shared_base is not None and not self.kept and not self.shared_hidden:
            return (f"{lead}{escape(self.path)} is in the image: kept in the shared base for "
                    f"{', '.join(escape(j) for j in self.shared_for)} (fleet "
                    f"{escape(self.shared_base)}); every image of the fleet shows what the "
                    "base holds, the price of sharing it. For this image alone: "
                    + self._format_path())
        return lead + self._format_path() + self._format_shared()

    def _format_shared(self) -> str:
        """What the fleet's shared base has to do with the path ("" when nothing)."""
        if self.shared_base is None:
            return ""
        others = ", ".join(escape(j) for j in self.shared_for)
        where = f"the shared base of fleet {escape(self.shared_base)}"
        if self.kept:
            return (f"\nIt lies in {where}, kept in the shared base for {others} as well."
                    if others else f"\nIt lies in {where}.")
        if self.shared_hidden:
            return (f"\n{where[0].upper()}{where[1:]} holds it (kept in the shared base for "
                    f"{others}), but this image's own layer hides it: its original image has "
                    "none, or another.")
        return ""  # said first (format_text)

    def _format_path(self) -> str:
        path = escape(self.path)
        if self.image_path and self.image_path != self.path:
            inner = WhyAnswer(path=self.image_path, kept=self.kept, reasons=self.reasons,
                              excluded_by=self.excluded_by, in_image=self.in_image,
                              executable=self.executable)
            return (f"{path} is {escape(self.image_path)} in the image (through symlinks, "
                    "which are kept with it).\n" + inner._format_path())
        reasons = [escape(r) for r in self.reasons]
        if self.kept:
            text = f"{path} is KEPT because:\n" + "\n".join(f"  - {r}" for r in reasons)
            if self.overridden_rule:
                text += (f"\nThe profile's exclude rule {self.overridden_rule!r} matches it, "
                         "but exclude comes before the closure: a kept link, hardlink or file "
                         "needs it, and removing it would break what is kept silently")
            return text
        if self.excluded_by:
            return (f"{path} is NOT kept: it was needed ({'; '.join(reasons)}) but the "
                    f"profile's exclude rule {self.excluded_by!r} removed it; "
                    + (_interpreter_advice(self.path) or "add it to keep.paths to keep it "
                       "anyway (keep.paths wins over exclude)"))
        if self.in_image is False and self.recorded_by:
            return (f"{path} is NOT kept: it is not in the original image at all, although "
                    f"production used it (recorded in {', '.join(self.recorded_by)}): a file "
                    "the application made at run time, or one of another version of the "
                    "image; recorded paths the image lacks are ignored")
        if self.in_image is False:
            return f"{path} is NOT kept: it is not in the original image at all"
        if self.in_image:
            return (f"{path} is NOT kept: it is in the original image but nothing needed it "
                    f"({NOTHING_NEEDED_IT}); " + self._advice())
        return (f"{path} is NOT kept; whether the original image has it is unknown: its path "
                "list (REPORT.paths.gz, written beside the report by `tracer minimize "
                "--report`) is not there")

    def _advice(self) -> str:
        interpreter = _interpreter_advice(self.path)
        if interpreter:
            return interpreter
        if self.executable:
            return ("if the application runs it, add a smoke step that does (tracing keeps "
                    "what it uses), or name it in keep.binaries, which keeps the libraries "
                    "it links as well; keep.paths would keep the file alone")
        return "add it to keep.paths if the application needs it"


def _interpreter_advice(path: str) -> str:
    """Advice for an interpreter or shell (by its file name), "" for anything else."""
    name = escape(posixpath.basename(path))
    if _SHELL.fullmatch(name):
        return (f"{name} is a shell: name it in keep.binaries (it and the libraries it links "
                "are kept), or add a smoke step that runs the scripts production runs with "
                "it, which also keeps every program they call")
    m = _INTERPRETER.fullmatch(name)
    if m:
        tree = _LIBRARY_TREES.get(m.group(1), "its library directory")
        if m.group(1) == "python":
            version = re.match(r"[0-9.]*", name[len("python"):])
            tree = f"/usr/lib/python{version.group(0) if version else ''}*/**"
        return (f"{name} is an interpreter: keep.paths would keep the binary without its "
                "standard library and modules. Add a smoke step that runs it the way "
                "production does (the traced run keeps every module it loads), or name it in "
                "keep.binaries (it and the libraries it links) together with keep.paths for "
                f"its library tree (for example {tree})")
    return ""


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.stem + suffix)


def _read_report(path: Path, budgets: Budgets) -> dict:
    report = read_json(path, "tracer report", limit=budgets.index_bytes, budget="index_bytes")
    if not isinstance(report, dict):
        raise BadInput(f"{path}: not a tracer report (not a JSON object)")
    return report


def _is_executable(index: PathIndex | None, path: str, walk_limit: int) -> bool:
    if index is None:
        return False
    with contextlib.suppress(SymlinkLoop):
        st = index.image.rootfs(walk_limit).stat(path)
        return st is not None and (st.st_mode & 0o170000) == 0o100000 and bool(
            st.st_mode & 0o111)
    return False


def why(source: Path, path: str, budgets: Budgets = DEFAULT) -> WhyAnswer:
    """Answer for `path` (an in-image path, or a bare program name looked up on the
    image's PATH) from a report (.json) or a keep-list file. A path may also be given as
    the keep-list writes it (escaped). Each file read is at most `budgets.index_bytes`
    and must be a regular file (tracer.operatorfiles)."""
    report: dict = {}
    if source.suffix == ".json":
        report = _read_report(source, budgets)
        keeplist_path = _sibling(source, ".keeplist")
    else:
        keeplist_path = source
        if _sibling(source, ".json").exists():
            report = _read_report(_sibling(source, ".json"), budgets)
    kept = read_keeplist(keeplist_path, budgets.index_bytes)
    kept.setdefault("/", [f"{ROOT_REASON.kind}: {ROOT_REASON.detail}"])
    excluded = report.get("excluded_paths")
    excluded = excluded if isinstance(excluded, dict) else {}
    index = read_path_index(keeplist_path.with_name(keeplist_path.stem + ".paths.gz"),
                            budgets.index_bytes)

    program = None
    search_path = None
    if "/" not in path:
        program = path
        search_path = (index.path_env if index is not None and index.path_env is not None
                       else DEFAULT_PATH)
        found = _which(index, kept, path, search_path, budgets.path_walk)
        if found is None:
            return WhyAnswer(path=path, kept=False, in_image=False, program=program,
                             search_path=search_path)
        path = found
    path = posixpath.normpath("/" + path.strip("/")) if path != "/" else "/"

    def known(p: str) -> bool:
        return p in kept or p in excluded or (index is not None and p in index.image.entries)

    if not known(path) and "\\" in path:
        with contextlib.suppress(ValueError):
            if known(unescape(path)):
                path = unescape(path)
    image_path = path
    if index is not None and path not in kept:
        with contextlib.suppress(SymlinkLoop):  # a loop: answer for the path as given
            root = index.image.rootfs(budgets.path_walk)
            image_path = root.resolve(path, follow_last=False).path
    answer = WhyAnswer(path=path, kept=False, image_path=image_path, program=program,
                       search_path=search_path,
                       executable=_is_executable(index, path, budgets.path_walk))
    if index is not None:
        answer.in_image = image_path in index.image.entries
    if image_path in kept:
        answer.kept, answer.reasons, answer.in_image = True, kept[image_path], True
        overridden = report.get("excluded_but_kept")
        entry = overridden.get(image_path) if isinstance(overridden, dict) else None
        if isinstance(entry, dict) and isinstance(entry.get("rule"), str):
            answer.overridden_rule = entry["rule"]
    elif image_path in excluded and isinstance(excluded[image_path], dict):
        entry = excluded[image_path]
        answer.excluded_by = entry.get("rule")
        answer.reasons = [str(r) for r in entry.get("reasons", [])]
        answer.in_image = True
    else:
        answer.recorded_by = _recorded_by(report, path)
        if answer.recorded_by and index is None:
            answer.in_image = False  # the run found it missing from the image
    _shared_base(answer, report, keeplist_path, image_path, budgets)
    return answer


def _shared_base(answer: WhyAnswer, report: dict, keeplist_path: Path, path: str,
                 budgets: Budgets) -> None:
    """Fill in what the fleet's shared base (tracer batch --share-base) has to do with
    `path`, from the base descriptor the report names (or, when the out directory moved,
    the one of its fleet next to the job's directory: OUT/fleets/FLEET.json)."""
    info = report.get("shared_base")
    if not isinstance(info, dict) or not isinstance(info.get("fleet"), str):
        return
    candidates = [Path(info["descriptor"])] if isinstance(info.get("descriptor"), str) else []
    candidates.append(keeplist_path.parent.parent / "fleets" / f"{info['fleet']}.json")
    for candidate in candidates:
        if candidate.is_file():
            with contextlib.suppress(BadInput):
                desc = read_base_descriptor(candidate, budgets.index_bytes)
                break
    else:
        return
    if path not in set(desc.paths):
        return
    answer.shared_base = desc.fleet
    answer.shared_for = [j for j in desc.jobs_needing(path) if j != report.get("name")]
    hidden = info.get("whiteout_paths")
    answer.shared_hidden = isinstance(hidden, list) and any(
        path == h or path.startswith(f"{h}/") for h in hidden if isinstance(h, str))


def _recorded_by(report: dict, path: str) -> list[str]:
    """The recordings (keep.evidence) that saw `path` although the image lacks it."""
    out = []
    for e in report.get("evidence") or []:
        if isinstance(e, dict) and path in (e.get("not_in_image") or []):
            out.append(str(e.get("file") or "a recording"))
    return out


def _which(index: PathIndex | None, kept: dict[str, list[str]], name: str,
           search_path: str, walk_limit: int) -> str | None:
    """The path a bare program name runs as: on the image's PATH in the path index, or,
    without an index, the first PATH directory whose NAME the keep-list holds."""
    if index is not None:
        return which(index.image.rootfs(walk_limit), name, search_path)
    for d in search_path.split(":"):
        candidate = posixpath.join(d or "/", name)
        if candidate in kept:
            return candidate
    return None
