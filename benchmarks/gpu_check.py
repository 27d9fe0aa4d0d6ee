"""``make gpu-check`` (issues 11, 20): check and measure everything CUDA-specific in one command.

    bash benchmarks/gpu_run.sh                   # the GPU machine: carried wheels, then this (README, "GPU check")
    bash benchmarks/gpu_run.sh --full            # the full measurement: 570 s (device call timeout_s 600)
    python3 benchmarks/gpu_check.py              # where overtrain's dependencies are installed
    python3 benchmarks/gpu_check.py --dry-run    # CPU, tiny shapes, seconds: every step wired (tests/test_gpu_check.py)

Budget: ``--budget-s`` (default 330; ``--full``: 570) counts from the start of the whole command
(``GPU_CHECK_T0``, set by gpu_run.sh before the wheels are installed), so that a first device
call of ``timeout_s: 360`` plus a machine start leaves device time for a second one. No step,
test or throughput row starts unless its estimate fits what is left (``--reserve-s`` kept back).

Steps, in order; each is guarded (a failure is recorded with its traceback and the rest still run):

0. preflight (``gpu_preflight.check``): every module imports (torch, numpy, protobuf, pyarrow,
   pandas, fsspec, olmo, mup, transformers, datasets, pytest, overtrain) and CUDA is available;
   else the check stops at once with exit status 3 and the fix in the message (and in $OUT);
1. environment: device, capability, memory, torch / CUDA / cuDNN / NCCL versions, Python, the
   versions of the project's dependencies and which miss a specifier of pyproject.toml or of a
   dependency (``gpu_wheels.version_problems``), git commit (when .git travelled), date;
2. matmul: the measured dense bf16 rate (8192^3, median of 10 after 3 warm-ups; dry run: fp32
   256^3): the achievable ceiling, beside the datasheet peak that MFU uses;
3. tests: ``pytest -v -m gpu tests/test_gpu.py`` in a subprocess under ``gpu_pytest_guard`` (a
   per-test timeout, ``--test-timeout-s``; a test hung inside C ends pytest, is recorded as
   ``hung``, and pytest starts again without it) within ``--tests-timeout-s``; each outcome and
   the ``-v`` output go into the results as they come (on CPU every test is skipped: the dry run
   checks they are collected and skipped);
4. pretrain: ``pretrain_throughput.measure_fitting`` at the paper's context (1024), one row at a
   time in the order the targets need them (``row_plan``): OLMo-15M's and OLMo-90M's
   ``model+loss`` compiled rows (what ``compile: true`` runs), then their compiled plain-GPT
   baselines, their eager rows, then OLMo-30M; a row starts only if its estimate
   (``row_estimate_s``: a cold compile at first, then the longest compile seen, plus its steps)
   fits the time left before the loader's and the sweep's share;
5. loader: ``pretrain_throughput.measure_loader``, global batch 256 x 1024 to the GPU;
6. sweep: ``sweep_throughput.measure_sweep``, OLMo-15M, K = 8 LRs stacked vs one after another;
7. sharding (issue 24, ``sharding_check``): the memory plan's estimate beside ``max_memory_allocated``
   (3 rows), then FSDP over one rank vs DDP tokens/s; its share (``min_s``) is kept back from every
   throughput row but the target rows, and each of its rows starts only if its estimate fits;
8. targets. The results, gpu-check-DATE-DEVICE.json and .md in ``--results-dir`` (default
   benchmarks/results/; the dry run: a new temporary directory, never benchmarks/results/) and in
   ``--copy-to`` (the device tool's $OUT), are rewritten atomically after every step, test and
   throughput row: a kill at the call's limit loses only what was running (its step says
   ``running``; SIGTERM: ``interrupted``, exit status 143). The tables are printed at the end.

Targets (issue 11), each from the best overtrain row: OLMo-90M >= 45% MFU (peak: the device's
dense bf16 figure, ``train.metrics_log.PEAK_BF16_FLOPS``, as pre-training logs MFU; a GPU missing
there uses the measured matmul rate); OLMo-15M >= 1M tokens/s; the loader >= 20x the fastest
training tokens/s (OLMo-15M's); the stacked sweep >= 3x one LR after another (K = 8); every
memory-plan row within 1 - ``core.memory.USABLE`` (10%); FSDP over one rank >= 0.95x DDP (issue 24).
Exit status 3 if the preflight failed, 1 if a step failed (a test failed, errored, hung or timed
out included); a target missed or a row skipped for time is a figure, not a failure.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def overtrain_import_dir() -> str:
    """A directory from which ``import overtrain`` finds this working tree (the repository root is
    the package): the one already on the path, else a symlink made in the temp directory."""
    try:
        import overtrain
    except ImportError:
        link_dir = Path(tempfile.gettempdir()) / f"overtrain-path-{os.getuid()}"
        link_dir.mkdir(exist_ok=True)
        link = link_dir / "overtrain"
        if link.is_symlink() and link.resolve() != REPO:
            link.unlink()
        if not link.exists():
            link.symlink_to(REPO, target_is_directory=True)
        sys.path.insert(0, str(link_dir))
        import overtrain
    where = Path(overtrain.__file__).parent
    if where.resolve() != REPO:
        raise SystemExit(f"gpu_check: `import overtrain` finds {where.resolve()}, not this working tree {REPO}")
    return str(where.parent)


IMPORT_DIR = overtrain_import_dir()
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from gpu_preflight import check as preflight_check  # noqa: E402
from gpu_preflight import report as preflight_report  # noqa: E402
from gpu_report import render_markdown, targets, text_tables  # noqa: E402
from gpu_wheels import version_problems, versions  # noqa: E402
from overtrain.core.atomic import atomic_write_bytes  # noqa: E402

DRY = {  # tiny shapes: seconds on 2 CPU cores
    "models": ["tiny"],
    "target_models": ["tiny"],
    "overrides": ["vocab_size=1000", "embedding_size=1024"],
    "seq_len": 32,
    "global_batch": 4,
    "micro_batch": 2,
    "steps": 1,
    "warmup": 1,
    "compile_backend": "eager",  # dynamo traces the graphs; inductor's CPU codegen would take minutes
    "cold_compile_s": 5.0,
    "loader": dict(seq_len=32, micro_batch=2, steps=2, tokens="256K"),
    "sweep_k": 2,
    "sweep": dict(steps=1, warmup=1, batch_size=2, seq_len=32),
    "matmul_n": 256,
    "min_s": {},  # seconds a step needs to be started
    "sharding": dict(
        memory=[("tiny", 2, False), ("tiny", 2, True)],  # (model, micro-batch, activation checkpointing)
        seq_len=32,
        steps=2,
        fsdp=dict(model="tiny", seq_len=32, micro_batch=2, accum=2, steps=2, warmup=1, repeats=1),
    ),
}
GPU = {
    "models": ["olmo-15m", "olmo-90m", "olmo-30m"],
    "target_models": ["olmo-15m", "olmo-90m"],  # tokens/s and MFU targets: their compiled rows first
    "overrides": [],
    "seq_len": 1024,
    "global_batch": 64,  # 2 micro-batches: accumulation included; the optimizer is <1% of a step
    "micro_batch": 32,
    "steps": 5,
    "warmup": 2,  # compilation in the first; the second shows nothing recompiles
    "compile_backend": "inductor",
    "cold_compile_s": 90.0,  # model+loss of a 9-layer OLMo, cold caches (issue 20 saw 45-120 s for 30M/90M)
    "loader": dict(seq_len=1024, micro_batch=32, steps=20, tokens="128M"),
    "sweep_k": 8,
    "sweep": dict(steps=10, warmup=2, batch_size=8, seq_len=256),
    "matmul_n": 8192,
    # loader + sweep: kept back from pretrain; sharding: kept back from every pretrain row but the target rows
    "min_s": {"tests": 30.0, "loader": 15.0, "sweep": 30.0, "sharding": 40.0},
    "sharding": dict(  # sharding_check: the memory plan vs max_memory_allocated, FSDP over one rank vs DDP (eager)
        memory=[("olmo-15m", 32, False), ("olmo-90m", 16, False), ("olmo-90m", 16, True)],
        seq_len=1024,
        steps=2,  # the second with the optimizer state in place
        fsdp=dict(model="olmo-15m", seq_len=1024, micro_batch=32, accum=2, steps=10, warmup=2, repeats=3),
    ),
}
IMPLS = ("overtrain", "baseline")
COMPILED = "model+loss"
ROW_OVERHEAD_S = 3.0  # building the model and optimizer, the batches, freeing memory after
MIN_MATMUL_SHARE = 0.05  # an unmeasured model's steps: at >= 5% of the measured matmul rate
BUDGET_S, FULL_BUDGET_S = 330.0, 570.0  # the device call's timeout_s: 360 / 600 (README, "GPU check")
TESTS_S, FULL_TESTS_S = 120.0, 240.0


class PreflightFailed(RuntimeError):
    """An import failed or CUDA is missing: gpu_preflight printed what and the fix; nothing else runs."""


class Interrupted(BaseException):
    """SIGTERM: recorded in the step that was running, the results written, exit status 143."""


def row_plan(models: list[str], target_models: list[str]) -> list[tuple[str, str, str]]:
    """(model, impl, compile) in the order the targets need them: the target models' compiled
    overtrain rows (the figures the targets read), their compiled baselines, their eager rows
    (overtrain, baseline), then every other model's eager and compiled rows."""
    first = [m for m in models if m in target_models]
    plan = [(m, impl, COMPILED) for impl in IMPLS for m in first]
    plan += [(m, impl, "no") for m in first for impl in IMPLS]
    plan += [(m, impl, c) for m in models if m not in first for c in ("no", COMPILED) for impl in IMPLS]
    return plan


