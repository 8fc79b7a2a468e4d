"""Generate ``data/calibration_prompts.txt``: calibration prompts written for this project.

Templates x vocabularies, seeded, deduplicated. Categories follow what text-to-image
benchmarks probe (attribute binding: color, shape, texture; 2D and 3D spatial relations;
counting; non-spatial relations; complex multi-object scenes) plus styles, text rendering,
people and landscapes, so the calibration activations cover the behaviours that matter.

    python -m ternaryflux.quant.make_prompts            # rewrites the data file
"""

from __future__ import annotations

import random
import re
from pathlib import Path

OUT = Path(__file__).with_name("data") / "calibration_prompts.txt"

COLORS = [
    "red",
    "blue",
    "green",
    "yellow",
    "purple",
    "orange",
    "black",
    "white",
    "pink",
    "brown",
    "teal",
    "golden",
    "silver",
    "crimson",
    "turquoise",
]
OBJECTS = [
    "apple",
    "teapot",
    "bicycle",
    "umbrella",
    "vase",
    "chair",
    "backpack",
    "clock",
    "guitar",
    "lamp",
    "book",
    "kite",
    "suitcase",
    "mug",
    "sneaker",
    "car",
    "boat",
    "balloon",
    "hat",
    "bench",
    "candle",
    "violin",
    "laptop",
    "bowl",
]
ANIMALS = [
    "cat",
    "dog",
    "fox",
    "owl",
    "horse",
    "rabbit",
    "parrot",
    "turtle",
    "elephant",
    "penguin",
    "deer",
    "frog",
    "tiger",
    "goldfish",
]
SHAPES = [
    "round",
    "square",
    "triangular",
    "hexagonal",
    "oval",
    "star-shaped",
    "cylindrical",
    "heart-shaped",
    "spiral",
    "cubic",
]
SHAPE_OBJECTS = [
    "table",
    "mirror",
    "cake",
    "window",
    "pillow",
    "rug",
    "clock",
    "cookie",
    "box",
    "tower",
    "pool",
    "lamp",
]
TEXTURES = [
    "wooden",
    "metallic",
    "glass",
    "furry",
    "leather",
    "marble",
    "knitted",
    "plastic",
    "ceramic",
    "rusty",
    "velvet",
    "stone",
    "paper",
]
REL_2D = ["to the left of", "to the right of", "above", "below", "next to", "on top of", "under"]
REL_3D = [
    "in front of",
    "behind",
    "hidden behind",
    "far behind",
    "partially occluding",
    "casting a shadow on",
]
NON_SPATIAL = [
    "{a} is chasing {b}",
    "{a} is looking at {b}",
    "{a} is playing with {b}",
    "{a} is sleeping beside {b}",
    "{a} is feeding {b}",
    "{a} is painting a portrait of {b}",
    "{a} is carrying {b}",
    "{a} is racing {b}",
]
NUMBERS = ["two", "three", "four", "five", "six", "seven", "eight"]
PLACES = [
    "on a kitchen table",
    "in a sunlit meadow",
    "on a busy city street",
    "in a cozy library",
    "on a sandy beach",
    "in a snowy forest",
    "on a wooden dock",
    "in a futuristic lab",
    "in a rainy alley",
    "on a mountain ridge",
    "inside a greenhouse",
    "in an empty museum hall",
    "on a rooftop at dusk",
    "in a medieval market",
]
STYLES = [
    "oil painting",
    "watercolor",
    "pencil sketch",
    "3D render",
    "studio photograph",
    "pixel art",
    "ukiyo-e woodblock print",
    "art nouveau poster",
    "cinematic film still",
    "isometric illustration",
    "charcoal drawing",
    "claymation",
    "low-poly render",
    "stained glass",
    "comic book panel",
    "long-exposure photograph",
    "macro photograph",
    "vintage polaroid",
]
LIGHTING = [
    "golden hour light",
    "soft overcast light",
    "neon lighting",
    "harsh noon sun",
    "candlelight",
    "moonlight",
    "studio softbox lighting",
    "volumetric fog",
]
SIGN_TEXTS = [
    "OPEN",
    "FRESH BREAD",
    "NO PARKING",
    "HELLO WORLD",
    "SALE 50%",
    "WELCOME HOME",
    "TERNARY",
    "GOOD MORNING",
    "EXIT",
    "CAFE",
    "DANGER",
    "LIBRARY",
    "QUIET PLEASE",
    "BOOK SHOP",
    "LOVE",
    "FLUX",
]
TEXT_CARRIERS = [
    'a neon sign that reads "{t}"',
    'a chalkboard with the words "{t}" written on it',
    'a wooden sign carved with "{t}"',
    'a coffee cup printed with "{t}"',
    'a banner saying "{t}" over a street',
    'a book cover titled "{t}"',
    'a t-shirt with "{t}" in bold letters',
    'graffiti spelling "{t}" on a brick wall',
]
PEOPLE = [
    "an elderly fisherman",
    "a young ballet dancer",
    "a chef in a white apron",
    "a street musician",
    "an astronaut",
    "a farmer at harvest",
    "a child with a paper boat",
    "a marathon runner",
    "a scientist in a lab coat",
    "a blacksmith",
    "a grandmother knitting",
    "a surfer",
    "a violinist",
    "a firefighter",
    "a beekeeper",
    "a calligrapher",
]
PEOPLE_DETAIL = [
    "close-up portrait, freckles and fine skin texture",
    "full-body shot, mid-motion",
    "laughing, candid moment",
    "looking out of a window, thoughtful",
    "hands in focus, working",
    "three-quarter view, dramatic rim light",
]
LANDSCAPES = [
    "a misty fjord at sunrise",
    "rolling lavender fields",
    "a desert canyon with red rock arches",
    "a volcanic island",
    "an alpine lake reflecting snowy peaks",
    "terraced rice fields after rain",
    "a frozen waterfall",
    "a bamboo forest path",
    "a coastline with sea stacks",
    "a savanna with acacia trees",
    "northern lights over a tundra",
    "a cherry blossom valley",
    "a glacier lagoon with icebergs",
    "sand dunes under a starry sky",
    "a tropical reef seen from above",
    "autumn birch forest",
]
WEATHER = [
    "at dawn",
    "under storm clouds",
    "in light snowfall",
    "at blue hour",
    "in thick fog",
    "on a clear summer day",
    "after rain",
]
COMPLEX = [
    "a crowded night market with lanterns, food stalls, a juggler and a dog stealing a dumpling",
    "a steampunk workshop full of brass gears, a sleeping cat and blueprints pinned to the wall",
    "a birthday party in a garden with a three-tier cake, balloons and children running",
    "a train station at rush hour with a clock tower, pigeons and a man reading a newspaper",
    "an underwater city with glass domes, schools of fish and a submarine docking",
    "a cluttered artist studio with canvases, paint tubes, a ladder and morning light",
    "a medieval feast hall with long tables, torches, a minstrel and a wolfhound",
    "a robot tending a rooftop vegetable garden while a drone delivers a package",
    "a rainy Tokyo crosswalk with umbrellas, reflections and glowing billboards",
    "a winter cabin interior with a fireplace, a sleeping dog, a chess game and snow outside",
]


