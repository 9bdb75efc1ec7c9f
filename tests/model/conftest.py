import pytest
import torch

from cnclip_scale.model import Tokenizer, build_model, model_config
from cnclip_scale.model.configs import TINY

# Real Chinese captions in the style of the seed's datasets, plus English, digits and punctuation.
CAPTIONS = [
    "高级感托特包斜挎",
    "一只橘猫趴在窗台上晒太阳",
    "2022新款 women's 夏季连衣裙 L码！",
    "红色的苹果和绿色的梨",
    "宇航员在太空中漂浮",
    "北京故宫，雪后初晴。",
]


@pytest.fixture(scope="session")
def tokenizer():
    return Tokenizer()


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return build_model(model_config(TINY))


@pytest.fixture
def captions():
    return list(CAPTIONS)
