"""The user an image names is image data: a name of digits that are not ASCII is a name.

`str.isdigit()` is true for `²` or `١`, which `int()` then refuses (or reads as a
number the runtime never would): an image whose USER is such a name made every traced
run end with exit 70. The runtime (runc) takes a user as a uid only when it is an ASCII
number; anything else is looked up in the image's /etc/passwd, and so does tracer.
"""

from __future__ import annotations

import pytest

from tracer.profile.model import Profile, RunSpec
from tracer.trace.run import run_smoke
from tracer.trace.users import plan, resolve

PASSWD = "root:x:0:0::/root:/bin/sh\n\u00b2:x:1000:1001::/:/bin/sh\n\u0661:x:1002:1003::/:/bin/sh\n"
GROUP = "root:x:0:\n\u00b3:x:1001:\n"


@pytest.mark.parametrize("user, uid, gid", [
    ("\u00b2", 1000, 1001),  # SUPERSCRIPT TWO: isdigit() but int() refuses it
    ("\u0661", 1002, 1003),  # ARABIC-INDIC DIGIT ONE: int() would read it as uid 1
    ("\u00b2:\u00b3", 1000, 1001),  # a group name of the same kind
])
def test_a_user_name_of_unicode_digits_is_looked_up_by_name(user, uid, gid):
    ident, name = resolve(user, PASSWD, GROUP)
    assert (ident.uid, ident.gid) == (uid, gid)
    run_as = plan(user, passwd=PASSWD, group=GROUP, nsswitch=None, setpriv=True)
    assert run_as.drops


def test_a_user_of_thousands_of_digits_is_a_name_as_for_the_runtime():
    # int() refuses strings of more than 4300 digits; no uid has more than 10
    huge = "1" * 5000
    assert resolve(huge, PASSWD, GROUP) is None
    assert resolve(f"0:{huge}", PASSWD, GROUP) is None
    assert plan(huge, passwd=PASSWD, group=GROUP, nsswitch=None, setpriv=True).container_user \
        == huge


def test_an_unknown_user_of_unicode_digits_runs_as_the_runtime_would():
    # not in passwd: the container keeps the user and fails as it does untraced
    assert resolve("\u00b2", "root:x:0:0::/:/bin/sh\n", "") is None
    assert plan("\u00b2", passwd="", group="", nsswitch=None, setpriv=True).container_user \
        == "\u00b2"


@pytest.mark.integration
def test_an_image_whose_user_is_a_unicode_digit_name_is_traced(docker_client, fixture_image,
                                                                tmp_path):
    tag = "tracer-test/rsec-unicode-user:test"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        f"FROM {fixture_image('base')}\n"
        "RUN echo '\u00b2:x:1000:1000::/:/bin/sh' >> /etc/passwd\n"
        "USER \u00b2\n"
        'CMD ["/usr/bin/id", "-u"]\n', encoding="utf-8")
    docker_client.images.build(path=str(ctx), tag=tag, network_mode="none", rm=True,
                               forcerm=True)
    try:
        profile = Profile(name="unicode-user", image=tag,
                          run=RunSpec(mode="job", stdout=r"^1000$", timeout=60))
        result = run_smoke(profile, tag, traced=True, workdir=tmp_path / "work")
    finally:
        docker_client.images.remove(tag, force=True)
    assert result.passed, (result.failure, result.steps)
    assert "/usr/bin/id" in result.execs
