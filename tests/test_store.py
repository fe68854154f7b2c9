"""The results store: typed round trips, replace-on-key, transactions, schema growth, corrupt files."""

import sqlite3

import pytest

from rlheal.store import Store, StoreError, Table

T = Table("demo", {"name": "str", "step": "int", "score": "float", "meta": "json", "ok": "bool"}, key=("name", "step"))


def test_round_trip_keeps_types(tmp_path):
    with Store(tmp_path) as store:
        store.put(T, [{"name": "a", "step": 1, "score": 0.5, "meta": {"x": [1, 2]}, "ok": True}])
        assert store.rows(T) == [{"name": "a", "step": 1, "score": 0.5, "meta": {"x": [1, 2]}, "ok": True}]
    assert (tmp_path / "results.sqlite").exists()


def test_same_key_replaces_and_has_answers(tmp_path):
    store = Store(tmp_path)
    store.put(T, [{"name": "a", "step": 1, "score": 0.1}])
    store.put(T, [{"name": "a", "step": 1, "score": 0.9}, {"name": "b", "step": 2}])
    assert [r["score"] for r in store.rows(T, name="a")] == [0.9]
    assert store.has(T, name="b", step=2)
    assert not store.has(T, name="b", step=3)
    assert len(store.rows(T)) == 2


