"""``make gpu-check`` (issue 11): check and measure everything CUDA-specific in one command.

    bash benchmarks/gpu_run.sh                   # the GPU machine: carried wheels, then this (README, "GPU check")
    python3 benchmarks/gpu_check.py              # where overtrain's dependencies are installed; <= --budget-s
    python3 benchmarks/gpu_check.py --dry-run    # CPU, tiny shapes, seconds: every step wired (tests/test_gpu_check.py)

Steps, in order; each is guarded (a failure is recorded with its traceback and the rest still run):

1. environment: device, capability, memory, torch / CUDA / cuDNN / NCCL versions, Python, the
   versions of the project's dependencies and which miss a specifier of pyproject.toml or of a
   dependency (``gpu_wheels.version_problems``), git commit (when .git travelled), date;
2. matmul: the measured dense bf16 rate (8192^3, median of 10 after 3 warm-ups; dry run: fp32
   256^3): the achievable ceiling, beside the datasheet peak that MFU uses;
3. tests: ``pytest -m gpu tests/test_gpu.py`` in a subprocess, outcomes and durations from its
   JUnit XML (on CPU every test is skipped: the dry run checks they are collected and skipped);
4. loader: ``pretrain_throughput.measure_loader``, global batch 256 x 1024 to the GPU;
5. sweep: ``sweep_throughput.measure_sweep``, OLMo-15M, K = 8 LRs stacked vs one after another;
6. pretrain: ``pretrain_throughput.measure_models`` at the paper's context (1024), eager then
   ``model+loss`` compiled (what ``compile: true`` runs), baseline and overtrain side by side,
   models in order of the targets (OLMo-15M, OLMo-90M, then OLMo-30M), until the budget ends;
7. targets; everything is written to ``--results-dir`` (default benchmarks/results/; the dry run:
   a new temporary directory, never benchmarks/results/) as gpu-check-DATE-DEVICE.json and .md,
   copied to ``--copy-to`` (the device tool's $OUT), and the tables are printed, targets last.

Targets (issue 11), each from the best overtrain row: OLMo-90M >= 45% MFU (peak: the device's
dense bf16 figure, ``train.tracking.PEAK_BF16_FLOPS``, as pre-training logs MFU; a GPU missing
there uses the measured matmul rate); OLMo-15M >= 1M tokens/s; the loader >= 20x the fastest
training tokens/s (OLMo-15M's); the stacked sweep >= 3x one LR after another (K = 8).
Exit status 1 if a step failed or a test failed or errored; a target missed is a figure, not a failure.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import xml.etree.ElementTree as ET
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
from gpu_report import render_markdown, targets, text_tables  # noqa: E402
from gpu_wheels import version_problems, versions  # noqa: E402

DRY = {  # tiny shapes: seconds on 2 CPU cores
    "models": ["tiny"],
    "overrides": ["vocab_size=1000", "embedding_size=1024"],
    "seq_len": 32,
    "global_batch": 4,
    "micro_batch": 2,
    "steps": 1,
    "warmup": 1,
    "compile_backend": "eager",  # dynamo traces the graphs; inductor's CPU codegen would take minutes
    "loader": dict(seq_len=32, micro_batch=2, steps=2, tokens="256K"),
    "sweep_k": 2,
    "sweep": dict(steps=1, warmup=1, batch_size=2, seq_len=32),
    "matmul_n": 256,
}
GPU = {
    "models": ["olmo-15m", "olmo-90m", "olmo-30m"],  # the targets' models first
    "overrides": [],
    "seq_len": 1024,
    "global_batch": 64,  # 2 micro-batches: accumulation included; the optimizer is <1% of a step
    "micro_batch": 32,
    "steps": 5,
    "warmup": 2,  # compilation in the first; the second shows nothing recompiles
    "compile_backend": "inductor",
    "loader": dict(seq_len=1024, micro_batch=32, steps=20, tokens="128M"),
    "sweep_k": 8,
    "sweep": dict(steps=10, warmup=2, batch_size=8, seq_len=256),
    "matmul_n": 8192,
}


class Check:
    """Runs the steps, keeps every result in ``self.out`` (the JSON file's content)."""

    def __init__(self, args):
        self.args = args
        self.dry = args.dry_run
        self.cfg = DRY if self.dry else GPU
        self.t0 = time.monotonic()
        self.deadline = self.t0 + args.budget_s
        self.device = torch.device("cpu" if self.dry else "cuda")
        self.out = {
            "kind": "gpu-check",
            "dry_run": self.dry,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": [Path(sys.executable).name, "benchmarks/gpu_check.py", *args.argv],
            "budget_s": args.budget_s,
            "steps": {},
        }

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def step(self, name: str, fn) -> None:
        if name in self.args.skip:
            self.out["steps"][name] = {"status": "skipped", "reason": "--skip"}
            return
        t = time.monotonic()
        print(f"\n== {name} ({self.left():.0f} s of the budget left)", flush=True)
        try:
            self.out[name] = fn()
            status = {"status": "ok"}
        except Exception as e:  # noqa: BLE001 - recorded; the other steps still run
            traceback.print_exc()
            status = {
                "status": "failed",
                "error": f"{type(e).__name__}: {e}"[:2000],
                "traceback": traceback.format_exc(),
            }
        self.out["steps"][name] = {**status, "seconds": round(time.monotonic() - t, 2)}

    # ----------------------------------------------------------------------------------- steps

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
        from overtrain.train.tracking import peak_flops

        env["peak_flops"] = peak_flops(self.device)
        env["peak_source"] = "train.tracking.PEAK_BF16_FLOPS (dense bf16 datasheet)" if env["peak_flops"] else None
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
        return {"n": n, "dtype": str(dtype).removeprefix("torch."), "median_s": seconds, "flops": 2 * n**3 / seconds}

    def tests(self) -> dict:
        timeout = min(self.args.tests_timeout_s, max(30.0, self.left() - self.args.reserve_s))
        with tempfile.TemporaryDirectory() as tmp:
            xml = Path(tmp) / "junit.xml"
            cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu.py", "-p", "no:cacheprovider"]
            cmd += ["-rfEs", "--durations=0", f"--junitxml={xml}"]
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [IMPORT_DIR, os.environ.get("PYTHONPATH")])))
            print("$", " ".join(cmd[1:]), f"(timeout {timeout:.0f} s)", flush=True)
            t = time.monotonic()
            proc = subprocess.Popen(
                cmd,
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            try:
                output, _ = proc.communicate(timeout=timeout)
                rc = proc.returncode
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # pytest and any compile workers it started
                output, _ = proc.communicate()
                rc = "timeout"
            print(output[-6000:], flush=True)
            result = {
                "returncode": rc,
                "seconds": time.monotonic() - t,
                "timeout_s": timeout,
                "output_tail": output[-20000:],
            }
            result.update(parse_junit(xml) if xml.is_file() else {"cases": []})
        if rc == "timeout" or (rc not in (0, 5) and not result["cases"]):
            raise RuntimeError(f"pytest: {rc} (see output_tail)")
        return result

    def loader(self) -> dict:
        from pretrain_throughput import measure_loader

        return measure_loader(self.device, **self.cfg["loader"])

    def sweep(self) -> dict:
        from overtrain.core.model import load_model_spec
        from sweep_throughput import SweepSettings, measure_sweep

        spec = load_model_spec(self.cfg["models"][0], self.cfg["overrides"])
        return measure_sweep(spec, self.cfg["sweep_k"], SweepSettings(**self.cfg["sweep"]), self.device)

    def pretrain(self) -> dict:
        from overtrain.core.model import load_model_spec
        from pretrain_throughput import HEADER, Settings, format_row, measure_models

        c = self.cfg
        peak, source = self.out.get("environment", {}).get("peak_flops"), "datasheet dense bf16"
        if not peak:  # a CPU, or a GPU missing from PEAK_BF16_FLOPS: the measured matmul rate
            peak, source = self.out.get("matmul", {}).get("flops"), "measured matmul"
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
        specs = [load_model_spec(m, c["overrides"]) for m in c["models"]]
        print(HEADER, flush=True)
        rows = measure_models(
            specs,
            ["no", "model+loss"],
            s,
            self.device,
            deadline=self.deadline - self.args.reserve_s,
            log=lambda r: print(format_row(r), flush=True),
            overtrain_first=True,  # the targets' figures before the baseline's, should the budget run out
        )
        torch._dynamo.reset()
        return {"settings": {**s.__dict__, "accum": s.accum}, "peak_flops": peak, "peak_source": source, "rows": rows}

    # ------------------------------------------------------------------------------------ run

    def run(self) -> int:
        if not self.dry and not torch.cuda.is_available():
            print("gpu_check: no CUDA device here; on CPU run `benchmarks/gpu_check.py --dry-run`", file=sys.stderr)
            return 2
        if self.dry:
            torch.set_num_threads(1)  # tiny ops: a second thread costs more than it gives on 2 shared cores
        warnings.filterwarnings("ignore", message="There is a performance drop")  # CPU SDPA under vmap loops
        self.step("environment", self.environment)
        self.step("matmul", self.matmul)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # the tests run in their own process
        self.step("tests", self.tests)
        self.step("loader", self.loader)
        self.step("sweep", self.sweep)
        self.step("pretrain", self.pretrain)
        roles = {"mfu": self.cfg["models"][min(1, len(self.cfg["models"]) - 1)], "tps": self.cfg["models"][0]}
        self.out["targets"] = targets(self.out, roles)
        self.out["wall_s"] = round(time.monotonic() - self.t0, 1)
        paths = self.write()
        print("\n" + text_tables(self.out), flush=True)
        print("\nresults: " + ", ".join(str(p) for p in paths))
        return self.exit_status()

    def exit_status(self) -> int:
        failed = [n for n, s in self.out["steps"].items() if s["status"] == "failed"]
        tests = self.out.get("tests", {})
        return 1 if failed or tests.get("failed") or tests.get("errors") else 0

    def write(self) -> list[Path]:
        device = self.out.get("environment", {}).get("device", "unknown") if self.device.type == "cuda" else "cpu"
        slug = re.sub(r"[^A-Za-z0-9]+", "-", str(device)).strip("-").lower()
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M")
        name = f"gpu-check-{stamp}-{slug}{'-dry-run' if self.dry else ''}"
        if self.args.results_dir:
            out_dir = Path(self.args.results_dir)
        elif self.dry:
            out_dir = Path(tempfile.mkdtemp(prefix="gpu-check-dry-run-"))
        else:
            out_dir = HERE / "results"
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = [out_dir / f"{name}.json", out_dir / f"{name}.md"]
        paths[0].write_text(json.dumps(self.out, indent=2, default=str) + "\n")
        paths[1].write_text(render_markdown(self.out))
        if self.args.copy_to:
            Path(self.args.copy_to).mkdir(parents=True, exist_ok=True)
            for p in paths:
                shutil.copy(p, Path(self.args.copy_to) / p.name)
        return paths


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def parse_junit(path: Path) -> dict:
    """Counts and per-test outcome, seconds and message from pytest's JUnit XML."""
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", None
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (el.get("message") or "") + ("\n" + el.text if el.text and tag != "skipped" else "")
                break
        cases.append(
            {
                "name": case.get("name"),
                "outcome": outcome,
                "seconds": float(case.get("time", 0)),
                "message": message and message[-4000:],
            }
        )
    count = lambda o: sum(c["outcome"] == o for c in cases)
    return {
        "collected": len(cases),
        "passed": count("passed"),
        "failed": count("failed"),
        "errors": count("error"),
        "skipped": count("skipped"),
        "cases": cases,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: check that every step is wired")
    ap.add_argument(
        "--budget-s", type=float, default=450.0, help="seconds for all steps (default 450: 8 min with set-up)"
    )
    ap.add_argument("--reserve-s", type=float, default=15.0, help="seconds kept for writing the results")
    ap.add_argument("--tests-timeout-s", type=float, default=200.0)
    ap.add_argument("--skip", default="", help="comma-separated steps to skip: tests, loader, sweep, pretrain")
    ap.add_argument("--results-dir", default=None, help="default benchmarks/results/ (dry run: a temporary directory)")
    ap.add_argument("--copy-to", default=None, help="also copy the JSON and Markdown files here (e.g. $OUT)")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    threads = torch.get_num_threads()
    try:
        return Check(args).run()
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    raise SystemExit(main())
