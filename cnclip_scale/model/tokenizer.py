"""Chinese-CLIP's text encoding: BERT WordPiece over the 21128-token vocab, lowercased, ``[CLS] tokens[:L-2] [SEP]``,
zero-padded to the context length (52 by default); the attention mask marks the non-pad positions.

Built on the Rust ``tokenizers`` WordPiece (fast enough for DataLoader workers) and configured to give the ids of
Chinese-CLIP's reference ``FullTokenizer`` (tests check this on a varied corpus). We build it from the vocab file
ourselves because transformers 5's ``BertTokenizer(vocab_file=...)`` silently ignores the file.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from tokenizers import Tokenizer as _RustTokenizer
from tokenizers.models import WordPiece
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer

DEFAULT_CONTEXT_LENGTH = 52
# The reference WordpieceTokenizer maps words longer than this to [UNK]; the Rust default is 100.
MAX_CHARS_PER_WORD = 200


def default_vocab_file() -> Path:
    """The official vocab shipped in ``cn-clip`` (installed with ``pip install --no-deps cn-clip==1.6.0``)."""
    spec = importlib.util.find_spec("cn_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the official Chinese-CLIP vocab comes from the cn-clip package: "
            "pip install --no-deps cn-clip==1.6.0 (or pass vocab_file=)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "clip" / "vocab.txt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: cn-clip is installed but has no vocab.txt")
    return path


def _read_vocab(path: Path) -> dict[str, int]:
    """``vocab.txt`` (one token a line), or the WordPiece vocab inside a ``tokenizer.json``."""
    if path.suffix == ".json":
        model = json.loads(path.read_text(encoding="utf-8")).get("model", {})
        if model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
            raise ValueError(f"{path}: not a WordPiece tokenizer.json (model.type={model.get('type')!r})")
        return {str(token): int(index) for token, index in model["vocab"].items()}
    vocab = {}
    with open(path, encoding="utf-8") as f:
        for index, line in enumerate(f):
            vocab[line.strip()] = index  # as the reference: a repeated token keeps its last index
    return vocab


class Tokenizer:
    """``Tokenizer()(texts) -> (input_ids LongTensor B×L, attention_mask BoolTensor B×L)``."""

    def __init__(self, vocab_file: str | Path | None = None, context_length: int = DEFAULT_CONTEXT_LENGTH):
        self.vocab_file = Path(vocab_file) if vocab_file else default_vocab_file()
        self.context_length = context_length
        vocab = _read_vocab(self.vocab_file)
        for special in ("[PAD]", "[UNK]", "[CLS]", "[SEP]"):
            if special not in vocab:
                raise ValueError(f"{self.vocab_file}: vocab has no {special} token")
        self.vocab = vocab
        self.pad_id, self.cls_id, self.sep_id = vocab["[PAD]"], vocab["[CLS]"], vocab["[SEP]"]
        rust = _RustTokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=MAX_CHARS_PER_WORD))
        rust.normalizer = BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True)
        rust.pre_tokenizer = BertPreTokenizer()
        self._rust = rust

    @classmethod
    def for_model_dir(cls, model_dir: str | Path | None, context_length: int = DEFAULT_CONTEXT_LENGTH) -> Tokenizer:
        """A model directory's own ``vocab.txt`` wins over the official one."""
        for name in ("vocab.txt", "tokenizer.json"):  # transformers 5 dirs may ship only tokenizer.json
            if model_dir is not None and (Path(model_dir) / name).exists():
                return cls(Path(model_dir) / name, context_length)
        return cls(None, context_length)

    def save_vocab(self, path: str | Path) -> None:
        """Write the vocab as ``vocab.txt`` (a ``tokenizer.json``'s vocab one token a line, in id order)."""
        if self.vocab_file.suffix != ".json":
            Path(path).write_bytes(self.vocab_file.read_bytes())
            return
        by_id = sorted(self.vocab.items(), key=lambda item: item[1])
        if [i for _, i in by_id] != list(range(len(by_id))):
            raise ValueError(f"{self.vocab_file}: vocab ids are not 0..{len(by_id) - 1}; cannot write a vocab.txt")
        Path(path).write_text("".join(token + "\n" for token, _ in by_id), encoding="utf-8")

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def tokenize(self, text: str) -> list[str]:
        return self._rust.encode(text, add_special_tokens=False).tokens

    def encode(self, text: str, context_length: int | None = None) -> list[int]:
        """Unpadded ids: ``[CLS] ids[:L-2] [SEP]``."""
        length = context_length or self.context_length
        ids = self._rust.encode(text, add_special_tokens=False).ids[: length - 2]
        return [self.cls_id, *ids, self.sep_id]

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        length = context_length or self.context_length
        ids = torch.full((len(texts), length), self.pad_id, dtype=torch.long)
        for row, encoding in enumerate(self._rust.encode_batch(list(texts), add_special_tokens=False)):
            tokens = [self.cls_id, *encoding.ids[: length - 2], self.sep_id]
            ids[row, : len(tokens)] = torch.tensor(tokens)
        return ids, ids.ne(self.pad_id)
