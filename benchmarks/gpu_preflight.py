"""The first seconds of ``make gpu-check`` (issue 20): everything it needs imports, or it stops.

    python3 benchmarks/gpu_preflight.py          # on the GPU machine (gpu_check.py runs it first)
    python3 benchmarks/gpu_preflight.py --cpu    # anywhere: the imports alone, no CUDA device asked for

One import of each module the check needs (``MODULES``: torch, the image's packages it relies on,
the carried ones: mup, olmo, datasets, pytest; then overtrain from the working tree), then
``torch.cuda.is_available()``. It prints one line of versions (torch, CUDA, numpy, protobuf,
pyarrow, pandas, transformers, fsspec: what a VersionError or an ABI clash comes down to) and,
for each failure, what failed and the fix: a carried module missing means the wheels did not
travel or did not install (``make gpu-wheels`` here, ``carry: [".whl"]`` in the device call); a
protobuf ``VersionError`` means an older protobuf than the generated code shadows the carried one.
Exit status 3 on any failure, so the paid machine start is followed by seconds, not minutes, of a
check whose every step fails.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import sys
import time
import traceback

# Import order: torch first (everything else builds on it), olmo before datasets and transformers
# (its import chain reaches protobuf's generated code: the VersionError of issue 20).
MODULES = ("torch", "numpy", "google.protobuf", "pyarrow", "pandas", "fsspec", "olmo", "mup", "transformers")
MODULES += ("datasets", "pytest", "packaging", "overtrain")
CARRIED = {"mup", "olmo", "datasets"}  # by benchmarks/gpu_wheels.py (not on the GPU image)
VERSIONS = {  # shown name -> distribution
    "torch": "torch",
    "numpy": "numpy",
    "protobuf": "protobuf",
    "pyarrow": "pyarrow",
    "pandas": "pandas",
    "transformers": "transformers",
    "fsspec": "fsspec",
    "datasets": "datasets",
    "ai2-olmo": "ai2-olmo",
    "mup": "mup",
}
FIX_WHEELS = (
    "the carried wheels are missing or not installed: here (not on the GPU machine), run `make gpu-wheels` "
    'in the checkout the device tool sends, then call with carry: [".whl"] (benchmarks/README.md, "GPU check")'
)


def fix_for(module: str, e: BaseException) -> str:
    if type(e).__name__ == "VersionError" or "protobuf" in str(e).lower():
        where = sys.modules.get("google.protobuf")
        return (
            f"protobuf {version('protobuf')} ({getattr(where, '__file__', '?')}) is older than the generated code "
            "being imported: the carried protobuf must come first on PYTHONPATH (`make gpu-wheels` carries it, "
            "gpu_wheels.IMAGE_OVERRIDES; benchmarks/gpu_run.sh puts /tmp/site first)"
        )
    missing = getattr(e, "name", None) if isinstance(e, ModuleNotFoundError) else None
    if module in CARRIED or (missing and missing.split(".")[0] not in ("torch", "numpy")):
        return FIX_WHEELS
    if module == "overtrain":
        return "run from the repository root through benchmarks/gpu_run.sh (it puts the working tree on PYTHONPATH)"
    return "a package of the GPU image itself: see the traceback"


def version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def check(cuda: bool = True, modules: tuple[str, ...] = MODULES) -> dict:
    """Imports ``modules`` one by one; ``{"versions", "failures", "cuda_available", "seconds"}``.
    A failure is ``{"module", "error", "fix", "traceback"}``; the others are still tried."""
    t = time.monotonic()
    failures = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - each failure is reported with its fix
            failures.append(
                {
                    "module": name,
                    "error": f"{type(e).__name__}: {e}"[:1000],
                    "fix": fix_for(name, e),
                    "traceback": traceback.format_exc(limit=-4),
                }
            )
    versions = {shown: version(dist) for shown, dist in VERSIONS.items()}
    available = None
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        versions["CUDA"] = torch.version.cuda
        available = bool(torch.cuda.is_available())
        if cuda and not available:
            failures.append(
                {
                    "module": "torch.cuda",
                    "error": f"torch.cuda.is_available() is False (torch {torch.__version__} at {torch.__file__})",
                    "fix": "no GPU here, or a CPU build of torch comes first on the path; on CPU run "
                    "`benchmarks/gpu_check.py --dry-run`",
                    "traceback": "",
                }
            )
    return {
        "versions": versions,
        "failures": failures,
        "cuda_available": available,
        "python": sys.version.split()[0],
        "seconds": round(time.monotonic() - t, 2),
    }


def report(result: dict, file=sys.stdout) -> None:
    v = result["versions"]
    print(
        f"gpu_preflight: python {result['python']}; "
        + ", ".join(f"{k} {v.get(k)}" for k in VERSIONS if k in v)
        + f", CUDA {v.get('CUDA')} (available: {result['cuda_available']}); imports {result['seconds']:.1f} s",
        file=file,
        flush=True,
    )
    for f in result["failures"]:
        print(f"\ngpu_preflight: FAILED {f['module']}: {f['error']}\n  fix: {f['fix']}", file=sys.stderr, flush=True)
        if f["traceback"]:
            print("  " + f["traceback"].strip().replace("\n", "\n  "), file=sys.stderr, flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu", action="store_true", help="do not ask for a CUDA device")
    args = ap.parse_args(argv)
    result = check(cuda=not args.cpu)
    report(result)
    return 3 if result["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
