"""Random-dot kinematograms: a motion-only task, where no single frame says anything about the class.

Each clip is a grid of `grid` x `grid` cells (`cell` pixels each) over `frames` frames. Some of the dots move
coherently, one cell per frame in one of 8 directions (the class), wrapping around the edges; the others
are drawn anew at random cells with random colours in every frame. A coherent dot keeps its colour, so the
only evidence of the class is which cell of the next frame holds the colour of a cell of this frame. Dot
positions are uniform in every frame, so one frame (or the set of frames without their order) carries no
label information, and the 8 directions form 4 time-reversed pairs (playing a clip backwards gives the
opposite direction). Dots are whole cells: with `cell` = the model's patch size a dot is one token.
"""

from __future__ import annotations

import numpy as np

DIRECTIONS: tuple[tuple[str, int, int], ...] = (
    ("right", 0, 1),
    ("left", 0, -1),
    ("down", 1, 0),
    ("up", -1, 0),
    ("down_right", 1, 1),
    ("up_left", -1, -1),
    ("down_left", 1, -1),
    ("up_right", -1, 1),
)
CLASSES: tuple[str, ...] = tuple(name for name, _, _ in DIRECTIONS)
# (forward, reversed): each direction and its opposite, which is the same clip played backwards.
REVERSED_PAIRS: tuple[tuple[int, int], ...] = ((0, 1), (2, 3), (4, 5), (6, 7))


def _colours(rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` saturated, bright RGB colours (uint8): one random hue each, far from the black background."""
    rgb = rng.integers(0, 256, size=(count, 3))
    rgb[np.arange(count), rng.integers(0, 3, size=count)] = 255  # at least one full channel: never dark
    return rgb.astype(np.uint8)


def render_dots(
    direction: int,
    rng: np.random.Generator,
    frames: int = 4,
    grid: int = 8,
    cell: int = 4,
    dots: int = 16,
    coherence: float = 0.5,
) -> np.ndarray:
    """One kinematogram of class `direction`: (frames, grid·cell, grid·cell, 3) uint8 RGB on black.

    `dots` cells are lit per frame; round(coherence · dots) of them move one cell per frame in the class
    direction (distinct start cells), the rest are redrawn every frame. Noise dots are drawn first, so a
    coherent dot is never hidden by one.
    """
    if not 0 <= direction < len(DIRECTIONS):
        raise ValueError(f"render_dots: direction={direction}; classes are 0..{len(DIRECTIONS) - 1}")
    _, dy, dx = DIRECTIONS[direction]
    moving = int(round(coherence * dots))
    cells = np.zeros((frames, grid, grid, 3), dtype=np.uint8)
    start = rng.choice(grid * grid, size=moving, replace=False)
    y0, x0 = np.divmod(start, grid)
    colour = _colours(rng, moving)
    for t in range(frames):
        noise = rng.choice(grid * grid, size=dots - moving, replace=False)
        ny, nx = np.divmod(noise, grid)
        cells[t, ny, nx] = _colours(rng, dots - moving)
        cells[t, (y0 + dy * t) % grid, (x0 + dx * t) % grid] = colour
    return np.repeat(np.repeat(cells, cell, axis=1), cell, axis=2)
