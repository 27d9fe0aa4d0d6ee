"""Checkpoint suites: public pre-training checkpoints as (model, revision) members with token counts.

A suite member is a hub repository at a revision (``allenai/OLMo-1B-hf@step20000-tokens84B``) or
a local transformers directory (``runs/suite/step5-tokens1K``). Its pre-training token count is
given (``tokens=``) or parsed from the revision name (from the directory name for a local one):

    step20000-tokens84B          -> 84_000_000_000     (OLMo-1B-hf)
    stage1-step10000-tokens42B   -> 42_000_000_000     (OLMo-2 stage 1)
    stage2-ingredient1-step...   -> None               (OLMo-2 stage 2 counts its own tokens only)
    ckpt_100, main               -> None               (no count in the name: give tokens=)

Suffixes K/M/B/T are powers of 1000 (``core.config.parse_count``). The names are rounded by their
publishers (OLMo-1B step 20000 x 4,194,304 tokens = 83.9B), so counts are good to the shown digits.

Suites by token count: ``nearest_revisions`` picks, for each requested count c, the revision whose
parsed count t is nearest, accepted when |t - c| <= tolerance * c, among the revisions
``list_revisions`` finds (a hub repository's branches, ``huggingface_hub.list_repo_refs``; or the
subdirectories of a local mirror); a count with none in tolerance is an error naming the nearest.

Which suites work (transformers >= 4.40, no custom code):

- OLMo-1B: ``allenai/OLMo-1B-hf`` (``OlmoForCausalLM``, revisions ``stepN-tokensNB``). The
  non-hf repo ``allenai/OLMo-1B`` (model_type ``hf_olmo``) needs ai2-olmo's ``hf_olmo`` package and
  remote code; ``check_loadable`` refuses it and names the -hf repo instead.
- OLMo-2: ``allenai/OLMo-2-0425-1B`` / ``OLMo-2-1124-7B`` (``Olmo2ForCausalLM``, revisions
  ``stage1-stepN-tokensNB``; stage-2 revisions need ``tokens=``).
- LLM360 Amber (``LlamaForCausalLM``, revisions ``ckpt_000`` .. ``ckpt_359``): the model card gives
  1259.13B tokens in all and 360 checkpoints but not their spacing, so ``tokens=`` is required.

Provenance: every directory overtrain writes from a member (an SFT output) holds
``overtrain_suite.json`` (``PROVENANCE_FILE``) with exactly the keys of ``PROVENANCE_KEYS``::

    {"suite_model": str, "suite_revision": str|null, "suite_commit": str|null,
     "pretrain_tokens": int|null, "sft_data": str|null, "sft": {config}|null, "sft_stats": {...}|null}

``read_provenance`` gives the same dict for a plain member directory without the file.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_write_text
from .config import parse_count
from .errors import ConfigError, DataError
from .hf_compat import hide_broken_torchvision
from .paths import expand_path

PROVENANCE_FILE = "overtrain_suite.json"
PROVENANCE_KEYS = (
    "suite_model",
    "suite_revision",
    "suite_commit",
    "pretrain_tokens",
    "sft_data",
    "sft",
    "sft_stats",
)

_TOKENS = re.compile(r"(?:^|[-_])tokens(\d+(?:\.\d+)?[KMBT]?)(?=$|[-_])", re.IGNORECASE)
_LATER_STAGE = re.compile(r"^stage([2-9]|\d\d+)\b", re.IGNORECASE)
_SNAPSHOT = re.compile(r"[/\\]snapshots[/\\]([0-9a-f]{40})[/\\]?$")


def tokens_from_revision(revision: str | None) -> int | None:
    """Pre-training tokens in an OLMo-style revision name (see module doc), or None."""
    if not revision or _LATER_STAGE.match(revision):
        return None
    m = _TOKENS.search(revision)
    if m is None:
        return None
    try:
        return parse_count(m.group(1))
    except ValueError:  # '1.25K' tokens: not a whole count
        return None


@dataclass(frozen=True)
class SuiteMember:
    model: str  # a hub repository id ('allenai/OLMo-1B-hf') or a local transformers directory
    revision: str | None = None  # hub branch/tag/commit; None: the default branch, or a local directory
    tokens: int | None = None  # pre-training tokens (given, or parsed from the revision/directory name)

    @property
    def is_local(self) -> bool:
        return looks_local(self.model)

    @property
    def ref(self) -> str:
        return f"{self.model}@{self.revision}" if self.revision else self.model


def looks_local(model: str) -> bool:
    """A local directory: it exists, or is written as a path (absolute, ./ ../ ~, or more than one '/').

    Anything else ('owner/name', 'name') is a hub repository id.
    """
    text = expand_path(model)
    return (
        os.path.exists(text) or text.startswith(("/", "./", "../", "~")) or text.count("/") > 1 or text.endswith(os.sep)
    )


def parse_member(ref: str, tokens: int | None = None, revision: str | None = None) -> SuiteMember:
    """``"repo@rev"``, ``"repo"`` (with ``revision=``) or ``"local/dir"`` as a SuiteMember.

    ``tokens`` overrides the count parsed from the revision (or a local directory's name).
    """
    ref = str(ref).strip()
    if not ref:
        raise ConfigError("suite member: empty model reference")
    model, rev = ref, revision
    if not looks_local(ref) and "@" in ref:
        model, _, at_rev = ref.rpartition("@")
        if revision is not None and revision != at_rev:
            raise ConfigError(f"suite member {ref!r}: revision {at_rev!r} in the name but revision={revision!r}")
        rev = at_rev or None
    if looks_local(model):
        if rev is not None:
            raise ConfigError(f"suite member {ref!r}: a local directory takes no revision (got {rev!r})")
        model = os.path.abspath(expand_path(model))
    if tokens is not None and tokens < 0:
        raise ConfigError(f"suite member {ref!r}: tokens={tokens} must be >= 0")
    if tokens is None:
        tokens = tokens_from_revision(rev if rev else Path(model).name)
    return SuiteMember(model, rev, tokens)


def _hub_error(member: SuiteMember, e: Exception) -> ConfigError:
    from huggingface_hub import constants  # heavy: huggingface_hub, kept out of grid plan

    return ConfigError(
        f"suite member {member.ref}: not a local directory, and the hub has no such repository/revision or "
        f"cannot be reached (offline: a missing directory; HF_HUB_OFFLINE={int(constants.HF_HUB_OFFLINE)}): "
        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    )


def resolve_member(member: SuiteMember, check: bool = True) -> Path:
    """The member's local directory: checked as is, or downloaded from the hub (``snapshot_download``).

    For a hub member, ``config.json`` is fetched first and (``check``) checked by ``check_loadable``
    before the weights are downloaded. Any failure is one ConfigError naming the member.
    """
    if member.is_local:
        path = Path(member.model)
        if not path.is_dir():
            raise ConfigError(f"suite member {member.model}: no such directory (a revision that does not exist?)")
        if not (path / "config.json").is_file():
            raise ConfigError(f"suite member {path}: no config.json (not a transformers model directory)")
        if check:
            check_loadable(path)
        return path
    from huggingface_hub import hf_hub_download, snapshot_download  # heavy: huggingface_hub, kept out of grid plan

    try:
        config = hf_hub_download(member.model, "config.json", revision=member.revision)
    except Exception as e:  # RepositoryNotFound, RevisionNotFound, offline LocalEntryNotFound, HTTP errors
        raise _hub_error(member, e) from None
    if check:
        check_loadable(Path(config).parent)
    try:
        return Path(snapshot_download(member.model, revision=member.revision))
    except Exception as e:
        raise _hub_error(member, e) from None


def commit_of(path: str | os.PathLike) -> str | None:
    """The commit hash of a hub snapshot directory (``.../snapshots/<sha>``), else None."""
    m = _SNAPSHOT.search(str(path))
    return m.group(1) if m else None


def check_loadable(path: str | os.PathLike) -> None:
    """Raise one ConfigError naming ``config.json`` and the field unless the installed transformers can
    load this model without remote code: a known ``model_type`` (AutoConfig reads the file) and every
    class in ``architectures`` present in transformers."""
    hide_broken_torchvision()
    import transformers  # heavy: transformers (optional extra [hf])
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    file = Path(path) / "config.json"
    try:
        config = json.loads(file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{file}: missing (not a transformers model directory)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{file}: not readable JSON: {e}") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    where = f"{file}: model_type={model_type!r}"
    if model_type == "hf_olmo":
        raise ConfigError(
            f"{where} is the non-hf OLMo format: it needs ai2-olmo's hf_olmo package and remote code; "
            "use the '-hf' repository (allenai/OLMo-1B-hf)"
        )
    if model_type not in CONFIG_MAPPING_NAMES:
        raise ConfigError(f"{where} is not known to transformers {transformers.__version__}")
    archs = config.get("architectures")
    if not isinstance(archs, list) or not archs:
        raise ConfigError(f"{file}: architectures={archs!r}: expected a list naming the model class")
    missing = [a for a in archs if not hasattr(transformers, str(a))]
    if missing:
        raise ConfigError(
            f"{file}: architectures={archs!r}: {', '.join(map(str, missing))} is not a class of "
            f"transformers {transformers.__version__}"
        )
    if not any(str(a).endswith("ForCausalLM") for a in archs):
        raise ConfigError(f"{file}: architectures={archs!r}: no *ForCausalLM class (not a causal language model)")
    try:
        transformers.AutoConfig.from_pretrained(str(path))
    except Exception as e:  # a config transformers itself refuses
        raise ConfigError(f"{file}: transformers cannot read it: {type(e).__name__}: {e}") from None


def member_provenance(member: SuiteMember, path: Path) -> dict:
    """The provenance of a resolved member: its own ``overtrain_suite.json`` when it has one (an SFT
    output fine-tuned again keeps its origin, and its ``pretrain_tokens`` unless that is None)."""
    if (Path(path) / PROVENANCE_FILE).is_file():
        prov = read_provenance(path)
        if prov["pretrain_tokens"] is None:
            prov["pretrain_tokens"] = member.tokens
        return prov
    local = Path(member.model) if member.is_local else None  # a local suite: its folder, the member's name
    return {
        "suite_model": str(local.parent) if local else member.model,
        "suite_revision": local.name if local else member.revision,
        "suite_commit": commit_of(path),
        "pretrain_tokens": member.tokens,
        "sft_data": None,
        "sft": None,
        "sft_stats": None,
    }


def resolve_with_provenance(member: SuiteMember, tokens: float | None = None) -> tuple[Path, dict]:
    """(local path, provenance) of a member, for a command that tunes or evaluates it: ``tokens`` (the
    command's ``tokens=``) overrides the pre-training tokens; tokens still unknown are one ConfigError,
    before any weight is read (the report draws every member against them)."""
    path = resolve_member(member)  # checks config.json (check_loadable) before the weights
    prov = member_provenance(member, path)
    if tokens is not None:
        prov["pretrain_tokens"] = tokens
    if prov["pretrain_tokens"] is None:
        raise ConfigError(
            f"{member.ref}: pre-training tokens unknown (no 'tokensN' in the revision or directory name); give tokens="
        )
    return path, prov


def write_provenance(directory: str | os.PathLike, provenance: dict) -> Path:
    """Write ``overtrain_suite.json`` atomically; the dict must hold exactly ``PROVENANCE_KEYS``."""
    keys = set(provenance)
    if keys != set(PROVENANCE_KEYS):
        raise ValueError(f"provenance keys {sorted(keys)} != {sorted(PROVENANCE_KEYS)}")
    path = Path(directory) / PROVENANCE_FILE
    atomic_write_text(path, json.dumps({k: provenance[k] for k in PROVENANCE_KEYS}, indent=2) + "\n")
    return path


def read_provenance(directory: str | os.PathLike) -> dict:
    """The provenance dict of a directory: its ``overtrain_suite.json``, or for a plain member directory
    (a local suite is a folder of revision directories) ``suite_model`` = the folder, ``suite_revision``
    = the directory's name, ``pretrain_tokens`` from that name, the rest None."""
    directory = Path(directory).resolve()
    path = directory / PROVENANCE_FILE
    if not path.is_file():
        return {
            "suite_model": str(directory.parent),
            "suite_revision": directory.name,
            "suite_commit": None,
            "pretrain_tokens": tokens_from_revision(directory.name),
            "sft_data": None,
            "sft": None,
            "sft_stats": None,
        }
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not readable JSON: {e}") from None
    if not isinstance(data, dict) or not set(PROVENANCE_KEYS) <= set(data):
        have = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{path}: expected the keys {list(PROVENANCE_KEYS)}, found {have}")
    return {k: data[k] for k in PROVENANCE_KEYS}


def list_revisions(model: str) -> list[str]:
    """A suite's revisions: the subdirectories of a local folder (a mirror of revision folders), or the
    branches of a hub repository (``huggingface_hub.list_repo_refs``; OLMo publishes a branch per
    checkpoint). Any hub failure (offline, unknown repository) is one ConfigError naming the repository."""
    local = Path(expand_path(model))
    if local.is_dir():
        return sorted(p.name for p in local.iterdir() if p.is_dir())
    if looks_local(model):
        raise ConfigError(f"suite {model}: no such directory (a local mirror of revision folders)")
    from huggingface_hub import list_repo_refs  # heavy: huggingface_hub, kept out of grid plan

    try:
        refs = list_repo_refs(model)
    except Exception as e:  # RepositoryNotFound, offline, HTTP errors
        first = str(e).splitlines()[0] if str(e) else ""
        raise ConfigError(
            f"suite {model}: cannot list the hub repository's branches: {type(e).__name__}: {first}"
        ) from None
    return sorted(b.name for b in refs.branches)


def nearest_revisions(
    revisions: list[str], counts: list[int], tolerance: float, where: str = "suite"
) -> list[tuple[str, int]]:
    """For each requested token count c, the revision whose parsed count t (``tokens_from_revision``) is
    nearest: min |t - c| (ties: the earlier checkpoint), accepted when |t - c| <= tolerance * c.

    Revisions without a count in their name ('main', stage-2 names) are not candidates. Every count
    without a revision in tolerance is named in one ConfigError with its two nearest revisions.
    Returns (revision, its tokens) per count, in the order of ``counts``.
    """
    have = sorted({(t, r) for r in revisions if (t := tokens_from_revision(r)) is not None})
    if not have:
        raise ConfigError(
            f"{where}: no revision names a token count (OLMo style: stepN-tokensNB) among {len(revisions)}"
        )
    out, missing = [], []
    for c in counts:
        ranked = sorted(have, key=lambda tr: (abs(tr[0] - c), tr[0]))
        t, r = ranked[0]
        if abs(t - c) <= tolerance * c:
            out.append((r, t))
        else:
            near = ", ".join(f"{r2} ({(t2 - c) / c:+.1%})" for t2, r2 in ranked[:2])
            missing.append(f"{format_count(c)} (nearest: {near})")
    if missing:
        raise ConfigError(
            f"{where}: no revision within {tolerance:.1%} of the token count(s) "
            + "; ".join(missing)
            + " (widen suite.tolerance or ask for an available count)"
        )
    return out


def format_count(n: int) -> str:
    """A token count as the names write it: 2300000000000 -> '2.3T' (at most 4 significant digits)."""
    for div, suf in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= div:
            return f"{n / div:.4g}{suf}"
    return str(n)