def _make(rng: random.Random) -> list[str]:
    out: list[str] = []

    def pick(xs):
        return rng.choice(xs)

    for _ in range(140):  # color binding
        c1, c2 = rng.sample(COLORS, 2)
        o1, o2 = rng.sample(OBJECTS, 2)
        out.append(f"a {c1} {o1} and a {c2} {o2}, {pick(STYLES)}")
    for _ in range(90):  # shape
        out.append(f"a {pick(SHAPES)} {pick(SHAPE_OBJECTS)} {pick(PLACES)}, {pick(LIGHTING)}")
    for _ in range(90):  # texture
        t1, t2 = rng.sample(TEXTURES, 2)
        o1, o2 = rng.sample(OBJECTS, 2)
        out.append(f"a {t1} {o1} next to a {t2} {o2}, {pick(STYLES)}")
    for _ in range(100):  # 2D spatial
        a, b = rng.sample(OBJECTS + ANIMALS, 2)
        out.append(f"a {a} {pick(REL_2D)} a {b}, {pick(PLACES)}")
    for _ in range(80):  # 3D spatial
        a, b = rng.sample(OBJECTS + ANIMALS, 2)
        out.append(f"a {pick(COLORS)} {a} {pick(REL_3D)} a {b}, depth of field, {pick(LIGHTING)}")
    for _ in range(90):  # counting
        n = pick(NUMBERS)
        out.append(f"{n} {pick(ANIMALS + OBJECTS)}s {pick(PLACES)}, {pick(STYLES)}")
    for _ in range(80):  # non-spatial relations
        a, b = rng.sample(ANIMALS + PEOPLE, 2)
        a = a if a.startswith(("a ", "an ")) else f"a {a}"
        b = b if b.startswith(("a ", "an ")) else f"a {b}"
        out.append(pick(NON_SPATIAL).format(a=a, b=b) + f", {pick(PLACES)}")
    for _ in range(80):  # complex scenes
        out.append(f"{pick(COMPLEX)}, {pick(STYLES)}, {pick(LIGHTING)}")
    for _ in range(90):  # styles
        out.append(f"{pick(STYLES)} of a {pick(ANIMALS)} {pick(PLACES)}, {pick(LIGHTING)}")
    for _ in range(90):  # text rendering
        out.append(pick(TEXT_CARRIERS).format(t=pick(SIGN_TEXTS)) + f", {pick(PLACES)}, sharp lettering")
    for _ in range(90):  # people
        out.append(f"{pick(PEOPLE)}, {pick(PEOPLE_DETAIL)}, {pick(STYLES)}")
    for _ in range(90):  # landscapes
        out.append(f"{pick(LANDSCAPES)} {pick(WEATHER)}, {pick(STYLES)}")
    return out


def make_prompts(seed: int = 1158) -> list[str]:
    rng = random.Random(seed)
    seen: set[str] = set()
    prompts = []
    for p in _make(rng):
        p = re.sub(r"\b([Aa]) (?=[aeiouAEIOU])", r"\1n ", p)  # a orange -> an orange
        if p not in seen:
            seen.add(p)
            prompts.append(p)
    return prompts


def main() -> None:
    prompts = make_prompts()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    header = "# TernaryFLUX calibration prompts, generated by quant/make_prompts.py (do not edit by hand)\n"
    OUT.write_text(header + "\n".join(prompts) + "\n", encoding="utf-8")
    print(f"wrote {len(prompts)} prompts to {OUT}")


if __name__ == "__main__":
    main()
