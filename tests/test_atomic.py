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


@pytest.fixture
def umask():
    """Set the process umask for one test (returns a setter); the old one comes back afterwards."""
    import os

    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_written_files_and_folders_honour_the_umask(tmp_path, umask, mask):
    umask(mask)
    write_text(tmp_path / "f.txt", "x")
    with staged_dir(tmp_path / "ckpt") as tmp:
        (tmp / "weights").write_text("w")
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "ckpt").stat().st_mode & 0o777 == 0o777 & ~mask
    assert (tmp_path / "ckpt" / "weights").stat().st_mode & 0o777 == 0o666 & ~mask


def test_clean_stale_removes_what_killed_writes_left_and_nothing_else(tmp_path):
    import os

    from rlheal.atomic import clean_stale

    run, outside = tmp_path / "run", tmp_path / "cache" / "base"
    (run / "sft" / ".step-000004.k2j3h4g5.partial").mkdir(parents=True)
    (run / "sft" / ".step-000004.k2j3h4g5.partial" / "model.safetensors").write_bytes(b"half")
    (run / ".report.html.x_9a8b7c.tmp").write_text("half")
    (run / "sft" / ".step-000002.old").mkdir()  # killed between the two renames of an overwrite: restored
    (run / "sft" / ".step-000002.old" / "w").write_text("previous")
    (run / "sft" / "step-000006").mkdir()  # killed after them: the old copy goes
    (run / "sft" / ".step-000006.old").mkdir()
    keep = [run / ".rlheal.lock", run / "sft" / ".trainer" / "log.json", run / "results.sqlite-wal",
            run / "notes.partial", run / ".hidden.tmp", outside / ".model.safetensors.abcdefgh.tmp"]
    for path in keep:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("keep")
    os.symlink(outside, run / "base")
    removed = clean_stale(run)
    assert sorted(p.name for p in removed) == [".report.html.x_9a8b7c.tmp", ".step-000004.k2j3h4g5.partial",
                                               ".step-000006.old"]
    assert (run / "sft" / "step-000002" / "w").read_text() == "previous"
    assert sorted(p.name for p in (run / "sft").iterdir()) == [".trainer", "step-000002", "step-000006"]
    assert all(path.read_text() == "keep" for path in keep)
