"""Small geometry helpers shared by structure builders (tests, benchmarks, workflows)."""

from __future__ import annotations

import numpy as np


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly distributed proper rotation matrix (3x3, det +1).

    Draws exactly one ``rng.normal(size=(3, 3))``, so callers' random streams do not depend on
    anything else.
    """
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q
