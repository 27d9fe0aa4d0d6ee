"""The ``overtrain`` command line: one subcommand per stage, one style for all.

    overtrain COMMAND [MAIN ...] [key=value ...]

Every setting is a dotted ``key=value`` (values are YAML: ``lrs=[1e-3,0.1]``, ``c4=null``, text
for a string key; the one codec, ``core.keyvalue``); only a command's main object is positional (a
config file, a checkpoint, a grid file, result sources). ``overtrain COMMAND --help`` lists every
key with its type, default and one-line doc, generated from the command's dataclass. An unknown
key, a wrongly typed value or a flag (``--c4 DIR``) is one error line and exit status 2, before
any work starts.

``COMMANDS`` is the typed table of commands, one ``Command`` each: its settings dataclass
(``config``; each field's ``# comment`` is its doc), optionally ``kind`` (config is read from a
YAML file, the positional ``CONFIG``: a name in ``configs/KIND/`` or a path, with the key=value
settings applied on top) and ``options`` (with kind: the command's own settings outside that
file, pretrain's ``overwrite``; no top-level key in common with config), its other positionals,
``run``, the stage's plain library function, and ``call``, how the parsed command line
(``Invocation``) becomes ``run``'s typed arguments (the config object, paths, options). Stages
know nothing of the command line. Classes and functions are named ``"module:attribute"`` and
imported only when the command runs or shows its help, so ``overtrain --help`` imports no stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import __version__
from .core.config import load_config
from .core.errors import ConfigError, OvertrainError
from .core.keys import describe_keys
from .core.keyvalue import field_type, is_setting, top_key
from .core.paths import CONFIG_ROOT


@dataclass(frozen=True)
class Positional:
    name: str  # the attribute of Invocation.args
    help: str
    many: bool = False  # one or more values (a list)
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Invocation:
    """A parsed command line: what ``Command.call`` passes on to the stage."""

    config: Any  # the config object (file + settings with kind, else the settings)
    options: Any = None  # the options object (kind and options only)
    args: dict[str, Any] = field(default_factory=dict)  # positional name -> value (a list for `many`)
    config_path: str | None = None  # kind: the positional CONFIG as given
    overrides: list[str] = field(default_factory=list)  # kind: config's key=value settings as given (grid records them)


@dataclass(frozen=True)
class Command:
    name: str
    help: str  # one line, in `overtrain --help`
    config: str  # "module:Class" of its settings dataclass
    run: str  # "module:function": the stage's plain library function (typed arguments, no command line)
    call: Callable[[Callable[..., int], Invocation], int]  # how `run` is called: (run, parsed command line)
    kind: str | None = None  # config from configs/KIND/NAME.yaml or a path (the positional CONFIG)
    options: str | None = None  # kind only: "module:Class" of its own settings outside that file
    positionals: tuple[Positional, ...] = ()

    def classes(self) -> tuple[type, type | None]:
        """(config class, options class or None), imported now."""
        return resolve(self.config), resolve(self.options) if self.options else None


def resolve(name: str) -> Any:
    """``"module:attribute"`` imported (a stage is imported only for the command that runs it)."""
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)


CHECKPOINT = "step dir, checkpoints/ dir or run dir (its final checkpoint)"
MEMBER = "suite member: a local transformers directory, or hub repo (repo@rev)"
GRID_ACTION = Positional(
    "action",
    "plan: list jobs and compute; run: run them here; slurm: write sbatch files; "
    "submit: submit the unfinished jobs; status: each job's state",
    choices=("plan", "run", "slurm", "submit", "status"),
)

# name, help, config, run, call(run, invocation), [kind, options, positionals]
COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("prepare-data", "tokenize C4 (hub or local files) into OLMo memmap .npy files",
            "overtrain.data.c4.prepare:PrepareConfig", "overtrain.data.c4.prepare:run",
            lambda f, i: f(i.config)),
    Command("info", "parameters and training FLOPs per token of a model config",
            "overtrain.core.model:ModelSpec", "overtrain.train.info:run",
            lambda f, i: f(i.config, i.options.json),
            kind="models", options="overtrain.train.info:InfoOptions"),
    Command("coord-check", "muP coordinate check over widths (plot + JSON)",
            "overtrain.core.model:ModelSpec", "overtrain.train.coord_check:run",
            lambda f, i: f(i.config, i.options),
            kind="models", options="overtrain.train.coord_check:CoordCheckOptions"),
    Command("pretrain", "pre-train a model for a token budget (resumable; torchrun-ready)",
            "overtrain.train.pretrain_plan:PretrainConfig", "overtrain.train.pretrain:run",
            lambda f, i: f(i.config, i.config_path, i.options.overwrite),
            kind="pretrain", options="overtrain.train.pretrain:PretrainOptions"),
    Command("finetune", "fine-tune a checkpoint on a task, evaluate, append results",
            "overtrain.finetune.finetune_config:FinetuneConfig", "overtrain.finetune.finetune:run",
            lambda f, i: f(i.config, i.options.results),
            kind="finetune", options="overtrain.finetune.finetune:FinetuneOptions"),
    Command("sft", "instruction-tune a suite member (transformers model) on chat data",
            "overtrain.finetune.instruct.sft:SFTConfig", "overtrain.finetune.instruct.sft:run",
            lambda f, i: f(i.config, i.args["model"]),
            positionals=(Positional("model", MEMBER.replace("(repo@rev)", "(revision=, or repo@rev)")),)),
    Command("multimodal", "LLaVA two-stage multimodal tuning of a suite member + VQA",
            "overtrain.finetune.instruct.multimodal:MultimodalConfig", "overtrain.finetune.instruct.multimodal:run",
            lambda f, i: f(i.config, i.args["model"]),
            positionals=(Positional("model", MEMBER),)),
    Command("sweep", "learning-rate sweep for a (checkpoint, task): fixed and tuned LR",
            "overtrain.finetune.finetune_config:FinetuneConfig", "overtrain.finetune.sweep:run",
            lambda f, i: f(i.config),
            kind="finetune"),
    Command("evaluate", "C4 perplexity and task ID perplexity/accuracy of a checkpoint",
            "overtrain.evaluate.evaluator:EvaluateConfig", "overtrain.evaluate.evaluator:run",
            lambda f, i: f(i.config, i.args["checkpoint"]),
            positionals=(Positional("checkpoint", "a checkpoint step dir, checkpoints/ dir, run dir, or RUN@tokens=N"),)),
    Command("lm-eval", "lm-evaluation-harness tasks on a checkpoint, in-process (no export)",
            "overtrain.evaluate.lm_eval:LmEvalConfig", "overtrain.evaluate.lm_eval:run",
            lambda f, i: f(i.config, i.args["checkpoint"]),
            positionals=(Positional("checkpoint", "a checkpoint step dir, checkpoints/ dir, run dir, RUN@tokens=N, "
                                    "or a transformers model directory"),)),
    Command("alpaca-eval", "AlpacaEval win rates of a suite member (the alpaca-eval package)",
            "overtrain.evaluate.alpaca:AlpacaEvalConfig", "overtrain.evaluate.alpaca:run",
            lambda f, i: f(i.config, i.args["model"]),
            positionals=(Positional("model", "suite member: a transformers directory (e.g. an sft output) or hub repo@rev"),)),
    Command("perturb", "progressive sensitivity: C4 perplexity under Gaussian weight noise",
            "overtrain.evaluate.perturb:PerturbConfig", "overtrain.evaluate.perturb:run",
            lambda f, i: f(i.config, i.args["checkpoint"]),
            positionals=(Positional("checkpoint", CHECKPOINT),)),
    Command("theory", "section 4's mechanism: a linear network under the study's protocol",
            "overtrain.finetune.theory:TheoryConfig", "overtrain.finetune.theory:run",
            lambda f, i: f(i.config),
            kind="theory"),
    Command("report", "tables and plots from results.jsonl files",
            "overtrain.evaluate.report:ReportConfig", "overtrain.evaluate.report:run",
            lambda f, i: f(i.config, i.args["results"]),
            positionals=(Positional("results", "results.jsonl files, directories holding them, or glob patterns",
                                    many=True),)),
    Command("grid", "plan or run a whole study described by a grid YAML",
            "overtrain.launch.spec:GridSpec", "overtrain.launch.grid:run",
            lambda f, i: f(i.args["action"], i.config, i.config_path, i.overrides, i.options),
            kind="grids", options="overtrain.launch.grid:GridOptions", positionals=(GRID_ACTION,)),
    Command("export-hf", "export a checkpoint as a transformers OLMo model directory",
            "overtrain.train.hf_export:ExportConfig", "overtrain.train.hf_export:run",
            lambda f, i: f(i.config, i.args["checkpoint"], i.args["out_dir"]),
            positionals=(Positional("checkpoint", CHECKPOINT),
                         Positional("out_dir", "the transformers model directory to write"))),
    Command("import-hf", "import a transformers OLMo directory as an overtrain checkpoint",
            "overtrain.train.hf_import:ImportConfig", "overtrain.train.hf_import:run",
            lambda f, i: f(i.config, i.args["hf_dir"], i.args["out_dir"]),
            positionals=(Positional("hf_dir", "a transformers OLMo directory (config.json + safetensors)"),
                         Positional("out_dir", "run directory to write (holds checkpoints/step-*/)"))),
    Command("generate", "greedy or sampled generation from a checkpoint",
            "overtrain.evaluate.generate:GenerateConfig", "overtrain.evaluate.generate:run",
            lambda f, i: f(i.config, i.args["checkpoint"]),
            positionals=(Positional("checkpoint", CHECKPOINT),)),
)}  # fmt: skip


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: overtrain COMMAND [MAIN ...] [key=value ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {c.help}" for name, c in COMMANDS.items()]
    lines += ["", "Run 'overtrain COMMAND --help' for a command's keys (type, default, doc)."]
    return "\n".join(lines)


def build_parser(command: Command) -> argparse.ArgumentParser:
    """The positional arguments of ``command``, and its --help text with every key."""
    config, options = command.classes()
    parser = argparse.ArgumentParser(
        prog=f"overtrain {command.name}",
        description=command.help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,  # -h/--help is answered before argparse sees the arguments
    )
    for p in command.positionals:
        parser.add_argument(p.name, help=p.help, nargs="+" if p.many else None, choices=p.choices or None)
    sections = []
    if command.kind:
        known = sorted(p.stem for p in (CONFIG_ROOT / command.kind).glob("*.yaml"))
        shown = ", ".join(known[:4]) + (", ..." if len(known) > 4 else "")
        where = f"a name in configs/{command.kind}/ ({shown}) or a YAML path"
        parser.add_argument("config_path", metavar="CONFIG", help=where)
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
    if not value and following is not None and not following.startswith("-") and not is_setting(following):
        value = following
    is_bool = any(field_type(c, key) is bool for c in classes)
    hint = f"{key}={value or ('true' if is_bool else 'VALUE')}"
    return ConfigError(f"command line: '{token}': settings are key=value, not flags (did you mean '{hint}'?)")


def parse_command(command: Command, argv: list[str]) -> Invocation:
    """Positionals via argparse, then the key=value settings into config (and options)."""
    config, options = command.classes()
    parser = build_parser(command)
    positionals, settings = [], []
    for i, token in enumerate(argv):
        if token in ("-h", "--help"):
            parser.print_help()
            raise SystemExit(0)
        if token.startswith("-"):
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            raise _flag_error(token, nxt, [c for c in (config, options) if c is not None])
        (settings if is_setting(token) else positionals).append(token)
    parsed = vars(parser.parse_args(positionals))
    args = {p.name: parsed[p.name] for p in command.positionals}
    if not command.kind:  # every setting is config's
        return Invocation(load_config(config, None, settings), args=args)
    own = {f.name for f in dataclasses.fields(options)} if options else set()
    theirs = {f.name for f in dataclasses.fields(config)}
    for s in settings:
        if top_key(s) not in own and top_key(s) not in theirs:
            close = difflib.get_close_matches(top_key(s), sorted(own | theirs), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"command line: unknown key '{top_key(s)}'{hint}; 'overtrain {command.name} --help' lists the keys"
            )
    overrides = [s for s in settings if top_key(s) in theirs]
    return Invocation(
        config=load_config(config, parsed["config_path"], overrides, kind=command.kind),
        options=load_config(options, None, [s for s in settings if top_key(s) in own]) if options else None,
        args=args,
        config_path=parsed["config_path"],
        overrides=overrides,
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(__version__)
        return 0
    name = argv[0]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"overtrain: unknown command '{name}'{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    command = COMMANDS[name]
    try:
        try:
            invocation = parse_command(command, argv[1:])
        except SystemExit as e:  # --help (0), or argparse's usage error (2)
            return int(e.code or 0)
        return int(command.call(resolve(command.run), invocation) or 0)
    except OvertrainError as e:
        print(f"overtrain {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"overtrain {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
