"""Where MuseTalk's face goes in an avatar frame and how it is blended back: the face box, the
blend square around it and the mask over that square, by MuseTalk 1.5's rules.

With a parsed face (face_parsing.parse: a label map of the square around a face), as MuseTalk:
- the box: MuseTalk takes it from 68 face landmarks (DWPose, which needs mmpose): left and right
  at the landmarks' outermost (the jaw line's width), bottom at the chin, top as far above the
  nose bridge's landmark 29 as the chin is below it. The parsed face gives the same edges: the
  skin's extent in the rows from the nose's top down, the skin's lowest row, and the nose's
  middle row for landmark 29 (which lies about halfway down the nose);
- the mask: MuseTalk's "jaw" mode, the skin (grown, and trimmed at the cheeks) without the
  nose, and the mouth and lips, parsed in the blend square.
Without one: the detector's (Haar) box, and the lower half of an ellipse inside it.

Either way, as MuseTalk 1.5: the box reaches 10 px further below the chin; the blend square is
1.5 times the box's longer side around its centre; the mask keeps only what lies inside the box
and in the square's lower half, and is blurred by a Gaussian a tenth of the square wide.
"""
from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from ..faces import Box
from .face_parsing import LOWER_LIP, MOUTH, NOSE, SKIN, UPPER_LIP

MARGIN = 10         # MuseTalk 1.5's extra_margin below the face box, in pixels
EXPAND = 1.5        # the blend square, relative to the face box's longer side
CHEEK_WIDTH = 90    # columns this far from the 512 px parse's centre are the cheeks (MuseTalk's realtime default)


def _cone() -> np.ndarray:
    """33 x 33: ten empty rows, a triangle widening to 21 px, then a 21 px wide column."""
    rows, columns = np.mgrid[:33, :33]
    return (np.abs(columns - 16) <= np.minimum(rows - 10, 10)).astype(np.uint8)


# The jaw mode's structuring elements, at the parse's 512 px. Dilating with CONE grows the skin up
# to 16 px upward and a tapering 6 px downward, a little past the jaw line.
CONE = _cone()
# Eroding with it (twice) pulls the skin in from the sides: at the cheeks the mask stays off the
# face's outline, where the new face would meet the background.
CHEEKS = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (35, 3))


def crop_box(face: Box, height: int) -> Box:
    x1, y1, x2, y2 = face
    return x1, y1, x2, min(height, y2 + MARGIN)


def blend_box(crop: Box) -> Box:
    x1, y1, x2, y2 = crop
    cx, cy, half = (x1 + x2) // 2, (y1 + y2) // 2, int(max(x2 - x1, y2 - y1) // 2 * EXPAND)
    return cx - half, cy - half, cx + half, cy + half


def parsed_box(labels: np.ndarray, square: Box, width: int, height: int) -> Box | None:
    """The face box (before the margin) in frame coordinates, from the label map of `square` in
    a `width` x `height` frame; None when the map shows no nose with skin below its top, or
    the box would not lie inside the frame."""
    nose = np.flatnonzero((labels == NOSE).any(axis=1))
    if not len(nose):
        return None
    skin = labels[nose[0]:] == SKIN
    rows, columns = np.flatnonzero(skin.any(axis=1)), np.flatnonzero(skin.any(axis=0))
    if not len(rows):
        return None
    scale = (square[2] - square[0]) / labels.shape[0]
    # Label pixel i spans [i, i + 1) of the map: the box takes the outer edges of its pixels.
    bridge = square[1] + (nose[0] + nose[-1] + 1) / 2 * scale
    chin = square[1] + (nose[0] + rows[-1] + 1) * scale
    x1, x2 = square[0] + columns[0] * scale, square[0] + (columns[-1] + 1) * scale
    box = round(x1), round(max(0.0, 2 * bridge - chin)), round(x2), round(chin)
    return box if 0 <= box[0] < box[2] <= width and box[1] < box[3] <= height else None


def jaw(labels: np.ndarray) -> np.ndarray:
    """MuseTalk's "jaw" region of a parsed square: 255 where the model's face is wanted, else 0."""
    skin = np.where(labels == SKIN, 255, 0).astype(np.uint8)
    grown = cv2.dilate(skin, CONE)
    cheeks = np.abs(np.arange(labels.shape[1]) - labels.shape[1] // 2) >= CHEEK_WIDTH
    face = np.where(cheeks, cv2.erode(grown, CHEEKS, iterations=2), grown)
    region = ((face == 255) & (labels != NOSE)) | np.isin(labels, (MOUTH, UPPER_LIP, LOWER_LIP))
    return np.where(region, 255, 0).astype(np.uint8)


def parsed_mask(labels: np.ndarray, crop: Box, blend: Box) -> np.ndarray:
    """The blend mask (uint8, the square's size) from the label map of the `blend` square. The
    region is scaled with PIL's bicubic filter, as MuseTalk scales it."""
    side = blend[2] - blend[0]
    region = Image.fromarray(jaw(labels)).resize((side, side), Image.BICUBIC)
    return _feather(np.asarray(region), crop, blend)


def ellipse_mask(crop: Box, blend: Box) -> np.ndarray:
    """The blend mask (uint8, the square's size) without a parsed face: an ellipse filling the box."""
    bx1, by1, bx2, by2 = blend
    x1, y1, x2, y2 = crop
    mask = np.zeros((by2 - by1, bx2 - bx1), np.uint8)
    cv2.ellipse(mask, ((x1 + x2) // 2 - bx1, (y1 + y2) // 2 - by1), ((x2 - x1) // 2, (y2 - y1) // 2),
                0, 0, 360, 255, -1)
    return _feather(mask, crop, blend)


def _feather(region: np.ndarray, crop: Box, blend: Box) -> np.ndarray:
    """Only the region's part inside the box and in the square's lower half (the model redraws
    the lower half of its crop only), blurred."""
    bx1, by1, bx2, _ = blend
    side = bx2 - bx1
    x1, y1, x2, y2 = (v - o for v, o in zip(crop, (bx1, by1, bx1, by1)))
    mask = np.zeros_like(region)
    mask[y1:y2, x1:x2] = region[y1:y2, x1:x2]
    mask[:side // 2] = 0
    kernel = int(0.1 * side // 2 * 2) + 1
    return cv2.GaussianBlur(mask, (kernel, kernel), 0)
