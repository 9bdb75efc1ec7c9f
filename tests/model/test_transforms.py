import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from cnclip_scale.model.transforms import MEAN, STD, image_transform, normalize_batch, resize_to_uint8


@pytest.fixture(scope="module")
def photo():
    return Image.fromarray(skdata.chelsea())  # 300×451 RGB, bundled with scikit-image


def test_eval_transform_is_square_bicubic_resize_without_crop(photo):
    out = image_transform(96)(photo)
    assert out.shape == (3, 96, 96) and out.dtype == torch.float32
    expected = np.asarray(photo.resize((96, 96), Image.BICUBIC), dtype=np.float32) / 255
    expected = (expected - np.array(MEAN, dtype=np.float32)) / np.array(STD, dtype=np.float32)
    # torchvision's bicubic on PIL images is PIL's own; the whole frame survives (no centre crop)
    assert np.allclose(out.permute(1, 2, 0).numpy(), expected, atol=1e-5)


def test_grey_and_rgba_become_rgb(photo):
    for mode in ("L", "RGBA", "P"):
        assert image_transform(32)(photo.convert(mode)).shape == (3, 32, 32)


def test_uint8_path_equals_float_path(photo):
    a = image_transform(64)(photo)
    b = normalize_batch(resize_to_uint8(64)(photo).unsqueeze(0))[0]
    assert resize_to_uint8(64)(photo).dtype == torch.uint8
    assert torch.allclose(a, b, atol=1e-5)


def test_train_augmentation_keeps_shape_and_varies(photo):
    tf = image_transform(64, train=True)
    torch.manual_seed(0)
    outs = [tf(photo) for _ in range(4)]
    assert all(o.shape == (3, 64, 64) for o in outs)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
