"""nsneg.trainer.analysis.cue_conflict: the edge mask, cue-conflict images, and the one Sobel operator."""

import numpy as np
import torch
from PIL import Image

from nsneg.trainer.analysis import cue_conflict


def test_edge_mask_and_cue_conflict_image():
    a = np.zeros((224, 224, 3), np.uint8)
    a[60:160, 60:160] = 255
    mask = cue_conflict.edge_mask(Image.fromarray(a))
    assert mask[60, 110] and mask[159, 110] and mask[110, 52]  # along the square's outline, dilated
    assert (
        not mask[110, 110] and not mask[5, 5] and 0.05 < mask.mean() < 0.5
    )  # not its inside nor the far background
    b = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    image, mask2 = cue_conflict.cue_conflict_image(Image.fromarray(a), Image.fromarray(b))
    out = np.asarray(image)
    assert (mask2 == mask).all() and (out[mask] == b[mask]).all() and (out[~mask] == a[~mask]).all()


def test_sobel_gradients_of_ramps():
    """Unit gain on a unit ramp along x (gy 0) and along y (gx 0), replicated at the border."""
    ramp = torch.arange(6.0).repeat(6, 1)[None, None]  # [1, 1, 6, 6], value = column
    gx, gy = cue_conflict.sobel_gradients(ramp, cue_conflict.sobel_kernel())
    assert torch.allclose(gx[0, :, 1:-1], torch.ones(6, 4))  # ((x+1) - (x-1)) * (1+2+1) / 8
    assert torch.allclose(gx[0, :, 0], torch.full((6,), 0.5))  # replicated border: (1 - 0) * 4 / 8
    assert torch.allclose(gy, torch.zeros_like(gy))
    gx, gy = cue_conflict.sobel_gradients(ramp.transpose(2, 3), cue_conflict.sobel_kernel())
    assert torch.allclose(gy[0, 1:-1, :], torch.ones(4, 6)) and torch.allclose(
        gx, torch.zeros_like(gx)
    )
