"""Experiment trackers for every stage: Weights & Biases and/or TensorBoard, when asked (``log.wandb``,
``log.tensorboard``); results.jsonl stays the record, a tracker is a view of it.

One tracker run per run directory (a pre-training run, one LR of a sweep, a perturbation job,
a report): its wandb id is kept in ``RUN_DIR/tracker.json``, so a resumed run continues the same
wandb run (``resume="allow"``); the first id is the sha1 of the run directory's path (as
pre-training always used), so runs tracked before the file existed keep theirs. TensorBoard
events go to ``RUN_DIR/tensorboard/``. Grouping: ``wandb_project`` is the project (a grid passes
its name: one grid, one project), ``group`` the (checkpoint, task) a run belongs to, ``job_type``
the stage; the run's config and checkpoint provenance are the wandb config (TensorBoard: a text
summary).

``check_trackers`` fails before any work when a tracker is asked for but its package is missing
(naming the pip command) or wandb has no login (no ``WANDB_API_KEY``, no netrc entry) and is not
offline (``WANDB_MODE=offline``/``disabled``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import netrc
import os
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_write_text
from .errors import ConfigError

TRACKER_FILE = "tracker.json"
INSTALL = "pip install 'wandb>=0.19' 'tensorboard>=2.15' (or the extra: pip install -e '.[track]')"


@dataclass
class TrackConfig:
    wandb: bool = False  # log to Weights & Biases (needs the `wandb` package and a login, or WANDB_MODE=offline)
    wandb_project: str = "overtrain"  # wandb project (a grid sets its name)
    tensorboard: bool = False  # write TensorBoard events to RUN_DIR/tensorboard/ (needs `tensorboard`)


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE", "") in ("offline", "disabled", "dryrun"):
        return True
    try:
        path = os.environ.get("NETRC") or Path.home() / ".netrc"
        hosts = netrc.netrc(str(path)).hosts
    except (OSError, netrc.NetrcParseError):
        return False
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("//")[-1].split("/")[0]
    return base in hosts


def check_trackers(cfg, where: str) -> None:
    """ConfigError (before any work) for a requested tracker that cannot run; ``cfg`` has wandb/tensorboard."""
    for name in ("wandb", "tensorboard"):  # torch.utils.tensorboard needs the tensorboard package
        if getattr(cfg, name, False) and importlib.util.find_spec(name) is None:
            raise ConfigError(f"{where}: log.{name}=true but the '{name}' package is not installed: {INSTALL}")
    if getattr(cfg, "wandb", False) and not _wandb_logged_in():
        raise ConfigError(
            f"{where}: log.wandb=true but wandb has no login: run `wandb login`, set WANDB_API_KEY, "
            "or WANDB_MODE=offline (sync later with `wandb sync`)"
        )


def tracker_id(run_dir: str | os.PathLike) -> str:
    """The run's wandb id: from RUN_DIR/tracker.json, else the sha1 of its path (then stored)."""
    path = Path(run_dir) / TRACKER_FILE
    if path.is_file():
        try:
            return str(json.loads(path.read_text())["wandb_id"])
        except (ValueError, KeyError, TypeError):
            pass  # unreadable: start again from the path's id
    run_id = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"wandb_id": run_id}) + "\n")
    return run_id


def group_name(prov: dict, task: str) -> str:
    """A (checkpoint, task) group from a row's provenance: 'olmo-30m 4000000000 tokens [1a2b3c4d] / rte'."""
    decayed = "" if prov.get("lr_decayed") is not False else " not-decayed"
    sha = (prov.get("checkpoint_sha256") or "")[:8]
    return f"{prov.get('model')} {prov.get('pretrain_tokens')} tokens{decayed} [{sha}] / {task}"


def _tensorboard_writer(log_dir: str):
    from torch.utils.tensorboard import SummaryWriter  # heavy, optional extra [track]

    return SummaryWriter(log_dir)


def scalars(row: dict, prefix: str = "") -> dict[str, float]:
    """The numeric (non-bool) values of a row, nested dicts flattened with '/'."""
    out = {}
    for k, v in row.items():
        if isinstance(v, dict):
            out.update(scalars(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


class Tracker:
    """wandb and/or TensorBoard for one run directory; does nothing when neither is asked for."""

    def __init__(
        self,
        run_dir: str | os.PathLike,
        cfg,
        name: str = "",
        group: str | None = None,
        job_type: str | None = None,
        config: dict | None = None,
        enabled: bool = True,
    ):
        self.run_dir = Path(run_dir)
        self.wandb = self.tb = None
        if not enabled:
            return
        if getattr(cfg, "wandb", False):
            import wandb  # heavy: wandb (optional extra [track]), only with log.wandb

            self.wandb = wandb.init(
                project=cfg.wandb_project,
                name=name or None,
                group=group,
                job_type=job_type,
                id=tracker_id(run_dir),
                resume="allow",
                config=config,
                dir=str(run_dir),
                reinit="create_new",  # several runs in one process (a sweep's LRs)
            )
        if getattr(cfg, "tensorboard", False):
            self.tb = _tensorboard_writer(str(self.run_dir / "tensorboard"))
            if config is not None:
                self.tb.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```", 0)

    @property
    def active(self) -> bool:
        return self.wandb is not None or self.tb is not None

    def log(self, row: dict, step: int) -> None:
        values = scalars({k: v for k, v in row.items() if k != "step"})
        if self.wandb is not None:
            self.wandb.log(values, step=step)
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def summary(self, row: dict, step: int = 0) -> None:
        """A run's final numbers (a results row): wandb summary; TensorBoard scalars under final/ at ``step``."""
        values = scalars(row)
        if self.wandb is not None:
            self.wandb.summary.update(values)
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"final/{k}", v, step)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
        if self.tb is not None:
            self.tb.close()
        self.wandb = self.tb = None
