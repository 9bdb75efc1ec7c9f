"""Our fast tokenizer must give exactly the ids of Chinese-CLIP's reference FullTokenizer (cn_clip.clip.tokenize)."""

import hashlib
import random

import pytest
import torch
from cn_clip.clip import tokenize as reference_tokenize

from cnclip_scale.model import Tokenizer
from cnclip_scale.model.tokenizer import default_vocab_file

CORPUS = [
    "高级感托特包斜挎",
    "一只橘猫趴在窗台上晒太阳",
    "",
    "   ",
    "Hello World",
    "HELLO world, It's 9:30 a.m.!",
    "2022新款夏季连衣裙 L码 XL码",
    "价格￥199.00，包邮！！！",
    "ＡＢＣ全角字母１２３和全角标点：；“引号”（括号）",
    "emoji 😀👍🏽🇨🇳 表情",
    "café naïve façade Ångström",
    "日本語のテキストとカタカナ",
    "한국어 텍스트",
    "tab\tand\nnewline\r\nand\u3000ideographic space",
    "zero\u200bwidth\ufeffchars",
    "control\x00\x07chars",
    "数学符号 ∑∫√∞ ≤ ≥ ≠ ±",
    "url https://example.com/a?b=c&d=e",
    "email someone@example.cn",
    "#话题# @用户 【活动】",
    "a" * 150,
    "b" * 250,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "很长的句子" * 40,
    "繁體中文與簡體中文混合",
    "123456789012345678901234567890",
    "C++/C#/.NET 工程师",
    "﹏﹏ 特殊符号 ※ § ¶ † ‡ • … ‰",
    "Ⅻ罗马数字 ①②③ 圈号",
    "\U00020000\U0002a6d6 扩展B区汉字",
]


def random_corpus(n=300, seed=0):
    rng = random.Random(seed)
    ranges = [
        (0x20, 0x7E),
        (0x4E00, 0x9FFF),
        (0x3000, 0x303F),
        (0xFF00, 0xFFEF),
        (0x00C0, 0x024F),
        (0x1F300, 0x1F64F),
        (0x0370, 0x03FF),
        (0x2000, 0x206F),
        (0x3040, 0x30FF),
        (0x0400, 0x04FF),
    ]
    texts = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 40)):
            lo, hi = rng.choice(ranges)
            parts.append(chr(rng.randint(lo, hi)))
            if rng.random() < 0.15:
                parts.append(" ")
        texts.append("".join(parts))
    return texts


def test_official_vocab_is_the_released_one():
    data = default_vocab_file().read_bytes()
    assert hashlib.md5(data).hexdigest() == "3b5b76c4aef48ecf8cb3abaafe960f09"
    assert Tokenizer().vocab_size == 21128


@pytest.mark.parametrize("context_length", [52, 24, 8])
def test_ids_equal_reference_on_varied_corpus(tokenizer, context_length):
    texts = CORPUS + random_corpus()
    ours, mask = tokenizer(texts, context_length=context_length)
    theirs = reference_tokenize(texts, context_length=context_length)
    for text, a, b in zip(texts, ours, theirs):
        assert a.tolist() == b.tolist(), f"differs on {text!r}"
    assert torch.equal(mask, theirs.ne(0))


def test_layout_cls_truncate_sep_pad(tokenizer):
    ids, mask = tokenizer(["很长的句子" * 40, "短"], context_length=10)
    assert ids.shape == (2, 10) and ids.dtype == torch.long
    assert ids[0, 0] == tokenizer.cls_id and ids[0, -1] == tokenizer.sep_id and mask[0].all()
    assert ids[1].tolist()[:3] == [tokenizer.cls_id, tokenizer.vocab["短"], tokenizer.sep_id]
    assert ids[1, 3:].eq(0).all() and mask[1].sum() == 3


def test_model_dir_vocab_wins(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "猫", "狗"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = Tokenizer.for_model_dir(tmp_path, context_length=6)
    ids, _ = tok("猫狗鱼")
    assert ids[0].tolist() == [2, 4, 5, 1, 3, 0]


def test_vocab_without_special_tokens_is_refused(tmp_path):
    (tmp_path / "vocab.txt").write_text("猫\n狗\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab has no \[PAD\]"):
        Tokenizer(tmp_path / "vocab.txt")
