"""Hugging Face-format folders (config, safetensors, tokenizer) of a built repository's
neural models: what a user loads with transformers or sentence-transformers by hand.

A pretrained model's folder is its checkpoint. A seeded one (tiny or full size) is rebuilt
from its seed, exactly as the build made it, and saved with its family's tokenizer wrapped
as the transformers tokenizer class of its source model.
"""

from __future__ import annotations

import json
from pathlib import Path

from export.layout import BUILD_INFO, TOKENIZER_FILE
from export.registry import CLIP, ROBERTA, Embedder, tokenizer_family

LINEAR_FILE = "colbert_linear.safetensors"  # ColBERT's 128-D head (``linear.weight``)


def hf_tokenizer(family_name: str, tokenizer_file: Path, max_length: int):
    """The family's tokenizer.json as the transformers fast tokenizer of its models."""
    from tokenizers import Tokenizer
    from transformers import BertTokenizerFast, CLIPTokenizerFast, RobertaTokenizerFast

    tok = Tokenizer.from_file(str(tokenizer_file))
    tok.no_truncation()
    tok.no_padding()
    if family_name == ROBERTA.name:
        return RobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                    sep_token="</s>", cls_token="<s>", unk_token="<unk>",
                                    pad_token="<pad>", mask_token="<mask>",
                                    model_max_length=max_length)
    if family_name == CLIP.name:
        return CLIPTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>",
                                 eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                                 pad_token="<|endoftext|>", model_max_length=max_length)
    return BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]",
                             pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]",
                             model_max_length=max_length)


def hf_folder(spec: Embedder, repo: Path, cache: Path) -> Path:
    """The model of ``spec`` in ``repo`` as a Hugging Face folder (the checkpoint itself when
    it is pretrained; else saved under ``cache``, once per build key)."""
    from export.architectures import architecture
    from export.build import tokenizer_ids

    version = repo / spec.triton_model / "1"
    info = json.loads((version / BUILD_INFO).read_text())
    if info.get("pretrained"):
        return Path(info["checkpoint"])
    target = cache / spec.triton_model
    stamp = target / "build-key.txt"
    if stamp.is_file() and stamp.read_text() == info["key"]:
        return target
    family = tokenizer_family(spec.tokenizer or "")
    ids = tokenizer_ids(family, repo)
    arch = architecture(spec)
    module = (arch.full_module(spec, ids) if info.get("size") == "full"
              else arch.tiny_module(spec, ids))
    module.model.save_pretrained(target, safe_serialization=True)
    if hasattr(module, "linear"):
        from safetensors.torch import save_file

        save_file({"linear.weight": module.linear.weight.detach().contiguous()},
                  str(target / LINEAR_FILE))
    family_dir = repo / family.triton_model / "1"
    hf_tokenizer(family.name, family_dir / TOKENIZER_FILE,
                 spec.max_length or family.max_length).save_pretrained(target)
    stamp.write_text(info["key"])
    return target
