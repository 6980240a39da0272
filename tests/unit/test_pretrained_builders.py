"""The pretrained builders, run on tiny checkpoints saved in Hugging Face format.

Each checkpoint folder looks like its source model's (config.json, model.safetensors,
tokenizer files; ColBERT's ``bert.*`` + ``linear.weight``; CLIP's full two-tower model).
The built stage must equal the source model's reference convention computed here directly
with transformers: e5's "query: "/"passage: " prefixes, Longformer's global first token,
SPLADE's max log-saturation, CLIP's projected EOS state, ColBERT's markers, [MASK] query
augmentation and punctuation skipping -- including texts longer than every limit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ensemble.stages import FamilyTokenizer, TokenEmbedder, version_dir
from export.build import build
from export.registry import Kind, embedder, tokenizer_family
from export.tokenizer_build import bert_uncased, clip_bpe, roberta_bpe
from tests.reference import reference

BUILT = ["E1", "E5", "E6", "E7", "E8", "E10", "E12"]
TEXTS = [
    "A man is playing a guitar on the stage.",
    "def add(a, b):\n    return a + b",
    "what is the capital city of australia?",
    "Punctuation, everywhere: commas; periods. Quotes \"like this\"!",
    " ".join(["the server answers many requests with low latency"] * 80),  # > 512 tokens
]
TINY = {"num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37}


def _bert_tokenizer(folder: Path) -> None:
    from transformers import BertTokenizerFast

    BertTokenizerFast(tokenizer_object=bert_uncased(), unk_token="[UNK]", sep_token="[SEP]",
                      pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]",
                      model_max_length=512).save_pretrained(folder)


def _roberta_tokenizer(folder: Path, max_length: int) -> None:
    from transformers import RobertaTokenizerFast

    RobertaTokenizerFast(tokenizer_object=roberta_bpe(), bos_token="<s>", eos_token="</s>",
                         sep_token="</s>", cls_token="<s>", unk_token="<unk>",
                         pad_token="<pad>", mask_token="<mask>",
                         model_max_length=max_length).save_pretrained(folder)


def _clip_tokenizer(folder: Path) -> None:
    from transformers import CLIPTokenizerFast

    CLIPTokenizerFast(tokenizer_object=clip_bpe(), bos_token="<|startoftext|>",
                      eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                      pad_token="<|endoftext|>", model_max_length=77).save_pretrained(folder)


def _save(model, folder: Path) -> None:
    model.save_pretrained(folder, safe_serialization=True)


def make_checkpoints(root: Path) -> None:
    import transformers as tf
    from safetensors.torch import save_file

    torch.manual_seed(0)
    bert_vocab = bert_uncased().get_vocab_size()
    roberta = roberta_bpe()

    for source, hidden in (("intfloat/e5-large-v2", 1024),
                           ("sentence-transformers/paraphrase-MiniLM-L6-v2", 384)):
        folder = root / source
        _save(tf.BertModel(tf.BertConfig(vocab_size=bert_vocab, hidden_size=hidden, **TINY)),
              folder)
        _bert_tokenizer(folder)

    folder = root / "naver/splade-cocondenser-ensembledistil"
    _save(tf.BertForMaskedLM(tf.BertConfig(vocab_size=bert_vocab, hidden_size=32, **TINY)),
          folder)
    _bert_tokenizer(folder)

    folder = root / "colbert-ir/colbertv2.0"
    bert = tf.BertModel(tf.BertConfig(vocab_size=bert_vocab, hidden_size=32, **TINY),
                        add_pooling_layer=False)
    bert.config.architectures = ["HF_ColBERT"]
    bert.config.save_pretrained(folder)
    weights = {f"bert.{k}": v.contiguous() for k, v in bert.state_dict().items()}
    weights["linear.weight"] = torch.randn(128, 32) * 0.2
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    _bert_tokenizer(folder)

    pad, bos, eos = (roberta.token_to_id(t) for t in ("<pad>", "<s>", "</s>"))
    ids = {"pad_token_id": pad, "bos_token_id": bos, "eos_token_id": eos}
    folder = root / "microsoft/codebert-base"
    _save(tf.RobertaModel(tf.RobertaConfig(vocab_size=roberta.get_vocab_size(), hidden_size=768,
                                           max_position_embeddings=514, **TINY, **ids),
                          add_pooling_layer=False), folder)
    _roberta_tokenizer(folder, 512)
    folder = root / "allenai/longformer-base-4096"
    _save(tf.LongformerModel(tf.LongformerConfig(
        vocab_size=roberta.get_vocab_size(), hidden_size=768, max_position_embeddings=4098,
        attention_window=[16, 16], **TINY, **ids), add_pooling_layer=False), folder)
    _roberta_tokenizer(folder, 4096)

    clip = clip_bpe()
    folder = root / "openai/clip-vit-large-patch14"
    text = {"vocab_size": clip.get_vocab_size(), "hidden_size": 32, "intermediate_size": 37,
            "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 77,
            "bos_token_id": clip.token_to_id("<|startoftext|>"),
            "eos_token_id": clip.token_to_id("<|endoftext|>"),
            "pad_token_id": clip.token_to_id("<|endoftext|>")}
    vision = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
              "num_attention_heads": 2, "image_size": 224, "patch_size": 32}
    _save(tf.CLIPModel(tf.CLIPConfig(text_config=text, vision_config=vision,
                                     projection_dim=768)), folder)
    _clip_tokenizer(folder)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    make_checkpoints(root)
    repo = tmp_path_factory.mktemp("repository")
    build(repo, "pretrained", checkpoint_dirs=[root], only=set(BUILT))
    return root, repo


@pytest.mark.parametrize("block", BUILT)
@pytest.mark.parametrize("kind", [Kind.PASSAGE, Kind.QUERY], ids=["passage", "query"])
def test_built_stage_equals_the_reference_convention(built, block, kind):
    root, repo = built
    spec = embedder(block)
    family = tokenizer_family(spec.tokenizer)
    tokens = FamilyTokenizer(version_dir(repo, family.triton_model), family).encode(TEXTS)
    stage = TokenEmbedder(spec, version_dir(repo, spec.triton_model))
    assert stage.info["pretrained"] and stage.info["source"] == spec.source
    served = stage.embed(tokens, [kind] * len(TEXTS))
    expected = reference(block, root / spec.source, TEXTS, kind, repo)
    cosine = np.sum(served * expected, axis=1)
    assert served.shape == (len(TEXTS), spec.dim)
    assert np.all(cosine >= 0.9999), cosine


def test_kind_changes_only_the_models_with_a_convention(built):
    _, repo = built
    for block in ("E7", "E1"):
        spec = embedder(block)
        family = tokenizer_family(spec.tokenizer)
        tokens = FamilyTokenizer(version_dir(repo, family.triton_model), family).encode(TEXTS)
        stage = TokenEmbedder(spec, version_dir(repo, spec.triton_model))
        same = np.allclose(stage.embed(tokens, [Kind.QUERY] * len(TEXTS)),
                           stage.embed(tokens, [Kind.PASSAGE] * len(TEXTS)))
        assert same == (block == "E7")


def test_the_vision_tower_comes_from_the_clip_checkpoint(built):
    """e10_image built from E10's checkpoint equals CLIPModel.get_image_features on it."""
    import transformers as tf

    from ensemble.images import prepare
    from ensemble.stages import ImageEmbedder
    from export.registry import IMAGE_EMBEDDER_MODEL
    from tests.unit.test_images import encoded, picture

    root, repo = built
    folder = root / embedder("E10").source
    served = ImageEmbedder(version_dir(repo, IMAGE_EMBEDDER_MODEL))
    assert served.info["pretrained"] and served.info["checkpoint"] == str(folder)
    images = [encoded(picture(w, h, seed=w), "PNG") for w, h in ((300, 200), (64, 640))]
    pixels = np.stack([prepare(i) for i in images])
    with torch.no_grad():
        features = tf.CLIPModel.from_pretrained(folder).eval().get_image_features(
            pixel_values=torch.from_numpy(pixels))
    features = getattr(features, "pooler_output", features)
    expected = torch.nn.functional.normalize(features, dim=-1).numpy()
    assert np.min(np.sum(served.embed(pixels) * expected, axis=1)) >= 0.9999
