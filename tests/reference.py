"""Slow, obvious reference computations the tests compare vortex's numerics with."""

import numpy as np


def numpy_reference(z: np.ndarray, y: np.ndarray, num_classes: int) -> dict:
    """Per-class R_c^2, their unweighted mean, the global variance and rho, in float64 numpy."""
    z = z.reshape(len(z), -1).astype(np.float64)
    per_class = []
    for c in range(num_classes):
        zc = z[y == c]
        per_class.append(np.mean(np.sum((zc - zc.mean(0)) ** 2, axis=1)))
    global_var = np.mean(np.sum((z - z.mean(0)) ** 2, axis=1))
    rc2 = float(np.mean(per_class))
    return {"rc2_per_class": per_class, "rc2": rc2, "global_var": global_var, "rho": rc2 / global_var}
