"""Fine-tuning runs in wandb / TensorBoard (``log.wandb``, ``log.tensorboard``; ``core.tracker``).

Each fine-tuning run (one LR of a sweep, sequential or stacked) is one tracker run in its own run
directory (RUN_DIR/lr-<lr>/): project ``log.wandb_project`` (a grid passes its name), group the
(checkpoint, task) it belongs to (``core.tracker.group_name``: model, pre-training tokens, decayed or not,
the checkpoint's sha256 prefix, task), job type "finetune", config = the run's FinetuneConfig plus
the checkpoint provenance. The training log's records are logged at their steps; the results row
is the run's summary (TensorBoard: ``final/*`` scalars at the last step). A rerun of the same
run dir continues the same wandb run (``core.tracker.tracker_id``). The tracker is passed along
explicitly: opened before training (``open_tracker``), handed to the training loop's log and to
``finish_run``, which closes it with the row (``close_tracker``).
"""

from __future__ import annotations

from ..core.checkpoint import checkpoint_provenance
from ..core.config import to_dict
from ..core.tracker import Tracker, group_name


def open_tracker(p) -> Tracker | None:
    """The tracker of run ``p`` (a finetune.Prepared), or None when no tracker is asked for."""
    cfg = p.cfg
    if not (cfg.log.wandb or cfg.log.tensorboard):
        return None
    prov = checkpoint_provenance(p.step_dir, p.spec, p.meta)
    tracker = Tracker(
        cfg.run_dir,
        cfg.log,
        name=f"{p.task.name} lr={cfg.lr:.3g} [{(prov['checkpoint_sha256'] or '')[:8]}]",
        group=group_name(prov, p.task.name),
        job_type="finetune",
        config={**to_dict(cfg), "provenance": prov},
    )
    return tracker


def close_tracker(tracker: Tracker | None, row: dict) -> None:
    """Log the run's results row as its summary and finish its tracker run (None: no tracker)."""
    if tracker is not None:
        tracker.summary(row, int(row.get("steps") or 0))
        tracker.close()
