"""A deterministic, seeded generator of visual question answering that needs the image.

Two kinds of image, in one of two styles (`Style`): ``FLAT`` (96 x 96, the first reference VLM's) and
``PHOTO`` (336 x 336, the second's, with photographs behind the objects so that visual tokens are as
redundant and as textured as on real images):

* scenes: 1-4 objects (circle, square, triangle; red, green, blue, yellow — one colour per object; small
  or large) on a lightly tinted, noisy background (``FLAT``) or a lightened crop of one of scikit-image's
  photographs (``PHOTO``: objects from a few to many patches wide). Half the scenes cluster their objects in
  one region, so some crops are nearly empty while others are busy.
* documents: a white page of grey filler text (sparse or dense; ``PHOTO``: at several sizes) with one large
  word to read.

Questions (one per image, answer a single word): the colour of the only object of a shape, the shape of
the object of a colour, how many objects there are, whether one object is left/right of (or above/below)
another, and which large word is written on a page. Answers are balanced within each question type, so
a model that does not look at the image is near chance.

Every sample is a pure function of ``(split, index, style)``: the train, val and test splits draw from
disjoint seeds, and the generator also returns per-pixel labels (used only to pre-train probes of the
vision encoder).
"""

from __future__ import annotations

import hashlib
import importlib.util
import random
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tokenomy._validation import TokenomyError

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (215, 45, 45), "green": (45, 165, 65), "blue": (45, 85, 215), "yellow": (225, 195, 35)}
WORDS = ("cat", "dog", "sun", "tree", "fish", "bird", "car", "book")
SPLITS = ("train", "val", "test")
QUESTION_TYPES = ("colour", "shape", "count", "relation", "word")
# Per-pixel label channels (also the per-patch targets of encoder pre-training).
KIND_BACKGROUND, KIND_TEXT, KIND_WORD = 0, 4, 5  # 1..3 are the shapes, in SHAPES order


@dataclass(frozen=True)
class Style:
    """How images look: their side, the background, object radii and font sizes, in pixels."""

    size: int = 96
    photo: bool = False  # photographs behind the objects instead of a tinted plain background
    small: tuple[float, float] = (5, 7)  # radius range of small objects (large ones: `large`)
    large: tuple[float, float] = (9, 13)
    cluster: tuple[int, int] = (56, 72)  # side range of the region a clustered scene keeps to
    gap: int = 3  # free pixels between objects
    apart: int = 12  # how far apart two objects must be for a left/right or above/below question
    words: tuple[int, ...] = (20,)  # font sizes of the large word
    filler: tuple[int, ...] = (7,)  # font sizes of the filler text


FLAT = Style()
PHOTO = Style(size=336, photo=True, small=(12, 24), large=(30, 60), cluster=(190, 250), gap=10, apart=42,
              words=(36, 48, 64), filler=(10, 14, 18))
# scikit-image's bundled photographs (colour and grey; none is downloaded), read as files.
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png", "motorcycle_left.png",
          "retina.jpg", "rocket.jpg", "brick.png", "camera.png", "grass.png", "gravel.png", "moon.png", "coins.png")


@dataclass
class Sample:
    """One image with its question and answer; ``labels`` is ``(3, size, size)``: kind, colour, word."""

    image: Image.Image
    question: str
    answer: str
    qtype: str
    labels: np.ndarray
    count: int