def compile_seconds(row: dict) -> float:
    """What a measured compiled row spent compiling: its warm-up less that many timed steps."""
    return max(0.0, row["warmup_s"] - row["warmup_steps"] * row["step_s"])


def row_estimate_s(
    model: str, compiled: bool, flops_per_step: float, steps: int, rows: list[dict], matmul_flops, cold_compile_s
) -> float:
    """Seconds a throughput row will take: ``ROW_OVERHEAD_S`` + compilation + ``steps`` steps.

    A step: 1.5x the slowest step measured for this model (another implementation or compile
    mode), else its FLOPs at ``MIN_MATMUL_SHARE`` of the measured matmul rate. Compilation (all
    models have 9 layers, so similar graphs): 1.25x the longest seen so far, else
    ``cold_compile_s`` (the first compile also starts inductor's workers)."""
    seen = [r["step_s"] for r in rows if r["model"] == model and "step_s" in r]
    if seen:
        step = 1.5 * max(seen)
    else:
        step = flops_per_step / (MIN_MATMUL_SHARE * matmul_flops) if matmul_flops else 1.0
    compile_s = 0.0
    if compiled:
        seen_c = [compile_seconds(r) for r in rows if r.get("compile", "no") != "no" and "step_s" in r]
        compile_s = 1.25 * max(seen_c) if seen_c else cold_compile_s
    return ROW_OVERHEAD_S + compile_s + steps * step


