"""Text generation from a checkpoint, for eyeballing models (e.g. GSM8k answers after fine-tuning).

Greedy decoding or sampling (temperature, top-k, seeded), one prompt at a time with OLMo's
key/value cache. Only real vocabulary ids are ever produced (the padded embedding rows are
masked, as everywhere in evaluation), and decoding stops at EOS. The prompt is encoded as
fine-tuning encodes contexts (``overtrain.data.encode``): EOS first (a document start), then
the prompt's tokens. Greedy output equals ``transformers``' ``generate(do_sample=False)`` on the
model's ``export-hf`` directory (tests/test_generate.py).

    overtrain generate RUN_DIR prompt="Question: ...\\nAnswer:" max_new_tokens=128
    overtrain generate RUN_DIR task=gsm8k split=test n=3 temperature=0.7 top_k=50 seed=1
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..core.checkpoint import load_model, resolve_checkpoint
from ..core.dist import resolve_device
from ..core.errors import ConfigError
from ..core.likelihood import autocast_for
from ..data.tasks import load_task
from ..data.tokenizer import load_tokenizer


@torch.no_grad()
def generate(
    model,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    vocab_size: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    stop_ids: Sequence[int] = (),
    precision: str = "auto",
) -> list[int]:
    """New token ids after ``prompt_ids`` (a stop id, if reached, is the last one).

    ``temperature`` 0 is greedy (argmax); otherwise tokens are drawn from softmax(logits / T),
    restricted to the ``top_k`` most likely ids when given, with ``generator`` for reproducibility.
    """
    if not prompt_ids:
        raise ValueError("generation needs a non-empty prompt")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
    past, out = None, []
    with autocast_for(device, precision), warnings.catch_warnings():
        # olmo's cached-attention path calls a deprecated torch API once per token
        warnings.filterwarnings("ignore", message=r".*is_autocast_cpu_enabled", category=DeprecationWarning)
        for _ in range(max_new_tokens):
            res = model(ids, past_key_values=past, use_cache=True, last_logits_only=True)
            past = res.attn_key_values
            logits = res.logits[0, -1, :vocab_size].float()
            nxt = int(_pick(logits, temperature, top_k, generator))
            out.append(nxt)
            if nxt in stop_ids:
                break
            ids = torch.tensor([[nxt]], dtype=torch.long, device=device)
    model.train(was_training)
    return out


def _pick(logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1).cpu()
    return int(torch.multinomial(probs, 1, generator=generator))


def prompt_ids_for(tokenizer, text: str, eos_id: int, max_len: int, max_new_tokens: int) -> tuple[list[int], int]:
    """[EOS] + tokens(text), cut from the left so prompt + new tokens fit the context: (ids, tokens cut)."""
    room = max_len - max_new_tokens
    if room < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in a context of {max_len}")
    ids = [eos_id] + tokenizer.encode(text).ids
    cut = max(0, len(ids) - room)
    return ids[cut:], cut


# ---------------------------------------------------------------------------------------------- CLI


@dataclass
class GenerateConfig:
    prompt: str | None = None  # a prompt ('\n' in it is a newline)
    prompts: list[str] = field(default_factory=list)  # several prompts, as a YAML list: prompts='["a, b", c]'
    task: str | None = None  # use the prompts of this task (configs/tasks/NAME.yaml or a path) instead
    split: str = "test"  # task split for task=
    n: int = 3  # number of task examples for task=
    template: str | None = None  # task prompt template (None: the task's)
    max_new_tokens: int = 64  # at most this many generated tokens (stops at EOS)
    temperature: float = 0.0  # 0: greedy (argmax); > 0: sample at this temperature
    top_k: int | None = None  # sample only among the k most likely tokens (needs temperature > 0)
    seed: int = 0  # sampling seed
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def validate(self) -> None:
        if bool(self.prompt or self.prompts) == bool(self.task):
            raise ValueError("give either prompt=TEXT (or prompts=[...]) or task=NAME")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens}: must be at least 1")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k={self.top_k}: must be at least 1")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature}: must be positive (or 0 for argmax)")
        if self.top_k is not None and self.temperature == 0:
            raise ValueError("top_k applies to sampling: give temperature=T > 0 too")


def run(config: GenerateConfig, checkpoint: str) -> int:
    resolve_checkpoint(checkpoint)  # a missing checkpoint fails before the task is read
    items = [(p.replace("\\n", "\n"), None) for p in ([config.prompt] if config.prompt else []) + config.prompts]
    if config.task:
        examples = load_task(config.task, template=config.template).examples(config.split)[: max(config.n, 0)]
        items = [(ex.prompt, ex.completion) for ex in examples]
    model, spec, meta = load_model(checkpoint, device=resolve_device(config.device))
    if config.max_new_tokens >= spec.max_sequence_length:
        raise ConfigError(
            f"max_new_tokens={config.max_new_tokens}: must be below the model's context ({spec.max_sequence_length})"
        )
    tok = load_tokenizer(spec.tokenizer)
    gen = torch.Generator().manual_seed(config.seed)
    mode = (
        "greedy"
        if config.temperature == 0
        else f"temperature {config.temperature:g}, top-k {config.top_k or 'all'}, seed {config.seed}"
    )
    print(f"# {meta['path']} ({spec.name}, {meta.get('kind', '?')}, step {meta.get('step')}); {mode}")
    for i, (text, gold) in enumerate(items):
        ids, cut = prompt_ids_for(tok, text, spec.eos_token_id, spec.max_sequence_length, config.max_new_tokens)
        new = generate(
            model,
            ids,
            config.max_new_tokens,
            spec.vocab_size,
            config.temperature,
            config.top_k,
            gen,
            stop_ids=(spec.eos_token_id,),
        )
        stopped = bool(new) and new[-1] == spec.eos_token_id
        print(f"\n=== prompt {i + 1}" + (f" (first {cut} tokens cut to fit the context)" if cut else ""))
        print(text)
        print(f"--- generated ({len(new)} tokens{', EOS' if stopped else ''})")
        print(tok.decode(new[:-1] if stopped else new))
        if gold is not None:
            print(f"--- gold\n{gold}")
    sys.stdout.flush()
    return 0