def test_failed_transaction_writes_nothing(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(ValueError):
        store.put(T, [{"name": "a", "step": 1}, {"name": None, "step": 2}])  # second row lacks its key
    assert store.rows(T) == []
    with pytest.raises(RuntimeError), store.transaction():
        store._conn.execute('INSERT INTO "demo" ("name", "step") VALUES (?, ?)', ("c", 3))
        raise RuntimeError("killed mid-way")
    assert store.rows(T) == []


def test_unknown_columns_are_refused(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(ValueError, match="unknown columns"):
        store.put(T, [{"name": "a", "step": 1, "typo": 3}])
    with pytest.raises(ValueError, match="unknown columns"):
        store.rows(T, typo=3)


def test_new_columns_are_added_to_old_tables(tmp_path):
    Store(tmp_path).put(Table("grow", {"k": "str"}, key=("k",)), [{"k": "old"}])
    grown = Table("grow", {"k": "str", "v": "int"}, key=("k",))
    store = Store(tmp_path)
    store.put(grown, [{"k": "new", "v": 2}])
    assert store.rows(grown) == [{"k": "old", "v": None}, {"k": "new", "v": 2}]


def test_corrupt_file_gives_a_clear_error(tmp_path):
    (tmp_path / "results.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises((StoreError, sqlite3.DatabaseError)):
        Store(tmp_path).rows(T)


def test_bad_schema_is_refused():
    with pytest.raises(ValueError, match="unknown column types"):
        Table("x", {"a": "decimal"}, key=("a",))
    with pytest.raises(ValueError, match="key columns"):
        Table("x", {"a": "int"}, key=("b",))


PATHS = Table("ckpts", {"checkpoint": "path", "parent": "path", "score": "float"}, key=("checkpoint",))


def test_a_copied_or_moved_run_folder_keeps_its_rows(tmp_path):
    import shutil

    run, outside = tmp_path / "run", tmp_path / "elsewhere" / "base"
    with Store(run) as store:
        store.put(PATHS, [{"checkpoint": str(run / "sft" / "checkpoint-24"), "parent": str(outside), "score": 0.5},
                          {"checkpoint": str(run), "parent": None, "score": 0.1}])
    raw = sqlite3.connect(run / "results.sqlite").execute("SELECT checkpoint, parent FROM ckpts ORDER BY rowid")
    assert raw.fetchall() == [("sft/checkpoint-24", str(outside)), (".", None)]  # inside: relative; outside: as is

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    shutil.rmtree(run)
    with Store(copy) as store:
        assert store.has(PATHS, checkpoint=str(copy / "sft" / "checkpoint-24"))
        assert not store.has(PATHS, checkpoint=str(run / "sft" / "checkpoint-24"))
        assert store.rows(PATHS) == [
            {"checkpoint": str(copy / "sft" / "checkpoint-24"), "parent": str(outside), "score": 0.5},
            {"checkpoint": str(copy), "parent": None, "score": 0.1}]
        assert store.rows(PATHS, checkpoint=str(copy))[0]["score"] == 0.1


def test_a_store_written_with_absolute_paths_is_converted_in_place_then_moves(tmp_path):
    """Stores from before `path` columns held absolute folder strings; opening one in place converts them."""
    import shutil

    run = tmp_path / "run"
    legacy = Table("ckpts", {"checkpoint": "str", "parent": "str", "score": "float"}, key=("checkpoint",))
    with Store(run) as store:
        store.put(legacy, [{"checkpoint": str(run / "sft" / "checkpoint-24"), "parent": "/models/base", "score": 1.0}])
    with Store(run) as store:
        assert store.rows(PATHS)[0]["checkpoint"] == str(run / "sft" / "checkpoint-24")
    shutil.move(run, tmp_path / "moved")
    with Store(tmp_path / "moved") as store:
        assert store.rows(PATHS) == [
            {"checkpoint": str(tmp_path / "moved" / "sft" / "checkpoint-24"), "parent": "/models/base", "score": 1.0}]


def test_values_are_checked_against_their_column_types_on_the_way_in(tmp_path):
    store = Store(tmp_path)
    for bad in ({"name": "a", "step": "abc"}, {"name": "a", "step": 1.5}, {"name": "a", "step": True},
                {"name": 3, "step": 1}, {"name": "a", "step": 1, "score": "high"}, {"name": "a", "step": 1, "meta": {1j}}):
        with pytest.raises(ValueError, match="not a value of type"):
            store.put(T, [bad])
    store.put(T, [{"name": "a", "step": 2.0, "score": 1}])  # integral floats and ints are numbers
    assert store.rows(T) == [{"name": "a", "step": 2, "score": 1.0, "meta": None, "ok": None}]


def test_a_read_only_store_reads_without_writing_anything(tmp_path):
    run = tmp_path / "run"
    with Store(run) as store:
        store.put(T, [{"name": "a", "step": 1, "score": 0.5}])
    store_file = run / "results.sqlite"
    before = (store_file.read_bytes(), store_file.stat().st_mtime_ns)
    other = Table("other", {"k": "str"}, key=("k",))
    with Store(run, readonly=True) as store:
        assert store.rows(T, name="a")[0]["score"] == 0.5
        assert store.rows(other) == [] and not store.has(other, k="x")  # a missing table is not created
        with pytest.raises(StoreError, match="read-only"):
            store.put(T, [{"name": "b", "step": 2}])
    assert (store_file.read_bytes(), store_file.stat().st_mtime_ns) == before
    assert {p.name for p in run.iterdir()} <= {"results.sqlite", "results.sqlite-wal", "results.sqlite-shm"}
    with pytest.raises(StoreError, match="no results store"):
        Store(tmp_path / "nowhere", readonly=True)
    assert not (tmp_path / "nowhere").exists()


def test_delete_removes_only_the_rows_named(tmp_path):
    with Store(tmp_path) as store:
        store.put(PATHS, [{"checkpoint": str(tmp_path / "a"), "score": 1.0}, {"checkpoint": str(tmp_path / "b")}])
        assert store.delete(PATHS, checkpoint=str(tmp_path / "a")) == 1
        assert [r["checkpoint"] for r in store.rows(PATHS)] == [str(tmp_path / "b")]
        with pytest.raises(ValueError, match="at least one"):
            store.delete(PATHS)


def _open_at_once(barrier, folder) -> None:
    barrier.wait()
    Store(folder).close()


def test_processes_opening_a_new_store_at_once_all_open_it(tmp_path):
    """Every rank of a launched run opens the new store together; one switching it to WAL must not make
    another fail with `database is locked` (it did for about one pair in six)."""
    import multiprocessing

    fork = multiprocessing.get_context("fork")
    for i in range(30):
        barrier = fork.Barrier(2)
        openers = [fork.Process(target=_open_at_once, args=(barrier, tmp_path / str(i))) for _ in range(2)]
        for p in openers:
            p.start()
        for p in openers:
            p.join(timeout=60)
        assert [p.exitcode for p in openers] == [0, 0], f"pair {i}"
