"""Flip test: map network outputs on a horizontally flipped crop back onto the original crop.

With crop widths of the form s*n+1 the feature grid is symmetric (cell j at pixel s*j, and W-1-s*j = s*(n-j)), so
flipping the crop flips the grid onto itself and the maps line up exactly; no half-cell shift is needed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def flip_back(heatmaps: jax.Array, offsets: jax.Array, permutation: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Outputs for a flipped crop -> outputs for the original: mirror columns, swap left/right, negate x offsets.

    heatmaps (B, H, W, K); offsets (B, H, W, K, 2) as (x, y); `permutation` from `KeypointSet.flip_permutation()`.
    """
    heatmaps = heatmaps[:, :, ::-1][..., permutation]
    offsets = offsets[:, :, ::-1][:, :, :, permutation] * jnp.asarray([-1.0, 1.0], offsets.dtype)
    return heatmaps, offsets
