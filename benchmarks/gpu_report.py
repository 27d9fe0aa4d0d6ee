"""The targets of ``make gpu-check`` and its results as text and Markdown (``benchmarks/gpu_check.py``).

Each target is read from the best overtrain row that was measured (``None``, "not measured", when
its step failed or ran out of budget): OLMo-90M MFU >= 45%; OLMo-15M >= 1M tokens/s; the loader
>= 20x the fastest training tokens/s; a stacked LR sweep >= 3x one LR after another; every memory-plan
row within its tolerance and FSDP over one rank >= 0.95x DDP's tokens/s (issue 24). A dry run
measures the tiny model in their place: its figures only show that the wiring works.
"""

from __future__ import annotations

TARGETS = (  # key, name, threshold, how to print a value
    ("mfu", "OLMo-90M MFU", 0.45, lambda v: f"{v:.1%}"),
    ("tps", "OLMo-15M tokens/s", 1e6, lambda v: f"{v / 1e6:.2f}M"),
    ("loader", "loader / fastest training", 20.0, lambda v: f"{v:.1f}x"),
    ("sweep", "stacked LR sweep / sequential", 3.0, lambda v: f"{v:.2f}x"),
    # issue 24 (sharding_check): every memory-plan row within its tolerance; FSDP over one rank < 5% slower
    ("memory", "memory plan within tolerance", 1.0, lambda v: f"{v:.0%} of rows"),
    ("fsdp", "FSDP / DDP tokens/s, one rank", 0.95, lambda v: f"{v:.3f}"),
)


def _best(rows: list[dict], model: str | None, key: str) -> dict | None:
    rows = [r for r in rows if r.get("impl") == "overtrain" and r.get(key) is not None]
    rows = [r for r in rows if model is None or r["model"] == model]
    return max(rows, key=lambda r: r[key], default=None)


def targets(out: dict, roles: dict[str, str]) -> list[dict]:
    """One entry per target: value, threshold, met (None if not measured) and where it came from.
    ``roles`` names the model measured for the MFU target (``mfu``) and the tokens/s one (``tps``)."""
    rows = out.get("pretrain", {}).get("rows", [])
    found = {}
    r = _best(rows, roles["mfu"], "mfu")
    found["mfu"] = (r and r["mfu"], r and f"{r['model']} overtrain, compile {r['compile']}")
    r = _best(rows, roles["tps"], "tokens_per_s")
    found["tps"] = (r and r["tokens_per_s"], r and f"{r['model']} overtrain, compile {r['compile']}")
    fastest, loader = _best(rows, None, "tokens_per_s"), out.get("loader")
    if fastest and loader:
        found["loader"] = (
            loader["tokens_per_s"] / fastest["tokens_per_s"],
            f"{loader['tokens_per_s'] / 1e6:.1f}M loader tokens/s vs {fastest['model']} compile {fastest['compile']}",
        )
    sweep = out.get("sweep")
    if sweep:
        found["sweep"] = (
            sweep["ratio"],
            f"{sweep['model']}, K = {sweep['k']}, {sweep['batch_size']} x {sweep['seq_len']}",
        )
    sharding = out.get("sharding") or {}
    measured = [r for r in sharding.get("memory", []) if "within" in r]
    if measured:
        worst = max(measured, key=lambda r: abs(r["ratio"] - 1))
        found["memory"] = (
            sum(r["within"] for r in measured) / len(measured),
            f"{len(measured)} rows; worst {worst['model']} micro {worst['micro_batch']}: measured / estimate "
            f"{worst['ratio']:.2f} (tolerance {worst['tolerance']:.0%})",
        )
    fsdp = sharding.get("fsdp") or {}
    if "fsdp_over_ddp" in fsdp:
        found["fsdp"] = (
            fsdp["fsdp_over_ddp"],
            f"{fsdp['model']}, {fsdp['accum']} x {fsdp['micro_batch']} x {fsdp['seq_len']} tokens, eager, "
            f"medians of {fsdp['repeats']}",
        )
    result = []
    for key, name, threshold, fmt in TARGETS:
        value, source = found.get(key, (None, None))
        result.append(
            {
                "key": key,
                "name": name,
                "threshold": threshold,
                "value": value,
                "shown": fmt(value) if value is not None else "not measured",
                "needed": ">= " + fmt(threshold),
                "met": None if value is None else bool(value >= threshold),
                "from": source or "",
            }
        )
    return result


