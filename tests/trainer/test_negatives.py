"""Patch-based non-semantic negatives: every pixel comes from its own view, in s x s tiles."""

from __future__ import annotations

import pytest
import torch

from nsneg.trainer.negatives import patch_negatives


def coded_views(b: int, h: int, w: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Views whose pixel (y, x) of image i holds (i, y, x): an output pixel names its source."""
    i, y, x = torch.meshgrid(torch.arange(b), torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([i, y, x], dim=1).to(dtype)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sources(neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image, row and column each output pixel was copied from (negatives of coded views)."""
    i, y, x = neg.round().long().unbind(dim=-3)
    return i, y, x


def tile_size(y_src: torch.Tensor, x_src: torch.Tensor) -> int:
    """The tile size of one negative: the largest s whose s x s grid cells are each a shifted copy.

    Within a tile the source is the output shifted by a constant (source - output position); a
    grid finer than the true one (a divisor) passes too, a coarser one splits random tiles.
    """
    h, w = y_src.shape
    dy = y_src - torch.arange(h)[:, None]
    dx = x_src - torch.arange(w)[None, :]
    for s in range(max(h, w), 0, -1):  # the largest passing s: stop at the first from the top
        ty = torch.arange(h) // s
        tx = torch.arange(w) // s
        cell = ty[:, None] * w + tx[None, :]  # grid cell id of each pixel
        first = torch.full((h * w,), -1, dtype=torch.long)
        first.scatter_reduce_(0, cell.flatten(), torch.arange(h * w), "amin", include_self=False)
        anchor = first[cell]  # flat position of the top-left pixel of each pixel's cell
        if (dy.flatten()[anchor].view(h, w) == dy).all() and (
            dx.flatten()[anchor].view(h, w) == dx
        ).all():
            return s
    return 0


def check_tiles(neg: torch.Tensor, h: int, w: int) -> list[int]:
    """Assert tile structure for every negative of coded views; return the tile sizes found."""
    b, num = neg.shape[:2]
    i, y, x = sources(neg)
    sizes = []
    for bi in range(b):
        assert (i[bi] == bi).all(), "a negative took pixels from another image"
        for n in range(num):
            ys, xs = y[bi, n], x[bi, n]
            assert ys.min() >= 0 and ys.max() < h and xs.min() >= 0 and xs.max() < w
            s = tile_size(ys, xs)
            # Contiguous s x s blocks: inside a tile, source rows/cols advance by exactly 1.
            oy, ox = torch.arange(h) % s, torch.arange(w) % s
            vert = (ys[1:] - ys[:-1])[oy[1:] != 0]
            horiz = (xs[:, 1:] - xs[:, :-1])[:, ox[1:] != 0]
            assert (vert == 1).all() and (horiz == 1).all()
            # The whole s x s patch lies inside the view, cropped tiles included.
            origin_y, origin_x = ys[::s, ::s], xs[::s, ::s]
            assert origin_y.max() <= h - s and origin_x.max() <= w - s
            sizes.append(s)
    return sizes


def test_shape_dtype_device():
    views = torch.rand(3, 3, 40, 56)
    out = patch_negatives(views, num=4, generator=gen())
    assert out.shape == (3, 4, 3, 40, 56)
    assert out.dtype == views.dtype and out.device == views.device
    for dtype in (torch.float64, torch.float16, torch.bfloat16, torch.uint8):
        assert patch_negatives(views.to(dtype), generator=gen()).dtype == dtype
    assert patch_negatives(views).shape == (3, 1, 3, 40, 56)  # default num, no generator


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    views = coded_views(4, 64, 64)
    cpu = patch_negatives(views, num=2, generator=gen(3))
    gpu = patch_negatives(views.cuda(), num=2, generator=gen(3))  # CPU generator, CUDA tensor
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu)


def test_every_pixel_from_own_view_in_contiguous_tiles():
    h, w = 96, 80
    neg = patch_negatives(coded_views(6, h, w), num=3, size_range=(16, 72), generator=gen(1))
    sizes = check_tiles(neg, h, w)
    lo, hi = max(1, round(16 * h / 224)), round(72 * h / 224)
    assert all(lo <= s <= hi for s in sizes)


def test_content_follows_source_coordinates():
    """Same seed on real content gives exactly the pixels the coded run points to."""
    b, h, w = 4, 48, 48
    views = torch.rand(b, 3, h, w, generator=gen(9))
    neg = patch_negatives(views, num=2, generator=gen(5))
    i, y, x = sources(patch_negatives(coded_views(b, h, w), num=2, generator=gen(5)))
    expected = views[i, :, y, x].permute(0, 1, 4, 2, 3)  # [B, num, H, W, 3] -> [B, num, 3, H, W]
    torch.testing.assert_close(neg, expected, rtol=0, atol=0)


