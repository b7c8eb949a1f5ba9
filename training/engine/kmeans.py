"""k-means with k-means++ seeding (numpy, deterministic for a seed) and the outliers it implies."""

from __future__ import annotations

import numpy as np


def _sq_dist(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    d = (x * x).sum(1)[:, None] - 2.0 * x @ centers.T + (centers * centers).sum(1)[None, :]
    return np.maximum(d, 0.0)


def kmeans_pp(x: np.ndarray, k: int, *, seed: int = 0, iters: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(centres (k, D), assignment (N,)) of Lloyd's k-means from k-means++ seeds; k is capped at N."""
    x = np.asarray(x, np.float64)
    n = len(x)
    if n == 0:
        raise ValueError("k-means needs at least one point")
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    centers = [x[int(rng.integers(n))]]
    closest = _sq_dist(x, centers[0][None])[:, 0]
    for _ in range(1, k):
        total = closest.sum()
        pick = int(rng.choice(n, p=closest / total)) if total > 0 else int(rng.integers(n))
        centers.append(x[pick])
        closest = np.minimum(closest, _sq_dist(x, x[pick][None])[:, 0])
    c = np.stack(centers)
    assign = np.zeros(n, np.int64)
    for _ in range(iters):
        assign = _sq_dist(x, c).argmin(1)
        new = np.stack([x[assign == j].mean(0) if np.any(assign == j) else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return c, _sq_dist(x, c).argmin(1)


def outliers(x: np.ndarray, k: int, fraction: float, *, seed: int = 0) -> np.ndarray:
    """Boolean mask of the `fraction` of points farthest from their k-means centre (ties: the earlier point)."""
    n = len(x)
    count = int(np.floor(n * fraction))
    mask = np.zeros(n, bool)
    if count == 0:
        return mask
    centers, assign = kmeans_pp(x, k, seed=seed)
    dist = np.sqrt(((np.asarray(x, np.float64) - centers[assign]) ** 2).sum(1))
    order = np.argsort(-dist, kind="stable")
    mask[order[:count]] = True
    return mask