def _rng(split: str, index: int) -> random.Random:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    digest = hashlib.sha256(f"tokenomy-vqa:{split}:{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


@cache
def _photograph(name: str) -> Image.Image:
    found = importlib.util.find_spec("skimage")
    if found is None or not found.submodule_search_locations:
        raise TokenomyError("photo backgrounds are scikit-image's photographs: pip install 'tokenomy[vision]'")
    with Image.open(Path(next(iter(found.submodule_search_locations))) / "data" / name) as image:
        return image.convert("RGB")


def _photo(rng: random.Random, size: int) -> np.ndarray:
    """A random square crop of a photograph, flipped or not, lightened towards white (objects stay visible)."""
    photo = _photograph(rng.choice(PHOTOS))
    side = int(min(photo.size) * rng.uniform(0.35, 1.0))
    x, y = rng.randint(0, photo.size[0] - side), rng.randint(0, photo.size[1] - side)
    crop = photo.crop((x, y, x + side, y + side)).resize((size, size), Image.BICUBIC)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    strength = rng.uniform(0.35, 0.6)
    return np.asarray(crop, dtype=np.float32) * strength + 255 * (1 - strength)


def _background(rng: random.Random, page: bool, style: Style) -> np.ndarray:
    size = style.size
    if page:
        base = np.full((size, size, 3), rng.randint(240, 255), dtype=np.float32)
    elif style.photo:
        base = _photo(rng, size)
    else:
        base = np.array([rng.randint(185, 250) for _ in range(3)], dtype=np.float32) * np.ones((size, size, 3))
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, 4, (size, size, 3))
    return np.clip(base + noise, 0, 255)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif shape == "square":
        s = r * 0.85
        draw.rectangle([x - s, y - s, x + s, y + s], fill=fill)
    else:
        draw.polygon([(x, y - r), (x - r, y + r * 0.8), (x + r, y + r * 0.8)], fill=fill)


def _scene(rng: random.Random, qtype: str, style: Style):
    n = rng.randint(1, 4) if qtype == "count" else rng.randint(2, 4)
    colours = rng.sample(list(COLOURS), n)
    region = (0, 0, style.size, style.size)
    if rng.random() < 0.5:  # cluster the objects: some crops stay nearly empty
        w = rng.randint(*style.cluster)
        x0, y0 = rng.randint(0, style.size - w), rng.randint(0, style.size - w)
        region = (x0, y0, x0 + w, y0 + w)
    objects = []
    for attempt in range(500):
        if len(objects) == n:
            break
        r = rng.uniform(*style.small) if rng.random() < 0.5 else rng.uniform(*style.large)
        x = rng.uniform(region[0] + r + 1, region[2] - r - 1)
        y = rng.uniform(region[1] + r + 1, region[3] - r - 1)
        if all((x - ox) ** 2 + (y - oy) ** 2 > (r + orad + style.gap) ** 2 for _, _, ox, oy, orad in objects):
            objects.append((rng.choice(SHAPES), colours[len(objects)], x, y, r))
    return objects


def _render_scene(rng: random.Random, objects, style: Style) -> tuple[Image.Image, np.ndarray]:
    size = style.size
    image = Image.fromarray(_background(rng, page=False, style=style).astype(np.uint8))
    kind = Image.new("L", (size, size), KIND_BACKGROUND)
    colour = Image.new("L", (size, size), 0)
    draw, draw_kind, draw_colour = ImageDraw.Draw(image), ImageDraw.Draw(kind), ImageDraw.Draw(colour)
    names = list(COLOURS)
    for shape, name, x, y, r in objects:
        rgb = tuple(int(np.clip(c + rng.randint(-15, 15), 0, 255)) for c in COLOURS[name])
        _draw_shape(draw, shape, x, y, r, rgb)
        _draw_shape(draw_kind, shape, x, y, r, 1 + SHAPES.index(shape))
        _draw_shape(draw_colour, shape, x, y, r, 1 + names.index(name))
    labels = np.stack([np.asarray(kind), np.asarray(colour), np.zeros((size, size), np.uint8)])
    return image, labels


def _pick(rng: random.Random, sizes: tuple[int, ...]) -> int:
    return sizes[0] if len(sizes) == 1 else rng.choice(sizes)


