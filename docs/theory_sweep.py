"""Where the linear-network study's claims hold: the demo config (configs/theory/demo.yaml) with one
setting changed at a time, each judged by the report's rule (evaluate/report/theory_part.py). Prints the
Markdown table of docs/theory.md, "Ranges of settings":

    PYTHONPATH=... python docs/theory_sweep.py > /tmp/sweep.md     (about a minute on 2 cores)
"""

from __future__ import annotations

import math
import sys
import tempfile

from overtrain.core.config import load_config
from overtrain.core.rows import load_rows
from overtrain.evaluate.report.theory_part import collect_theory, study_verdicts, theory_rows
from overtrain.finetune.theory import TheoryConfig, run_theory

SETTINGS = [
    [],
    ["tasks=[{name: aligned, theta_deg: 0}, {name: misaligned, theta_deg: 30}]"],
    ["tasks=[{name: aligned, theta_deg: 0}, {name: misaligned, theta_deg: 45}]"],
    ["tasks=[{name: aligned, theta_deg: 0}, {name: misaligned, theta_deg: 60}]"],
    ["tasks=[{name: aligned, theta_deg: 0}, {name: misaligned, theta_deg: 75}]"],
    ["alpha=1e-2"],
    ["alpha=1e-4"],
    ["finetune.steps=25"],
    ["finetune.steps=100"],
    ["finetune.steps=200"],
    ["finetune.steps=400"],
    ["shared=2"],
    ["shared=5"],
    ["singular_values=[1, 0.3, 0.1, 0.03, 0.01, 0.003]"],
    ["singular_values=[1, 0.8, 0.6, 0.4, 0.3, 0.2]"],
    ["pretrain.schedule=constant", "pretrain.lr=0.1"],
    ["pretrain.schedule=linear"],
    ["d=32", "width=32"],
    ["width=4"],
    ["data.samples=64", "data.val_samples=64", "data.label_noise=0.1"],
    ["data.samples=1000", "data.val_samples=200", "data.label_noise=0.1"],
]


def judge(overrides: list[str]) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(TheoryConfig, "configs/theory/demo.yaml", [f"results_dir={tmp}", *overrides], kind="theory")
        path, _, _ = run_theory(cfg, progress=False)
        (st,) = collect_theory(theory_rows(load_rows(path)))
    v = study_verdicts(st, 0.01)
    out = []
    for t in ("misaligned", "aligned"):
        shows, _ = v[t]
        c = st.tuned[(t, 0.0)]
        word = {True: "yes", False: "no", None: "cannot tell"}[shows]
        out.append(f"{word} (best T={int(c.x[c.best])}, {math.expm1(c.worse):+.0%})")
    reg = []
    for lam in sorted(lam for t, lam in st.tuned if t == "misaligned"):
        c = st.tuned[("misaligned", lam)]
        reg.append(f"{lam:g}: {int(c.x[c.best]) if c.best < len(c.x) - 1 else '-'}")
    ft0 = math.exp(st.tuned_ft[("misaligned", 0.0)].y[-1])
    ftmax = math.exp(st.tuned_ft[("misaligned", max(lam for _, lam in st.tuned))].y[-1])
    out += ["; ".join(reg), f"{ft0:.1e} -> {ftmax:.1e}"]
    return out


def main() -> int:
    print(
        "| change from demo.yaml | misaligned: turns? | aligned: turns? | inflection per l2 (misaligned) | FT loss at T max, l2 0 -> max |"
    )
    print("|---|---|---|---|---|")
    for s in SETTINGS:
        print(f"| {' '.join(s) or '(none: demo.yaml)'} | " + " | ".join(judge(s)) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