class Check:
    """Runs the steps, keeps every result in ``self.out`` (the JSON file's content), rewritten
    after every step, test and row (``save``)."""

    def __init__(self, args):
        self.args = args
        self.dry = args.dry_run
        self.cfg = DRY if self.dry else GPU
        self.t0 = time.monotonic()
        started = float(os.environ.get("GPU_CHECK_T0") or time.time())  # gpu_run.sh's start
        self.startup_s = max(0.0, time.time() - started)
        self.deadline = self.t0 - self.startup_s + args.budget_s
        self.device = torch.device("cpu" if self.dry else "cuda")
        self.roles = {"mfu": self.cfg["target_models"][-1], "tps": self.cfg["target_models"][0]}
        self.out = {
            "kind": "gpu-check",
            "dry_run": self.dry,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": [Path(sys.executable).name, "benchmarks/gpu_check.py", *args.argv],
            "budget_s": args.budget_s,
            "startup_s": round(self.startup_s, 1),
            "steps": {},
        }
        self.paths = self.result_paths()
        self.last_save = 0.0
        self.write_paths = False  # until the preflight passes, results go to --copy-to ($OUT) alone

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def result_paths(self) -> list[Path]:
        if self.dry:
            device = "cpu"
        else:
            device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "unknown"
        slug = re.sub(r"[^A-Za-z0-9]+", "-", device).strip("-").lower()
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M")
        name = f"gpu-check-{stamp}-{slug}{'-dry-run' if self.dry else ''}"
        if self.args.results_dir:
            out_dir = Path(self.args.results_dir)
        elif self.dry:
            out_dir = Path(tempfile.mkdtemp(prefix="gpu-check-dry-run-"))
        else:
            out_dir = HERE / "results"
        return [out_dir / f"{name}.json", out_dir / f"{name}.md"]

    def save(self, every_s: float = 0.0) -> None:
        """Rewrite the JSON and Markdown files (atomically: a kill leaves the previous version),
        and their copies in ``--copy-to``; ``every_s``: not if the last save is more recent."""
        if time.monotonic() - self.last_save < every_s:
            return
        self.last_save = time.monotonic()
        self.out["wall_s"] = round(time.monotonic() - self.t0 + self.startup_s, 1)
        self.out["targets"] = targets(self.out, self.roles)
        try:
            data = [json.dumps(self.out, indent=2, default=str).encode() + b"\n", render_markdown(self.out).encode()]
            for path, blob in zip(self.paths, data):
                if self.write_paths:
                    atomic_write_bytes(path, blob)
                if self.args.copy_to:
                    atomic_write_bytes(Path(self.args.copy_to) / path.name, blob)
        except Exception:  # noqa: BLE001 - a results file that cannot be written must not stop the measurement
            traceback.print_exc()

    def step(self, name: str, fn) -> None:
        steps = self.out["steps"]
        need = self.cfg["min_s"].get(name, 0.0) + self.args.reserve_s
        if name in self.args.skip:
            steps[name] = {"status": "skipped", "reason": "--skip"}
        elif self.left() < need:
            steps[name] = {"status": "skipped", "reason": f"time budget: {self.left():.0f} s left, needs {need:.0f}"}
        if name in steps:
            self.save()
            return
        t = time.monotonic()
        print(f"\n== {name} ({self.left():.0f} s of the budget left)", flush=True)
        steps[name] = {"status": "running", "started_s": round(t - self.t0 + self.startup_s, 1)}
        self.save()
        try:
            self.out[name] = fn()
            status = {"status": "ok"}
        except Interrupted:
            steps[name] = {"status": "interrupted", "error": "SIGTERM", "seconds": round(time.monotonic() - t, 2)}
            raise
        except Exception as e:  # noqa: BLE001 - recorded; the other steps still run
            if not isinstance(e, PreflightFailed):  # its report is printed already
                traceback.print_exc()
            status = {
                "status": "failed",
                "error": f"{type(e).__name__}: {e}"[:2000],
                "traceback": traceback.format_exc(),
            }
        steps[name] = {**status, "seconds": round(time.monotonic() - t, 2)}
        self.save()

    # ----------------------------------------------------------------------------------- steps

    def preflight(self) -> dict:
        result = preflight_check(cuda=not self.dry)
        preflight_report(result)
        if result["failures"]:
            self.out["preflight"] = result
            raise PreflightFailed(
                "; ".join(f"{f['module']}: {f['error']} (fix: {f['fix']})" for f in result["failures"])
            )
        return result

    def environment(self) -> dict:
        env = {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "overtrain_import_dir": IMPORT_DIR,
            "git_commit": git_commit(),
            "packages": versions(),
            "version_problems": version_problems(),
        }
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            env.update(
                device=torch.cuda.get_device_name(self.device),
                capability=".".join(map(str, torch.cuda.get_device_capability(self.device))),
                multiprocessors=props.multi_processor_count,
                memory_gb=round(props.total_memory / 2**30, 1),
                cudnn=torch.backends.cudnn.version(),
                nccl=nccl_version(),
                devices=torch.cuda.device_count(),
            )
        else:
            env.update(device=f"CPU {platform.machine()} ({torch.get_num_threads()} torch threads)")
        from overtrain.train.metrics_log import peak_flops

        env["peak_flops"] = peak_flops(self.device)
        env["peak_source"] = "train.metrics_log.PEAK_BF16_FLOPS (dense bf16 datasheet)" if env["peak_flops"] else None
        return env

    def matmul(self) -> dict:
        n, dev = self.cfg["matmul_n"], self.device
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
        g = torch.Generator(device=dev).manual_seed(0)
        a, b = (torch.randn(n, n, device=dev, dtype=dtype, generator=g) for _ in range(2))  # never zeros
        times = []
        for i in range(13):  # 3 warm-ups, then 10 timed (device events on CUDA)
            if dev.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                a @ b
                end.record()
                end.synchronize()
                seconds = start.elapsed_time(end) / 1e3
            else:
                t = time.perf_counter()
                a @ b
                seconds = time.perf_counter() - t
            if i >= 3:
                times.append(seconds)
        seconds = sorted(times)[len(times) // 2]
        del a, b
        if dev.type == "cuda":
            torch.cuda.empty_cache()  # the tests run in their own process
        return {"n": n, "dtype": str(dtype).removeprefix("torch."), "median_s": seconds, "flops": 2 * n**3 / seconds}

    def tests(self) -> dict:
        a = self.args
        budget = min(a.tests_timeout_s, self.left() - a.reserve_s)
        live = self.out["tests"] = {}
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [IMPORT_DIR, str(HERE), os.environ.get("PYTHONPATH")]))
        run_pytest(
            ["-m", "gpu", "tests/test_gpu.py", "-rfEs"],
            REPO,
            env,
            deadline=time.monotonic() + budget,
            test_timeout=a.test_timeout_s,
            grace=a.test_grace_s,
            live=live,
            progress=lambda: self.save(every_s=2.0),
        )
        bad = [c for c in live["cases"] if c["outcome"] not in ("passed", "skipped")]
        if bad or live["collected"] == 0:
            summary = ", ".join(f"{c['name']} {c['outcome']}" for c in bad) or "no test collected"
            raise RuntimeError(f"pytest: {summary} (see tests.cases and tests.output)")
        return live

    def pretrain(self) -> dict:
        from overtrain.core.model_spec import flops_per_token, load_model_spec
        from pretrain_throughput import HEADER, Settings, format_row, measure_fitting

        c = self.cfg
        peak, source = self.out.get("environment", {}).get("peak_flops"), "datasheet dense bf16"
        matmul = self.out.get("matmul", {}).get("flops")
        if not peak:  # a CPU, or a GPU missing from PEAK_BF16_FLOPS: the measured matmul rate
            peak, source = matmul, "measured matmul"
        s = Settings(
            seq_len=c["seq_len"],
            global_batch=c["global_batch"],
            micro_batch=c["micro_batch"],
            steps=c["steps"],
            warmup=c["warmup"],
            precision="bf16" if self.device.type == "cuda" else "fp32",
            peak_flops=peak,
            compile_backend=c["compile_backend"],
        )
        specs = {m: load_model_spec(m, c["overrides"]) for m in c["models"]}
        rows = []
        live = self.out["pretrain"] = {
            "settings": {**s.__dict__, "accum": s.accum},
            "peak_flops": peak,
            "peak_source": source,
            "order": "row_plan: the target models' compiled rows first",
            "rows": rows,
        }
        later = sum(c["min_s"].get(n, 0.0) for n in ("loader", "sweep") if n not in self.args.skip)
        stop = self.deadline - self.args.reserve_s - later  # the loader and the sweep keep their share
        # the sharding step comes after the target rows (the target models' compiled rows), before the rest
        sharding_share = 0.0 if "sharding" in self.args.skip else c["min_s"].get("sharding", 0.0)
        tokens = s.accum * s.micro_batch * s.seq_len
        print(HEADER, flush=True)
        for model, impl, compiled in row_plan(c["models"], c["target_models"]):
            spec = specs[model]
            est = row_estimate_s(
                model,
                compiled != "no",
                flops_per_token(spec, s.seq_len) * tokens,
                s.warmup + s.steps,
                rows,
                matmul,
                c["cold_compile_s"],
            )
            target_row = model in c["target_models"] and impl == "overtrain" and compiled == COMPILED
            left = stop - (0.0 if target_row else sharding_share) - time.monotonic()
            if est > left:
                r = {
                    "model": model,
                    "impl": impl,
                    "compile": compiled,
                    "skipped": f"time: needs ~{est:.0f} s, {left:.0f} s left",
                }
            else:
                t = time.monotonic()
                r = measure_fitting(spec, impl, compiled, s, self.device)
                r["seconds"] = round(time.monotonic() - t, 1)
            r["estimate_s"] = round(est, 1)
            rows.append(r)
            pair = {
                x["impl"]: x for x in rows if x["model"] == model and x["compile"] == compiled and "tokens_per_s" in x
            }
            if len(pair) == 2:
                pair["overtrain"]["ratio_vs_baseline"] = (
                    pair["overtrain"]["tokens_per_s"] / pair["baseline"]["tokens_per_s"]
                )
            print(format_row(r), flush=True)
            self.save()
        torch._dynamo.reset()
        return live

    def loader(self) -> dict:
        from pretrain_throughput import measure_loader

        return measure_loader(self.device, **self.cfg["loader"])

    def sweep(self) -> dict:
        from overtrain.core.model_spec import load_model_spec
        from sweep_throughput import SweepSettings, measure_sweep

        spec = load_model_spec(self.cfg["models"][0], self.cfg["overrides"])
        return measure_sweep(spec, self.cfg["sweep_k"], SweepSettings(**self.cfg["sweep"]), self.device)

    def sharding(self) -> dict:
        """Issue 24's rows (``sharding_check``): the memory plan's estimate against the allocator's
        peak, then FSDP over one rank vs DDP; each row only if its estimate (the pretrain rows'
        measured steps of that model, as ``row_estimate_s``) fits the time left."""
        from overtrain.core.model_spec import flops_per_token, load_model_spec
        from sharding_check import fsdp_vs_ddp, memory_row

        c = self.cfg["sharding"]
        seen = self.out.get("pretrain", {}).get("rows", [])
        matmul = self.out.get("matmul", {}).get("flops")
        live = self.out["sharding"] = {"memory": [], "fsdp": None}

        def planned(model: str, seq_len: int, tokens: int, steps: int):
            spec = load_model_spec(model, self.cfg["overrides"])
            flops = flops_per_token(spec, seq_len) * tokens
            return spec, row_estimate_s(spec.name, False, flops, steps, seen, matmul, 0.0)

        def guarded(fn, what: dict, est: float) -> dict:
            left = self.deadline - self.args.reserve_s - time.monotonic()
            if est > left:
                return {**what, "skipped": f"time: needs ~{est:.0f} s, {left:.0f} s left", "estimate_s": round(est, 1)}
            try:
                row = fn()
            except Exception as e:  # noqa: BLE001 - recorded in the row; the next row still runs
                row = {**what, "error": f"{type(e).__name__}: {e}"[:2000], "traceback": traceback.format_exc(limit=-3)}
            finally:
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            return {**row, "estimate_s": round(est, 1)}

        for model, micro, checkpointing in c["memory"]:
            spec, est = planned(model, c["seq_len"], micro * c["seq_len"], c["steps"])
            what = {"model": spec.name, "micro_batch": micro, "checkpointing": checkpointing}
            row = guarded(
                lambda: memory_row(spec, micro, c["seq_len"], self.device, checkpointing, c["steps"]), what, est
            )
            live["memory"].append(row)
            print(f"memory plan: {row}", flush=True)
            self.save()
        f = c["fsdp"]
        tokens = f["accum"] * f["micro_batch"] * f["seq_len"]
        spec, est = planned(f["model"], f["seq_len"], tokens, f["warmup"] + f["steps"])
        est *= 2 * f["repeats"] * 1.25  # both modes, each repeat; FSDP's steps taken as 25% slower
        args = {k: f[k] for k in ("seq_len", "micro_batch", "accum", "steps", "warmup", "repeats")}
        live["fsdp"] = guarded(lambda: fsdp_vs_ddp(spec, self.device, **args), {"model": spec.name}, est)
        print(f"fsdp vs ddp: {live['fsdp']}", flush=True)
        return live

    # ------------------------------------------------------------------------------------ run

    def run(self) -> int:
        def on_term(signum, frame):
            raise Interrupted()

        old = signal.signal(signal.SIGTERM, on_term) if threading.current_thread() is threading.main_thread() else None
        try:
            return self.run_steps()
        except Interrupted:
            self.save()
            print(f"\ngpu_check: SIGTERM; results so far: {self.paths[0]}", file=sys.stderr, flush=True)
            return 143
        finally:
            if old is not None:
                signal.signal(signal.SIGTERM, old)

    def run_steps(self) -> int:
        if self.dry:
            torch.set_num_threads(1)  # tiny ops: a second thread costs more than it gives on 2 shared cores
        warnings.filterwarnings("ignore", message="There is a performance drop")  # CPU SDPA under vmap loops
        self.step("preflight", self.preflight)
        if self.out["steps"]["preflight"]["status"] == "failed":
            # Nothing measured: the file went where the device call returns it ($OUT) alone, not into the tree.
            print("\ngpu_check: the preflight failed (above: what and the fix); nothing else was run", file=sys.stderr)
            return 3
        self.write_paths = True
        self.save()
        print("results (rewritten after every step): " + ", ".join(str(p) for p in self.paths), flush=True)
        self.step("environment", self.environment)
        self.step("matmul", self.matmul)
        self.step("tests", self.tests)
        self.step("pretrain", self.pretrain)
        self.step("loader", self.loader)
        self.step("sweep", self.sweep)
        self.step("sharding", self.sharding)
        self.save()
        print("\n" + text_tables(self.out), flush=True)
        print("\nresults: " + ", ".join(str(p) for p in self.paths))
        return self.exit_status()

    def exit_status(self) -> int:
        failed = [n for n, s in self.out["steps"].items() if s["status"] == "failed"]
        return 1 if failed else 0


