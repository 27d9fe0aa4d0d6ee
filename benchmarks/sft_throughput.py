"""SFT throughput: overtrain's loop (``finetune.instruct.sft.train_sft`` over ``core.step.train_step``) vs
transformers' ``Trainer`` (what TRL's ``SFTTrainer`` subclasses; TRL is not installed here).

    .venv/bin/python benchmarks/sft_throughput.py                          # CPU: the tiny OLMo, 1 thread
    .venv/bin/python benchmarks/sft_throughput.py --model DIR --device cuda --records 256 --seq-len 1024

Both sides train the same transformers model (``--model``: a transformers directory; default a
freshly initialized tiny OLMo with the framework's tokenizer, written to a temporary directory) on
the same encoded chat records (real GSM8k question/answer pairs, rendered by ``data.chat``: TULU
template, labels on assistant tokens only), with AdamW, linear decay, clip 1.0, the same batch size,
one epoch, each side's model loaded fresh. Timed: the training call only (``train_sft`` /
``Trainer.train``), ``--repeats`` times alternating, the fastest of each side counting (the first
run of either pays one-time start-up; a shared machine adds noise). Printed: input tokens/s of each side and the ratio ours / Trainer, and each
side's first and last step loss (the batch order differs: Trainer draws its own permutation).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def tiny_model_dir(out: Path) -> Path:
    """A freshly initialized tiny transformers OLMo (configs/models/tiny.yaml) with the framework's tokenizer."""
    from overtrain.core.model_spec import load_model_spec
    from overtrain.data.tokenizer import EOS_TOKEN, tokenizer_path
    from overtrain.train.hf import PAD_TOKEN
    from overtrain.train.hf_export import hf_config
    from transformers import OlmoForCausalLM, PreTrainedTokenizerFast

    spec = load_model_spec("tiny", ["max_sequence_length=512"])
    torch.manual_seed(0)
    OlmoForCausalLM(hf_config(spec)).save_pretrained(str(out))
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_path()), eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)
    tok.save_pretrained(str(out))
    return out


def load(path: Path, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).to(device)
    return model, AutoTokenizer.from_pretrained(str(path))


def ours(path: Path, enc, args) -> dict:
    from overtrain.finetune.instruct.sft import SFTConfig, train_sft

    model, tok = load(path, args.device)
    cfg = SFTConfig(
        data="-", out="-", lr=args.lr, epochs=1, batch_size=args.batch_size, micro_batch_size=args.batch_size
    )
    cfg.warmup, cfg.log_every, cfg.max_seq_len = 0.0, 0, args.seq_len
    t0 = time.perf_counter()
    stats = train_sft(model, tok, enc, cfg, torch.device(args.device))
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "tokens": stats["input_tokens"],
        "loss_first": stats["loss_first"],
        "loss_last": stats["loss_last"],
    }


def trainer(path: Path, enc, args, tmp: Path) -> dict:
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    model, tok = load(path, args.device)
    rows = [{"input_ids": i, "labels": lab, "attention_mask": [1] * len(i)} for i, lab in zip(enc.ids, enc.labels)]
    losses = []

    class Losses(TrainerCallback):
        def on_log(self, _args, _state, _control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    targs = TrainingArguments(
        output_dir=str(tmp / "trainer"),
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=1,
        learning_rate=args.lr,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=args.device == "cpu",
        bf16=args.device.startswith("cuda"),
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
        log_level="error",
    )
    collator = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
    t = Trainer(model=model, args=targs, train_dataset=rows, data_collator=collator, callbacks=[Losses()])
    t0 = time.perf_counter()
    t.train()
    wall = time.perf_counter() - t0
    tokens = sum(len(i) - 1 for i in enc.ids)  # predicted positions, the same count as ours
    return {"wall_s": wall, "tokens": tokens, "loss_first": losses[0], "loss_last": losses[-1]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="a transformers model directory (default: a fresh tiny OLMo)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--records", type=int, default=64, help="GSM8k chat records (one epoch)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--repeats", type=int, default=2, help="alternating timed runs per side; the fastest counts")
    p.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from overtrain.data.chat import encode_chat, gsm8k_chat
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = Path(args.model) if args.model else tiny_model_dir(tmp / "tiny")
        enc = encode_chat(AutoTokenizer.from_pretrained(str(path)), gsm8k_chat(args.records), args.seq_len)
        runs = [(ours(path, enc, args), trainer(path, enc, args, tmp)) for _ in range(args.repeats)]  # alternating
        a = max((r[0] for r in runs), key=lambda r: r["tokens"] / r["wall_s"])
        b = max((r[1] for r in runs), key=lambda r: r["tokens"] / r["wall_s"])
    result = {
        "model": args.model or "tiny (fresh)",
        "device": args.device,
        "threads": torch.get_num_threads(),
        "records": len(enc.ids),
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "ours_tokens_per_s": a["tokens"] / a["wall_s"],
        "trainer_tokens_per_s": b["tokens"] / b["wall_s"],
        "ours_loss": [a["loss_first"], a["loss_last"]],
        "trainer_loss": [b["loss_first"], b["loss_last"]],
    }
    result["ratio_ours_over_trainer"] = result["ours_tokens_per_s"] / result["trainer_tokens_per_s"]
    print(json.dumps(result, indent=2))
    print(
        f"ours {result['ours_tokens_per_s']:,.0f} tok/s, Trainer {result['trainer_tokens_per_s']:,.0f} tok/s: "
        f"ratio {result['ratio_ours_over_trainer']:.2f}"
    )


if __name__ == "__main__":
    main()
