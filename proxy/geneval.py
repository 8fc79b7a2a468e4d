"""A GenEval-style scorer for the proxy's images, with no learned detector.

Detection: every pixel is assigned the nearest of the palette colours or black (background),
and counts as background unless it is within ``max_dist`` (RGB distance) of that colour;
pixels of one colour are split into 4-connected components; components smaller than
``min_area`` pixels are noise. Each component is an object with a colour, a centroid and a shape:
bounding-box fill ratio > ``square_fill`` -> square; otherwise the mass is compared between the
lower and upper half of the box (an apex-up triangle has most of its area low) -> triangle, else
circle.

Checks, as GenEval's six tasks (each image passes or fails; a task's score is its pass rate, the
overall score the mean of the six tasks):

=================  ===============  ============================================================
task               prompts          passes when
=================  ===============  ============================================================
single_object      "a red circle"   an object of the shape is present
colors             "a red circle"   an object of the shape has the colour
two_object         pair             both shapes present (two of it when both objects share it)
color_attr         pair             two distinct objects match (colour, shape) of each phrase
counting           count            exactly n objects of the shape
position           position         the two (colour, shape) objects exist and their centroids
                                    are in the stated relation (> ``pos_margin`` px apart on
                                    that axis)
=================  ===============  ============================================================

Differences from GenEval, on purpose: objects are identified by (colour, shape) in the position
task (a shape alone is not unique here), and single_object/colors share their prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import permutations

import numpy as np

from .scenes import COLORS, Scene

TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
TASKS_OF_KIND = {
    "single": ("single_object", "colors"),
    "pair": ("two_object", "color_attr"),
    "count": ("counting",),
    "position": ("position",),
}


@dataclass(frozen=True)
class Detected:
    color: str
    shape: str
    cx: float
    cy: float
    area: int
    fill: float


def _palette() -> tuple[list[str], np.ndarray]:
    names = ["background"] + list(COLORS)
    rgb = np.array([(0.0, 0.0, 0.0)] + [COLORS[c] for c in COLORS], np.float32)
    return names, rgb


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, each as an array of (y, x) pixels."""
    h, w = mask.shape
    seen = np.zeros_like(mask, bool)
    out = []
    ys, xs = np.nonzero(mask)
    for y0, x0 in zip(ys.tolist(), xs.tolist()):
        if seen[y0, x0]:
            continue
        stack = [(y0, x0)]
        seen[y0, x0] = True
        pix = []
        while stack:
            y, x = stack.pop()
            pix.append((y, x))
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    stack.append((yy, xx))
        out.append(np.array(pix))
    return out


def classify_shape(pix: np.ndarray, square_fill: float = 0.88, tri_skew: float = 0.2) -> tuple[str, float]:
    y0, x0 = pix.min(0)
    y1, x1 = pix.max(0)
    bh, bw = y1 - y0 + 1, x1 - x0 + 1
    fill = len(pix) / float(bh * bw)
    if fill > square_fill:
        return "square", fill
    mid = (y0 + y1) / 2.0
    lower = float((pix[:, 0] > mid).sum())
    upper = float((pix[:, 0] < mid).sum())
    skew = (lower - upper) / max(1.0, lower + upper)
    return ("triangle" if skew > tri_skew else "circle"), fill


def detect(
    img: np.ndarray, min_area: int = 10, min_side: int = 4, min_fill: float = 0.35, max_dist: float = 0.4
) -> list[Detected]:
    """Objects in an ``[H, W, 3]`` (or ``[3, H, W]``) image with values in [0, 1]."""
    img = np.asarray(img, np.float32)
    if img.shape[0] == 3 and img.shape[-1] != 3:
        img = img.transpose(1, 2, 0)
    names, rgb = _palette()
    d = ((img[:, :, None, :] - rgb[None, None]) ** 2).sum(-1)
    label = d.argmin(-1)
    label[d.min(-1) > max_dist**2] = 0  # no clear palette colour: not part of an object
    out = []
    for ci in range(1, len(names)):
        for pix in _components(label == ci):
            if len(pix) < min_area:
                continue
            (y0, x0), (y1, x1) = pix.min(0), pix.max(0)
            shape, fill = classify_shape(pix)
            if min(y1 - y0, x1 - x0) + 1 < min_side or fill < min_fill:
                continue  # speckle, not a shape
            cy, cx = pix.mean(0) + 0.5
            out.append(Detected(names[ci], shape, float(cx), float(cy), len(pix), fill))
    return out


