"""A cross-encoder (one label, TEI's ``reranker``) made from minilm-sst2's real encoder.

No test model package ships a one-label head, so this puts a seeded one on
minilm-sst2's encoder. Importable from every test folder, like tiny_models.py.
"""

from __future__ import annotations

from pathlib import Path


def one_label_folder(src: Path, dst: Path, *, nan_bias: bool = False) -> Path:
    """minilm-sst2's encoder with a seeded one-label head, saved with no problem_type.

    Needs torch and transformers (the dev extra); ``nan_bias`` makes a broken model.
    """
    import torch
    import transformers

    torch.manual_seed(1)
    config = transformers.AutoConfig.from_pretrained(src)
    config.id2label, config.label2id = {0: "LABEL_0"}, {"LABEL_0": 0}
    config.num_labels = 1
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        src, config=config, ignore_mismatched_sizes=True
    )
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, 0.2)
        model.classifier.bias.fill_(float("nan") if nan_bias else 0.1)
    model.config.problem_type = None
    model.save_pretrained(dst)
    transformers.AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    config_text = (dst / "config.json").read_text()
    assert '"problem_type": "' not in config_text  # null or absent: transformers applies a sigmoid
    return dst
