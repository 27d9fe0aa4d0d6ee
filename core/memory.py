"""Per-GPU memory of a training job, estimated before it starts, and the check that refuses one that will not fit.

For N parameters trained with AdamW from fp32 master weights on W GPUs (``parallel``), in bytes:

    weights      4 N            fsdp: 4 N / W  + gathered copies in the compute dtype (p bytes):
                                      reshard_after_forward: 2 units (the one computing, the next
                                      prefetched; a unit = a block or the root: embeddings + readout),
                                      else every unit (p N) from forward to backward
    gradients    4 N            fsdp: 4 N / W  + one unit's unsharded gradient (fp32 reduction)
    optimizer    8 N            two AdamW moments; fsdp: 8 N / W
    autocast     2 N            bf16 copies of the weights autocast makes (ddp under bf16; fsdp's
                                gathered units are already in the compute dtype)
    activations  B x T x (L x a (10 d + 4 h) + V (a + 8))   per micro-batch of B sequences of T tokens
    step         4 N            the optimizer step's temporaries (torch's foreach AdamW: one fp32
                                buffer per parameter); fsdp: 4 N / W. Activations are freed by then,
                                so the peak is the states plus the larger of the two

with a the bytes of an activation (2 under bf16 autocast, 4 in fp32), d the width, h the SwiGLU hidden
width (each of gate and up), L layers and V the (padded) vocabulary. Per layer and token a pre-norm
SwiGLU block saves ~10 d values (the norms' inputs and outputs, q, k, v, the rotated q and k, the
attention output) and ~4 h (gate, up, the activation and the product); attention itself is taken as
flash/memory-efficient (O(T), no T x T scores). The logits cost a per entry plus 8 for the fp32
log-softmax and its gradient. Activation checkpointing keeps each layer's fp32 input (4 d per token and
layer) and, at the peak, the larger of the logits' share and one layer being recomputed (its
activations, and its weights' fp32 gradient, U parameters, before a micro-batch after the first adds
it into .grad): the backward is through the logits, freed, before the first block is recomputed, so

    activations (checkpointing)  B T L 4 d + max(B T V (a + 8), B T a (10 d + 4 h) + 4 U)

This is a model of the main tensors, not of the allocator: the check (``check_fits``) asks the estimate
to fit in ``USABLE`` of the GPU's memory, leaving the rest to the CUDA context, kernels' workspaces
and fragmentation. tests/test_memory.py compares it with the CPU allocator's peak for a tiny model;
``benchmarks/gpu_check.py`` with ``torch.cuda.max_memory_allocated`` where a GPU is lent.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .errors import ConfigError
from .model_spec import count_params

USABLE = 0.9  # of the GPU's memory, for the tensors the estimate counts
GB = 1e9


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of a model."""

    params: int  # all parameters (trained)
    n_layers: int
    d_model: int
    hidden: int  # SwiGLU hidden width (each of gate and up)
    vocab: int  # rows of the embedding / readout (padded)
    unit_params: int  # parameters of the largest FSDP unit (a block, or the root's embeddings + readout)


@dataclass(frozen=True)
class Setup:
    """How a job trains: what the memory depends on besides the model."""

    micro_batch_size: int  # sequences per forward
    seq_len: int  # tokens per sequence
    gpus: int = 1  # ranks the job runs on
    parallel: str = "ddp"  # ddp | fsdp
    checkpointing: bool = False  # activation checkpointing
    bf16: bool = True  # compute (autocast / FSDP param dtype) in bf16
    reshard_after_forward: bool = True  # fsdp


@dataclass(frozen=True)
class Estimate:
    weights: float
    gradients: float
    optimizer: float
    autocast: float
    activations: float
    step: float  # the optimizer step's temporaries (activations are freed by then)

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.autocast + max(self.activations, self.step)

    def describe(self) -> str:
        parts = ("weights", "gradients", "optimizer", "autocast", "activations", "step")
        return f"{self.total / GB:.1f} GB (" + ", ".join(f"{k} {getattr(self, k) / GB:.1f}" for k in parts) + ")"


