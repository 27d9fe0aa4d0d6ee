"""``overtrain multimodal MEMBER vision=... captions=... instruct=... vqa=... out=...``: LLaVA tuning of a suite member.

The paper's Figure 2 (right): a suite member becomes the language model of a LLaVA model
(transformers' ``LlavaForConditionalGeneration``: a CLIP vision tower, a two-layer GELU MLP
projector, the member), tuned in LLaVA's two stages and evaluated on visual question answering:

    image -> CLIP vision tower (frozen; features of layer -2, the CLS token dropped)
          -> projector (Linear-GELU-Linear) -> S image tokens in place of the one <image> token
          -> the member (causal LM) -> loss on the answer tokens only

1. stage 1 ("feature alignment"): image-caption pairs in LLaVA's ``plain`` format, the sequence
   ``<image> caption EOS`` with the loss on the caption; only the projector trains (the vision
   tower and the member are frozen);
2. stage 2 ("visual instruction tuning"): LLaVA conversations rendered with the member's chat
   template (``data.chat``; TULU's format for base models), the loss on the assistant turns; the
   projector and the whole language model train, the vision tower stays frozen;
3. evaluation: each question of the VQA set (``{"image", "question", "answer", "choices"}`` per
   JSONL line) asked as a user turn; the model's answer is the choice with the highest summed
   log-likelihood after the assistant prompt (lm-eval's ``acc``). Against chance (1/k for k
   choices) a one-sided exact test: p = P(X >= correct) with X the Poisson-binomial count of right
   guesses (``chance_p_value``).

Data: LLaVA's JSON (a list of ``{"image": relative path, "conversations": [{"from": "human",
"value": "<image>\\n..."}, {"from": "gpt", "value": ...}, ...]}``: LLaVA-Pretrain's
``blip_laion_cc_sbu_558k.json`` for stage 1, ``llava_v1_5_mix665k.json`` for stage 2), images
relative to ``caption_images`` / ``instruct_images`` (default: the JSON's folder). Every record needs exactly one
``<image>``; records without one (mix665k's text-only conversations) are skipped and counted.
Images are padded to a square with the mean colour, resized (bicubic) to the tower's size and
normalized with the tower's mean/std (LLaVA-1.5's ``image_aspect_ratio=pad``).

Hyperparameters (the LLaVA recipe, LLaVA-1.5's ``scripts/v1_5/pretrain.sh`` / ``finetune.sh`` as
we read them; marked ``LLaVA`` below): CLIP ViT-L/14 at 336 px, layer -2, ``mlp2x_gelu``
projector with torch's default ``nn.Linear`` init (LLaVA builds it after loading the LM); stage 1 lr 1e-3, batch 256, 1 epoch; stage 2 lr 2e-5, batch 128, 1 epoch; both warmup
3%, cosine decay, no weight decay, 2048 tokens. (A toy model needs other settings: the tests'
64-wide language model, pre-trained on 4K tokens, starts answering from its 4 image tokens only
after ~150-250 stage-2 steps at lr 3e-3; ``tests/test_multimodal.py`` passes them explicitly.) AdamW (0.9, 0.999), clip 1.0 are our marked
choices (the HF Trainer's defaults LLaVA inherits). Both stages run on the one loop
(``train.trainer.Trainer`` with a ``SingleRun``), one process (no DDP here); a micro-batch's
images travel with its ids as the tensor attribute ``pixel_values`` (the step core moves (x, y)
tensors).

Output: ``out`` (written atomically) holds the LLaVA model, its tokenizer (the member's, plus
``<image>``) and ``overtrain_suite.json`` (``core.suite``: the member's provenance, ``sft`` = these
settings with ``data_name``, ``sft_stats`` = both stages' stats). ``results=`` gets one row of
kind ``multimodal`` (``core.rows``): the provenance, ``task``, ``acc``, ``n``, ``chance``,
``p_value`` and ``scores`` (per question ``multimodal.TASK.acc``), so the suite report draws VQA
accuracy against pre-training tokens with its verdict (``evaluate.report.suite_part``). A finished
``out`` is skipped (its row evaluated again if missing); other settings are an error.

Memory (fp32 AdamW states on what trains): stage 2 trains the member whole, 16 bytes per
parameter (OLMo-1B: ~19 GB) plus the frozen tower (CLIP ViT-L: 0.3B, 1.2 GB) and activations of
576 image tokens per record; ``launch.plan`` estimates it per job.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ...core import dist
from ...core.config import to_dict
from ...core.errors import ConfigError, DataError
from ...core.hf_compat import hide_broken_torchvision
from ...core.identity import no_result, no_result_keys
from ...core.jsonl import append_record, read_records
from ...core.optim import build_optimizer
from ...core.paths import expand_path
from ...core.rows import write_scores
from ...core.schedule import Schedule, ScheduleConfig
from ...core.suite import parse_member, resolve_with_provenance
from ...data.chat import DEFAULT_CHAT_TEMPLATE, ChatRecord, encode_chat
from ...train.trainer import SingleRun, Trainer
from ..training import batch_plan
from .sft import SFTLog, check_out, save_tuned

ROW_KIND = "multimodal"
IMAGE_TOKEN = "<image>"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's normalization (its preprocessor config)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class MultimodalConfig:
    vision: str = "openai/clip-vit-large-patch14-336"  # CLIP vision tower: hub id or local dir (LLaVA)
    captions: str = ""  # stage 1 data: LLaVA JSON of image-caption pairs (LLaVA-Pretrain's 558K)
    instruct: str = ""  # stage 2 data: LLaVA JSON of visual conversations (llava_v1_5_mix665k)
    caption_images: str = ""  # the root of the captions' images; "": the JSON's folder
    instruct_images: str = ""  # the root of the instruct conversations' images; "": the JSON's folder
    vqa: str = ""  # evaluation: JSONL of {image, question, answer, choices} (images relative to its folder)
    vqa_name: str = ""  # the task's name in rows; "": the VQA file's stem
    data_name: str = "llava"  # the tuning's name in rows and the report (a grid's multimodal stage: its key)
    out: str = no_result("")  # the LLaVA model directory to write
    revision: str | None = None  # hub revision of MODEL (or MODEL as repo@revision)
    tokens: int | None = None  # pre-training tokens of MODEL; None: parsed from the revision / directory name
    stage1_lr: float = 1e-3  # projector LR (LLaVA)
    stage1_batch_size: int = 256  # (LLaVA)
    stage1_epochs: int = 1  # (LLaVA)
    stage2_lr: float = 2e-5  # projector + language model LR (LLaVA)
    stage2_batch_size: int = 128  # (LLaVA)
    stage2_epochs: int = 1  # (LLaVA)
    warmup: float = 0.03  # fraction of each stage's steps (LLaVA)
    schedule: Literal["cosine", "linear"] = "cosine"  # decay to 0 after warmup (LLaVA: cosine)
    weight_decay: float = 0.0  # (LLaVA: 0)
    grad_clip: float = 1.0  # global gradient-norm clip (marked choice: HF Trainer's default)
    max_seq_len: int = 2048  # tokens per record, image tokens included (LLaVA; capped by the model)
    micro_batch_size: int = 16  # records per forward (gradient accumulation)
    max_examples: int | None = None  # use only the first N records of each stage's data
    max_vqa: int | None = None  # evaluate only the first N questions
    seed: int = 0  # batch order and torch's RNG
    device: str = no_result("auto")  # auto | cpu | cuda | cuda:N (one process)
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: fp32 weights, bf16 autocast on CUDA
    results: str | None = no_result(None)  # append one 'multimodal' row to this results.jsonl
    overwrite: bool = no_result(False)  # replace a finished out (else a finished out is skipped)
    log_every: int = no_result(10)  # a progress line every N steps (0 = none)

    def validate(self) -> None:
        for key in ("captions", "instruct", "vqa", "out"):
            if not getattr(self, key):
                raise ValueError(f"{key}= is required")
        if min(self.stage1_lr, self.stage2_lr) <= 0 or min(self.stage1_epochs, self.stage2_epochs) < 1:
            raise ValueError("stage LRs must be > 0 and epochs >= 1")
        if min(self.stage1_batch_size, self.stage2_batch_size, self.micro_batch_size) < 1:
            raise ValueError("batch sizes must be >= 1")
        if not 0 <= self.warmup < 1 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("warmup must be in [0, 1); weight_decay and grad_clip >= 0")


NOT_RESULT = no_result_keys(MultimodalConfig)  # settings that change no result (core.identity.no_result)


# ------------------------------------------------------------------------------------------ data


@dataclass
class ImageRecord:
    image: Path
    messages: list[dict]  # user/assistant turns; the first user turn holds IMAGE_TOKEN once
    where: str


def load_llava_json(path: str, image_folder: str = "", max_examples: int | None = None) -> tuple[list, int]:
    """(records, text-only records skipped) of a LLaVA JSON file; every image checked to exist."""
    file = Path(expand_path(path))
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        raise DataError(f"{file}: no such file") from None
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{file}: not readable JSON: {e}") from None
    if not isinstance(data, list):
        raise DataError(f"{file}: expected a list of records, got {type(data).__name__}")
    root = Path(expand_path(image_folder)) if image_folder else file.parent
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    out, skipped = [], 0
    for i, rec in enumerate(data):
        where = f"{file}[{i}]"
        if max_examples is not None and len(out) >= max_examples:
            break
        if not isinstance(rec, dict) or not isinstance(rec.get("conversations"), list):
            raise DataError(f"{where}: expected {{'image', 'conversations': [...]}}")
        if not rec.get("image"):
            skipped += 1
            continue
        try:
            messages = [{"role": roles[t["from"]], "content": str(t["value"])} for t in rec["conversations"]]
        except (KeyError, TypeError):
            raise DataError(f"{where}: a turn without 'from' (human/gpt/system) and 'value'") from None
        if sum(m["content"].count(IMAGE_TOKEN) for m in messages) != 1:
            raise DataError(f"{where}: expected exactly one {IMAGE_TOKEN} in the conversation")
        if not any(m["role"] == "assistant" for m in messages):
            raise DataError(f"{where}: no gpt turn (nothing to learn)")
        image = root / rec["image"]
        if not image.is_file():
            raise DataError(f"{where}: image {image} not found (image_folder={root})")
        out.append(ImageRecord(image, messages, where))
    if not out:
        raise DataError(f"{file}: no record with an image")
    return out, skipped


def load_vqa(path: str, max_n: int | None = None) -> list[dict]:
    """The VQA set's records, checked: an image that exists, a question, choices holding the answer."""
    file = Path(expand_path(path))
    if not file.is_file():
        raise DataError(f"{file}: no such file (a VQA JSONL of image, question, answer, choices)")
    out = []
    for i, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{file}:{i}"
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not JSON: {e}") from None
        choices = r.get("choices") if isinstance(r, dict) else None
        if not isinstance(choices, list) or len(choices) < 2 or r.get("answer") not in choices:
            raise DataError(f"{where}: expected 'choices' (2 or more) holding 'answer'")
        image = file.parent / str(r.get("image", ""))
        if not r.get("image") or not image.is_file():
            raise DataError(f"{where}: image {image} not found")
        out.append({"image": image, "question": str(r["question"]), "answer": r["answer"], "choices": choices})
        if max_n is not None and len(out) >= max_n:
            break
    if not out:
        raise DataError(f"{file}: no questions")
    return out


