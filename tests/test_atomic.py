"""Atomic writes: the final name holds the whole content or the old content, never a part."""

import pytest

from rlheal.atomic import staged_dir, write_text


def test_write_text_replaces_whole(tmp_path):
    path = tmp_path / "a" / "f.txt"
    write_text(path, "one")
    write_text(path, "two")
    assert path.read_text() == "two"
    assert [p.name for p in path.parent.iterdir()] == ["f.txt"]


def test_staged_dir_appears_only_on_success(tmp_path):
    final = tmp_path / "ckpt"
    with pytest.raises(RuntimeError), staged_dir(final) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("killed")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []
    with staged_dir(final) as tmp:
        (tmp / "weights").write_text("whole")
    assert (final / "weights").read_text() == "whole"


def test_staged_dir_refuses_or_replaces_existing(tmp_path):
    final = tmp_path / "ckpt"
    final.mkdir()
    (final / "old").write_text("x")
    with pytest.raises(FileExistsError), staged_dir(final):
        pass
    with staged_dir(final, overwrite=True) as tmp:
        (tmp / "new").write_text("y")
    assert sorted(p.name for p in final.iterdir()) == ["new"]
