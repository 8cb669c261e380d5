"""Nothing of the image runs inside the recorder (README, "Security model").

strace runs as root in the container, started by the bundle's own loader. A loader honours
`LD_PRELOAD` from its environment and `/etc/ld.so.preload` of its root, and both were the
image's: the image's code ran as root inside the recorder, even for a profile whose user is
not root, and wrote lines into the trace (a 0600 file and a never-opened path ended up in
the keep-list as "traced"). The image built here preloads a library both ways; the library
leaves a marker naming the program it was loaded into, and in a program of the bundle it
forges trace lines through PID 1's descriptors. The app itself must still get both
preloads (its environment and its image are its own), the bundle's programs neither.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from image_builders import run_tracer

pytestmark = pytest.mark.integration

EVIL_C = r"""
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char FORGED[] =
    "77 1.0 openat(AT_FDCWD, \"/secret\", O_RDONLY) = 3\n"
    "77 1.0 openat(AT_FDCWD, \"/never-opened\", O_RDONLY) = 3\n";

/* Writes the forged lines into every FIFO PID 1 (strace) has open, for a while. */
static void forge(void) {
    for (int round = 0; round < 100; round++) {
        DIR *d = opendir("/proc/1/fd");
        struct dirent *e;
        while (d && (e = readdir(d))) {
            char link[64], target[512];
            snprintf(link, sizeof link, "/proc/1/fd/%s", e->d_name);
            ssize_t n = readlink(link, target, sizeof target - 1);
            if (n <= 0) continue;
            target[n] = 0;
            if (!strstr(target, ".fifo")) continue;
            int fd = open(link, O_WRONLY | O_NONBLOCK);
            if (fd >= 0) { write(fd, FORGED, sizeof FORGED - 1); close(fd); }
        }
        if (d) closedir(d);
        usleep(100000);
    }
}

__attribute__((constructor)) static void evil(void) {
    char exe[512] = {0};
    readlink("/proc/self/exe", exe, sizeof exe - 1);
    const char *who = strncmp(exe, "/.tracer", 8) == 0 ? "RECORDER" : "APP";
    char mark[1024];
    snprintf(mark, sizeof mark, "/tmp/markers/%s-" CHANNEL "-uid%d", who, (int)getuid());
    close(open(mark, O_WRONLY | O_CREAT, 0644));
    if (who[0] == 'R' && getuid() == 0 && fork() == 0) {
        forge();
        _exit(0);
    }
}
"""

APP = ('for m in /tmp/markers/*; do echo "MARK ${m#/tmp/markers/}"; done; '
       'cat /etc/hostname >/dev/null; echo "user $(id -u)"')


@pytest.fixture(scope="module")
def hostile_image(docker_client, fixture_image, gcc, tmp_path_factory):
    tag = "tracer-test/security-launcher:test"
    ctx = tmp_path_factory.mktemp("launcher")
    (ctx / "evil.c").write_text(EVIL_C)
    for channel in ("env", "file"):
        subprocess.run([gcc, "-shared", "-fPIC", "-O1", f'-DCHANNEL="{channel}"', "-o",
                        str(ctx / f"evil-{channel}.so"), str(ctx / "evil.c")], check=True)
    (ctx / "ld.so.preload").write_text("# as real files are\n/usr/lib/evil-file.so\n")
    (ctx / "Dockerfile").write_text(
        f"FROM {fixture_image('base')}\n"
        # before the preloads exist: a RUN after them would leave the build's own marker
        # in the image, which the app then lists (and the minimized image rightly lacks)
        "RUN mkdir -m 1777 /tmp/markers && echo s > /secret && chmod 600 /secret "
        "&& echo n > /never-opened\n"
        "COPY evil-env.so evil-file.so /usr/lib/\n"
        "COPY ld.so.preload /etc/ld.so.preload\n"
        "ENV LD_PRELOAD=/usr/lib/evil-env.so\n")
    docker_client.images.build(path=str(ctx), tag=tag, network_mode="none", rm=True,
                               forcerm=True)
    yield tag
    subprocess.run(["docker", "rmi", "-f", tag, f"{tag}-min"], capture_output=True)


@pytest.mark.parametrize("user", ["nobody", "65534:65534"])  # strace -u, and setpriv
def test_no_image_code_runs_in_the_recorder(hostile_image, user, tmp_path: Path):
    profile = tmp_path / "p.yaml"
    profile.write_text(
        f"version: 1\nname: launcher\nimage: docker-daemon:{hostile_image}\n"
        f"output: docker-daemon:{hostile_image}-min\n"
        f"run:\n  mode: job\n  user: '{user}'\n"
        f"  entrypoint: [sh, -c, {json.dumps(APP)}]\n  cmd: []\n"
        # the app got both preloads, as it does untraced; no program of the bundle did
        "  stdout: '\\A(?![\\s\\S]*RECORDER)[\\s\\S]*^MARK APP-env-uid65534$"
        "[\\s\\S]*^MARK APP-file-uid65534$[\\s\\S]*^user 65534$'\n"
        "  timeout: 120s\n")
    report = tmp_path / "report.json"
    res = run_tracer(["minimize", str(profile), "--report", str(report)],
                     env={"TRACER_WORKDIR": str(tmp_path)}, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.max_rss_mb < 400 and res.seconds < 300
    kept = (tmp_path / "report.keeplist").read_text()
    assert "/usr/lib/evil-env.so" in kept and "/usr/lib/evil-file.so" in kept
    assert "/secret" not in kept, "a 0600 file the app cannot read is kept as traced"
    assert "/never-opened" not in kept, "a forged line's path is kept as traced"
