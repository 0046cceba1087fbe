"""The talk's classifier, kept as the oracle that tests and benchmarks compare 06 to.

Whole scene in memory, padded in float64, one `model.predict` per image row:
slow and memory-hungry, but obviously the talk's algorithm.
"""

from __future__ import annotations

import numpy as np


def talk_classify(
    image: np.ndarray,
    model,
    mean: np.ndarray | None = None,
    std: np.ndarray | None = None,
    size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """The talk's algorithm, kept as the reference that tests and benchmarks compare to.

    image (rows, cols, bands) in memory; padded by `size` on every side
    (numpy "symmetric"), normalised in float64 when mean/std are given, then one
    `model.predict` per image row over the windows rows r-size/2..r+size/2-1.
    Returns labels (rows, cols) uint8 and max probabilities (rows, cols) float32.
    """
    rows, cols = image.shape[:2]
    padded = np.pad(image.astype(np.float64), ((size, size), (size, size), (0, 0)), "symmetric")
    if mean is not None:
        padded = (padded - mean) / std
    before = size // 2
    labels = np.zeros((rows, cols), np.uint8)
    probabilities = np.zeros((rows, cols), np.float32)
    for row in range(rows):
        top = row + size - before
        windows = np.stack(
            [
                padded[top : top + size, col + size - before : col + 2 * size - before]
                for col in range(cols)
            ]
        )
        predicted = model.predict(windows, verbose=0)
        labels[row] = np.argmax(predicted, axis=-1)
        probabilities[row] = np.max(predicted, axis=-1)
    return labels, probabilities
