"""One small class per source architecture: the toy config, the pooling wrapper, the export.

Each class holds only what differs between the eight neural embedders (config class,
pooling, whether the sequence axis can be dynamic). The wrappers take ``input_ids`` and
``attention_mask`` and return the pooled, L2-normalised ``embedding`` (E6 returns its
vocabulary-sized SPLADE vector: the seeded projection is a persisted artifact applied after).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from export.registry import EMBEDDERS, POOL_MASK, Embedder, Pooling

# Toy sizes: the hidden width stays the real block width where the block is the hidden state.
TINY_LAYERS = 2
TINY_INTERMEDIATE = 64
TINY_HEADS = 4


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(states.dtype)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def l2(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.normalize(x, p=2.0, dim=-1)


class Pooler(nn.Module):
    """A transformers model and the pooling that turns its output into one vector."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model


class MeanPooled(Pooler):
    """Mean of the last hidden state over real tokens, then L2 (sentence-transformers, e5)."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return l2(masked_mean(states, attention_mask))


class LongformerMeanPooled(MeanPooled):
    """Longformer with global attention on the first token (<s>), mean pooled, L2."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        global_mask = torch.zeros_like(attention_mask)
        global_mask[:, 0] = 1
        states = self.model(input_ids=input_ids, attention_mask=attention_mask,
                            global_attention_mask=global_mask).last_hidden_state
        return l2(masked_mean(states, attention_mask))


class SpladeMax(Pooler):
    """SPLADE: max over real tokens of log(1 + relu(MLM logits)) -> [batch, vocab]."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        weights = torch.log1p(torch.relu(logits)) * attention_mask.unsqueeze(-1).to(logits.dtype)
        return weights.max(dim=1).values


class ClipEosProjection(Pooler):
    """CLIP text tower: hidden state at the EOS token through the text projection, L2."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return l2(self.model(input_ids=input_ids, attention_mask=attention_mask).text_embeds)


class ColbertMean(Pooler):
    """ColBERT: 128-D linear head, per-token L2, mean over ``pool_mask``, L2 (fusion block).

    ``pool_mask`` differs from the attention mask as in the ColBERT reference: a query's
    [MASK] padding is pooled though not attended to; a document's punctuation is dropped.
    """

    def __init__(self, model: nn.Module, dim: int) -> None:
        super().__init__(model)
        self.linear = nn.Linear(model.config.hidden_size, dim, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                pool_mask: torch.Tensor) -> torch.Tensor:
        states = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        tokens = l2(self.linear(states))
        return l2(masked_mean(tokens, pool_mask))


@dataclass(frozen=True)
class TokenizerIds:
    """The ids a model config must agree with (taken from the family's tokenizer.json)."""

    vocab_size: int
    pad: int
    bos: int | None = None
    eos: int | None = None


class Architecture:
    """What differs per source model: config, wrapper, export shape, tolerance."""

    output_name: ClassVar[str] = "embedding"
    extra_inputs: ClassVar[tuple[str, ...]] = ()  # beyond input_ids and attention_mask
    # "onnx": exported and run with ONNX Runtime; "torch": the PyTorch module itself is served.
    runtime: ClassVar[str] = "onnx"

    # The transformers class of the source model, and what its constructor needs.
    model_class: ClassVar[str] = "BertModel"
    model_kwargs: ClassVar[dict] = {"add_pooling_layer": False}

    def tiny_config(self, spec: Embedder, ids: TokenizerIds):  # pragma: no cover - abstract
        raise NotImplementedError

    def _model_type(self):
        import transformers

        return getattr(transformers, self.model_class)

    def model_from_config(self, config) -> nn.Module:
        return self._model_type()(config, **self.model_kwargs)

    def wrap(self, spec: Embedder, model: nn.Module) -> nn.Module:
        return MeanPooled(model)

    def pretrained_config(self, checkpoint: Path):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(checkpoint)

    def pretrained_module(self, spec: Embedder, checkpoint: Path,
                          dtype: torch.dtype = torch.float32) -> nn.Module:
        """The pooled module from a folder in Hugging Face format: a source checkpoint, or
        the one a build saved for a model served by PyTorch.

        Every weight of the module must come from the folder: a missing or mis-shaped
        tensor (which transformers would re-initialise with a warning) is an error.
        """
        from export.artifacts import ArtifactError

        config = self.pretrained_config(checkpoint)
        config._attn_implementation = "eager"
        model, info = self._model_type().from_pretrained(
            checkpoint, config=config, dtype=dtype, use_safetensors=True,
            output_loading_info=True, **self.model_kwargs)
        bad = list(info.get("missing_keys", [])) + [str(k) for k in info.get("mismatched_keys", [])]
        if bad:
            raise ArtifactError(f"{checkpoint}: weights missing or of another shape for "
                                f"{self.model_class}: {', '.join(sorted(bad)[:5])}")
        return self.wrap(spec, model).eval()

    def tiny_module(self, spec: Embedder, ids: TokenizerIds) -> nn.Module:
        """Seeded, deterministic toy model with the pooling of ``spec``, in eval mode."""
        torch.manual_seed(seed_for(spec))
        config = self.tiny_config(spec, ids)
        config._attn_implementation = "eager"
        module = self.wrap(spec, self.model_from_config(config))
        return module.eval()


def seed_for(spec: Embedder) -> int:
    return 1000 + [e.id for e in EMBEDDERS].index(spec.id)


