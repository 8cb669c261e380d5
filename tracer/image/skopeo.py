"""skopeo, the registry client, run as a bounded subprocess with its failures given meaning.

Why skopeo: the registry protocol (distribution spec), its token and basic auth flows,
credential helpers, mirrors and per-registry TLS settings (registries.conf, certs.d) are a
field of their own, and skopeo is their reference client (containers/image, shared with
Podman and Buildah), packaged by Debian. It verifies every blob and manifest it copies
against its digest, skips blobs a registry already has, and already bounds what it reads
of a manifest (4 MiB). tracer runs it, never a shell, with:

- a deadline on silence: a call that makes no progress (no byte read or written by the
  process, per /proc/PID/io, and nothing on its pipes) for TRACER_REGISTRY_TIMEOUT seconds
  (default 60) is killed, with its process group (credential helpers included), and
  counts as a timeout; and an overall deadline (that timeout plus the time the declared
  bytes take at 128 KiB/s), so a registry that drips bytes forever is bounded too;
- budgets: stdout (a manifest) is read to at most the json_bytes budget, stderr keeps its
  last 64 KiB, and a copy into the work dir is killed once it holds more than the
  manifest declared (a registry that sends an endless blob);
- retries: a 429 or 5xx answer, a refused or reset connection and a timeout are tried
  again after 1, 2, 4 ... seconds (TRACER_REGISTRY_RETRIES more attempts, default 2),
  then exit 4. skopeo's own `--retry-times` is not used: in 1.9 it retries network errors
  only, not 5xx answers, and containers/image already backs off on 429 itself;
- meaning: unknown tag or repository is exit 2; 401/403 is exit 2 naming the auth file
  used (registryauth.py); a digest mismatch is exit 2; TLS trust, a full disk and an
  unreachable registry are exit 4;
- no credential in any message: skopeo's output is scrubbed of every secret the auth
  files hold and of anything shaped like one (`Authorization:` values, URL userinfo).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from tracer.budgets import BudgetExceeded, Budgets
from tracer.envvars import env_number
from tracer.errors import BadInput, EnvironmentProblem, ImageFormatError, TracerError, no_space
from tracer.image.reference import RefOptions
from tracer.image.registryauth import Credentials, bridge_file
from tracer.workdir import disk_usage

SKOPEO = "skopeo"
TIMEOUT_ENV = "TRACER_REGISTRY_TIMEOUT"
RETRIES_ENV = "TRACER_REGISTRY_RETRIES"
DEFAULT_TIMEOUT = 60.0
DEFAULT_RETRIES = 2
FLOOR_RATE = 128 * 1024  # bytes/s a transfer may not stay below for its whole length
STDERR_KEEP = 64 * 1024
POLL = 0.2
POLICY_FILES = ("/etc/containers/policy.json",)


def timeout() -> float:
    """Seconds of silence after which a registry call counts as hung."""
    return env_number(TIMEOUT_ENV, DEFAULT_TIMEOUT)


def retries() -> int:
    """More attempts after a transient failure (429, 5xx, timeouts, lost connections)."""
    return int(env_number(RETRIES_ENV, DEFAULT_RETRIES, integer=True))


# ---------------------------------------------------------------- scrubbing


_SHAPES = (
    (re.compile(r"(?i)(authorization:?\s*)(basic|bearer)\s+[^\s\"',]+"), r"\1\2 ***"),
    (re.compile(r"(?i)\b(basic|bearer)\s+[A-Za-z0-9+/=._~-]{16,}"), r"\1 ***"),
    (re.compile(r"(://)[^/\s:@]+:[^/\s@]+@"), r"\1***@"),
    (re.compile(r"(?i)((?:password|passwd|secret|token|auth)\"?\s*[:=]\s*\"?)[^\s\"',}]+"),
     r"\1***"),
)


class Scrubber:
    """Removes credentials from text: every secret the auth files hold, and any value in
    the shape of one."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # longest first, so a decoded `user:password` goes before its password
        self.secrets = sorted({s for s in secrets if len(s) >= 3}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        for pattern, repl in _SHAPES:
            text = pattern.sub(repl, text)
        return text


# ---------------------------------------------------------------- failures


class RegistryError(TracerError):
    """A failed skopeo call, classified; `exit_code` follows the class."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind  # notfound | auth | digest | toolarge | tls | nospace | transient | other
        super().__init__(message)


_KINDS = (
    ("digest", ("digest did not match", "does not match provided manifest digest",
                "does not match digest", "digest mismatch")),
    ("toolarge", ("exceeded maximum allowed size",)),
    ("auth", ("unauthorized", "authentication required", "denied", "forbidden",
              "statuscode: 401", "statuscode: 403", "invalid username/password",
              "no basic auth credentials", "error getting credentials")),
    ("notfound", ("manifest unknown", "name unknown", "repository name not known",
                  "repository not found", "not found", "statuscode: 404", "blob unknown")),
    ("tls", ("x509:", "certificate", "http response to https client", "tls: ")),
    ("nospace", ("no space left on device", "disk quota exceeded")),
    ("redirect", ("stopped after", "redirect")),
    ("transient", ("429", "toomanyrequests", "too many requests", "status: 5",
                   "statuscode: 5", "500 internal", "502 bad gateway", "503 service",
                   "504 gateway", "connection refused", "connection reset", "eof",
                   "timeout", "timed out", "broken pipe", "no route to host",
                   "network is unreachable", "deadline exceeded", "no such host",
                   "server misbehaving", "temporary failure")),
)


def classify(message: str) -> str:
    low = message.lower()
    for kind, needles in _KINDS:
        if any(n in low for n in needles):
            return kind
    return "other"


_MSG = re.compile(r'level=(\w+) msg="((?:[^"\\]|\\.)*)"')


def skopeo_message(stderr: str) -> str:
    """The last fatal (else error, else warning) message of skopeo's stderr, its quoting
    undone and the "Error parsing image name" prefix dropped; else the last line."""
    found: dict[str, str] = {}
    for level, text in _MSG.findall(stderr):
        found[level] = text.replace('\\"', '"').replace("\\\\", "\\")
    message = found.get("fatal") or found.get("error") or found.get("warning")
    if message is None:
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        message = lines[-1] if lines else ""
    message = re.sub(r'^Error parsing image name "[^"]*": ', "", message)
    return message[:2000]


# ---------------------------------------------------------------- one process


@dataclass
class Watch:
    """Bounds of one copy into the work dir: `directory` may hold at most `limit` bytes
    (what the manifest declares, plus slack); `expected` bytes make the overall deadline."""

    directory: Path | None = None
    limit: int | None = None
    expected: int = 0


class _Reader(threading.Thread):
    """Reads one pipe to its end: keeps at most `cap` bytes (the first, or the last when
    `tail`), counts everything, and notes when more than `cap` came."""

    def __init__(self, pipe, cap: int, tail: bool) -> None:  # noqa: ANN001
        super().__init__(daemon=True)
        self.pipe, self.cap, self.tail = pipe, cap, tail
        self.data = bytearray()
        self.total = 0
        self.over = False
        self.start()

    def run(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            while chunk := self.pipe.read1(1 << 16):
                self.total += len(chunk)
                self.data += chunk
                if len(self.data) > self.cap:
                    self.over = True
                    if self.tail:
                        del self.data[:len(self.data) - self.cap]
                    else:
                        del self.data[self.cap:]


def _io(proc: psutil.Process) -> int:
    try:
        counters = proc.io_counters()
    except (psutil.Error, OSError, AttributeError):
        return 0
    return int(getattr(counters, "read_chars", 0)) + int(getattr(counters, "write_chars", 0))


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """The process and its group (credential helpers it started), at once."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait()


@dataclass
class Outcome:
    code: int
    stdout: bytes
    stderr: str
    seconds: float
    killed: str | None = None  # why tracer ended it


def run_once(argv: list[str], *, stdout_cap: int, silence: float, watch: Watch,
             env: dict[str, str]) -> Outcome:
    """Run `argv` to its end or until a bound ends it (Outcome.killed says which)."""
    started = time.monotonic()
    overall = 2 * silence + watch.expected / FLOOR_RATE
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, start_new_session=True,
                                close_fds=True)
    except FileNotFoundError:
        raise EnvironmentProblem(f"{argv[0]} is not installed: registry images need skopeo "
                                 "(Debian package skopeo; scripts/setup installs it)") from None
    out = _Reader(proc.stdout, stdout_cap, tail=False)
    err = _Reader(proc.stderr, STDERR_KEEP, tail=True)
    killed = None
    try:
        ps = psutil.Process(proc.pid)
    except psutil.Error:
        ps = None
    last_mark, last_change = -1, time.monotonic()
    try:
        while proc.poll() is None:
            time.sleep(POLL)
            now = time.monotonic()
            held = disk_usage(watch.directory) if watch.directory is not None else 0
            if out.over:
                killed = "stdout"
            elif watch.limit is not None and held > watch.limit:
                killed = "disk"
            elif now - started > overall:
                killed = "overall"
            else:
                mark = (_io(ps) if ps is not None else 0) + out.total + err.total + held
                if mark != last_mark:
                    last_mark, last_change = mark, now
                elif now - last_change > silence:
                    killed = "silence"
            if killed:
                _kill(proc)
                break
    finally:
        if proc.poll() is None:  # Ctrl-C or an error here: never leave skopeo running
            _kill(proc)
        out.join(5)
        err.join(5)
    return Outcome(proc.returncode, bytes(out.data),
                   bytes(err.data).decode("utf-8", "replace"),
                   time.monotonic() - started, killed)


