"""prepare-data on the real C4 sample: exact tokens, EOS per document, held-out validation,
worker-independent output, bad input refused before anything is written, and the reader."""

import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from overtrain import cli
from overtrain.core.errors import DataError
from overtrain.core.model_spec import load_model_spec
from overtrain.core.paths import data_root
from overtrain.data.c4 import open_prepared
from overtrain.data.c4.holdout import holdout_mask
from overtrain.data.tokenizer import load_tokenizer

C4 = data_root() / "c4"
BIG = C4 / "c4-sample.00000-of-00001.json.gz"  # 1000 docs
SMALL = sorted(C4.glob("c4-sample.0[123].json.gz"))  # 3 x 10 docs
EOS = 50279


def _texts(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


@pytest.fixture(scope="module")
def ref():
    """Direct `tokenizers` encodings of every C4 sample document (no special tokens)."""
    tok = load_tokenizer()
    big = _texts(BIG)
    small = [t for p in SMALL for t in _texts(p)]
    enc = lambda texts: [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    return {"big_texts": big, "big": enc(big), "small_texts": small, "small": enc(small)}


def _flat(docs):
    return np.array([i for d in docs for i in d + [EOS]], dtype=np.uint16)


def _prepare(out, *settings):
    argv = ["prepare-data", f"out={out}", *settings]
    assert cli.main(argv) == 0
    return open_prepared(out)


def _split_docs(tokens, n_docs):
    """Cut a token array at the expected document ends; asserts EOS closes every document."""
    ends = np.flatnonzero(np.asarray(tokens) == EOS)
    assert len(ends) == n_docs and ends[-1] == len(tokens) - 1
    return [tuple(d) for d in np.split(np.asarray(tokens), ends[:-1] + 1)]


@pytest.mark.parametrize("layout", ["parts", "single"])
def test_separate_val_files_exact_tokens_and_meta(tmp_path, ref, layout):
    data = _prepare(tmp_path / "out", f"train={BIG}", f"val={C4 / 'c4-sample.0[123].json.gz'}", f"layout={layout}")
    # The 30 small-file docs also occur in the big file: they must not be trained on.
    val_set = set(ref["small_texts"])
    kept = [ids for t, ids in zip(ref["big_texts"], ref["big"]) if t not in val_set]
    assert len(kept) == 1000 - 30
    assert np.array_equal(data.tokens("val"), _flat(ref["small"]))
    assert np.array_equal(data.tokens("train"), _flat(kept))
    _split_docs(data.tokens("train"), len(kept))
    m = data.meta
    assert (m["vocab_size"], m["eos_token_id"], m["dtype"]) == (50280, EOS, "uint16")
    assert m["tokenizer"].endswith("allenai_gpt-neox-olmo-dolma-v1_5.json") and len(m["tokenizer_sha256"]) == 64
    assert m["splits"]["train"]["documents"] == 970 and m["splits"]["train"]["dropped_val_duplicates"] == 30
    assert m["splits"]["train"]["tokens"] == sum(len(d) + 1 for d in kept)
    assert m["splits"]["val"]["documents"] == 30 and m["splits"]["val"]["tokens"] == len(_flat(ref["small"]))
    assert [s["path"] for s in m["splits"]["val"]["sources"]] == [str(Path(p).resolve()) for p in SMALL]
    assert m["splits"]["train"]["sources"] == [{"path": str(BIG), "bytes": BIG.stat().st_size, "records": 1000}]
    assert m["holdout"]["rule"] == "separate source" and m["created"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary leftovers
    if layout == "single":
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["meta.json", "train.npy", "val.npy"]
        # raw flat uint16, no header: exactly 2 bytes per token
        assert (tmp_path / "out" / "train.npy").stat().st_size == 2 * m["splits"]["train"]["tokens"]
        return
    # one part per input shard, each with its manifest entry; raw flat uint16: 2 bytes per token
    files = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    parts = [f"{s}/part-{i:05d}.{x}" for s, n in (("train", 1), ("val", 3)) for i in range(n) for x in ("json", "npy")]
    digests = [f"val/part-{i:05d}.digests" for i in range(3)] + ["val/digests.bin"]
    assert files == sorted(["meta.json", "plan.json", *parts, *digests])
    for split in ("train", "val"):
        for e in m["splits"][split]["parts"]:
            f = tmp_path / "out" / e["file"]
            assert f.stat().st_size == e["bytes"] == 2 * e["tokens"] and len(e["sha256"]) == 64
            assert json.loads(f.with_suffix(".json").read_text()) == e


@pytest.mark.parametrize("layout", ["parts", "single"])
def test_holdout_disjoint_deterministic_and_workers_identical(tmp_path, ref, layout):
    n = 300
    args = [f"train={BIG}", f"max_docs={n}", "val_docs=40", "seed=3", "chunk_chars=20_000", f"layout={layout}"]
    one = _prepare(tmp_path / "w1", *args, "workers=1")
    two = _prepare(tmp_path / "w2", *args, "workers=2")
    for split in ("train", "val"):  # many small chunks on two processes: same bytes
        assert np.asarray(one.tokens(split)).tobytes() == np.asarray(two.tokens(split)).tobytes()
        if layout == "single":
            assert (tmp_path / "w1" / f"{split}.npy").read_bytes() == (tmp_path / "w2" / f"{split}.npy").read_bytes()
    val_docs = _split_docs(one.tokens("val"), 40)
    train_docs = _split_docs(one.tokens("train"), n - 40)
    all_docs = [tuple(d + [EOS]) for d in ref["big"][:n]]
    assert not set(val_docs) & set(train_docs)
    assert sorted(val_docs + train_docs) == sorted(all_docs)  # a partition of the first n documents
    mask = holdout_mask(n, 40, seed=3)
    assert val_docs == [d for d, v in zip(all_docs, mask) if v]  # input order kept in each split
    assert one.meta["holdout"] == two.meta["holdout"]
    assert one.meta["holdout"]["seed"] == 3 and one.meta["holdout"]["val_documents"] == 40
    other = _prepare(
        tmp_path / "s4", f"train={BIG}", f"max_docs={n}", f"val_fraction={40 / n}", "seed=4", f"layout={layout}"
    )
    assert other.meta["splits"]["val"]["documents"] == 40
    assert set(_split_docs(other.tokens("val"), 40)) != set(val_docs)  # the seed matters


def test_parquet_jsonl_and_json_array_give_the_same_tokens(tmp_path, ref):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [json.loads(line) for line in gzip.open(SMALL[0], "rt")]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "b.json").write_text(json.dumps(records))
    pq.write_table(pa.table({"text": [r["text"] for r in records]}), tmp_path / "c.parquet")
    outs = [
        _prepare(tmp_path / f"out-{f}", f"train={tmp_path / f}", "val_docs=2")
        for f in ("a.jsonl", "b.json", "c.parquet")
    ]
    for o in outs:
        both = sorted(_split_docs(o.tokens("train"), 8) + _split_docs(o.tokens("val"), 2))
        assert both == sorted(tuple(d + [EOS]) for d in ref["small"][:10])
        assert np.array_equal(o.tokens("val"), outs[0].tokens("val"))


def _bad_inputs(tmp_path):
    good = [json.dumps({"text": "fine", "url": "u"})] * 2
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "nofield.jsonl").write_text("\n".join(good + [json.dumps({"content": "x"})]) + "\n")
    (tmp_path / "latin1.jsonl").write_bytes("\n".join(good).encode() + b'\n{"text": "caf\xe9"}\n')
    (tmp_path / "broken.jsonl").write_text(good[0] + "\n{not json\n")
    gz = tmp_path / "empty-records.json.gz"
    gz.write_bytes(gzip.compress(b"\n\n"))
    ok = str(SMALL[0])
    shutil.copy(ok, tmp_path / "copy.json.gz")
    val = f"val={ok}"
    return [  # (settings, words the message must contain)
        ([f"train={tmp_path / 'missing.json.gz'}", val], ["missing.json.gz", "no such file"]),
        ([f"train={tmp_path / 'nothing-*.jsonl'}", val], ["nothing-*.jsonl", "matches no files"]),
        ([f"train={tmp_path / 'empty.jsonl'}", val], ["empty.jsonl", "empty file"]),
        ([f"train={gz}", val], ["empty-records.json.gz", "no documents"]),
        ([f"train={BIG}", f"val={tmp_path / 'nofield.jsonl'}"], ["nofield.jsonl:3", "no field 'text'"]),
        ([f"train={tmp_path / 'latin1.jsonl'}", val], ["latin1.jsonl:3", "UTF-8"]),
        ([f"train={tmp_path / 'broken.jsonl'}", val], ["broken.jsonl:2", "not valid JSON"]),
        ([f"train={BIG}", f"val={BIG}"], ["c4-sample.00000-of-00001.json.gz", "both train= and val="]),
        ([f"train={ok}", "val_docs=10"], ["hold-out of 10 documents out of 10"]),
        ([f"train={ok}"], ["no validation data"]),
        ([f"train={ok}", f"val={tmp_path / 'copy.json.gz'}"], ["train split is empty", "10 training documents"]),
    ]


def test_bad_input_is_one_clear_error_before_any_output(tmp_path, capsys):
    for argv, words in _bad_inputs(tmp_path):
        out = tmp_path / "out"
        assert cli.main(["prepare-data", f"out={out}", "layout=single", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("overtrain prepare-data: error: ") and "Traceback" not in err
        for w in words:
            assert w in err, (w, err)
        assert not out.exists() and not list(tmp_path.glob(".out*")), argv  # nothing written


def test_bad_input_with_parts_is_one_clear_error_and_nothing_looks_finished(tmp_path, capsys):
    """The parts layout checks each shard in its worker: same errors; no meta.json, no bad part."""
    for argv, words in _bad_inputs(tmp_path):
        out = tmp_path / "out"
        assert cli.main(["prepare-data", f"out={out}", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("overtrain prepare-data: error: ") and "Traceback" not in err
        for w in words:
            assert w in err, (w, err)
        assert not (out / "meta.json").exists() and not list(out.rglob(".*tmp*")), argv
        for entry in out.rglob("part-*.json"):  # a part that looks finished is finished
            e = json.loads(entry.read_text())
            assert (out / e["file"]).stat().st_size == e["bytes"] == 2 * e["tokens"], argv
        shutil.rmtree(out, ignore_errors=True)


def test_finished_output_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["prepare-data", f"out={out}", f"train={SMALL[0]}", f"val={SMALL[1]}", "layout=single"]
    assert cli.main(args) == 0
    first = (out / "meta.json").read_text()
    assert cli.main(args) == 2 and "overwrite=true" in capsys.readouterr().err
    assert (out / "meta.json").read_text() == first
    assert cli.main(args + ["overwrite=true"]) == 0
    assert open_prepared(out).meta["splits"]["val"]["documents"] == 10
    (out / "meta.json").unlink()  # unfinished-looking directory: also refused without --overwrite
    assert cli.main(args) == 2 and "no meta.json" in capsys.readouterr().err


def test_hub_path_streams_splits_through_load_dataset(tmp_path, monkeypatch, ref):
    import datasets

    real = datasets.load_dataset
    files = {"train": [str(BIG)], "validation": [str(p) for p in SMALL]}
    calls = []

    def fake(path, name=None, split=None, streaming=False, revision=None, **kw):
        calls.append((path, name, split, streaming))
        assert path == "allenai/c4" and name == "en" and streaming
        return real("json", data_files={split: files[split]}, split=split, streaming=True)

    monkeypatch.setattr(datasets, "load_dataset", fake)
    data = _prepare(
        tmp_path / "hub", "hf_dataset=allenai/c4", "hf_config=en", "max_docs=200", "max_val_docs=25", "layout=single"
    )
    assert {c[2] for c in calls} == {"train", "validation"}
    assert np.array_equal(data.tokens("val"), _flat(ref["small"][:25]))
    val_set = set(ref["small_texts"][:25])
    kept = [ids for t, ids in zip(ref["big_texts"][:200], ref["big"][:200]) if t not in val_set]
    assert np.array_equal(data.tokens("train"), _flat(kept))
    src = data.meta["splits"]["train"]["sources"][0]
    assert (src["hub"], src["config"], src["split"], src["max_docs"]) == ("allenai/c4", "en", "train", 200)
    # a hub record without the text field: a DataError naming dataset, split and record
    monkeypatch.setattr(
        datasets,
        "load_dataset",
        lambda *a, **k: datasets.IterableDataset.from_generator(lambda: iter([{"text": "a"}, {"body": "b"}])),
    )
    with pytest.raises(DataError, match=r"allenai/c4 \(en, split 'validation'\), record 1: record has no field 'text'"):
        from overtrain.data.c4.prepare import PrepareConfig, prepare

        prepare(PrepareConfig(hf_dataset="allenai/c4", out=str(tmp_path / "bad"), layout="single"))
    assert not (tmp_path / "bad").exists()


def test_reader_validates_and_olmo_reads_the_files(tmp_path):
    from olmo.data.memmap_dataset import MemMapDataset

    out = tmp_path / "out"
    data = _prepare(out, f"train={SMALL[0]},{SMALL[1]}", "max_docs=15", f"val={SMALL[2]}", "layout=single")
    assert [s["records"] for s in data.meta["splits"]["train"]["sources"]] == [10, 5]  # cut mid-file
    assert data.meta["splits"]["train"]["documents"] == 15
    ds = MemMapDataset(str(out / "train.npy"), chunk_size=64, memmap_dtype=np.uint16)
    assert len(ds) == data.num_tokens("train") // 64
    assert np.array_equal(ds[3]["input_ids"].numpy(), data.tokens("train")[192:256])
    assert np.array_equal(np.memmap(out / "val.npy", dtype=np.uint16, mode="r"), data.tokens("val"))

    spec = load_model_spec("tiny")
    data.check_vocab(spec)
    spec.vocab_size = 32000
    with pytest.raises(DataError, match=r"meta\.json: vocab_size is 50280 .* model 'tiny' has vocab_size=32000"):
        data.check_vocab(spec)

    def broken(edit):
        bad = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
        shutil.copytree(out, bad)
        edit(bad)
        return bad

    meta = json.loads((out / "meta.json").read_text())
    cases = [
        (tmp_path / "nowhere", "prepared data directory not found"),
        (broken(lambda d: (d / "meta.json").unlink()), "meta.json: missing"),
        (broken(lambda d: (d / "meta.json").write_text("{")), "meta.json: unreadable"),
        (broken(lambda d: (d / "val.npy").unlink()), "val.npy: missing"),
        (
            broken(lambda d: os.truncate(d / "train.npy", 2 * meta["splits"]["train"]["tokens"] - 2)),
            "train.npy: .* bytes, but",
        ),
        (broken(lambda d: (d / "meta.json").write_text(json.dumps(meta | {"dtype": "int64"}))), "field 'dtype'"),
    ]
    for path, msg in cases:
        with pytest.raises(DataError, match=msg):
            open_prepared(path)
