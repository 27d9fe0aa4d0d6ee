"""prepare-data with layout=parts: shards -> parts, killed and resumed byte for byte, max_tokens,
the hub file path, tokens brought from outside (OLMo-format parts written with numpy) trained
on, and bad manifests/parts as one clear DataError naming the file."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from overtrain import cli
from overtrain.core.errors import DataError
from overtrain.core.paths import data_root
from overtrain.data.c4 import open_prepared
from overtrain.data.tokenizer import load_tokenizer

C4 = data_root() / "c4"
BIG = C4 / "c4-sample.00000-of-00001.json.gz"  # 1000 docs
SMALL = sorted(C4.glob("c4-sample.0[123].json.gz"))  # 3 x 10 docs
EOS = 50279
N_SHARDS = 6


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """The 1000-document sample cut into 6 gzipped JSON-lines shards (as C4's own files are)."""
    d = tmp_path_factory.mktemp("shards")
    lines = gzip.open(BIG, "rb").read().splitlines(keepends=True)
    for k in range(N_SHARDS):
        (d / f"c4-train.{k:05d}-of-{N_SHARDS:05d}.json.gz").write_bytes(gzip.compress(b"".join(lines[k::N_SHARDS])))
    return d


@pytest.fixture(scope="module")
def whole(tmp_path_factory, shards):
    """The shards prepared by one worker, uninterrupted."""
    out = tmp_path_factory.mktemp("whole") / "c4"
    assert cli.main(_argv(out, shards, "workers=1")) == 0
    return out


def _argv(out, shards, *more):
    return [
        "prepare-data",
        f"out={out}",
        f"train={shards}/c4-train.*.json.gz",
        f"val={C4}/c4-sample.0[123].json.gz",
        *more,
    ]


def _snapshot(out: Path) -> dict:
    """Every file's bytes; meta.json without its timing fields."""
    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    meta = json.loads(files.pop("meta.json"))
    meta.pop("created"), meta.pop("seconds")
    return files | {"meta.json": meta}


def test_killed_run_resumes_to_the_same_bytes(tmp_path, shards, whole):
    data = open_prepared(whole)
    assert len(data.meta["splits"]["train"]["parts"]) == N_SHARDS
    assert (
        data.meta["splits"]["train"]["documents"] == 970
        and data.meta["splits"]["train"]["dropped_val_duplicates"] == 30
    )

    killed = tmp_path / "killed"
    env = os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)}
    argv = [sys.executable, "-m", "overtrain", *_argv(killed, shards, "workers=2", "chunk_chars=4096")]
    proc = subprocess.Popen(argv, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "train" / "part-00000.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the parent and its workers, mid-way
    proc.wait()
    assert not (killed / "meta.json").exists(), "the run finished before the kill: nothing was tested"
    done = len(list((killed / "train").glob("part-*.json")))
    assert 1 <= done < N_SHARDS

    assert cli.main(_argv(killed, shards, "workers=2")) == 0  # resumes: finished parts verified, not redone
    assert not list(killed.rglob(".*tmp*"))
    assert _snapshot(killed) == _snapshot(whole)  # and 2 workers wrote what 1 worker wrote


def test_resume_refuses_other_settings_and_changed_parts(tmp_path, shards, capsys):
    out = tmp_path / "out"
    assert cli.main(_argv(out, shards)) == 0
    (out / "meta.json").unlink()  # as if killed just before the end
    assert cli.main(_argv(out, shards, "text_field=body")) == 2
    assert "plan.json: an unfinished preparation with other settings (text_field differ)" in capsys.readouterr().err
    part = out / "train" / "part-00002.npy"
    data = bytearray(part.read_bytes())
    data[10] ^= 1  # same size, other bytes
    part.write_bytes(bytes(data))
    assert cli.main(_argv(out, shards)) == 2
    err = capsys.readouterr().err
    assert "train/part-00002.npy: sha256 differs" in err and "delete both files to redo it" in err
    assert not (out / "meta.json").exists()


def test_max_tokens_takes_whole_parts_in_order(tmp_path, shards, whole):
    full = open_prepared(whole)
    sizes = [p["tokens"] for p in full.meta["splits"]["train"]["parts"]]
    want = sizes[0] + sizes[1] + 1  # just over two parts: three are needed
    out = _prepare(tmp_path / "cut", shards, f"max_tokens={want}", "workers=2")
    data = open_prepared(out)
    assert [p["tokens"] for p in data.meta["splits"]["train"]["parts"]] == sizes[:3]
    assert data.meta["splits"]["train"]["max_tokens"] == want
    assert np.array_equal(data.tokens("train"), full.tokens("train")[: sum(sizes[:3])])
    assert sorted(p.name for p in (out / "train").glob("part-*.npy")) == [f"part-{i:05d}.npy" for i in range(3)]


def _prepare(out, shards, *more):
    assert cli.main(_argv(out, shards, *more)) == 0
    return out


def test_hub_data_files_are_listed_by_name_and_fetched_per_shard(tmp_path, shards, whole, monkeypatch):
    import huggingface_hub

    files = {f"en/c4-train.{k:05d}-of-{N_SHARDS:05d}.json.gz": p for k, p in enumerate(sorted(shards.iterdir()))}
    files |= {f"en/c4-validation.{k:05d}-of-00003.json.gz": p for k, p in enumerate(SMALL)}
    fetched = []

    def listing(self, repo_id, repo_type=None, revision=None):
        assert (repo_id, repo_type) == ("allenai/c4", "dataset")
        return ["README.md", "realnewslike/c4-train.00000-of-00512.json.gz", *files]

    def download(repo_id, filename, repo_type=None, revision=None):
        fetched.append(filename)
        return str(files[filename])

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", listing)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    hub = open_prepared(_prepare_argv(tmp_path / "hub", "hf_dataset=allenai/c4", "hf_config=en"))
    local = open_prepared(whole)
    assert sorted(fetched) == sorted(files)
    assert np.array_equal(hub.tokens("train"), local.tokens("train"))
    assert np.array_equal(hub.tokens("val"), local.tokens("val"))
    assert hub.meta["splits"]["train"]["parts"][0]["source"] == f"hf://datasets/allenai/c4/{sorted(files)[0]}"


def _prepare_argv(out, *argv):
    assert cli.main(["prepare-data", f"out={out}", *argv]) == 0
    return out


def test_bad_shards_name_the_file_and_leave_other_parts_finished(tmp_path, shards, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in sorted(shards.iterdir()):
        (bad / p.name).write_bytes(p.read_bytes())
    good = (bad / "c4-train.00000-of-00006.json.gz").read_bytes()
    (bad / "c4-train.00003-of-00006.json.gz").write_bytes(good[: len(good) // 2])  # truncated gzip
    out = tmp_path / "out"
    assert cli.main(_argv(out, bad)) == 2
    assert "c4-train.00003-of-00006.json.gz: cannot read" in capsys.readouterr().err
    assert not (out / "meta.json").exists() and not (out / "train" / "part-00003.json").exists()
    assert [p.name for p in sorted((out / "train").glob("part-*.json"))] == [f"part-{i:05d}.json" for i in range(3)]
    (bad / "c4-train.00003-of-00006.json.gz").write_bytes(gzip.compress(b'{"text": "ok"}\n' + b'{"text": "caf\xe9"}\n'))
    shutil_rm = __import__("shutil").rmtree
    shutil_rm(out)
    assert cli.main(_argv(out, bad)) == 2
    assert "c4-train.00003-of-00006.json.gz:2: not valid UTF-8" in capsys.readouterr().err
    (bad / "c4-train.00003-of-00006.json.gz").write_bytes(gzip.compress(b"\n"))  # no records
    shutil_rm(out)
    assert cli.main(_argv(out, bad)) == 2
    assert "c4-train.00003-of-00006.json.gz: no documents (empty shard)" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Bring your own tokens


def _olmo_parts(d: Path, texts: list[str], n_parts: int, dtype=np.uint16, eos=EOS) -> list[Path]:
    """Flat token files as OLMo writes them (raw, EOS after every document), made with numpy only."""
    d.mkdir(parents=True)
    tok = load_tokenizer()
    ids = [e.ids + [eos] for e in tok.encode_batch(texts, add_special_tokens=False)]
    out = []
    for k in range(n_parts):
        p = d / f"part-{k:05d}.npy"
        np.array([i for doc in ids[k::n_parts] for i in doc], dtype=dtype).tofile(p)
        out.append(p)
    return out


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    d = tmp_path_factory.mktemp("own")
    texts = [json.loads(line)["text"] for line in gzip.open(BIG, "rt")]
    return {"train": _olmo_parts(d / "train", texts[30:400], 3), "val": _olmo_parts(d / "val", texts[:30], 1), "d": d}


def test_train_from_olmo_format_parts_made_outside(tmp_path, own, one_thread):
    before = {p: p.stat().st_mtime_ns for p in own["train"] + own["val"]}
    out = _prepare_argv(tmp_path / "c4", f"from_npy={own['d']}/train/part-*.npy", f"val_npy={own['d']}/val/part-*.npy")
    data = open_prepared(out)
    assert sorted(p.name for p in out.iterdir()) == ["meta.json"]  # a manifest only: nothing copied
    assert {p: p.stat().st_mtime_ns for p in before} == before
    flat = np.concatenate([np.fromfile(p, dtype=np.uint16) for p in own["train"]])
    assert np.array_equal(data.tokens("train"), flat)
    assert data.meta["splits"]["train"]["documents"] == 370 and data.meta["splits"]["val"]["documents"] == 30
    assert [e["file"] for e in data.meta["splits"]["train"]["parts"]] == [str(p) for p in own["train"]]

    run = tmp_path / "run"
    argv = [f"data.dir={out}", f"run_dir={run}", "budget_tokens=512", "seq_len=32", "global_batch_size=4"]
    argv += ["micro_batch_size=2", "eval.val_tokens=128", "eval.every_steps=2", "checkpoint.every_steps=4"]
    assert cli.main(["pretrain", "demo", *argv]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["tokens_seen"] == 512 and np.isfinite(summary["c4_val_ppl"])


def test_bad_own_tokens_are_one_clear_error(tmp_path, own, capsys):
    texts = ["hello world", "another document"]
    odd = tmp_path / "odd" / "part-00000.npy"
    odd.parent.mkdir()
    odd.write_bytes(np.fromfile(own["train"][0], dtype=np.uint16).tobytes()[:-1])  # 1 byte short
    gpt2 = _olmo_parts(tmp_path / "gpt2", texts, 1, eos=50256)  # another tokenizer's EOS
    big = tmp_path / "big" / "part-00000.npy"
    big.parent.mkdir()
    np.array([1, 2, 60000, EOS], dtype=np.uint16).tofile(big)
    val = f"val_npy={own['val'][0]}"
    cases = [
        (odd, "part-00000.npy: 1", "is not a whole number of uint16 tokens"),
        (gpt2[0], "gpt2/part-00000.npy: no EOS token (id 50279)", "another tokenizer"),
        (big, "big/part-00000.npy: holds token id 60000", "another tokenizer"),
    ]
    for path, *words in cases:
        out = tmp_path / f"out-{path.parent.name}"
        assert cli.main(["prepare-data", f"out={out}", f"from_npy={path}", val]) == 2
        err = capsys.readouterr().err
        assert all(w in err for w in words), (words, err)
        assert not (out / "meta.json").exists()


def test_manifest_pointing_at_a_missing_or_resized_part(tmp_path, own):
    import shutil

    parts = tmp_path / "parts"
    shutil.copytree(own["d"], parts)
    out = _prepare_argv(tmp_path / "c4", f"from_npy={parts}/train/part-*.npy", f"val_npy={parts}/val/part-*.npy")
    open_prepared(out)
    with open(parts / "train" / "part-00001.npy", "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(DataError, match=r"train/part-00001\.npy: .* bytes, but .*meta\.json .* says .* tokens"):
        open_prepared(out)
    (parts / "train" / "part-00001.npy").unlink()
    with pytest.raises(DataError, match=r"train/part-00001\.npy: missing \(listed in .*meta\.json"):
        open_prepared(out)


def test_part_tokens_read_across_part_boundaries(tmp_path):
    from overtrain.data.c4.parts import PartTokens

    flat = (np.arange(1000) % 65536).astype(np.uint16)
    cuts = [0, 7, 7, 300, 999, 1000]  # includes an empty part
    paths = []
    for k, (a, b) in enumerate(zip(cuts, cuts[1:])):
        paths.append(tmp_path / f"p{k}.npy")
        flat[a:b].tofile(paths[-1])
    t = PartTokens(paths, "uint16", [b - a for a, b in zip(cuts, cuts[1:])])
    assert len(t) == 1000 and np.array_equal(np.asarray(t), flat)
    for a, b in [(0, 7), (5, 9), (290, 1000), (998, 1000), (0, 1000), (999, 999)]:
        assert np.array_equal(t[a:b], flat[a:b])
    idx = np.array([[0, 6, 7, 299], [300, 998, 999, 5]])
    assert np.array_equal(t[idx], flat[idx]) and t[-1] == flat[-1]
    assert torch.equal(torch.from_numpy(np.asarray(t[3:9], dtype=np.int64)), torch.arange(3, 9))