def _relation(a: Detected, b: Detected, rel: str, margin: float) -> bool:
    dx, dy = b.cx - a.cx, b.cy - a.cy
    if rel == "left of":
        return dx > margin
    if rel == "right of":
        return -dx > margin
    if rel == "above":
        return dy > margin
    if rel == "below":
        return -dy > margin
    raise ValueError(rel)


def check(scene: Scene, objs: Sequence[Detected], pos_margin: float = 1.0) -> dict[str, bool]:
    """Pass/fail of each task the scene's prompt belongs to."""
    a = scene.objs[0]
    if scene.kind == "single":
        return {
            "single_object": any(o.shape == a.shape for o in objs),
            "colors": any(o.shape == a.shape and o.color == a.color for o in objs),
        }
    if scene.kind == "count":
        return {"counting": sum(o.shape == a.shape for o in objs) == scene.count}
    b = scene.objs[1]

    def match_pair(ok_a, ok_b) -> list[tuple[Detected, Detected]]:
        return [(p, q) for p, q in permutations(objs, 2) if ok_a(p) and ok_b(q)]

    full_a = lambda o: o.shape == a.shape and o.color == a.color  # noqa: E731
    full_b = lambda o: o.shape == b.shape and o.color == b.color  # noqa: E731
    if scene.kind == "pair":
        return {
            "two_object": bool(match_pair(lambda o: o.shape == a.shape, lambda o: o.shape == b.shape)),
            "color_attr": bool(match_pair(full_a, full_b)),
        }
    if scene.kind == "position":
        rel = scene.relation or ""
        return {"position": any(_relation(p, q, rel, pos_margin) for p, q in match_pair(full_a, full_b))}
    raise ValueError(scene.kind)


def score_images(scenes: Sequence[Scene], images: Sequence[np.ndarray]) -> dict[str, float]:
    """Task scores (pass rates), ``overall`` (mean of the tasks present) and ``n`` per task."""
    passes: dict[str, list[bool]] = {t: [] for t in TASKS}
    for sc, img in zip(scenes, images, strict=True):
        for task, ok in check(sc, detect(img)).items():
            passes[task].append(ok)
    out: dict[str, float] = {}
    for t in TASKS:
        if passes[t]:
            out[t] = float(np.mean(passes[t]))
    out["overall"] = float(np.mean([out[t] for t in TASKS if t in out]))
    return out


_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def wrong_scene(scene: Scene) -> Scene:
    """A caption that the image of ``scene`` must fail: other shape(s) (single, pair), the other
    count (count), the opposite relation (position). For validating the scorer."""
    from dataclasses import replace

    from .scenes import SHAPES

    a = scene.objs[0]
    if scene.kind == "single":
        other = SHAPES[(SHAPES.index(a.shape) + 1) % len(SHAPES)]
        return replace(scene, objs=(replace(a, shape=other),))
    if scene.kind == "count":
        return replace(scene, count=5 - scene.count)  # 2 <-> 3
    if scene.kind == "position":
        return replace(scene, relation=_OPPOSITE[scene.relation or ""])
    b = scene.objs[1]
    unused = [s for s in SHAPES if s not in (a.shape, b.shape)][0]
    return replace(scene, objs=(replace(a, shape=unused), replace(b, shape=unused)))
