"""Small geometry helpers shared by structure builders (tests, benchmarks, workflows)."""

from __future__ import annotations

import math

import numpy as np


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly distributed proper rotation matrix (3x3, det +1).

    Shoemake's random unit quaternion. Draws exactly one ``rng.random(3)``, so callers' random
    streams do not depend on anything else.
    """
    u1, u2, u3 = rng.random(3)
    x = math.sqrt(1 - u1) * math.sin(2 * math.pi * u2)
    y = math.sqrt(1 - u1) * math.cos(2 * math.pi * u2)
    z = math.sqrt(u1) * math.sin(2 * math.pi * u3)
    w = math.sqrt(u1) * math.cos(2 * math.pi * u3)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
