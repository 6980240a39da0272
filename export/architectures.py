"""One small class per source architecture: the toy config, the pooling wrapper, the export.

Each class holds only what differs between the eight neural embedders (config class,
pooling, whether the sequence axis can be dynamic). The wrappers take ``input_ids`` and
``attention_mask`` and return the pooled, L2-normalised ``embedding`` (E6 returns its
vocabulary-sized SPLADE vector: the seeded projection is a persisted artifact applied after;
E12 returns ColBERT's per-token vectors, pooled after: ColBERT's users keep them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from export.registry import EMBEDDERS, TOKEN_VECTORS, Embedder, Pooling, PublishedConfig

# Toy sizes: the hidden width stays the real block width where the block is the hidden state.
TINY_LAYERS = 2
TINY_INTERMEDIATE = 64
TINY_HEADS = 4
TINY_HIDDEN = 32  # where the block is not the hidden state (SPLADE, ColBERT, CLIP)


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


class LongformerBanded(nn.Module):
    """Longformer with global attention on the first token, mean pooled, L2: the reference
    ``LongformerModel`` computed as dense attention under its band, exact for texts of up to
    ``exact_limit`` tokens (one attention window).

    ``LongformerModel`` pads every input to a multiple of its window and runs banded
    attention through overlapping chunks: token i attends to tokens j with |i - j| <=
    window / 2, the padding and the global token removed from the band, and to the global
    token as an extra column with the ordinary key and value. That is dense attention over
    the real tokens with a band mask (every pair inside the band up to window / 2 + 2
    tokens). The global token's own output attends to every real token through
    ``query_global`` / ``key_global`` / ``value_global``; it is computed for that one query
    without projecting every token: the query folded into the key weight (q . (W h + b) =
    (W^T q) . h + q . b), the value weight applied after the attention-weighted sum of hidden
    states (sum p = 1). Within one window this costs no more attention than the reference's
    chunks and no padding; past it dense scores grow as tokens^2, so longer texts run the
    reference module.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        config = model.config
        self.heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.heads
        windows = config.attention_window
        windows = windows if isinstance(windows, list) else [windows] * config.num_hidden_layers
        self.one_sided = [w // 2 for w in windows]
        self.exact_limit = min(windows)

    def _global_first(self, attention: nn.Module, h: torch.Tensor,
                      keys: torch.Tensor) -> torch.Tensor:
        """[B, hidden]: the first token's output through the global projections."""
        batch, _, hidden = h.shape
        heads, dim = self.heads, self.head_dim
        q = attention.query_global(h[:, 0]) / math.sqrt(dim)  # [B, hidden]
        q = q.view(batch, heads, 1, dim)
        wk = attention.key_global.weight.view(heads, dim, hidden)
        u = torch.matmul(q, wk)  # [B, H, 1, hidden]
        c = torch.matmul(q, attention.key_global.bias.view(heads, dim, 1))  # [B, H, 1, 1]
        states = h.unsqueeze(1)  # [B, 1, n, hidden]
        scores = torch.matmul(u, states.transpose(-1, -2)) + c  # [B, H, 1, n]
        scores = scores.masked_fill(~keys, torch.finfo(h.dtype).min)
        pooled = torch.matmul(torch.softmax(scores, dim=-1), states)  # [B, H, 1, hidden]
        wv = attention.value_global.weight.view(heads, dim, hidden).transpose(-1, -2)
        out = torch.matmul(pooled, wv) + attention.value_global.bias.view(heads, 1, dim)
        return out.reshape(batch, hidden)

    def _attention(self, attention: nn.Module, h: torch.Tensor, keys: torch.Tensor,
                   allowed: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = h.shape

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, length, self.heads, self.head_dim).transpose(1, 2)

        q = split(attention.query(h) / math.sqrt(self.head_dim))
        k, v = split(attention.key(h)), split(attention.value(h))
        scores = torch.matmul(q, k.transpose(-1, -2))
        scores = scores.masked_fill(~allowed, torch.finfo(h.dtype).min)
        local = torch.matmul(torch.softmax(scores, dim=-1), v)
        local = local.transpose(1, 2).reshape(batch, length, hidden)
        first = self._global_first(attention, h, keys)
        return torch.cat([first.unsqueeze(1), local[:, 1:]], dim=1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.model.embeddings(input_ids=input_ids)
        keys = attention_mask[:, None, None, :].bool()  # [B, 1, 1, n]: real tokens
        position = torch.arange(input_ids.shape[1], device=input_ids.device)
        distance = (position[None, :] - position[:, None]).abs()  # [n, n]
        for layer, one_sided in zip(self.model.encoder.layer, self.one_sided):
            band = (distance <= one_sided) | (position[None, :] == 0)  # the global column
            attended = self._attention(layer.attention.self, h, keys, keys & band)
            h_attn = layer.attention.output(attended, h)
            h = layer.output(layer.intermediate(h_attn), h_attn)
        return l2(masked_mean(h, attention_mask))


class SpladeMax(Pooler):
    """SPLADE: max over real tokens of log(1 + relu(MLM logits)) -> [batch, vocab].

    log(1 + relu(x)) is monotone and the decoder bias is the same for every token, so the
    max is taken first, over the bias-free logits of the real tokens, and bias, relu and
    log1p act on [batch, vocab] only: the same vector without four elementwise passes over
    the [batch, tokens, vocab] logits.
    """

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.model.bert(input_ids=input_ids, attention_mask=attention_mask)
        head = self.model.cls.predictions
        hidden = head.transform(states.last_hidden_state)
        logits = torch.matmul(hidden, head.decoder.weight.t())  # no bias: [B, L, vocab]
        padding = (attention_mask == 0).unsqueeze(-1)
        top = logits.masked_fill(padding, float("-inf")).max(dim=1).values + head.decoder.bias
        return torch.log1p(torch.relu(top))


class ClipEosProjection(Pooler):
    """CLIP text tower: hidden state at the EOS token through the text projection, L2."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return l2(self.model(input_ids=input_ids, attention_mask=attention_mask).text_embeds)


class ColbertTokens(Pooler):
    """ColBERT: 128-D linear head, per-token L2, the vectors ColBERT's reference keeps.

    The fusion block is their mean over a pooling mask, taken after the module (ensemble/
    stages.py) because the token vectors themselves are an output: a query's [MASK] padding
    is pooled though not attended to; a document's punctuation is dropped.
    """

    def __init__(self, model: nn.Module, dim: int) -> None:
        super().__init__(model)
        self.linear = nn.Linear(model.config.hidden_size, dim, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return l2(self.linear(states))


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
    # The graph output's dynamic axes: one vector per row, or (ColBERT) per token.
    output_axes: ClassVar[dict[int, str]] = {0: "batch"}
    # "onnx": exported and run with ONNX Runtime; "onnx+torch": the ONNX graph for texts up
    # to ``exact_limit`` tokens and the PyTorch module itself for longer ones.
    runtime: ClassVar[str] = "onnx"
    # Substrings of the exported MatMul/Gemm node names that INT8 builds keep in FP32.
    int8_keep_fp32: ClassVar[tuple[str, ...]] = ()

    # The transformers class of the source model, and what its constructor needs.
    model_class: ClassVar[str] = "BertModel"
    model_kwargs: ClassVar[dict] = {"add_pooling_layer": False}

    def config(self, spec: Embedder, ids: TokenizerIds, size: PublishedConfig):
        """The transformers config of this architecture at ``size``; special token ids
        come from the family's tokenizer."""
        raise NotImplementedError  # pragma: no cover - abstract

    def tiny_size(self, spec: Embedder, ids: TokenizerIds) -> PublishedConfig:
        """The toy size: a few narrow layers over the family's tokenizer vocabulary."""
        assert spec.max_length is not None
        hidden = spec.dim if spec.pooling is Pooling.MEAN else TINY_HIDDEN
        return PublishedConfig(TINY_LAYERS, hidden, TINY_HEADS, TINY_INTERMEDIATE,
                               ids.vocab_size, spec.max_length)

    def full_size(self, spec: Embedder, ids: TokenizerIds) -> PublishedConfig:
        """The source model's published size; its vocabulary holds the tokenizer's."""
        assert spec.published is not None
        if ids.vocab_size > spec.published.vocab_size:
            raise ValueError(f"{spec.id}: the tokenizer's {ids.vocab_size} ids exceed the "
                             f"published vocabulary of {spec.published.vocab_size}")
        return spec.published

    def _model_type(self):
        import transformers

        return getattr(transformers, self.model_class)

    def model_from_config(self, config) -> nn.Module:
        return self._model_type()(config, **self.model_kwargs)

    def wrap(self, spec: Embedder, model: nn.Module) -> nn.Module:
        return MeanPooled(model)

    def onnx_module(self, module: nn.Module) -> nn.Module:
        """What is exported to ONNX: the pooled module itself."""
        return module

    def exact_limit(self, module: nn.Module) -> int | None:
        """Longest text (tokens) the ONNX graph serves exactly; None: every length."""
        return None

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
        config = self.pretrained_config(checkpoint)
        config._attn_implementation = "eager"
        model, info = self._model_type().from_pretrained(
            checkpoint, config=config, dtype=dtype, use_safetensors=True,
            output_loading_info=True, **self.model_kwargs)
        all_loaded(checkpoint, info, self.model_class)
        return self.wrap(spec, model).eval()

    def seeded_module(self, spec: Embedder, ids: TokenizerIds,
                      size: PublishedConfig) -> nn.Module:
        """Seeded, deterministic model of ``size`` with the pooling of ``spec``, in eval
        mode (transformers' own initialisation)."""
        torch.manual_seed(seed_for(spec))
        config = self.config(spec, ids, size)
        config._attn_implementation = "eager"
        module = self.wrap(spec, self.model_from_config(config))
        return module.eval()

    def tiny_module(self, spec: Embedder, ids: TokenizerIds) -> nn.Module:
        return self.seeded_module(spec, ids, self.tiny_size(spec, ids))

    def full_module(self, spec: Embedder, ids: TokenizerIds) -> nn.Module:
        """The real architecture at its published size, seeded random weights."""
        return self.seeded_module(spec, ids, self.full_size(spec, ids))


def all_loaded(checkpoint: Path, info: dict, model_class: str) -> None:
    """Every weight of ``model_class`` came from ``checkpoint`` (``info``: transformers'
    loading info): a missing or mis-shaped tensor, which transformers would re-initialise
    with a warning, is an error."""
    from export.artifacts import ArtifactError

    bad = list(info.get("missing_keys", [])) + [str(k) for k in info.get("mismatched_keys", [])]
    if bad:
        raise ArtifactError(f"{checkpoint}: weights missing or of another shape for "
                            f"{model_class}: {', '.join(sorted(bad)[:5])}")


def clip_tower_config(checkpoint: Path, tower: str):
    """The ``tower`` ("text" or "vision") config of a CLIP checkpoint, with the projection
    size of the whole model (a full model's sub-config may not repeat it)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(checkpoint)
    if isinstance(config, getattr(transformers, f"CLIP{tower.capitalize()}Config")):
        return config
    sub = getattr(config, f"{tower}_config")
    sub.projection_dim = config.projection_dim
    return sub


def seed_for(spec: Embedder) -> int:
    return 1000 + [e.id for e in EMBEDDERS].index(spec.id)


def _bert_kwargs(size: PublishedConfig, ids: TokenizerIds) -> dict:
    return {"vocab_size": size.vocab_size, "hidden_size": size.hidden,
            "num_hidden_layers": size.layers, "num_attention_heads": size.heads,
            "intermediate_size": size.intermediate, "max_position_embeddings": size.max_positions,
            "type_vocab_size": size.type_vocab_size, "layer_norm_eps": size.layer_norm_eps,
            "hidden_act": size.hidden_act, "pad_token_id": ids.pad}


class Bert(Architecture):
    """e5-large-v2, paraphrase-MiniLM, all-MiniLM: BertModel, mean pooled."""

    def config(self, spec, ids, size):
        from transformers import BertConfig

        return BertConfig(**_bert_kwargs(size, ids))


class BertSplade(Bert):
    """SPLADE: BertForMaskedLM logits, max log-saturation pooling."""

    output_name = "sparse"
    model_class = "BertForMaskedLM"
    model_kwargs: ClassVar[dict] = {}

    def wrap(self, spec, model):
        return SpladeMax(model)


class BertColbert(Bert):
    """ColBERTv2: BertModel with a 128-D linear head (``linear.weight`` in the checkpoint)."""

    output_name = TOKEN_VECTORS
    output_axes: ClassVar[dict[int, str]] = {0: "batch", 1: "sequence"}

    def pretrained_module(self, spec, checkpoint, dtype=torch.float32):
        from safetensors import safe_open

        module = super().pretrained_module(spec, checkpoint, dtype)
        with safe_open(str(checkpoint / "model.safetensors"), framework="pt") as f:
            module.linear.weight.data.copy_(f.get_tensor("linear.weight"))
        return module

    def wrap(self, spec, model):
        return ColbertTokens(model, spec.dim)


class Roberta(Architecture):
    """CodeBERT: RobertaModel, mean pooled. Positions start after the padding index."""

    model_class = "RobertaModel"

    def tiny_size(self, spec, ids):
        from dataclasses import replace

        assert spec.max_length is not None
        return replace(super().tiny_size(spec, ids),
                       max_positions=spec.max_length + ids.pad + 1)

    def config(self, spec, ids, size):
        from transformers import RobertaConfig

        return RobertaConfig(**_bert_kwargs(size, ids), bos_token_id=ids.bos,
                             eos_token_id=ids.eos)


class Longformer(Roberta):
    """Longformer, global attention on the first token, mean pooled.

    The reference ``LongformerModel`` pads every input to a multiple of its attention window
    (a 15-token text pays for 512 tokens in every layer). Texts of up to one window run the
    exact banded-dense path (``LongformerBanded``), exported to ONNX; longer ones run the
    reference module itself, served by PyTorch (safetensors in Hugging Face format): its
    chunked attention does not survive ONNX export here (the legacy tracer bakes the batch
    size into ``as_strided`` chunking, ``Unfold`` with dynamic sizes is unsupported, and a
    fully static export differs from PyTorch by about 1e-3). Measured with torch 2.13 /
    transformers 5.23.
    """

    runtime = "onnx+torch"
    model_class = "LongformerModel"
    tiny_window = 16

    def config(self, spec, ids, size):
        from transformers import LongformerConfig

        window = size.attention_window or self.tiny_window
        return LongformerConfig(**_bert_kwargs(size, ids), attention_window=[window] * size.layers,
                                bos_token_id=ids.bos, eos_token_id=ids.eos, sep_token_id=ids.eos)

    def wrap(self, spec, model):
        return LongformerMeanPooled(model)

    def onnx_module(self, module):
        return LongformerBanded(module.model).eval()

    def exact_limit(self, module):
        return LongformerBanded(module.model).exact_limit


class ClipText(Architecture):
    """CLIP ViT-L/14 text tower: CLIPTextModelWithProjection, EOS state + projection."""

    model_class = "CLIPTextModelWithProjection"
    model_kwargs: ClassVar[dict] = {}

    def tiny_size(self, spec, ids):
        from dataclasses import replace

        return replace(super().tiny_size(spec, ids), layer_norm_eps=1e-5,
                       hidden_act="quick_gelu", projection_dim=spec.dim)

    def config(self, spec, ids, size):
        from transformers import CLIPTextConfig

        return CLIPTextConfig(vocab_size=size.vocab_size, hidden_size=size.hidden,
                              intermediate_size=size.intermediate,
                              projection_dim=size.projection_dim,
                              num_hidden_layers=size.layers, num_attention_heads=size.heads,
                              max_position_embeddings=size.max_positions,
                              layer_norm_eps=size.layer_norm_eps, hidden_act=size.hidden_act,
                              pad_token_id=ids.pad, bos_token_id=ids.bos, eos_token_id=ids.eos)

    def pretrained_config(self, checkpoint):
        return clip_tower_config(checkpoint, "text")

    def wrap(self, spec, model):
        return ClipEosProjection(model)


class ClipImageProjection(nn.Module):
    """CLIP's vision tower: the pooled (post-layernorm CLS) state through the visual
    projection, L2: ``CLIPModel.get_image_features``, normalised."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return l2(self.model(pixel_values=pixel_values).image_embeds)


@dataclass(frozen=True)
class VisionSize:
    """A CLIP vision tower's size (the vision_config of the source model's config.json)."""

    layers: int
    hidden: int
    heads: int
    intermediate: int
    patch: int
    image: int = 224
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"


# openai/clip-vit-large-patch14's vision_config; the toy keeps the 224-pixel input.
VISION_FULL = VisionSize(layers=24, hidden=1024, heads=16, intermediate=4096, patch=14)
VISION_TINY = VisionSize(layers=TINY_LAYERS, hidden=TINY_HIDDEN, heads=TINY_HEADS,
                         intermediate=TINY_INTERMEDIATE, patch=32)
VISION_SEED_OFFSET = 500  # the vision tower's seed: the text tower's plus this


class ClipVision:
    """E10's image path: CLIPVisionModelWithProjection, exported with a dynamic batch axis
    on ``pixel_values`` [B, 3, 224, 224]."""

    output_name: ClassVar[str] = "embedding"
    input_name: ClassVar[str] = "pixel_values"

    def config(self, spec: Embedder, size: VisionSize):
        from transformers import CLIPVisionConfig

        return CLIPVisionConfig(hidden_size=size.hidden, intermediate_size=size.intermediate,
                                num_hidden_layers=size.layers, num_attention_heads=size.heads,
                                image_size=size.image, patch_size=size.patch,
                                projection_dim=spec.dim, layer_norm_eps=size.layer_norm_eps,
                                hidden_act=size.hidden_act)

    def seeded_module(self, spec: Embedder, size: VisionSize) -> nn.Module:
        from transformers import CLIPVisionModelWithProjection

        torch.manual_seed(seed_for(spec) + VISION_SEED_OFFSET)
        config = self.config(spec, size)
        config._attn_implementation = "eager"
        return ClipImageProjection(CLIPVisionModelWithProjection(config)).eval()

    def pretrained_module(self, checkpoint: Path) -> nn.Module:
        """The vision tower of a full CLIP checkpoint; every weight must come from it."""
        from transformers import CLIPVisionModelWithProjection

        from export.artifacts import ArtifactError

        config = clip_tower_config(checkpoint, "vision")
        if config.image_size != VISION_FULL.image:
            raise ArtifactError(f"{checkpoint}: a vision tower for {config.image_size}-pixel "
                                f"images; fused_image prepares {VISION_FULL.image}-pixel ones")
        config._attn_implementation = "eager"
        model, info = CLIPVisionModelWithProjection.from_pretrained(
            checkpoint, config=config, use_safetensors=True, output_loading_info=True)
        all_loaded(checkpoint, info, "CLIPVisionModelWithProjection")
        return ClipImageProjection(model).eval()


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