def run_pytest(
    args: list[str],
    cwd: Path,
    env: dict,
    deadline: float,
    test_timeout: float,
    grace: float,
    live: dict,
    progress=lambda: None,
    max_runs: int = 4,
    echo=sys.stdout,
) -> dict:
    """``python -m pytest -v ARGS`` under ``gpu_pytest_guard`` (``benchmarks/`` must be on the
    PYTHONPATH of ``env``), filling ``live`` as outcomes come and calling ``progress()`` after each
    change: ``cases`` (nodeid, name, outcome, seconds, message), the counts, ``output`` (the last
    20,000 characters of pytest's output, every run's), ``runs``.

    A test still running when pytest ends (the guard's hard stop: a hang in C) is ``hung``, and
    pytest starts again without the tests that finished and the hung one, while ``deadline``
    leaves a test's time (at most ``max_runs`` runs). At ``deadline`` pytest's process group is
    killed; the test running then is ``timeout``, those never started ``not run``."""
    done: dict[str, dict] = {}
    live.update(cases=[], output="", runs=[], collected=0, test_timeout_s=test_timeout)
    output = ""
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(max_runs):
            events = Path(tmp) / f"events-{run}.jsonl"
            cmd = [sys.executable, "-m", "pytest", *args, "-v", "-p", "gpu_pytest_guard", "-p", "no:cacheprovider"]
            cmd += [f"--gpu-events={events}", f"--gpu-test-timeout={test_timeout:g}", f"--gpu-test-grace={grace:g}"]
            cmd += [f"--deselect={n}" for n in done]
            print(
                "$", " ".join(cmd[1:]), f"(until {deadline - time.monotonic():.0f} s from now)", file=echo, flush=True
            )
            t = time.monotonic()
            proc = subprocess.Popen(
                cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
            )
            chunks: list[bytes] = []

            def read(stream=proc.stdout, chunks=chunks):
                for chunk in iter(lambda: stream.read1(65536), b""):
                    chunks.append(chunk)
                    echo.write(chunk.decode(errors="replace"))
                    echo.flush()

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            running, seen, timed_out, ended = None, 0, False, None
            while True:
                if ended is None and proc.poll() is not None:
                    ended = time.monotonic()
                # pytest has ended and its output is read; a compile worker it left holding the pipe
                # (pytest ended by the guard) would keep the reader waiting: its group goes after 3 s.
                exited = ended is not None and (not reader.is_alive() or time.monotonic() - ended > 3)
                if exited:
                    kill_group(proc.pid)
                lines = events.read_text().splitlines() if events.exists() else []
                for line in lines[seen:]:
                    if not line.endswith("}"):
                        break  # half-written: read again next time
                    e = json.loads(line)
                    seen += 1
                    if e["event"] == "start":
                        running = e["nodeid"]
                    else:
                        running = None
                        done[e["nodeid"]] = case(e["nodeid"], e["outcome"], e["seconds"], e["message"])
                run_output = b"".join(chunks).decode(errors="replace")
                m = re.search(r"collected (\d+) items?(?: / (\d+) deselected)?", run_output)
                if m and run == 0:
                    live["collected"] = int(m.group(1)) - int(m.group(2) or 0)
                live["output"] = (output + run_output)[-20000:]
                update_counts(live, done)
                progress()
                if exited:
                    break
                if time.monotonic() > deadline:
                    kill_group(proc.pid)  # pytest and any compile workers it started
                    proc.wait()
                    timed_out = True
                    break
                time.sleep(0.25)
            reader.join(timeout=5)
            output += (
                run_output
                + f"\n[gpu_check: pytest run {run + 1} ended: {'killed at the deadline' if timed_out else f'exit {proc.returncode}'}]\n"
            )
            live["runs"].append(
                {"returncode": None if timed_out else proc.returncode, "seconds": round(time.monotonic() - t, 1)}
            )
            if running:
                what, why = (
                    ("timeout", "killed at the tests step's deadline")
                    if timed_out
                    else (
                        "hung",
                        f"pytest ended inside it: the guard's hard stop at {test_timeout + grace:g} s (stacks in output)",
                    )
                )
                done[running] = case(running, what, time.monotonic() - t, why)
            live["output"] = output[-20000:]
            update_counts(live, done)
            progress()
            if timed_out or not running or deadline - time.monotonic() < min(test_timeout, 30.0):
                break
    return live


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:  # every process of the group has ended
        pass


