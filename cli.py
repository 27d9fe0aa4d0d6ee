"""The ``overtrain`` command line: one subcommand per stage, each flag mirroring the config.

Subcommand modules are imported only when chosen (``overtrain --help`` stays fast). Each module
defines ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .core.config import OvertrainError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare-data": ("overtrain.data.c4_prepare", "tokenize C4 (hub or local files) into OLMo memmap .npy files"),
    "info": ("overtrain.train.info", "parameters and training FLOPs per token of a model config"),
    "coord-check": ("overtrain.train.coord_check", "muP coordinate check over widths (plot + JSON)"),
    "pretrain": ("overtrain.train.pretrain", "pre-train a model for a token budget (resumable; torchrun-ready)"),
    "finetune": ("overtrain.finetune.finetune", "fine-tune a checkpoint on a task, evaluate, append results"),
    "sweep": ("overtrain.finetune.sweep", "learning-rate sweep for a (checkpoint, task): fixed and tuned LR"),
    "evaluate": ("overtrain.evaluate.evaluator", "C4 perplexity and task ID perplexity/accuracy of a checkpoint"),
    "perturb": ("overtrain.evaluate.perturb", "progressive sensitivity: C4 perplexity under Gaussian weight noise"),
    "report": ("overtrain.evaluate.report", "tables and plots from results.jsonl files"),
    "grid": ("overtrain.launch.grid", "plan or run a whole study described by a grid YAML"),
    "export-hf": ("overtrain.train.hf", "export a checkpoint as a transformers OLMo model directory"),
    "import-hf": ("overtrain.train.hf", "import a transformers OLMo directory as an overtrain checkpoint"),
    "generate": ("overtrain.evaluate.generate", "greedy or sampled generation from a checkpoint"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: overtrain COMMAND [options] [key=value ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'overtrain COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(__version__)
        return 0
    name = argv[0]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"overtrain: unknown command '{name}'{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"overtrain {name}", description=COMMANDS[name][1])
    # A module serving several commands defines add_arguments_<cmd>/run_<cmd> pairs; otherwise
    # add_arguments/run (a function form such as finetune.run_finetune is not a CLI entry point).
    add = getattr(module, f"add_arguments_{name.replace('-', '_')}", None)
    run = getattr(module, f"run_{name.replace('-', '_')}", None) if add else None
    add, run = add or module.add_arguments, run or module.run
    add(parser)
    args = parser.parse_intermixed_args(argv[1:])
    try:
        return int(run(args) or 0)
    except OvertrainError as e:
        print(f"overtrain {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"overtrain {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
