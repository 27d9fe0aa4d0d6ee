"""The ``overtrain`` command line: one subcommand per stage, one style for all.

    overtrain COMMAND [MAIN ...] [key=value ...]

Every setting is a dotted ``key=value`` (values are YAML: ``lrs=[1e-3,0.1]``, ``c4=null``, text
for a string key); only a command's main object is positional (a config file, a checkpoint, a
grid file, result sources). ``overtrain COMMAND --help`` lists every key with its type, default
and one-line doc, generated from the command's dataclass. An unknown key, a wrongly typed value
or a flag (``--c4 DIR``) is one error line and exit status 2, before any work starts.

A command module (imported only when chosen, so ``overtrain --help`` stays fast) defines:

- ``CONFIG``: the dataclass of its settings (each field's ``# comment`` is its doc);
- ``KIND`` (optional): CONFIG is read from a YAML file, the positional ``CONFIG`` (a name in
  ``configs/KIND/`` or a path), and the key=value settings apply on top of it;
- ``OPTIONS`` (optional, with KIND): a dataclass of the command's own settings that are not part
  of that file (pretrain's ``overwrite``); it shares no top-level key with CONFIG;
- ``add_arguments(parser)`` (optional): its other positional arguments (argparse);
- ``run(args) -> int``, where ``args`` has the positionals and ``args.config`` (the CONFIG
  object); without KIND, CONFIG's top-level fields are also attributes of ``args`` (``args.c4``);
  with KIND, ``args.config_path`` is the file and OPTIONS' fields are attributes of ``args``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import re
import shutil
import sys

from .core.config import load_config
from .core.errors import ConfigError, OvertrainError
from .core.keys import describe_keys, field_type
from .core.paths import CONFIG_ROOT

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare-data": ("overtrain.data.c4.prepare", "tokenize C4 (hub or local files) into OLMo memmap .npy files"),
    "info": ("overtrain.train.info", "parameters and training FLOPs per token of a model config"),
    "coord-check": ("overtrain.train.coord_check", "muP coordinate check over widths (plot + JSON)"),
    "pretrain": ("overtrain.train.pretrain", "pre-train a model for a token budget (resumable; torchrun-ready)"),
    "finetune": ("overtrain.finetune.finetune", "fine-tune a checkpoint on a task, evaluate, append results"),
    "sft": ("overtrain.finetune.instruct.sft", "instruction-tune a suite member (transformers model) on chat data"),
    "multimodal": (
        "overtrain.finetune.instruct.multimodal",
        "LLaVA two-stage multimodal tuning of a suite member + VQA",
    ),
    "sweep": ("overtrain.finetune.sweep", "learning-rate sweep for a (checkpoint, task): fixed and tuned LR"),
    "evaluate": ("overtrain.evaluate.evaluator", "C4 perplexity and task ID perplexity/accuracy of a checkpoint"),
    "lm-eval": ("overtrain.evaluate.lm_eval", "lm-evaluation-harness tasks on a checkpoint, in-process (no export)"),
    "alpaca-eval": ("overtrain.evaluate.alpaca", "AlpacaEval win rates of a suite member (the alpaca-eval package)"),
    "perturb": ("overtrain.evaluate.perturb", "progressive sensitivity: C4 perplexity under Gaussian weight noise"),
    "theory": ("overtrain.finetune.theory", "section 4's mechanism: a linear network under the study's protocol"),
    "report": ("overtrain.evaluate.report", "tables and plots from results.jsonl files"),
    "grid": ("overtrain.launch.grid", "plan or run a whole study described by a grid YAML"),
    "export-hf": ("overtrain.train.hf_export", "export a checkpoint as a transformers OLMo model directory"),
    "import-hf": ("overtrain.train.hf_import", "import a transformers OLMo directory as an overtrain checkpoint"),
    "generate": ("overtrain.evaluate.generate", "greedy or sampled generation from a checkpoint"),
}

SETTING = re.compile(r"[A-Za-z_][\w.-]*=")  # `key=value`; a path such as RUN@tokens=N is positional


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: overtrain COMMAND [MAIN ...] [key=value ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'overtrain COMMAND --help' for a command's keys (type, default, doc)."]
    return "\n".join(lines)


def command_classes(module) -> tuple[type, type | None, str | None]:
    """(CONFIG, OPTIONS or None, KIND or None) of a command module."""
    kind = getattr(module, "KIND", None)
    return module.CONFIG, getattr(module, "OPTIONS", None) if kind else None, kind


def build_parser(name: str, module) -> argparse.ArgumentParser:
    """The positional arguments of command ``name``, and its --help text with every key."""
    config, options, kind = command_classes(module)
    parser = argparse.ArgumentParser(
        prog=f"overtrain {name}",
        description=COMMANDS[name][1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,  # -h/--help is answered before argparse sees the arguments
    )
    if hasattr(module, "add_arguments"):
        module.add_arguments(parser)
    sections = []
    if kind:
        known = sorted(p.stem for p in (CONFIG_ROOT / kind).glob("*.yaml"))
        shown = ", ".join(known[:4]) + (", ..." if len(known) > 4 else "")
        parser.add_argument("config_path", metavar="CONFIG", help=f"a name in configs/{kind}/ ({shown}) or a YAML path")
        if options is not None:
            sections.append(("options (key=value)", options))
        sections.append(("config keys (key=value, applied over CONFIG's values; defaults without a file)", config))
    else:
        sections.append(("keys (key=value)", config))
    parser.usage = parser.format_usage().removeprefix("usage: ").strip() + " [key=value ...]"
    width = max(80, shutil.get_terminal_size((120, 24)).columns - 1)
    parser.epilog = "\n\n".join(f"{title}:\n{describe_keys(cls, width)}" for title, cls in sections)
    parser.epilog += "\n\nValues are YAML (lrs=[1e-3,0.1], c4=null); a str key takes its text as written."
    return parser


def _flag_error(token: str, following: str | None, classes: list[type]) -> ConfigError:
    """A flag given where a key=value belongs: say what to write instead."""
    key, _, value = token.lstrip("-").partition("=")
    key = key.replace("-", "_")
    if not value and following is not None and not following.startswith("-") and not SETTING.match(following):
        value = following
    is_bool = any(field_type(c, key) is bool for c in classes)
    hint = f"{key}={value or ('true' if is_bool else 'VALUE')}"
    return ConfigError(f"command line: '{token}': settings are key=value, not flags (did you mean '{hint}'?)")


def parse_command(name: str, module, argv: list[str]) -> argparse.Namespace:
    """Positionals via argparse, then the key=value settings into CONFIG (and OPTIONS)."""
    config, options, kind = command_classes(module)
    parser = build_parser(name, module)
    positionals, settings = [], []
    for i, token in enumerate(argv):
        if token in ("-h", "--help"):
            parser.print_help()
            raise SystemExit(0)
        if token.startswith("-"):
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            raise _flag_error(token, nxt, [c for c in (config, options) if c is not None])
        (settings if SETTING.match(token) else positionals).append(token)
    args = parser.parse_args(positionals)
    if not kind:  # every setting is CONFIG's
        args.config = load_config(config, None, settings)
        _set_fields(args, args.config)
        return args
    own = {f.name for f in dataclasses.fields(options)} if options else set()
    theirs = {f.name for f in dataclasses.fields(config)}
    top = lambda s: s.split("=", 1)[0].split(".", 1)[0]  # noqa: E731
    for s in settings:
        if top(s) not in own and top(s) not in theirs:
            close = difflib.get_close_matches(top(s), sorted(own | theirs), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"command line: unknown key '{top(s)}'{hint}; 'overtrain {name} --help' lists the keys")
    args.overrides = [s for s in settings if top(s) in theirs]  # CONFIG's settings as given (grid records them)
    args.config = load_config(config, args.config_path, args.overrides, kind=kind)
    if options is not None:
        _set_fields(args, load_config(options, None, [s for s in settings if top(s) in own]))
    return args


def _set_fields(args: argparse.Namespace, obj) -> None:
    for f in dataclasses.fields(obj):
        setattr(args, f.name, getattr(obj, f.name))


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
        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"overtrain: unknown command '{name}'{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        try:
            args = parse_command(name, module, argv[1:])
        except SystemExit as e:  # --help (0), or argparse's usage error (2)
            return int(e.code or 0)
        return int(module.run(args) or 0)
    except OvertrainError as e:
        print(f"overtrain {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"overtrain {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
