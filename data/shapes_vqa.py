"""Synthetic visual data with known answers: shapes of a colour and a count, drawn on the fly.

An image is ``count`` filled shapes of one ``shape`` and one ``colour`` on a white square, placed
without overlap (a shape per cell of a 2 x 2 grid, jittered within its cell):

    shape  in SHAPES  = circle, square, triangle
    colour in COLOURS = red, green, blue          (pure RGB primaries: a colour is one channel)
    count  in COUNTS  = one, two, three

so every fact has three values and a three-way question has chance 1/3. ``write_shapes_set`` writes
the images (PNG) and, in the LLaVA repository's JSON format (``finetune.instruct.multimodal`` reads it; a
list of ``{"id", "image", "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from":
"gpt", "value": ...}]}`` with ``image`` relative to the JSON's folder):

    captions.json   stage 1: the human turn is "<image>", the answer the caption
                    ("Three red circles.")
    instruct.json   stage 2: one conversation per image, the three questions in a random order
                    (the first turn holds ``<image>``), each answered with the fact's value
    vqa.jsonl       evaluation: ``{"image", "question", "answer", "choices"}`` per line (every
                    fact asked of every image)

Deterministic given ``seed`` (numpy's generator draws every fact and position).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..core.atomic import atomic_write_text

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (255, 0, 0), "green": (0, 160, 0), "blue": (0, 0, 255)}
COUNTS = ("one", "two", "three")
QUESTIONS = {
    "colour": ("What colour are the shapes?", tuple(COLOURS)),
    "shape": ("What shape is in the picture?", SHAPES),
    "count": ("How many shapes are there?", COUNTS),
}


def draw_shapes(rng: np.random.Generator, size: int = 32) -> tuple:
    """(PIL RGB image of ``size`` x ``size``, facts ``{"shape", "colour", "count"}``)."""
    from PIL import Image, ImageDraw  # heavy: only the drawing of the images needs Pillow

    shape, colour, k = SHAPES[rng.integers(3)], list(COLOURS)[rng.integers(3)], int(rng.integers(3)) + 1
    img = Image.new("RGB", (size, size), (255, 255, 255))
    pen = ImageDraw.Draw(img)
    cell = size // 2
    r = max(cell * 3 // 8, 2)  # the shape's half-width: it fits its cell with room to move
    for c in rng.permutation(4)[:k]:
        x0, y0 = (c % 2) * cell, (c // 2) * cell
        cx = x0 + r + int(rng.integers(0, cell - 2 * r + 1))
        cy = y0 + r + int(rng.integers(0, cell - 2 * r + 1))
        box = (cx - r, cy - r, cx + r, cy + r)
        fill = COLOURS[colour]
        if shape == "circle":
            pen.ellipse(box, fill=fill)
        elif shape == "square":
            pen.rectangle(box, fill=fill)
        else:
            pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img, {"shape": shape, "colour": colour, "count": COUNTS[k - 1]}


def caption(facts: dict) -> str:
    """'Three red circles.' / 'One blue square.'"""
    plural = "" if facts["count"] == "one" else "s"
    return f"{facts['count'].capitalize()} {facts['colour']} {facts['shape']}{plural}."


def write_shapes_set(out: str | Path, n: int, seed: int = 0, size: int = 32) -> dict[str, Path]:
    """``n`` images under ``out/images`` and the three files of the module doc; returns their paths."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    captions, instruct, vqa = [], [], []
    for i in range(n):
        img, facts = draw_shapes(rng, size)
        rel = f"images/{i:05d}.png"
        img.save(out / rel)
        captions.append(_record(f"{i}", rel, [("<image>", caption(facts))]))
        turns = [(QUESTIONS[f][0], facts[f]) for f in rng.permutation(list(QUESTIONS))]
        turns[0] = (f"<image>\n{turns[0][0]}", turns[0][1])
        instruct.append(_record(f"{i}", rel, turns))
        for f, (q, choices) in QUESTIONS.items():
            vqa.append({"image": rel, "question": q, "answer": facts[f], "choices": list(choices)})
    paths = {"captions": out / "captions.json", "instruct": out / "instruct.json", "vqa": out / "vqa.jsonl"}
    atomic_write_text(paths["captions"], json.dumps(captions, indent=1))
    atomic_write_text(paths["instruct"], json.dumps(instruct, indent=1))
    atomic_write_text(paths["vqa"], "".join(json.dumps(r) + "\n" for r in vqa))
    return paths


def _record(rid: str, image: str, turns: list[tuple[str, str]]) -> dict:
    """A LLaVA record: (human, gpt) turns about one image."""
    conversation = [{"from": who, "value": v} for h, a in turns for who, v in (("human", h), ("gpt", a))]
    return {"id": rid, "image": image, "conversations": conversation}