def case(nodeid: str, outcome: str, seconds, message) -> dict:
    return {
        "nodeid": nodeid,
        "name": nodeid.split("::", 1)[-1],
        "outcome": outcome,
        "seconds": seconds or 0.0,
        "message": message,
    }


def update_counts(live: dict, done: dict) -> None:
    live["cases"] = list(done.values())
    for key, outcome in (
        ("passed", "passed"),
        ("failed", "failed"),
        ("errors", "error"),
        ("skipped", "skipped"),
        ("hung", "hung"),
        ("timeout", "timeout"),
    ):
        live[key] = sum(c["outcome"] == outcome for c in done.values())
    live["not_run"] = max(0, live["collected"] - len(done))
    live["seconds"] = round(sum(r["seconds"] for r in live["runs"]), 1)


def nccl_version() -> str | None:
    try:
        v = torch.cuda.nccl.version()
    except Exception:  # noqa: BLE001 - a build without nccl
        return None
    return ".".join(map(str, v)) if isinstance(v, tuple) else str(v)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None  # the GPU machine gets the working tree without .git
    return out.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: check that every step is wired")
    ap.add_argument(
        "--full",
        action="store_true",
        help=f"the full measurement: budget {FULL_BUDGET_S:g} s, tests {FULL_TESTS_S:g} s",
    )
    ap.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help=f"seconds for the whole command from GPU_CHECK_T0 (gpu_run.sh's start); default {BUDGET_S:g}, --full {FULL_BUDGET_S:g}",
    )
    ap.add_argument("--reserve-s", type=float, default=10.0, help="seconds of the budget no step starts into")
    ap.add_argument(
        "--tests-timeout-s",
        type=float,
        default=None,
        help=f"the tests step; default {TESTS_S:g}, --full {FULL_TESTS_S:g}",
    )
    ap.add_argument("--test-timeout-s", type=float, default=90.0, help="one CUDA test (gpu_pytest_guard)")
    ap.add_argument("--test-grace-s", type=float, default=15.0, help="then pytest is ended (a hang in C)")
    ap.add_argument(
        "--skip", default="", help="comma-separated steps to skip: tests, pretrain, loader, sweep, sharding"
    )
    ap.add_argument("--results-dir", default=None, help="default benchmarks/results/ (dry run: a temporary directory)")
    ap.add_argument("--copy-to", default=None, help="also write the JSON and Markdown files here (e.g. $OUT)")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.budget_s is None:
        args.budget_s = FULL_BUDGET_S if args.full else BUDGET_S
    if args.tests_timeout_s is None:
        args.tests_timeout_s = FULL_TESTS_S if args.full else TESTS_S
    threads = torch.get_num_threads()
    try:
        return Check(args).run()
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    raise SystemExit(main())
