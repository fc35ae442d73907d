"""Files tokenomy writes (archives, trained heads, converted weights) follow the umask like any other program's."""

import os
import stat

import pytest

from tokenomy._files import follow_umask, write_atomic


@pytest.fixture
def umask():
    def set_mask(mask):
        previous.append(os.umask(mask))

    previous = []
    yield set_mask
    for mask in previous[:1]:
        os.umask(mask)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_write_atomic_follows_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    target = tmp_path / "out.tkz"
    write_atomic(target, b"data")
    assert target.read_bytes() == b"data" and stat.S_IMODE(target.stat().st_mode) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["out.tkz"]  # no temporary left behind


def test_follow_umask_opens_up_a_private_file(tmp_path, umask):
    umask(0o022)
    target = tmp_path / "head.safetensors"
    target.write_bytes(b"x")
    target.chmod(0o600)
    follow_umask(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        write_atomic(tmp_path / "out", object())  # not bytes: the write fails
    assert list(tmp_path.iterdir()) == []
