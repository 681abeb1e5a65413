"""Image grids (labelled rows of generator images, or plain tiles) and PNG bytes, written atomically."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .. import atomic


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """NCHW in [-1, 1] -> NHWC uint8 (clipped)."""
    x = ((img.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def grid_image(rows: dict[str, torch.Tensor], pad: int = 2, label_width: int | None = None,
               scale: int = 1) -> Image.Image:
    """One row per entry of `rows` (label -> NCHW batch in [-1, 1]); labels drawn on the left."""
    arrays = {k: to_uint8(v) for k, v in rows.items()}
    n = max(a.shape[0] for a in arrays.values())
    h, w = next(iter(arrays.values())).shape[1:3]
    h, w = h * scale, w * scale
    label_width = label_width if label_width is not None else (8 + 6 * max(len(k) for k in rows) if any(rows) else 0)
    canvas = Image.new("RGB", (label_width + n * (w + pad) + pad, len(rows) * (h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, (label, arr) in enumerate(arrays.items()):
        y = pad + r * (h + pad)
        if label_width:
            draw.text((4, y + h // 2 - 5), label, fill=(0, 0, 0))
        for i, im in enumerate(arr):
            tile = Image.fromarray(im if im.shape[2] == 3 else im[..., 0])
            if scale != 1:
                tile = tile.resize((w, h), Image.NEAREST)
            canvas.paste(tile, (label_width + pad + i * (w + pad), y))
    return canvas


def save_png(image: Image.Image, path: str | Path) -> Path:
    with atomic.file_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def save_grid(rows: dict[str, torch.Tensor], path: str | Path, **kwargs) -> Path:
    return save_png(grid_image(rows, **kwargs), path)


def image_grid(images, cols: int) -> np.ndarray:
    """[N, H, W, C] uint8 -> one [rows*H, cols*W, C] uint8 array (row-major, blank cells black)."""
    n, h, w, c = images.shape
    rows = math.ceil(n / cols)
    grid = np.zeros([rows * h, cols * w, c], dtype=np.uint8)
    for i, img in enumerate(np.asarray(images)):
        r, col = divmod(i, cols)
        grid[r * h:(r + 1) * h, col * w:(col + 1) * w] = img
    return grid


def png_bytes(array) -> bytes:
    """An [H, W], [H, W, 1] or [H, W, 3] uint8 array as PNG bytes (one channel: mode L)."""
    arr = array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()
