"""Loading a profile file, with what the command line says over it.

`load_profile` is the one way the commands get a Profile: the file read within its
budget (tracer.profile.document), validated (tracer.profile.sections), then the
command line's `--budget` and `--granularity` applied, so the pipeline reads only
`profile.budgets` and `profile.keep.granularity`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from tracer.budgets import DEFAULT, Budgets
from tracer.errors import BadInput
from tracer.image.platforms import parse_platform
from tracer.image.reference import RefOptions
from tracer.profile.checker import did_you_mean
from tracer.profile.document import read_profile_text
from tracer.profile.model import Profile
from tracer.profile.sections import parse_profile


@dataclass(frozen=True)
class Overrides:
    """What the command line says over the profile: `--budget NAME=VALUE`, `--granularity`,
    `--evidence FILE`.

    Applied to the loaded Profile (`apply_overrides`), so the pipeline reads only
    `profile.budgets` and `profile.keep.granularity`; `argv()` passes the same overrides
    on to the `tracer minimize` children of `tracer batch`.
    """

    budgets: dict[str, int] = field(default_factory=dict)
    granularity: str | None = None
    evidence: tuple[str, ...] = ()  # --evidence FILE (absolute): on top of keep.evidence
    # --tls-verify, --cert-dir, --platform: how registry images are reached and chosen
    image_options: RefOptions = RefOptions()
    all_platforms: bool = False  # --all-platforms

    @property
    def run_budgets(self) -> Budgets:
        """The default budgets with the command line's on top (before any profile is read)."""
        return replace(DEFAULT, **self.budgets)

    def argv(self) -> list[str]:
        out = [f"--budget={name}={value}" for name, value in sorted(self.budgets.items())]
        if self.granularity is not None:
            out.append(f"--granularity={self.granularity}")
        out += [f"--evidence={path}" for path in self.evidence]
        return out + image_argv(self.image_options, self.all_platforms)


def image_argv(options: RefOptions, all_platforms: bool = False) -> list[str]:
    """The command line that gives `options` again (for batch's children)."""
    out = [] if options.tls_verify else ["--tls-verify=false"]
    if options.cert_dir:
        out.append(f"--cert-dir={options.cert_dir}")
    if options.platform is not None:
        out.append(f"--platform={options.platform}")
    if all_platforms:
        out.append("--all-platforms")
    return out


def image_options(tls_verify: str | None, cert_dir: Path | None,
                  platform: str | None) -> RefOptions:
    """RefOptions from `--tls-verify[=BOOL]`, `--cert-dir DIR` and `--platform P`, as
    skopeo spells them; bad values are BadInput naming the flag."""
    verify = True
    if tls_verify is not None:
        text = tls_verify.strip().lower()
        if text not in ("true", "false", "1", "0", "yes", "no"):
            raise BadInput(f"--tls-verify={tls_verify!r}: expected true or false")
        verify = text in ("true", "1", "yes")
    cert = None
    if cert_dir is not None:
        if not cert_dir.is_dir():
            raise BadInput(f"--cert-dir {cert_dir}: not a directory (it holds the registry's "
                           "CA as *.crt, and a client certificate as *.cert + *.key)")
        cert = str(cert_dir.absolute())
    return RefOptions(tls_verify=verify, cert_dir=cert,
                      platform=parse_platform(platform) if platform is not None else None)


def parse_budget_flags(items: list[str] | None) -> dict[str, int]:
    """`--budget NAME=VALUE` items as {name: number}; a bad one is BadInput (exit 2)."""
    out: dict[str, Any] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise BadInput(f"--budget {item!r}: expected NAME=VALUE, e.g. "
                           f"--budget layers=1000 or --budget image_bytes=64GiB")
        known = tuple(f.name for f in fields(Budgets))
        if name not in known:
            raise BadInput(f"--budget {item!r}: unknown budget {name!r}"
                           + did_you_mean(name, known) + f" (known: {', '.join(known)})")
        out[name] = value.strip()
    raised = DEFAULT.override(out, "--budget")
    return {name: getattr(raised, name) for name in out}


def apply_overrides(profile: Profile, overrides: Overrides) -> Profile:
    """The profile with the command line's budgets and granularity over its own."""
    changes: dict[str, Any] = {}
    if overrides.budgets:
        changes["budgets"] = {**profile.budgets, **overrides.budgets}
    keep = profile.keep
    if overrides.granularity is not None:
        keep = replace(keep, granularity=overrides.granularity)
    if overrides.evidence:
        keep = replace(keep, evidence=list(dict.fromkeys([*keep.evidence,
                                                          *overrides.evidence])))
    if keep is not profile.keep:
        changes["keep"] = keep
    return replace(profile, **changes) if changes else profile


def evidence_flags(items: list[Path] | None) -> tuple[str, ...]:
    """`--evidence FILE` items as absolute paths (a batch's jobs run elsewhere); a file
    that is not there or not a regular file is bad input now, naming it."""
    import stat

    out = []
    for item in items or []:
        try:
            regular = stat.S_ISREG(item.stat().st_mode)
        except OSError as exc:
            raise BadInput(f"--evidence {item}: cannot read it: {exc.strerror or exc}") \
                from None
        if not regular:
            raise BadInput(f"--evidence {item}: not a regular file; a recording is a file "
                           "written by `tracer record`")
        out.append(str(item.absolute()))
    return tuple(out)


def budgets_of(profile: Profile) -> Budgets:
    """The Budgets a run of `profile` spends: the defaults with profile.budgets applied
    (checked again, so a Profile built in code is held to the same limits as a file)."""
    if not profile.budgets:
        return DEFAULT
    return DEFAULT.override(profile.budgets, f"{profile.source or profile.name}: budgets")


def load_profile(path: str | Path, overrides: Overrides | None = None) -> Profile:
    """Read and validate a profile file, with the command line's overrides applied.

    BadInput names the file when it cannot be read or is over the profile_bytes budget.
    """
    overrides = overrides or Overrides()
    p = Path(path)
    budgets = overrides.run_budgets
    text = read_profile_text(p, budgets.profile_bytes)
    profile = parse_profile(text, filename=str(p), source=p, budgets=budgets)
    return apply_overrides(profile, overrides)
