"""results.jsonl: whole lines under concurrent writers, torn tails tolerated and repaired."""

import json
import multiprocessing as mp
import warnings

import numpy as np
import pytest
from overtrain.core.errors import DataError
from overtrain.core.jsonl import append_record, read_records


def _writer(path, worker, n):
    for i in range(n):
        # rows of very different sizes (up to ~200 KB) make interleaving visible if it happened
        append_record(path, {"worker": worker, "i": i, "pad": "x" * (worker * 50_000 + i)})


def test_concurrent_writers_never_interleave(tmp_path):
    path = tmp_path / "results.jsonl"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(path, w, 25)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""  # ends with a newline
    rows = [json.loads(line) for line in lines[:-1]]  # every line a whole row
    assert sorted((r["worker"], r["i"]) for r in rows) == [(w, i) for w in range(4) for i in range(25)]
    assert all(len(r["pad"]) == r["worker"] * 50_000 + r["i"] for r in rows)


def _hold_lock(path, locked, release):
    import fcntl
    import os

    fd = os.open(path, os.O_RDWR)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    locked.set()
    release.wait(10)
    os.close(fd)


def test_append_waits_for_the_file_lock(tmp_path):
    import threading
    import time

    path = tmp_path / "results.jsonl"
    append_record(path, {"i": 0})
    ctx = mp.get_context("fork")
    locked, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(path, locked, release))
    holder.start()
    assert locked.wait(10)
    writer = threading.Thread(target=append_record, args=(path, {"i": 1}))
    writer.start()
    time.sleep(0.3)
    assert writer.is_alive() and len(read_records(path)) == 1  # blocked while another process holds the lock
    release.set()
    writer.join(10)
    holder.join(10)
    assert [r["i"] for r in read_records(path)] == [0, 1]


def test_values_roundtrip(tmp_path):
    path = tmp_path / "sub" / "results.jsonl"  # parents are created
    append_record(path, {"a": np.float32(1.5), "b": np.int64(3), "c": float("inf"), "d": tmp_path, "e": "line\nbreak"})
    (row,) = read_records(path)
    assert row == {"a": 1.5, "b": 3, "c": float("inf"), "d": str(tmp_path), "e": "line\nbreak"}
    with pytest.raises(TypeError):
        append_record(path, {"bad": object()})
    assert len(read_records(path)) == 1  # a failed encode writes nothing


def test_torn_final_line_ignored_counted_warned_then_repaired(tmp_path):
    path = tmp_path / "results.jsonl"
    append_record(path, {"i": 0})
    with open(path, "ab") as f:
        f.write(b'{"i": 1, "metric": 2.')  # a writer killed mid-write
    with pytest.warns(UserWarning, match="1 torn"):
        rows = read_records(path)
    assert rows == [{"i": 0}] and rows.torn == [f"{path}:2"]
    append_record(path, {"i": 2})  # the torn tail is cut off under the lock, not glued to the new row
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_records(path) == [{"i": 0}, {"i": 2}]
    # a complete row that only lacks its newline is kept and terminated
    with open(path, "ab") as f:
        f.write(b'{"i": 3}')
    append_record(path, {"i": 4})
    assert [r["i"] for r in read_records(path)] == [0, 2, 3, 4]


def test_corrupt_middle_line_names_file_and_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"i": 0}\nnot json\n{"i": 2}\n')
    with pytest.raises(DataError, match=r"results.jsonl:2"):
        read_records(path)


def test_sources_dir_glob_list(tmp_path):
    for name in ("a", "b/c"):
        append_record(tmp_path / name / "results.jsonl", {"src": name})
    assert sorted(r["src"] for r in read_records(tmp_path)) == ["a", "b/c"]
    assert [r["src"] for r in read_records(str(tmp_path / "a" / "*.jsonl"))] == ["a"]
    both = read_records([tmp_path / "a" / "results.jsonl", tmp_path])  # a file listed twice is read once
    assert sorted(r["src"] for r in both) == ["a", "b/c"] and len(both.files) == 2
    assert sorted(both.where) == [f"{tmp_path / name / 'results.jsonl'}:1" for name in ("a", "b/c")]
    with pytest.raises(DataError, match="not found"):
        read_records(tmp_path / "missing.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no results.jsonl"):
        read_records(tmp_path / "empty")