def _met(t: dict) -> str:
    return {None: "-", True: "yes", False: "NO"}[t["met"]]


def _pretrain_cells(r: dict) -> list[str]:
    if "tokens_per_s" not in r:
        return [r["model"], r["impl"], r["compile"], r.get("skipped") or r.get("error", "?")] + [""] * 6
    return [
        r["model"],
        r["impl"],
        r["compile"],
        f"{r['tokens_per_s']:,.0f}",
        f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-",
        f"{r['step_s'] * 1e3:.1f}",
        str(r["micro_batch"]),
        f"{r['peak_mem_gb']:.1f}" if r.get("peak_mem_gb") is not None else "-",
        f"{r['warmup_s']:.1f}",
        f"{r['ratio_vs_baseline']:.2f}x" if "ratio_vs_baseline" in r else ("1.00x" if r["impl"] == "baseline" else "-"),
    ]


PRETRAIN_HEAD = [
    "model",
    "impl",
    "compile",
    "tokens/s",
    "MFU",
    "step ms",
    "micro",
    "peak GB",
    "warmup s",
    "vs baseline",
]


def _table(head: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip()
    return "\n".join([fmt(head)] + [fmt(r) for r in rows])


def _sections(out: dict, markdown: bool) -> list[tuple[str, str]]:
    """(title, body) pairs shared by the text summary and the Markdown file."""
    parts = []
    steps = [
        [n, s["status"], f"{s.get('seconds', 0):.1f}", (s.get("error") or s.get("reason") or "")[:200]]
        for n, s in out["steps"].items()
    ]
    parts.append(("Steps", _table(["step", "status", "seconds", "error"], steps, markdown)))
    tests = out.get("tests")
    if tests:
        keys = ("passed", "failed", "errors", "skipped", "hung", "timeout", "not_run")
        summary = ", ".join(f"{tests.get(k, 0)} {k.replace('_', ' ')}" for k in keys if k in tests)
        cases = [
            [
                c["name"],
                c["outcome"],
                f"{c['seconds']:.1f}",
                (c["message"] or "").strip().splitlines()[-1][:160] if (c["message"] or "").strip() else "",
            ]
            for c in tests["cases"]
        ]
        parts.append(
            (
                f"Tests (pytest -m gpu: {summary}; {tests.get('seconds', 0):.0f} s)",
                _table(["test", "outcome", "s", "message"], cases, markdown),
            )
        )
    pre = out.get("pretrain")
    if pre:
        st = pre["settings"]
        title = (
            f"Pre-training throughput ({st['accum']} x {st['micro_batch']} x {st['seq_len']} tokens per step, "
            f"{st['precision']}; MFU vs {pre['peak_flops'] / 1e12:.3g} TFLOP/s, {pre.get('peak_source')})"
            if pre.get("peak_flops")
            else f"{st['precision']}; no peak for MFU)"
        )
        parts.append((title, _table(PRETRAIN_HEAD, [_pretrain_cells(r) for r in pre["rows"]], markdown)))
    if out.get("loader"):
        ld = out["loader"]
        parts.append(
            (
                "Loader",
                f"{ld['tokens_per_s']:,.0f} tokens/s ({ld['source']}; global batch {ld['global_batch']} x {ld['seq_len']} to {ld['device']})",
            )
        )
    if out.get("sweep"):
        sw = out["sweep"]
        parts.append(
            (
                "Stacked LR sweep",
                f"{sw['model']}, K = {sw['k']}, {sw['batch_size']} x {sw['seq_len']} tokens per step, {sw['steps']} steps: "
                f"one after another {sw['sequential_tokens_per_s']:,.0f} tokens/s, stacked {sw['stacked_tokens_per_s']:,.0f} "
                f"({sw['ratio']:.2f}x); last-step losses differ by at most {sw['max_loss_diff']:.2e}",
            )
        )
    sharding = out.get("sharding") or {}
    if sharding.get("memory"):
        cells = [
            [
                r["model"],
                str(r["micro_batch"]),
                "yes" if r["checkpointing"] else "no",
                f"{r['measured_gb']:.2f}" if "ratio" in r else "",
                f"{r['estimate_gb']:.2f}" if "ratio" in r else "",
                f"{r['ratio']:.3f}" if "ratio" in r else r.get("skipped") or r.get("error", "?")[:120],
                ("yes" if r["within"] else "NO") if "ratio" in r else "",
            ]
            for r in sharding["memory"]
        ]
        head = ["model", "micro", "act. ckpt", "measured GB", "estimate GB", "ratio", "within"]
        parts.append(("Memory plan vs the allocator's peak (core.memory)", _table(head, cells, markdown)))
    f = sharding.get("fsdp")
    if f:
        text = (
            f"{f['model']}: ddp {f['ddp_tokens_per_s']:,.0f} tokens/s, fsdp {f['fsdp_tokens_per_s']:,.0f} tokens/s, "
            f"fsdp / ddp {f['fsdp_over_ddp']:.3f} (medians of {f['repeats']})"
            if "fsdp_over_ddp" in f
            else (f.get("skipped") or f.get("error", "?"))
        )
        parts.append(("FSDP over one rank vs DDP", text))
    if out.get("matmul"):
        mm = out["matmul"]
        peak = out.get("environment", {}).get("peak_flops")
        share = f", {mm['flops'] / peak:.0%} of the {peak / 1e12:.0f} TFLOP/s MFU is measured against" if peak else ""
        parts.append(
            ("Matmul", f"{mm['n']}^3 {mm['dtype']}: {mm['flops'] / 1e12:.3g} TFLOP/s measured (median of 10){share}")
        )
    rows = [[t["name"], t["needed"], t["shown"], _met(t), t["from"]] for t in out.get("targets", [])]
    title = "Targets" + (" (dry run: tiny shapes on CPU, the figures mean nothing)" if out["dry_run"] else "")
    parts.append((title, _table(["target", "needed", "measured", "met", "from"], rows, markdown)))
    return parts


def text_tables(out: dict) -> str:
    return "\n\n".join(f"{title}\n{body}" for title, body in _sections(out, markdown=False))


def render_markdown(out: dict) -> str:
    env = out.get("environment", {})
    lines = [f"# gpu-check {out['date']}{' (dry run)' if out['dry_run'] else ''}", ""]
    for key in ("device", "capability", "memory_gb", "torch", "cuda", "cudnn", "nccl", "python", "git_commit"):
        if env.get(key) is not None:
            lines.append(f"- {key}: {env[key]}")
    lines.append(
        f"- command: `{' '.join(out['command'])}`; wall {out.get('wall_s', '?')} s of a {out['budget_s']:.0f} s budget"
    )
    packages = env.get("packages") or {}
    shown = [f"{n} {packages[n]}" for n in ("numpy", "transformers", "tokenizers", "ai2-olmo", "mup") if n in packages]
    if shown:
        lines.append("- packages: " + ", ".join(shown) + " (all in the JSON file)")
    problems = env.get("version_problems") or []
    if problems:
        lines.append("- dependency versions outside a declared specifier: " + "; ".join(problems))
    lines.append("")
    sections = _sections(out, markdown=True)
    for title, body in sections[-1:] + sections[:-1]:  # targets first in the file
        lines += [f"## {title}", "", body, ""]
    failed = {n: s for n, s in out["steps"].items() if s["status"] == "failed"}
    for name, s in failed.items():
        lines += [f"## {name} failed", "", "```", s.get("traceback", s.get("error", "")).strip()[-4000:], "```", ""]
    return "\n".join(lines)
