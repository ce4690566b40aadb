"""Independent float64 references: one numpy SVD per response and per prefix, in plain Python loops."""

import numpy as np


def er_ref(z: np.ndarray) -> float:
    z = np.asarray(z, dtype=np.float64)
    if z.shape[0] == 0:
        return 0.0
    zc = z - z.mean(axis=0, keepdims=True)
    s = np.linalg.svd(zc, compute_uv=False)
    p = s / (s.sum() + 1e-8)
    return float(np.exp(-(p * np.log(p + 1e-8)).sum()))


def dynamics_ref(z: np.ndarray, stride: int = 40, window: int = 512) -> tuple[float, float, float]:
    z = np.asarray(z, dtype=np.float64)
    er = er_ref(z)
    h = z[-window:]
    n = h.shape[0]
    if n < 2 * stride:
        return er, 0.0, 0.0
    e = []
    t = stride
    while t < n:
        e.append(er_ref(h[: t + 1]))
        t += stride
    v = [e[j] - np.mean(e[:j]) for j in range(1, len(e))]
    a = [v[j] - v[j - 1] for j in range(1, len(v))]
    return er, float(np.mean(v)) if v else 0.0, float(np.mean(a)) if a else 0.0