# ---------------------------------------------------------------- the client


class Skopeo:
    """skopeo for one run: its options (TLS, certs), credentials (for messages and the
    credsStore bridge), work directory and budgets."""

    def __init__(self, options: RefOptions, creds: Credentials, workdir: Path,
                 budgets: Budgets) -> None:
        self.options = options
        self.creds = creds
        self.workdir = Path(workdir)
        self.budgets = budgets
        self.scrub = Scrubber(creds.secrets)
        self.tmp = self.workdir / "skopeo-tmp"
        self._authfile: Path | None = None
        self._policy: Path | None = None

    # -- argument pieces ------------------------------------------------------------

    def _global(self) -> list[str]:
        self.tmp.mkdir(parents=True, exist_ok=True)
        argv = [SKOPEO, "--tmpdir", str(self.tmp)]
        policy = self._policy_file()
        if policy is not None:
            argv += ["--policy", str(policy)]
        return argv

    def _policy_file(self) -> Path | None:
        """The host's trust policy when it has one (an operator who requires signatures
        keeps requiring them); else one that accepts what tracer asks for by digest
        (skopeo refuses to copy without any policy)."""
        home = os.environ.get("HOME") or os.path.expanduser("~")
        if any(os.path.exists(p) for p in
               (os.path.join(home, ".config/containers/policy.json"), *POLICY_FILES)):
            return None
        if self._policy is None:
            self._policy = self.workdir / "policy.json"
            self._policy.write_text('{"default":[{"type":"insecureAcceptAnything"}]}\n')
        return self._policy

    def access(self, side: str = "") -> list[str]:
        """--tls-verify / --cert-dir / --authfile for one side of a copy (`src-`,
        `dest-`) or for inspect (`side` "")."""
        out = []
        if not self.options.tls_verify:
            out.append(f"--{side}tls-verify=false")
        if self.options.cert_dir:
            out += [f"--{side}cert-dir", self.options.cert_dir]
        bridge = self._bridge()
        if bridge is not None:
            out += [f"--{side}authfile", str(bridge)]
        return out

    def _bridge(self) -> Path | None:
        data = bridge_file(self.creds)
        if data is None:
            return None
        if self._authfile is None:
            self._authfile = self.workdir / "auth-bridge.json"
            fd = os.open(self._authfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        return self._authfile

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["TMPDIR"] = str(self.tmp)
        return env

    # -- running --------------------------------------------------------------------

    def run(self, args: list[str], what: str, *, stdout_cap: int = 1 << 16,
            watch: Watch | None = None, clean: Path | None = None) -> Outcome:
        """Run `skopeo GLOBAL args`, retried on transient failures; the classified
        failure as RegistryError (or BudgetExceeded), its message scrubbed. `clean` is
        emptied before every attempt (a copy's destination)."""
        watch = watch or Watch()
        attempts = retries() + 1
        silence = timeout()
        last: RegistryError | None = None
        for attempt in range(attempts):
            if attempt:
                time.sleep(min(2 ** (attempt - 1), 30))
            if clean is not None and clean.exists():
                shutil.rmtree(clean)
            outcome = run_once([*self._global(), *args], stdout_cap=stdout_cap,
                               silence=silence, watch=watch, env=self.env())
            if outcome.code == 0 and outcome.killed is None:
                return outcome
            last = self._failure(outcome, what, stdout_cap, watch, silence)
            if last.kind != "transient":
                raise last
        assert last is not None
        tries = f" (tried {attempts} times)" if attempts > 1 else ""
        raise RegistryError("transient", f"{last}{tries}")

    def _failure(self, outcome: Outcome, what: str, stdout_cap: int, watch: Watch,
                 silence: float) -> RegistryError:
        if outcome.killed == "stdout":
            raise BudgetExceeded("json_bytes", stdout_cap - 1,
                                 f"{what}: the registry's answer")
        if outcome.killed == "disk":
            raise ImageFormatError(f"{what}: the registry sent more than the manifest "
                                   f"declares ({watch.limit:,} bytes with slack); stopped")
        if outcome.killed == "silence":
            return RegistryError("transient", f"{what}: no progress for {silence:.0f}s "
                                 f"(a registry that does not answer; {TIMEOUT_ENV} sets "
                                 "the deadline)")
        if outcome.killed == "overall":
            return RegistryError("transient", f"{what}: not done after "
                                 f"{outcome.seconds:.0f}s (the registry is too slow)")
        message = self.scrub(skopeo_message(outcome.stderr)) or \
            f"skopeo exited with status {outcome.code}"
        return RegistryError(classify(message), f"{what}: {message}")


def meaning(exc: RegistryError, creds: Credentials, *, pushing: bool = False
            ) -> TracerError:
    """The error a run ends with for a classified registry failure (module docstring)."""
    text = str(exc)
    if exc.kind == "notfound" and not pushing:
        return BadInput(f"{text} (no such tag, digest or repository)")
    if exc.kind == "auth":
        return BadInput(f"{text}; the registry refused access with {creds.describe()}")
    if exc.kind == "digest":
        return ImageFormatError(f"{text} (the registry's content does not match its digest)")
    if exc.kind == "toolarge":
        return ImageFormatError(f"{text} (a manifest over skopeo's 4 MiB limit)")
    if exc.kind == "tls":
        return EnvironmentProblem(f"{text}; for a registry whose CA is not trusted here, "
                                  "pass --cert-dir DIR (a directory with its ca.crt), or "
                                  "--tls-verify=false for plain HTTP")
    if exc.kind == "nospace":
        return no_space(text)
    if pushing:
        return EnvironmentProblem(f"{text}; the push did not complete and the tag was not "
                                  "moved (nothing was written)")
    if exc.kind == "transient":
        return EnvironmentProblem(f"{text}; the registry is unreachable or failing")
    return EnvironmentProblem(text)