def _render_document(rng: random.Random, word: str, style: Style) -> tuple[Image.Image, np.ndarray]:
    size = style.size
    image = Image.fromarray(_background(rng, page=True, style=style).astype(np.uint8))
    kind = Image.new("L", (size, size), KIND_BACKGROUND)
    word_map = Image.new("L", (size, size), 0)
    draw, draw_kind, draw_word = ImageDraw.Draw(image), ImageDraw.Draw(kind), ImageDraw.Draw(word_map)
    big = _font(_pick(rng, style.words))
    text = word.upper()
    left, top, right, bottom = draw.textbbox((0, 0), text, font=big)
    wx = rng.randint(2, size - (right - left) - 2) - left
    wy = rng.randint(2, size - (bottom - top) - 2) - top
    box = (wx + left - 2, wy + top - 2, wx + right + 2, wy + bottom + 2)
    density = rng.choice((0.15, 0.5, 0.9))
    letters = "abcdefghijklmnopqrstuvwxyz"
    y = 3
    while y < size - 6:
        height = _pick(rng, style.filler)
        small = _font(height)
        x = 3
        while x < size - 12:
            token = "".join(rng.choice(letters) for _ in range(rng.randint(2, 5)))
            tw = draw.textlength(token, font=small)
            near_word = not (x + tw < box[0] - 2 or x > box[2] + 2 or y + height < box[1] - 2 or y > box[3] + 2)
            if rng.random() < density and not near_word and x + tw < size - 2:
                grey = rng.randint(90, 150)
                draw.text((x, y), token, fill=(grey, grey, grey), font=small)
                draw_kind.rectangle([x, y + 1, x + tw, y + height], fill=KIND_TEXT)
            x += int(tw) + 4 * height // 7
        y += height + 2
    draw.text((wx, wy), text, fill=(10, 10, 10), font=big)
    draw_kind.rectangle(box, fill=KIND_WORD)
    draw_word.rectangle(box, fill=1 + WORDS.index(word))
    labels = np.stack([np.asarray(kind), np.zeros((size, size), np.uint8), np.asarray(word_map)])
    return image, labels


def _relation(rng: random.Random, objects, apart: int):
    pairs = [(a, b) for a in objects for b in objects if a is not b]
    rng.shuffle(pairs)
    for a, b in pairs:
        dx, dy = a[2] - b[2], a[3] - b[3]
        if abs(dx) >= apart and abs(dx) > abs(dy):
            return f"Is the {a[1]} object left or right of the {b[1]} object?", "left" if dx < 0 else "right"
        if abs(dy) >= apart and abs(dy) > abs(dx):
            return f"Is the {a[1]} object above or below the {b[1]} object?", "above" if dy < 0 else "below"
    return None


def _question(rng: random.Random, qtype: str, objects, style: Style):
    if qtype == "count":
        return "How many objects are there?", str(len(objects))
    if qtype == "shape":
        obj = rng.choice(objects)
        return f"What shape is the {obj[1]} object?", obj[0]
    if qtype == "colour":
        unique = [o for o in objects if sum(p[0] == o[0] for p in objects) == 1]
        if not unique:
            return None
        obj = rng.choice(unique)
        return f"What colour is the {obj[0]}?", obj[1]
    return _relation(rng, objects, style.apart)


def sample(split: str, index: int, style: Style = FLAT) -> Sample:
    """The ``index``-th sample of ``split`` (``train``, ``val`` or ``test``) in ``style``; the same every time."""
    rng = _rng(split, index)
    qtype = QUESTION_TYPES[index % len(QUESTION_TYPES)]
    if qtype == "word":
        word = WORDS[rng.randrange(len(WORDS))]
        image, labels = _render_document(rng, word, style)
        return Sample(image, "What word is written in large letters?", word, qtype, labels, 0)
    while True:
        objects = _scene(rng, qtype, style)
        qa = _question(rng, qtype, objects, style)
        if qa is not None:
            break
    image, labels = _render_scene(rng, objects, style)
    return Sample(image, qa[0], qa[1], qtype, labels, len(objects))