def test_fixed_size_at_224_is_exact():
    neg = patch_negatives(coded_views(2, 224, 224), num=2, size_range=(16, 16), generator=gen(2))
    assert check_tiles(neg, 224, 224) == [16] * 4


def test_range_scales_with_view_size():
    # 112 px: (16, 72) becomes (8, 36), and both ends of it are reachable.
    neg = patch_negatives(coded_views(16, 112, 112), num=4, size_range=(16, 72), generator=gen(4))
    sizes = check_tiles(neg, 112, 112)
    assert all(8 <= s <= 36 for s in sizes)
    assert min(sizes) <= 12 and max(sizes) >= 32
    fixed = patch_negatives(coded_views(2, 112, 112), size_range=(16, 16), generator=gen(4))
    assert check_tiles(fixed, 112, 112) == [8, 8]
    # Tiny views: the scaled size never drops below one pixel.
    tiny = patch_negatives(coded_views(2, 7, 7), size_range=(16, 16), generator=gen(4))
    assert check_tiles(tiny, 7, 7) == [1, 1]


def test_patch_larger_than_view_is_clamped():
    # Scaled range (29, 32) for H = 32, but W = 8: patches are clamped to 8 x 8.
    neg = patch_negatives(coded_views(3, 32, 8), size_range=(200, 224), generator=gen(6))
    assert check_tiles(neg, 32, 8) == [8, 8, 8]


def test_non_square_views():
    neg = patch_negatives(coded_views(3, 40, 100), num=2, size_range=(40, 120), generator=gen(8))
    sizes = check_tiles(neg, 40, 100)
    assert all(7 <= s <= 21 for s in sizes)


def test_deterministic_given_seed():
    views = torch.rand(4, 3, 64, 64, generator=gen(0))
    a = patch_negatives(views, num=2, generator=gen(11))
    b = patch_negatives(views, num=2, generator=gen(11))
    c = patch_negatives(views, num=2, generator=gen(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_independent_across_images_and_negatives():
    b, num, h = 12, 6, 64
    views = coded_views(1, h, h).expand(b, 3, h, h).clone()
    views[:, 0] = torch.arange(b, dtype=views.dtype)[:, None, None]  # same picture, own image id
    neg = patch_negatives(views, num=num, size_range=(16, 72), generator=gen(13))
    _, y, x = sources(neg)
    coords = torch.stack([y, x], dim=2).flatten(2)  # [B, num, 2*H*W]
    pairs = [(i, j) for i in range(b * num) for j in range(i)]
    flat = coords.flatten(0, 1)
    assert all(not torch.equal(flat[i], flat[j]) for i, j in pairs)
    sizes = check_tiles(neg, h, h)
    assert len(set(sizes[::num])) > 1, "every image got the same patch size"
    assert len(set(sizes[:num])) > 1, "every negative of an image got the same patch size"


def test_layout_destroyed_texture_kept():
    h = 64
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(h), indexing="ij")
    disc = (((yy - 31.5) ** 2 + (xx - 31.5) ** 2) < 20**2).float()
    views = disc.expand(8, 3, h, h).clone()
    neg = patch_negatives(views, num=2, size_range=(16, 72), generator=gen(14))
    assert set(neg.unique().tolist()) <= {0.0, 1.0}  # only the view's own values
    changed = (neg != views[:, None]).any(dim=2).float().mean(dim=(-2, -1))  # per negative
    assert (changed > 0.1).all(), changed
    # And on coded views few pixels stay where they were.
    _, y, x = sources(patch_negatives(coded_views(8, h, h), num=2, generator=gen(14)))
    in_place = ((y == yy) & (x == xx)).float().mean()
    assert in_place < 0.05


@pytest.mark.parametrize(
    ("shape", "kwargs", "message"),
    [
        ((3, 32, 32), {}, "B, C, H, W"),
        ((2, 3, 32, 32), {"num": 0}, "num"),
        ((2, 3, 32, 32), {"size_range": (0, 8)}, "size_range"),
        ((2, 3, 32, 32), {"size_range": (20, 10)}, "size_range"),
    ],
)
def test_bad_inputs(shape, kwargs, message):
    with pytest.raises(ValueError, match=message):
        patch_negatives(torch.rand(shape), **kwargs)
