"""An overtrain model as an lm-evaluation-harness ``LM`` (``make_lm``), for ``overtrain lm-eval``.

``OvertrainLM`` wraps a loaded checkpoint on its device and precision (bf16 autocast on CUDA, as
every overtrain evaluation), with the softmax over the real vocabulary (padded rows masked). Its
three request types:

    loglikelihood(ctx, cont)  = sum_t log p(cont_t | ctx, cont_<t); greedy = every cont_t is the argmax
    loglikelihood_rolling(s)  = the sum over lm-eval's disjoint rolling windows of the model's context
    generate_until(ctx, kw)   = greedy decoding (``evaluate.generate``), cut at the first stop string

A context longer than the model's is cut from the left (as lm-eval's HF model does). With
``eos_prefix`` (default) every context starts with EOS, the document separator of pre-training and
the first token of overtrain's own task contexts (``data.encode``): an lm-eval task built from the
same prompt then scores exactly the same token sequences as ``overtrain evaluate``.
"""

from __future__ import annotations

import torch

from ..core.hf_compat import hide_broken_torchvision
from ..core.likelihood import autocast_for, pad_batch, readout_at
from .generate import generate


def make_lm(model, spec, tokenizer, batch_size: int = 32, precision: str = "auto", eos_prefix: bool = True):
    """An lm-eval ``LM`` over an overtrain model (the class is built here: lm-eval is optional)."""
    hide_broken_torchvision()
    from lm_eval.api.model import TemplateLM  # heavy: lm_eval (optional extra [hf])
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    class OvertrainLM(TemplateLM):
        def __init__(self):
            super().__init__()
            self.model, self.spec, self.tok = model, spec, tokenizer
            self.batch_size, self.precision, self.eos_prefix = batch_size, precision, eos_prefix
            self.max_length = spec.max_sequence_length
            self._device = next(model.parameters()).device

        @property
        def eot_token_id(self) -> int:
            return self.spec.eos_token_id

        @property
        def device(self):
            return self._device

        @property
        def tokenizer_name(self) -> str:
            return self.spec.tokenizer

        def get_model_info(self) -> dict:
            return {"model": self.spec.name, "precision": self.precision, "eos_prefix": self.eos_prefix}

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
            ids = self.tok.encode(string).ids
            return [self.eot_token_id] + ids if self.eos_prefix and add_special_tokens is not False else ids

        def tok_decode(self, ids) -> str:
            return self.tok.decode(list(ids))

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
            return score_pairs(
                self.model, [(ctx, cont) for _, ctx, cont in requests], self.batch_size, self.precision, self.spec
            )

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
            out = []
            for req in requests:
                ids = self.tok_encode(req.args[0], add_special_tokens=False)
                wins = get_rolling_token_windows(ids, self.eot_token_id, self.max_length, context_len=1)
                pairs = [make_disjoint_window(w) for w in wins]
                out.append(sum(ll for ll, _ in score_pairs(self.model, pairs, self.batch_size, self.precision, spec)))
            return out

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            out = []
            for req in requests:
                context, kw = req.args
                until = kw.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                max_new = int(kw.get("max_gen_toks", 256))
                ids = self.tok_encode(context)[-max(1, self.max_length - max_new) :]
                new = generate(
                    self.model, ids, max_new, self.spec.vocab_size, stop_ids=[self.eot_token_id], precision=precision
                )
                text = self.tok_decode([i for i in new if i != self.eot_token_id])
                for stop in until:
                    text = text.split(stop)[0] if stop else text
                out.append(text)
            return out

    return OvertrainLM()


@torch.no_grad()
def score_pairs(model, pairs, batch_size: int, precision: str, spec) -> list[tuple[float, bool]]:
    """(sum log p(cont | ctx), whether every cont token is the argmax) per (ctx_ids, cont_ids) pair.

    Sequences longer than the model's context keep their last ``max_sequence_length + 1`` tokens.
    Batched by length (results in input order); only the continuation positions reach the readout.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    seqs = []
    for ctx, cont in pairs:
        seq = (list(ctx) + list(cont))[-(spec.max_sequence_length + 1) :]
        seqs.append((seq, min(len(cont), len(seq) - 1)))
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
    out: list[tuple[float, bool]] = [(0.0, True)] * len(seqs)
    with autocast_for(device, precision):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            inputs = pad_batch([seqs[i][0][:-1] for i in idx], spec.pad_token_id).to(device)
            targets = torch.full_like(inputs, -100)
            for row, i in enumerate(idx):
                seq, n = seqs[i]
                targets[row, len(seq) - 1 - n : len(seq) - 1] = torch.as_tensor(seq[len(seq) - n :])
            mask = targets >= 0
            with readout_at(model, mask):
                logp = torch.log_softmax(model(inputs).logits[0, :, : spec.vocab_size].float(), dim=-1)
            tgt = targets[mask]
            ll = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1).double().cpu()
            greedy = (logp.argmax(-1) == tgt).cpu()
            at = 0
            for i in idx:  # the mask is row-major: each row's continuation is one contiguous run
                n = seqs[i][1]
                out[i] = (float(ll[at : at + n].sum()), bool(greedy[at : at + n].all()))
                at += n
    model.train(was_training)
    return out
