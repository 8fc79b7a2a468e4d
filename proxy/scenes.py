"""Procedurally rendered multi-object scenes and their captions (the proxy's training data).

A scene is 1-3 flat-coloured shapes (circle, square, triangle) in one of four colours on a black
background, rendered at ``size`` x ``size`` RGB (default 32). Captions come from a small grammar
with GenEval's four prompt forms:

    single    "a [small|big] red circle"
    pair      "a red circle and a [small|big] blue square"
    count     "two|three [small|big] green triangles"
    position  "a red circle left of|right of|above|below a blue square"

Every caption is a :class:`Scene` (a list of objects plus the relation the caption asserts); the
renderer draws any scene that fits the caption, with random sizes and positions. Objects never
touch (at least ``GAP`` pixels apart), so connected components recover them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.15, 0.35, 1.0),
    "yellow": (1.0, 1.0, 0.0),
}
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("left of", "right of", "above", "below")
NUMBERS = {1: "a", 2: "two", 3: "three"}
SIZE_WORDS = ("small", "big")
SIZE_RANGE = {"small": (7, 8), "big": (11, 12), None: (7, 12)}
GAP = 2
KINDS = ("single", "pair", "count", "position")


@dataclass(frozen=True)
class Obj:
    color: str
    shape: str
    size_word: str | None = None


@dataclass(frozen=True)
class Scene:
    """What a caption asks for: ``kind``, the objects (``count`` copies of ``objs[0]`` for
    "count"), and for "position" the relation of ``objs[0]`` to ``objs[1]``."""

    kind: str
    objs: tuple[Obj, ...]
    count: int = 1
    relation: str | None = None

    def caption(self) -> str:
        def np_(o: Obj, article: str = "a") -> str:
            words = [article] + ([o.size_word] if o.size_word else []) + [o.color, o.shape]
            return " ".join(words)

        if self.kind == "single":
            return np_(self.objs[0])
        if self.kind == "pair":
            return f"{np_(self.objs[0])} and {np_(self.objs[1])}"
        if self.kind == "count":
            o = self.objs[0]
            words = [NUMBERS[self.count]] + ([o.size_word] if o.size_word else []) + [o.color, o.shape + "s"]
            return " ".join(words)
        if self.kind == "position":
            return f"{np_(self.objs[0])} {self.relation} {np_(self.objs[1])}"
        raise ValueError(self.kind)

    def instances(self) -> list[Obj]:
        """The objects to draw (count copies expanded)."""
        return [self.objs[0]] * self.count if self.kind == "count" else list(self.objs)


def random_obj(rng: random.Random, p_size_word: float = 0.4) -> Obj:
    sw = rng.choice(SIZE_WORDS) if rng.random() < p_size_word else None
    return Obj(rng.choice(list(COLORS)), rng.choice(SHAPES), sw)


def random_scene(rng: random.Random, kind: str | None = None) -> Scene:
    kind = kind or rng.choice(KINDS)
    if kind == "single":
        return Scene("single", (random_obj(rng),))
    if kind == "count":
        return Scene("count", (random_obj(rng),), count=rng.choice((2, 3)))
    while True:
        a, b = random_obj(rng), random_obj(rng)
        if (a.color, a.shape) != (b.color, b.shape):
            break
    if kind == "pair":
        return Scene("pair", (a, b))
    return Scene("position", (a, b), relation=rng.choice(RELATIONS))


# ----------------------------------------------------------------------------- rendering


@dataclass
class Placed:
    obj: Obj
    x0: int
    y0: int
    side: int

    @property
    def center(self) -> tuple[float, float]:
        return self.x0 + self.side / 2, self.y0 + self.side / 2


def shape_mask(shape: str, side: int) -> np.ndarray:
    """Boolean ``[side, side]`` mask of a shape filling its box (triangle: apex up)."""
    yy, xx = np.mgrid[0:side, 0:side] + 0.5
    if shape == "square":
        return np.ones((side, side), bool)
    if shape == "circle":
        r = side / 2
        return (xx - r) ** 2 + (yy - r) ** 2 <= r * r
    if shape == "triangle":
        # apex at top centre, base along the bottom row
        half = (yy / side) * (side / 2)
        return np.abs(xx - side / 2) <= half
    raise ValueError(shape)


def _relation_ok(a: Placed, b: Placed, rel: str, margin: float = 2.0) -> bool:
    (ax, ay), (bx, by) = a.center, b.center
    if rel == "left of":
        return ax + margin < bx and abs(ax - bx) > abs(ay - by)
    if rel == "right of":
        return ax > bx + margin and abs(ax - bx) > abs(ay - by)
    if rel == "above":
        return ay + margin < by and abs(ay - by) > abs(ax - bx)
    if rel == "below":
        return ay > by + margin and abs(ay - by) > abs(ax - bx)
    raise ValueError(rel)


def layout(scene: Scene, rng: random.Random, size: int = 32, tries: int = 2000) -> list[Placed]:
    """Random non-touching placement of the scene's objects satisfying its relation."""
    objs = scene.instances()
    for _ in range(tries):
        placed: list[Placed] = []
        ok = True
        for o in objs:
            lo, hi = SIZE_RANGE[o.size_word]
            side = rng.randint(lo, hi)
            p = Placed(o, rng.randint(1, size - side - 1), rng.randint(1, size - side - 1), side)
            for q in placed:
                if not (
                    p.x0 >= q.x0 + q.side + GAP
                    or q.x0 >= p.x0 + p.side + GAP
                    or p.y0 >= q.y0 + q.side + GAP
                    or q.y0 >= p.y0 + p.side + GAP
                ):
                    ok = False
                    break
            if not ok:
                break
            placed.append(p)
        if ok and (scene.kind != "position" or _relation_ok(placed[0], placed[1], scene.relation or "")):
            return placed
    raise RuntimeError(f"could not lay out {scene.caption()!r} on {size}px")


def render(placed: list[Placed], size: int = 32) -> np.ndarray:
    """``[size, size, 3]`` float32 image in [0, 1]."""
    img = np.zeros((size, size, 3), np.float32)
    for p in placed:
        m = shape_mask(p.obj.shape, p.side)
        img[p.y0 : p.y0 + p.side, p.x0 : p.x0 + p.side][m] = COLORS[p.obj.color]
    return img


def render_scene(scene: Scene, rng: random.Random, size: int = 32) -> np.ndarray:
    return render(layout(scene, rng, size), size)


@dataclass
class CaptionSet:
    """A fixed list of (kind, scene) prompts; ``captions`` in the same order."""

    scenes: list[Scene] = field(default_factory=list)

    @property
    def captions(self) -> list[str]:
        return [s.caption() for s in self.scenes]


def heldout_scenes(per_kind: int = 12, seed: int = 1234) -> list[Scene]:
    """The fixed held-out evaluation prompts: ``per_kind`` distinct captions of each kind
    (the training stream never contains these captions verbatim)."""
    rng = random.Random(seed)
    out: list[Scene] = []
    for kind in KINDS:
        seen: set[str] = set()
        while len(seen) < per_kind:
            s = random_scene(rng, kind)
            if s.caption() not in seen:
                seen.add(s.caption())
                out.append(s)
    return out


def heldout_captions(per_kind: int = 12, seed: int = 1234) -> set[str]:
    return {s.caption() for s in heldout_scenes(per_kind, seed)}