def _bert_kwargs(spec: Embedder, ids: TokenizerIds, hidden: int) -> dict:
    assert spec.max_length is not None
    return {"vocab_size": ids.vocab_size, "hidden_size": hidden,
            "num_hidden_layers": TINY_LAYERS, "num_attention_heads": TINY_HEADS,
            "intermediate_size": TINY_INTERMEDIATE,
            "max_position_embeddings": spec.max_length, "pad_token_id": ids.pad}


class Bert(Architecture):
    """e5-large-v2, paraphrase-MiniLM, all-MiniLM: BertModel, mean pooled."""

    def tiny_config(self, spec, ids):
        from transformers import BertConfig

        return BertConfig(**_bert_kwargs(spec, ids, spec.dim))



class BertSplade(Bert):
    """SPLADE: BertForMaskedLM logits, max log-saturation pooling."""

    output_name = "sparse"
    model_class = "BertForMaskedLM"
    model_kwargs: ClassVar[dict] = {}

    def tiny_config(self, spec, ids):
        from transformers import BertConfig

        return BertConfig(**_bert_kwargs(spec, ids, 32))


    def wrap(self, spec, model):
        return SpladeMax(model)


class BertColbert(Bert):
    """ColBERTv2: BertModel with a 128-D linear head (``linear.weight`` in the checkpoint)."""

    extra_inputs = (POOL_MASK,)

    def pretrained_module(self, spec, checkpoint, dtype=torch.float32):
        from safetensors import safe_open

        module = super().pretrained_module(spec, checkpoint, dtype)
        with safe_open(str(checkpoint / "model.safetensors"), framework="pt") as f:
            module.linear.weight.data.copy_(f.get_tensor("linear.weight"))
        return module

    def tiny_config(self, spec, ids):
        from transformers import BertConfig

        return BertConfig(**_bert_kwargs(spec, ids, 32))

    def wrap(self, spec, model):
        return ColbertMean(model, spec.dim)


class Roberta(Architecture):
    """CodeBERT: RobertaModel, mean pooled. Positions start after the padding index."""

    model_class = "RobertaModel"

    def tiny_config(self, spec, ids):
        from transformers import RobertaConfig

        kwargs = _bert_kwargs(spec, ids, spec.dim)
        kwargs["max_position_embeddings"] = spec.max_length + ids.pad + 1
        return RobertaConfig(**kwargs, bos_token_id=ids.bos, eos_token_id=ids.eos)



class Longformer(Architecture):
    """Longformer, served as a PyTorch module (safetensors in Hugging Face format).

    Its sliding-window attention does not survive ONNX export here: the legacy tracer bakes
    the batch size into ``as_strided`` chunking (batch 1 then fails in a Gather), the
    ``onnx_export`` path needs ``Unfold`` with dynamic sizes (unsupported), and even a fully
    static export differs from PyTorch by about 1e-3 (the in-place masking of invalid
    window positions is lost). Measured with torch 2.13 / transformers 5.23.
    """

    runtime = "torch"
    model_class = "LongformerModel"
    attention_window = 16

    def tiny_config(self, spec, ids):
        from transformers import LongformerConfig

        kwargs = _bert_kwargs(spec, ids, spec.dim)
        kwargs["max_position_embeddings"] = spec.max_length + ids.pad + 1
        return LongformerConfig(**kwargs, attention_window=[self.attention_window] * TINY_LAYERS,
                                bos_token_id=ids.bos, eos_token_id=ids.eos,
                                sep_token_id=ids.eos)


    def wrap(self, spec, model):
        return LongformerMeanPooled(model)


class ClipText(Architecture):
    """CLIP ViT-L/14 text tower: CLIPTextModelWithProjection, EOS state + projection."""

    model_class = "CLIPTextModelWithProjection"
    model_kwargs: ClassVar[dict] = {}

    def tiny_config(self, spec, ids):
        from transformers import CLIPTextConfig

        return CLIPTextConfig(vocab_size=ids.vocab_size, hidden_size=32,
                              intermediate_size=TINY_INTERMEDIATE, projection_dim=spec.dim,
                              num_hidden_layers=TINY_LAYERS, num_attention_heads=TINY_HEADS,
                              max_position_embeddings=spec.max_length, pad_token_id=ids.pad,
                              bos_token_id=ids.bos, eos_token_id=ids.eos)


    def pretrained_config(self, checkpoint):
        # A full CLIP checkpoint: the text tower's config, with the projection size of the
        # whole model (the text sub-config may not repeat it).
        from transformers import AutoConfig, CLIPTextConfig

        config = AutoConfig.from_pretrained(checkpoint)
        if isinstance(config, CLIPTextConfig):
            return config
        text = config.text_config
        text.projection_dim = config.projection_dim
        return text

    def wrap(self, spec, model):
        return ClipEosProjection(model)


ARCHITECTURES: dict[str, Architecture] = {
    "E1": Bert(),
    "E5": Longformer(),
    "E6": BertSplade(),
    "E7": Roberta(),
    "E8": Bert(),
    "E10": ClipText(),
    "E11": Bert(),
    "E12": BertColbert(),
}


def architecture(spec: Embedder) -> Architecture:
    if spec.pooling is Pooling.CUSTOM:
        raise KeyError(f"{spec.id} is a custom encoder without an architecture")
    return ARCHITECTURES[spec.id]