def image_tensor(path: Path, size: int, mean, std) -> torch.Tensor:
    """(3, size, size): padded to a square with the mean colour, resized (bicubic), normalized."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        side = max(w, h)
        square = Image.new("RGB", (side, side), tuple(int(255 * m) for m in mean))
        square.paste(im, ((side - w) // 2, (side - h) // 2))
        square = square.resize((size, size), Image.BICUBIC)
    a = np.asarray(square, dtype=np.float32) / 255.0
    a = (a - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(a.transpose(2, 0, 1).copy())


# ----------------------------------------------------------------------------------------- model


def load_vision(ref: str):
    """(CLIPVisionModel, mean, std) of a local directory or hub id (a CLIP or CLIP-vision checkpoint)."""
    hide_broken_torchvision()
    from transformers import CLIPVisionModel

    try:
        tower = CLIPVisionModel.from_pretrained(expand_path(ref), dtype=torch.float32)
    except Exception as e:  # missing directory, hub unreachable, not a CLIP checkpoint
        raise ConfigError(f"vision={ref}: cannot load a CLIP vision tower: {type(e).__name__}: {e}") from None
    mean, std = CLIP_MEAN, CLIP_STD
    pre = Path(expand_path(ref)) / "preprocessor_config.json"
    if pre.is_file():
        p = json.loads(pre.read_text())
        mean, std = tuple(p.get("image_mean", mean)), tuple(p.get("image_std", std))
    return tower, mean, std


def build_llava(member_dir: Path, tower):
    """(LlavaForConditionalGeneration, tokenizer): the member as language model (its weights), the
    tower's weights, a fresh projector; the tokenizer gains ``<image>`` (one more embedding row)."""
    hide_broken_torchvision()
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlavaConfig, LlavaForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(str(member_dir))
    lm = AutoModelForCausalLM.from_pretrained(str(member_dir), dtype=torch.float32)
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # its row is never read: features replace it
    vc = tower.config
    config = LlavaConfig(
        vision_config=vc,
        text_config=lm.config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=(vc.image_size // vc.patch_size) ** 2,  # patches; "default" drops the CLS token
        vision_feature_layer=-2,  # (LLaVA)
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",  # mlp2x_gelu (LLaVA)
    )
    model = LlavaForConditionalGeneration(config)
    # LLaVA builds its projector as plain nn.Linear layers after loading the LM, so they keep torch's
    # default init (uniform, bound 1/sqrt(fan_in)), not transformers' normal(0, 0.02) (LLaVA). Alike
    # at CLIP-L/OLMo-1B widths; for the tests' 32 -> 64 the latter's image tokens are ~18x smaller,
    # and the language model then takes ~100 more steps to start reading them
    for layer in (model.model.multi_modal_projector.linear_1, model.model.multi_modal_projector.linear_2):
        layer.reset_parameters()
    model.model.language_model.load_state_dict(lm.model.state_dict())
    model.lm_head.load_state_dict(lm.lm_head.state_dict())
    model.model.vision_tower.load_state_dict(tower.state_dict())
    return model.float(), tokenizer


def set_trainable(model, stage: int) -> int:
    """Stage 1: the projector only; stage 2: projector and language model. Returns the trainable count."""
    for p in model.parameters():
        p.requires_grad_(False)
    parts = [model.model.multi_modal_projector]
    if stage == 2:
        parts += [model.model.language_model, model.lm_head]
    for part in parts:
        for p in part.parameters():
            p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# -------------------------------------------------------------------------------------- sequences


def expand_image(ids: list[int], labels: list[int], image_id: int, n: int, where: str) -> tuple[list, list]:
    """The one ``<image>`` id as ``n`` image ids (never targets)."""
    at = [i for i, t in enumerate(ids) if t == image_id]
    if len(at) != 1:
        raise DataError(f"{where}: {len(at)} {IMAGE_TOKEN} tokens after rendering (truncated away?), expected 1")
    i = at[0]
    return ids[:i] + [image_id] * n + ids[i + 1 :], labels[:i] + [-100] * n + labels[i + 1 :]


def encode_stage1(tokenizer, records: list[ImageRecord], n_image: int, max_len: int):
    """LLaVA's ``plain`` format: <image> x n, the caption (the last assistant turn), EOS; loss on caption + EOS."""
    out = []
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    for r in records:
        cap = [m["content"] for m in r.messages if m["role"] == "assistant"][-1]
        text = tokenizer(cap.strip(), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = ([image_id] * n_image + text)[:max_len]
        labels = ([-100] * n_image + text)[:max_len]
        if any(t >= 0 for t in labels[1:]):
            out.append((r.image, ids, labels))
    return out


def encode_stage2(tokenizer, records: list[ImageRecord], n_image: int, max_len: int):
    """The conversations in the member's chat template (``data.chat``), <image> expanded to n ids."""
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    chats = [ChatRecord(r.messages, r.where) for r in records]
    enc = encode_chat(tokenizer, chats, max(max_len - n_image + 1, 2))
    by_where = {r.where: r for r in records}
    out = []
    for ids, labels, where in zip(enc.ids, enc.labels, enc.where):
        ids, labels = expand_image(ids, labels, image_id, n_image, where)
        out.append((by_where[where].image, ids, labels))
    return out


def vision_spec(model) -> tuple[int, int]:
    """(image side in pixels, image tokens per image) of a LLaVA model."""
    vc = model.config.vision_config
    return vc.image_size, model.config.image_seq_length


def micro_batch(items, pad_id: int, device, size: int, mean, std):
    """(x, y) right-padded with x.pixel_values (B, 3, size, size) attached (module doc)."""
    width = max(len(ids) for _, ids, _ in items) - 1
    x = torch.full((len(items), width), pad_id, dtype=torch.long)
    y = torch.full((len(items), width), -100, dtype=torch.long)
    for j, (_, ids, labels) in enumerate(items):
        x[j, : len(ids) - 1] = torch.tensor(ids[:-1])
        y[j, : len(ids) - 1] = torch.tensor(labels[1:])
    x, y = x.to(device), y.to(device)
    x.pixel_values = torch.stack([image_tensor(img, size, mean, std) for img, _, _ in items]).to(device)
    return x, y


def llava_loss(model, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy over targets y >= 0, their count), fp32 softmax (as ``finetune.instruct.sft.sft_loss``).

    The output head runs on the target positions only (image tokens, prompts and padding are most of
    a sequence and need no logits)."""
    hidden = model.model(input_ids=x, pixel_values=x.pixel_values, use_cache=False).last_hidden_state
    mask = y >= 0
    logits = model.lm_head(hidden[mask])
    return F.cross_entropy(logits.float(), y[mask], reduction="sum"), mask.sum()


def train_stage(model, tokenizer, seqs, stage: int, cfg: MultimodalConfig, device, norm, log) -> dict:
    """One stage on the one loop (``Trainer``): AdamW over the stage's trainable parameters."""
    lr, batch, epochs = (
        (cfg.stage1_lr, cfg.stage1_batch_size, cfg.stage1_epochs)
        if stage == 1
        else (cfg.stage2_lr, cfg.stage2_batch_size, cfg.stage2_epochs)
    )
    trainable = set_trainable(model, stage)
    rng = np.random.default_rng(cfg.seed + stage)
    n = len(seqs)
    per_epoch, total = batch_plan(n, batch, epochs)
    schedule = Schedule.build(ScheduleConfig(warmup_fraction=cfg.warmup, decay=cfg.schedule), total, 1, lr)
    params = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    opt = build_optimizer(params, lr, weight_decay=cfg.weight_decay, mup=False)
    orders = [rng.permutation(n) for _ in range(epochs)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    size, _ = vision_spec(model)

    def batches(step: int):
        epoch, b = divmod(step, per_epoch)
        idx = orders[epoch][b * batch : (b + 1) * batch]
        mbs = [
            micro_batch([seqs[i] for i in idx[k : k + cfg.micro_batch_size]], pad_id, device, size, *norm)
            for k in range(0, len(idx), cfg.micro_batch_size)
        ]
        return mbs, sum(len(seqs[i][1]) - 1 for i in idx)

    record = SFTLog(per_epoch, total, cfg.log_every, log)
    t0 = time.perf_counter()
    stepper = SingleRun(model, opt, cfg.grad_clip, cfg.precision, llava_loss)
    Trainer(stepper, batches, [schedule], total, [record], "raise", f"multimodal stage {stage}").run()
    return {
        "steps": total,
        "examples": n,
        "trainable_params": trainable,
        "target_tokens": record.tokens,
        "input_tokens": record.inputs,
        "loss_first": record.losses[0],
        "loss_last": record.losses[-1],
        "epoch_losses": [s / max(t, 1) for s, t in record.epoch_sums],
        "wall_s": time.perf_counter() - t0,
    }


# ------------------------------------------------------------------------------------- evaluation


def chance_p_value(correct: int, chances: list[float]) -> float:
    """P(X >= correct), X = the number right of independent guesses with the given chances
    (Poisson-binomial, exact by dynamic programming; the binomial when the chances are equal)."""
    dist_ = np.zeros(len(chances) + 1)
    dist_[0] = 1.0
    for p in chances:
        dist_[1:] = dist_[1:] * (1 - p) + dist_[:-1] * p
        dist_[0] *= 1 - p
    return float(min(1.0, dist_[correct:].sum()))


@torch.no_grad()
def evaluate_vqa(model, tokenizer, questions: list[dict], device, norm, batch: int = 16) -> dict:
    """Per question: the choice of highest summed log-likelihood after the assistant prompt (module doc).
    ``batch`` questions (all their choices) per forward, right-padded."""
    model.eval()
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    size, n_image = vision_spec(model)
    template = getattr(tokenizer, "chat_template", None) or DEFAULT_CHAT_TEMPLATE
    seqs = []  # (question index, prompt length, continuation ids) per choice
    for i, q in enumerate(questions):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{IMAGE_TOKEN}\n{q['question']}"}],
            chat_template=template,
            tokenize=False,
            add_generation_prompt=True,
        )
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        p_ids, _ = expand_image(p_ids, [-100] * len(p_ids), image_id, n_image, q["question"])
        for c in q["choices"]:
            seqs.append((i, p_ids, tokenizer(str(c), add_special_tokens=False)["input_ids"]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores = np.zeros(len(seqs))
    images = {}
    per = max(1, batch * len(seqs) // len(questions))
    for s0 in range(0, len(seqs), per):
        part = seqs[s0 : s0 + per]
        width = max(len(p) + len(c) for _, p, c in part)
        x = torch.full((len(part), width), pad, dtype=torch.long)
        for j, (_, p, c) in enumerate(part):
            x[j, : len(p) + len(c)] = torch.tensor(p + c)
        for i, _, _ in part:
            if i not in images:
                images[i] = image_tensor(questions[i]["image"], size, *norm)
        pv = torch.stack([images[i] for i, _, _ in part]).to(device)
        hidden = model.model(input_ids=x.to(device), pixel_values=pv).last_hidden_state
        for j, (_, p, c) in enumerate(part):  # the head on the continuation's positions only
            logp = torch.log_softmax(model.lm_head(hidden[j, len(p) - 1 : len(p) - 1 + len(c)]).float(), -1)
            scores[s0 + j] = float(logp[torch.arange(len(c)), torch.tensor(c, device=logp.device)].sum())
    correct, at = [], 0
    for q in questions:
        k = len(q["choices"])
        correct.append(float(q["choices"][int(np.argmax(scores[at : at + k]))] == q["answer"]))
        at += k
    chances = [1.0 / len(q["choices"]) for q in questions]
    right = int(sum(correct))
    return {
        "acc": right / len(correct),
        "n": len(correct),
        "chance": float(np.mean(chances)),
        "p_value": chance_p_value(right, chances),
        "correct": np.asarray(correct),
    }


# ------------------------------------------------------------------------------------------- run


def recorded_config(model: str, cfg: MultimodalConfig) -> dict:
    return {"model": model, **{k: v for k, v in to_dict(cfg).items() if k not in NOT_RESULT}}


def task_name(cfg: MultimodalConfig) -> str:
    return cfg.vqa_name or Path(expand_path(cfg.vqa)).stem


def _has_row(results: str | None, out: Path) -> bool:
    return (
        bool(results)
        and Path(results).exists()
        and any(r.get("kind") == ROW_KIND and r.get("out") == str(out) for r in read_records(results, warn=False))
    )


def _write_row(results: str, out: Path, prov: dict, task: str, ev: dict) -> dict:
    scores = write_scores(results, {ROW_KIND: {task: {"acc": ev["correct"]}}})
    row = {"kind": ROW_KIND, "out": str(out), "task": task, **{k: ev[k] for k in ("acc", "n", "chance", "p_value")}}
    row.update(prov, scores=scores)
    append_record(results, row)
    return row


def run_multimodal(model_ref: str, cfg: MultimodalConfig, log=print) -> dict:
    """The command as a function: returns {"provenance", "eval"} (eval None when nothing was evaluated)."""
    member = parse_member(model_ref, tokens=cfg.tokens, revision=cfg.revision)
    out = Path(expand_path(cfg.out)).absolute()
    results = expand_path(cfg.results) if cfg.results else None
    recorded = recorded_config(member.ref, cfg)
    questions = load_vqa(cfg.vqa, cfg.max_vqa)  # every input checked before any work
    device = dist.resolve_device(cfg.device, dist.DistInfo())
    done = check_out(out, recorded, cfg.overwrite)
    if done is not None:
        log(f"multimodal: {out} already done (overwrite=true redoes it)")
        if results and not _has_row(results, out):
            from transformers import AutoTokenizer, LlavaForConditionalGeneration

            model = LlavaForConditionalGeneration.from_pretrained(str(out), dtype=torch.float32).to(device)
            _, mean, std = load_vision(cfg.vision)
            ev = evaluate_vqa(model, AutoTokenizer.from_pretrained(str(out)), questions, device, (mean, std))
            _write_row(results, out, done, task_name(cfg), ev)
            return {"provenance": done, "eval": ev}
        return {"provenance": done, "eval": None}
    captions, skip1 = load_llava_json(cfg.captions, cfg.caption_images, cfg.max_examples)
    instruct, skip2 = load_llava_json(cfg.instruct, cfg.instruct_images, cfg.max_examples)
    path, prov = resolve_with_provenance(member, cfg.tokens)
    tower, mean, std = load_vision(cfg.vision)
    torch.manual_seed(cfg.seed)  # the projector's init
    model, tokenizer = build_llava(path, tower)
    model.to(device)
    _, n_image = vision_spec(model)
    max_len = min(
        cfg.max_seq_len, getattr(model.config.text_config, "max_position_embeddings", None) or cfg.max_seq_len
    )
    if n_image + 2 > max_len:
        raise ConfigError(f"max_seq_len: {max_len} tokens leave no room beside {n_image} image tokens")
    stats = {}
    for stage, recs, skipped, encode in ((1, captions, skip1, encode_stage1), (2, instruct, skip2, encode_stage2)):
        seqs = encode(tokenizer, recs, n_image, max_len)
        log(f"multimodal: stage {stage} on {len(seqs)} records ({skipped} without an image skipped), {member.ref}")
        stats[f"stage{stage}"] = {
            **train_stage(model, tokenizer, seqs, stage, cfg, device, (mean, std), log),
            "skipped": skipped,
        }
    ev = evaluate_vqa(model, tokenizer, questions, device, (mean, std))
    stats["vqa"] = {k: v for k, v in ev.items() if k != "correct"}
    prov.update(sft_data=cfg.instruct, sft=recorded, sft_stats=stats)
    save_tuned(model, tokenizer, prov, out, causal_lm=False)
    if results:
        _write_row(results, out, prov, task_name(cfg), ev)
    log(
        f"multimodal: VQA accuracy {ev['acc']:.3f} on {ev['n']} questions (chance {ev['chance']:.3f}, "
        f"one-sided p = {ev['p_value']:.2g}) -> {out}"
    )
    return {"provenance": prov, "eval": ev}


def run(config: MultimodalConfig, model: str) -> int:
    def log(msg: str) -> None:
        print(msg, file=sys.stderr if msg.startswith("step ") else sys.stdout, flush=True)

    run_multimodal(model, config, log)
    return 0
