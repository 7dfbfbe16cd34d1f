import pytest
import torch
import torch.nn.functional as F

from regproxy.models.decode_heads.resized_cross_entropy import (
    bilinear_taps, resize_columns, resize_columns_backward, resize_rows,
    resize_rows_backward, resized_cross_entropy, rows_matrix)

# (h, w) logits -> (H, W) labels: exact and fractional factors, odd sizes,
# downsampling, one row or column.
SIZES = [((8, 8), (32, 32)), ((7, 9), (30, 41)), ((12, 10), (5, 7)),
         ((1, 6), (4, 24)), ((5, 1), (17, 3)), ((37, 37), (518, 518))]


def reference(logits, labels, class_weight=None, ignore_index=255,
              align_corners=False):
    """What mmseg's loss_by_feat computes: resize, then cross-entropy."""
    resized = F.interpolate(logits, labels.shape[1:], mode='bilinear',
                            align_corners=align_corners)
    loss = F.cross_entropy(resized, labels, weight=class_weight,
                           ignore_index=ignore_index, reduction='sum')
    correct = ((resized.argmax(1) == labels) & (labels != ignore_index)).sum()
    return loss, correct


def random_labels(shape, num_classes, generator, ignored=0.2):
    labels = torch.randint(num_classes, shape, generator=generator)
    labels[torch.rand(shape, generator=generator) < ignored] = 255
    return labels


@pytest.mark.parametrize('align_corners', [False, True])
@pytest.mark.parametrize('sizes', SIZES)
def test_tiles_of_rows_and_columns_are_interpolate(sizes, align_corners):
    (h, w), (H, W) = sizes
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    expected = F.interpolate(x, (H, W), mode='bilinear',
                             align_corners=align_corners).transpose(1, 2)
    columns = rows_matrix(
        *bilinear_taps(0, W, w, W, align_corners, torch.float64)[2:], w)
    for start, stop in [(0, H), (0, 1), (H // 2, H), (H - 1, H)]:
        first, last, *rows = bilinear_taps(start, stop, h, H, align_corners,
                                      torch.float64)
        band = resize_columns(x[:, :, first:last], columns)
        tile = resize_rows(band, rows_matrix(*rows, last - first))
        torch.testing.assert_close(tile, expected[:, start:stop],
                                   rtol=1e-12, atol=1e-12)


def test_columns_backward_is_the_adjoint_of_columns():
    """<columns(band), grad> == <band, columns_backward(grad)>."""
    columns = rows_matrix(*bilinear_taps(0, 13, 5, 13, False,
                                         torch.float64)[2:], 5)
    band = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    grad = torch.randn(2, 4, 3, 13, dtype=torch.float64)
    back = resize_columns_backward(grad, columns)
    assert back.shape == band.shape
    torch.testing.assert_close((resize_columns(band, columns) * grad).sum(),
                               (band * back).sum())


def test_rows_backward_is_the_adjoint_of_rows():
    """<rows(band), grad> == <band, rows_backward(grad)> for any band and
    grad; a wrong weight or row index breaks the equality."""
    first, last, *rows = bilinear_taps(3, 11, 6, 20, False, torch.float64)
    rows = rows_matrix(*rows, last - first)
    band = torch.randn(2, last - first, 5, 4, dtype=torch.float64)
    grad = torch.randn(2, 8, 5, 4, dtype=torch.float64)
    back = resize_rows_backward(grad, rows)
    assert back.shape == band.shape
    torch.testing.assert_close((resize_rows(band, rows) * grad).sum(),
                               (band * back).sum())


@pytest.mark.parametrize('align_corners', [False, True])
@pytest.mark.parametrize('sizes', SIZES)
def test_loss_gradient_and_hits_equal_resize_then_cross_entropy(
        sizes, align_corners):
    (h, w), (H, W) = sizes
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, h, w, dtype=torch.float64,
                         generator=generator).requires_grad_()
    labels = random_labels((2, H, W), 5, generator)
    loss_ref, correct_ref = reference(logits, labels,
                                      align_corners=align_corners)
    grad_ref, = torch.autograd.grad(loss_ref, logits)
    # One row per tile, a few rows per tile, everything in one tile.
    for tile_elements in (1, 2 * 5 * W * 3, 2**30):
        loss, correct = resized_cross_entropy(logits, labels, None, 255,
                                              align_corners, tile_elements)
        grad, = torch.autograd.grad(loss, logits)
        torch.testing.assert_close(loss, loss_ref, rtol=1e-12, atol=0)
        torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-14)
        assert correct == correct_ref


def test_class_weights_and_other_ignore_index():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 6, 7, dtype=torch.float64,
                         generator=generator).requires_grad_()
    labels = torch.randint(4, (2, 24, 28), generator=generator)
    weight = torch.tensor([0.5, 2., 1., 0.], dtype=torch.float64)
    loss_ref, correct_ref = reference(logits, labels, weight, ignore_index=2)
    loss, correct = resized_cross_entropy(logits, labels, weight, 2, False,
                                          100)
    torch.testing.assert_close(loss, loss_ref)
    torch.testing.assert_close(*(torch.autograd.grad(v, logits)[0]
                                 for v in (loss, loss_ref)))
    assert correct == correct_ref


def test_float32_under_autocast_matches_float64():
    """The caller turns autocast off (ProxyHead does); backward recomputes
    in float32 even when called inside an autocast region."""
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 150, 32, 32, generator=generator)
    labels = random_labels((2, 128, 128), 150, generator)
    x64 = logits.double().requires_grad_()
    loss_ref, _ = reference(x64, labels)
    grad_ref, = torch.autograd.grad(loss_ref, x64)
    x32 = logits.clone().requires_grad_()
    loss, _ = resized_cross_entropy(x32, labels)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        grad, = torch.autograd.grad(loss, x32)
    assert loss.dtype == grad.dtype == torch.float32
    torch.testing.assert_close(loss.double(), loss_ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad.double(), grad_ref, rtol=1e-5,
                               atol=1e-6 * grad_ref.abs().max().item())


def test_no_labelled_pixel_gives_zero_loss_and_gradient():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    labels = torch.full((1, 16, 16), 255)
    loss, correct = resized_cross_entropy(logits, labels)
    loss.backward()
    assert loss.item() == 0 and correct.item() == 0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_without_autograd_the_loss_is_the_same():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 6, 6, dtype=torch.float64,
                         generator=generator)
    labels = random_labels((2, 24, 24), 5, generator)
    with torch.no_grad():
        loss, correct = resized_cross_entropy(logits.requires_grad_(),
                                              labels)
    assert not loss.requires_grad
    loss_ref, correct_ref = reference(logits.detach(), labels)
    torch.testing.assert_close(loss, loss_ref)
    assert correct == correct_ref