def olmo_shape(spec) -> Shape:
    """The ``Shape`` of an overtrain OLMo (``core.model_spec.ModelSpec``), from its parameter count."""
    n = count_params(spec)["total_params"]
    root = 2 * spec.embedding_size * spec.d_model  # input embedding + readout
    unit = max((n - root) // spec.n_layers, root)
    return Shape(n, spec.n_layers, spec.d_model, spec.mlp_ratio * spec.d_model // 2, spec.embedding_size, unit)


def hf_shape(config: dict, params: float | None = None) -> Shape:
    """The ``Shape`` of a transformers decoder from its config.json (``hidden_size``, ``intermediate_size``,
    ``num_hidden_layers``, ``vocab_size``, ``tie_word_embeddings``); ``params`` if known, else counted
    as embeddings + per layer 4 d^2 attention + 3 d h gated MLP."""
    d, h, layers, vocab = (config[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size"))
    per_layer = 4 * d * d + 3 * d * h
    emb = vocab * d * (1 if config.get("tie_word_embeddings") else 2)
    n = int(params) if params else layers * per_layer + emb
    return Shape(n, layers, d, h, vocab, max(per_layer, emb))


def setup_of(cfg, seq_len: int, gpus: int, names: dict[str, str]) -> Setup:
    """The ``Setup`` of a pre-training or SFT config (the one builder for both): micro-batch, parallel
    mode and activation checkpointing read from the config's fields that ``names`` gives (the words a
    refusal uses: ``micro_batch_size``, ``parallel``, ``checkpointing``), ``fsdp.reshard_after_forward``,
    and bf16 unless ``precision`` is fp32 (``memory_gb`` means a GPU: precision auto computes in bf16
    there). ``seq_len``: the tokens per sequence the config resolves to."""
    return Setup(
        getattr(cfg, names["micro_batch_size"]),
        seq_len,
        gpus,
        getattr(cfg, names["parallel"]),
        getattr(cfg, names["checkpointing"]),
        bf16=cfg.precision != "fp32",
        reshard_after_forward=cfg.fsdp.reshard_after_forward,
    )


def estimate(shape: Shape, setup: Setup) -> Estimate:
    """Per-GPU bytes of each part (module doc)."""
    n, w = shape.params, max(setup.gpus, 1)
    fsdp = setup.parallel == "fsdp" and w > 1
    p = 2 if setup.bf16 else 4
    a = 2 if setup.bf16 else 4
    if fsdp:
        gathered = (2 * shape.unit_params if setup.reshard_after_forward else n) * p
        weights, grads, optim = 4 * n / w + gathered, 4 * n / w + 4 * shape.unit_params, 8 * n / w
    else:
        weights, grads, optim = 4 * n, 4 * n, 8 * n
    autocast = 2 * n if (setup.bf16 and not fsdp) else 0
    layer = a * (10 * shape.d_model + 4 * shape.hidden)
    tokens, logits = setup.micro_batch_size * setup.seq_len, shape.vocab * (a + 8)
    if setup.checkpointing:  # the logits' backward ends (their memory freed) before a block is recomputed
        recompute = tokens * layer + 4 * shape.unit_params  # + its weights' gradient, being added into .grad
        acts = tokens * shape.n_layers * 4 * shape.d_model + max(tokens * logits, recompute)
    else:
        acts = tokens * (shape.n_layers * layer + logits)
    return Estimate(weights, grads, optim, autocast, acts, 4 * n / (w if fsdp else 1))


def fits(shape: Shape, setup: Setup, memory_gb: float) -> bool:
    return estimate(shape, setup).total <= USABLE * memory_gb * GB


def remedy(shape: Shape, setup: Setup, memory_gb: float, names: dict[str, str]) -> str:
    """The settings that make a job fit (the fewest changes first, in ``names``' words: keys ``parallel``,
    ``checkpointing``, ``micro_batch_size``, ``gpus``: more GPUs where nothing else fits)."""
    options = []
    if setup.parallel != "fsdp" and setup.gpus > 1:
        options.append(({"parallel": "fsdp"}, f"{names['parallel']}=fsdp"))
    if not setup.checkpointing:
        options.append(({"checkpointing": True}, f"{names['checkpointing']}=true"))
    micro = setup.micro_batch_size // 2
    while micro >= 1:
        options.append(({"micro_batch_size": micro}, f"{names['micro_batch_size']}={micro}"))
        micro //= 2
    for changes, words in options:  # one change
        if fits(shape, replace(setup, **changes), memory_gb):
            return words
    best = dict(micro_batch_size=1, checkpointing=True)
    if setup.gpus > 1:
        best["parallel"] = "fsdp"
    for micro in sorted({setup.micro_batch_size // 2**k for k in range(10)} - {0}, reverse=True):
        if fits(shape, replace(setup, **{**best, "micro_batch_size": micro}), memory_gb):
            words = [f"{names['checkpointing']}=true"]
            words += [f"{names['micro_batch_size']}={micro}"] if micro < setup.micro_batch_size else []
            return " ".join(([f"{names['parallel']}=fsdp"] if "parallel" in best else []) + words)
    for gpus in (2, 4, 8, 16, 32, 64, 128, 256):
        if gpus > setup.gpus and fits(shape, replace(setup, **best, gpus=gpus, parallel="fsdp"), memory_gb):
            return (
                f"{names['gpus']}={gpus} with {names['parallel']}=fsdp {names['checkpointing']}=true "
                f"{names['micro_batch_size']}=1"
            )
    return "nothing here: it needs more than 256 GPUs' memory"


def check_fits(shape: Shape, setup: Setup, memory_gb: float | None, what: str, names: dict[str, str]) -> Estimate:
    """The estimate; a ``ConfigError`` naming ``what`` and the setting that makes it fit when it
    exceeds ``USABLE`` x ``memory_gb`` (None: no check)."""
    est = estimate(shape, setup)
    if memory_gb is not None and est.total > USABLE * memory_gb * GB:
        how = f"{setup.parallel} over {setup.gpus} GPU{'s' if setup.gpus > 1 else ''}"
        how += ", activation checkpointing" if setup.checkpointing else ""
        raise ConfigError(
            f"{what}: needs ~{est.describe()} per GPU ({how}, micro-batch {setup.micro_batch_size} x "
            f"{setup.seq_len} tokens), more than {USABLE:.0%} of {memory_gb:g} GB; to fit: "
            f"{remedy(shape, setup, memory_gb, names)}"
        )
    return est


def measured_peak_bytes(fn, device) -> int:
    """Peak bytes allocated while ``fn()`` runs, above what was allocated before: CUDA's own peak
    counter on a GPU; on CPU the profiler's allocation events summed in time order (what the tests and
    ``benchmarks/sharding_check.py`` compare ``estimate`` with)."""
    import torch  # heavy: torch (grid plan imports this module without it)
    from torch.profiler import ProfilerActivity, profile  # heavy: as above

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    now = peak = 0
    for e in events:
        now += e.nbytes()
        peak = max(peak, now)
    return peak
