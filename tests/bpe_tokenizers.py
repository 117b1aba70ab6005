"""Byte-level BPE tokenizer.json files trained here with Hugging Face `tokenizers` itself.

No RoBERTa or ModernBERT tokenizer is installed on this machine, so the parity
tests train their own at a realistic size (``VOCAB_SIZE``: about 40,000
merges, like RoBERTa's 50,000) and lay them out like the real ones:

* ``roberta``: ``ByteLevel(add_prefix_space=false, trim_offsets=true)`` +
  ``RobertaProcessing`` (``<s> A </s></s> B </s>``), added tokens
  ``<s> <pad> </s> <unk> <mask>`` with ``<mask>`` ``lstrip`` (FacebookAI/roberta-base's layout);
* ``roberta-prefix``: the same with ``add_prefix_space=true`` (the pre-tokenizer
  and the post-processor both), as converted RoBERTa checkpoints sometimes have;
* ``modernbert``: ``ByteLevel(add_prefix_space=false)`` + ``TemplateProcessing``
  ``[CLS] $A [SEP]`` / ``[CLS] $A [SEP] $B [SEP]`` with every type id 0, specials
  ``[CLS] [SEP] [PAD] [UNK] [MASK]`` (``[MASK]`` ``lstrip``) and non-special
  added tokens that are runs of spaces (answerdotai/ModernBERT-base's layout,
  which it takes from OLMo / GPT-NeoX).

The training text is Python's own documentation and library sources (fixed for
a given interpreter) plus the parity corpus: English prose, code and the
multilingual strings, so that merges cover more than ASCII. Training takes a few
seconds; ``trained(kind, folder)`` caches the file in ``folder``.
"""

from __future__ import annotations

import importlib.util
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

VOCAB_SIZE = 40_000
KINDS = ("roberta", "roberta-prefix", "modernbert")
MAX_TRAINING_BYTES = 24_000_000


def _corpus() -> list[str]:
    """tests/unit/tokenizer_corpus.py's corpus (imported by path: tests/unit is not a package)."""
    path = Path(__file__).parent / "unit" / "tokenizer_corpus.py"
    spec = importlib.util.spec_from_file_location("tokenizer_corpus", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.corpus())


def _training_text() -> Iterator[str]:
    corpus = _corpus()
    for _ in range(20):  # weight the multilingual corpus up against the English library text
        yield from corpus
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    total = 0
    for path in sorted(stdlib.glob("**/*.py")):
        if "test" in path.parts or "site-packages" in path.parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        total += len(text)
        if total > MAX_TRAINING_BYTES:
            return
        yield from text.splitlines()


def _train(kind: str, vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    prefix = kind == "roberta-prefix"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix, trim_offsets=True)
    tok.decoder = decoders.ByteLevel()
    if kind == "modernbert":
        specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    else:
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        # 50,000 (the bench's size) needs pairs seen once as well, on this much text
        min_frequency=2 if vocab_size <= VOCAB_SIZE else 1,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(), trainer=trainer)
    from tokenizers import AddedToken

    mask = specials[-1]
    tok.add_special_tokens([AddedToken(mask, lstrip=True, rstrip=False, normalized=False)])
    if kind == "modernbert":
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS]:0 $A:0 [SEP]:0",
            pair="[CLS]:0 $A:0 [SEP]:0 $B:0 [SEP]:0",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
        )
        # GPT-NeoX's whitespace tokens: non-special, matched after normalisation.
        tok.add_tokens([AddedToken(" " * n, normalized=True) for n in (2, 4, 8, 16, 24)])
    else:
        tok.post_processor = processors.RobertaProcessing(
            ("</s>", tok.token_to_id("</s>")),
            ("<s>", tok.token_to_id("<s>")),
            trim_offsets=True,
            add_prefix_space=prefix,
        )
    return tok


def trained(kind: str, folder: Path, vocab_size: int = VOCAB_SIZE) -> Path:
    """``folder/<kind>-<vocab_size>.json``: the trained tokenizer, trained on first use."""
    path = folder / f"{kind}-{vocab_size}.json"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        _train(kind, vocab_size).save(str(tmp))
        tmp.replace(path)
    return path
