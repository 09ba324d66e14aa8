"""A stand-in for SAM's predictor whose answer is known: the bright blob under the prompt.

Same interface as segment-anything's SamPredictor (set_image / predict), so it
runs inside the real SamSession and, through ``main()``, behind the real worker
protocol (``python tests/sam_standin.py`` speaks exactly as ``python -m core
sam-worker``). Its mask: the pixels far from the window's median colour connected to a positive
point (or, for a box alone, those inside the box), minus the blob under any
negative point.
"""
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 256


class BrightPredictor:
    """``delay`` seconds per encode and per prompt stand for a real model's time (tests of cancelling)."""

    def __init__(self, delay=0.0):
        self.image = None
        self.images = 0
        self.delay = delay

    def set_image(self, image):
        time.sleep(self.delay)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        self.image = image
        self.images += 1

    @staticmethod
    def _blob(bright, col, row):
        """The 4-connected bright pixels reached from (col, row): a flood fill by repeated growing."""
        blob = np.zeros_like(bright)
        row, col = int(row), int(col)
        if not (0 <= row < bright.shape[0] and 0 <= col < bright.shape[1]) or not bright[row, col]:
            return blob
        blob[row, col] = True
        while True:
            grown = blob.copy()
            grown[1:] |= blob[:-1]
            grown[:-1] |= blob[1:]
            grown[:, 1:] |= blob[:, :-1]
            grown[:, :-1] |= blob[:, 1:]
            grown &= bright
            if (grown == blob).all():
                return blob
            blob = grown

    def predict(self, point_coords=None, point_labels=None, box=None, multimask_output=True):
        time.sleep(self.delay)
        image = self.image.astype(np.float32)
        # "bright": unlike the window's ground — far from its median colour (a roof on sand, a square on
        # black) — and not darker than it (a shadow is not the object)
        ground = np.median(image.reshape(-1, 3), axis=0)
        bright = (np.linalg.norm(image - ground, axis=2) > 60) & (image.mean(axis=2) > ground.mean() - 10)
        mask = np.zeros_like(bright)
        points = [] if point_coords is None else list(zip(point_coords, point_labels))
        for (col, row), label in points:
            if label == 1:
                mask |= self._blob(bright, col, row)
        if box is not None:
            inside = np.zeros_like(bright)
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            inside[y0:y1, x0:x1] = True
            mask = (mask | bright) & inside if not any(v == 1 for _, v in points) else mask & inside
        for (col, row), label in points:
            if label == 0:
                mask &= ~self._blob(bright, col, row)
        score = 0.95 if mask.any() else 0.05
        return mask[None], np.array([score]), None


def main():
    sys.path.insert(0, ROOT)
    from core.sam import SamOptions, SamSession
    from core.sam_worker import serve
    delay = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0   # seconds per encode and per prompt
    serve(lambda reporter: SamSession(BrightPredictor(delay), SIZE, SamOptions(min_pixels=4)))


if __name__ == "__main__":
    main()
