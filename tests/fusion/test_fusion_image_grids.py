"""Image grids in the heads: ``early_fusion`` pools an ``(h, w)`` grid in 2-D (never mixing the right edge of one
row with the left edge of the next), grid heads run on every transformers vision backbone, and the attention of
``cross_attention`` carries the grid it lies on."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from _tiny import tiny_text_encoder
from _tiny_vision import VISION_ARCHS, tiny_vision_encoder
from mmfuse.encoders.base import EncoderOutput
from mmfuse.fusion import FusionInputs, build_head
from mmfuse.fusion.early_fusion import pool_regions, pooled_grid


def _pool2d(regions: torch.Tensor, grid: tuple[int, int], out: tuple[int, int]) -> torch.Tensor:
    """``adaptive_avg_pool2d`` of row-major ``(B, h·w, D)`` cells to ``(B, kh·kw, D)``: the reference."""
    b, _, d = regions.shape
    maps = regions.reshape(b, *grid, d).permute(0, 3, 1, 2)
    return F.adaptive_avg_pool2d(maps, out).flatten(2).transpose(1, 2)


@pytest.mark.parametrize(
    ("grid", "k", "expected"),
    [((7, 7), 16, (4, 4)), ((24, 24), 16, (4, 4)), ((7, 9), 16, (4, 4)), ((6, 10), 12, (3, 4)), ((1, 49), 16, (1, 16)),
     ((7, 7), 10, (3, 3)), ((2, 20), 8, (1, 8)), ((16, 16), 64, (8, 8))],
)  # fmt: skip
def test_pooled_grid_rule(grid, k, expected) -> None:
    assert pooled_grid(grid, k) == expected
    kh, kw = expected
    assert kh * kw <= k and kh <= grid[0] and kw <= grid[1]


@pytest.mark.numerics  # compared with torch's kernel under a float32 tolerance: rerun on the scalar kernels too
@pytest.mark.parametrize(("grid", "k"), [((7, 7), 16), ((6, 10), 12), ((14, 14), 16), ((3, 8), 5)])
def test_pool_regions_is_adaptive_2d_average_pooling_of_the_grid(grid, k) -> None:
    regions = torch.randn(2, grid[0] * grid[1], 5)
    mask = torch.ones(2, grid[0] * grid[1], dtype=torch.bool)
    pooled, pooled_mask = pool_regions(regions, mask, k, grid)
    out = pooled_grid(grid, k)
    # a matrix product against torch's pooling kernel: the same sums in another order, float32 rounding apart
    torch.testing.assert_close(pooled, _pool2d(regions, grid, out), atol=1e-6, rtol=1e-5)
    assert pooled_mask.shape == (2, out[0] * out[1]) and pooled_mask.all()


def test_pool_regions_keeps_rows_apart() -> None:
    """7×7 cells holding their row number: every pooled region averages rows of its own band only (the old 1-D runs
    of 3-4 consecutive cells spanned two rows, e.g. the right edge of row 0 with the left edge of row 1)."""
    rows = torch.arange(7.0).repeat_interleave(7)  # row-major: cell r*7 + c holds r
    regions = rows[None, :, None]
    pooled, _ = pool_regions(regions, torch.ones(1, 49, dtype=torch.bool), 16, (7, 7))
    bands = torch.tensor([[0, 1], [1, 3], [3, 5], [5, 6]], dtype=torch.float)  # adaptive bins over 7 rows -> 4
    expected = bands.mean(dim=1).repeat_interleave(4)
    torch.testing.assert_close(pooled[0, :, 0], expected)


def test_pool_regions_counts_valid_cells_only() -> None:
    regions = torch.randn(1, 16, 3)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, [0, 5]] = True  # cells (0, 0) and (1, 1): both in the top-left 2×2 region of a 4×4 -> 2×2 pooling
    pooled, pooled_mask = pool_regions(regions, mask, 4, (4, 4))
    torch.testing.assert_close(pooled[0, 0], regions[0, [0, 5]].mean(dim=0))
    assert pooled_mask[0].tolist() == [True, False, False, False]
    assert torch.equal(pooled[0, 1:], torch.zeros(3, 3))


def test_pool_regions_without_a_grid_pools_one_row_and_a_wrong_grid_is_refused() -> None:
    regions = torch.randn(2, 49, 5)
    mask = torch.ones(2, 49, dtype=torch.bool)
    pooled, _ = pool_regions(regions, mask, 16)  # an encoder that reports no grid: runs of consecutive regions
    torch.testing.assert_close(pooled, F.adaptive_avg_pool1d(regions.transpose(1, 2), 16).transpose(1, 2))
    with pytest.raises(ValueError, match="6×8 has 48 cells, but the encoder returned 49 regions"):
        pool_regions(regions, mask, 16, (6, 8))


def test_early_fusion_pools_the_encoders_grid_in_2d() -> None:
    """A 7×7 grid under ``num_image_tokens=16`` gives the same logits as its 4×4 adaptive 2-D pooling given directly
    (a grid within the cap is used as is): the head pools in 2-D along the grid the encoder reported."""
    torch.manual_seed(0)
    text_encoder, image_encoder = tiny_text_encoder(), tiny_vision_encoder("vit")
    head = build_head(
        "early_fusion", text_encoder=text_encoder, image_encoder=image_encoder, num_classes=2, num_image_tokens=16
    ).eval()
    texts = ["a cat", "the dog is very happy today"]
    cells = torch.randn(2, 49, image_encoder.sequence_dim)
    pooled = torch.randn(2, image_encoder.dim)
    mask = torch.ones(2, 49, dtype=torch.bool)

    def run(sequence: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        features = EncoderOutput(pooled=pooled, sequence=sequence, mask=mask[:, : sequence.shape[1]], grid=grid)
        with torch.no_grad():
            return head(FusionInputs(text_inputs=text_encoder.tokenize(texts), image_features=features)).logits

    # the same computation with the pooling done beforehand by torch's kernel: float32 rounding apart
    torch.testing.assert_close(run(cells, (7, 7)), run(_pool2d(cells, (7, 7), (4, 4)), (4, 4)), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", list(VISION_ARCHS))
@pytest.mark.parametrize("name", ["concat", "cross_attention", "early_fusion"])
def test_grid_heads_run_on_every_vision_backbone_independently_of_batch_mates(name, arch) -> None:
    torch.manual_seed(0)
    image_encoder = tiny_vision_encoder(arch)
    params = {"num_image_tokens": 4} if name == "early_fusion" else {}  # pools the 4×4 grids to 2×2
    head = build_head(
        name, text_encoder=tiny_text_encoder(), image_encoder=image_encoder, num_classes=3, **params
    ).eval()
    g = torch.Generator().manual_seed(1)
    side = 64 if arch == "convnext" else 32
    texts = ["a cat", "the dog is very happy today", "hate", "love and peace"]
    inputs = FusionInputs(
        text_inputs=head.text_encoder.tokenize(texts), pixel_values=torch.randn(4, 3, side, side, generator=g)
    )
    with torch.no_grad():
        whole = head(inputs)
        assert whole.logits.shape == (4, 3) and torch.isfinite(whole.logits).all()
        if name == "cross_attention":
            h, w = VISION_ARCHS[arch][1]
            assert whole.grid == (h, w) and whole.attention.shape[-1] == h * w
        for i in range(4):
            one = head(inputs.index(slice(i, i + 1)))
            # other batch shapes change only float32 GEMM rounding; a leak between examples is orders larger
            torch.testing.assert_close(one.logits[0], whole.logits[i], atol=1e-5, rtol=1e-4)
    head.train()
    head(inputs).logits.sum().backward()  # gradients reach the trainable encoder
    assert any(p.grad is not None for p in head.image_encoder.parameters())


def test_a_head_learns_from_a_frozen_vision_backbones_grid() -> None:
    """``cross_attention`` on the cached patch grid of a frozen tiny DINOv2 learns a synthetic image label (which
    colour dominates a noisy picture) that the text (random words) does not carry."""
    torch.manual_seed(0)
    text_encoder, image_encoder = tiny_text_encoder(), tiny_vision_encoder("dinov2")
    text_encoder.freeze()
    image_encoder.freeze()
    g = torch.Generator().manual_seed(0)
    n = 192
    labels = torch.randint(0, 2, (n,), generator=g)
    colours = torch.tensor([[1.5, -1.0, -1.0], [-1.0, -1.0, 1.5]])  # normalised red / blue
    pixels = colours[labels][:, :, None, None] + torch.randn(n, 3, 32, 32, generator=g)
    words = ["cat", "dog", "meme", "day", "night", "happy", "sad"]
    texts = [" ".join(words[int(i)] for i in torch.randint(0, 7, (3,), generator=g)) for _ in range(n)]
    with torch.no_grad():
        image = image_encoder(pixels)
        text = text_encoder(text_encoder.tokenize(texts))
    assert image.grid == (4, 4)

    def batch(idx: torch.Tensor) -> FusionInputs:
        return FusionInputs(text_features=text.index(idx), image_features=image.index(idx))

    head = build_head("cross_attention", text_encoder=text_encoder, image_encoder=image_encoder, num_classes=2)
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=3e-3)
    train, test = torch.arange(0, 128), torch.arange(128, n)
    head.train()
    for _ in range(150):
        idx = train[torch.randint(0, len(train), (32,), generator=g)]
        loss = F.cross_entropy(head(batch(idx)).logits, labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        out = head(batch(test))
    accuracy = (out.logits.argmax(-1) == labels[test]).float().mean().item()
    assert accuracy >= 0.9, f"cross_attention reached only {accuracy:.2f} on the colour label"
    assert out.grid == (4, 4)
