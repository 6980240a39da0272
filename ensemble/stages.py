"""The pipeline's stages as plain Python objects over the built model repository.

The Triton adapters (ensemble/serving/) and the in-process reference pipeline
(ensemble/pipeline.py) both run these, so a served answer and a reference answer differ
only in what Triton adds: batching across requests, the ensemble wiring, transport.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.artifacts import load_numpy, tensor_shape
from export.custom_encoders import (
    HdcEncoder,
    l2_normalize,
    temporal_periodic,
    temporal_positional,
    temporal_recent,
)
from export.layout import (
    BUILD_INFO,
    ONNX_FILE,
    SPLADE_STEM,
    SPLADE_VERSION,
    TOKENIZER_FILE,
    TORCH_DIR,
)
from export.registry import (
    ATTENTION_MASK,
    EMBEDDERS,
    INPUT_IDS,
    LIBRARY_DEFAULTS,
    TEXT,
    TRUNCATE,
    Embedder,
    Gpu,
    Input,
    Kind,
    Pooling,
    Runtime,
    TokenizerFamily,
    tokenizer_family,
)

# Runtime.graph_optimization -> onnxruntime.GraphOptimizationLevel member.
GRAPH_OPTIMIZATION = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                      "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
# ONNX Runtime's CPU provider fuses FP8 Q/DQ around a MatMul into MatMulIntegerToFloat, an
# int8-only kernel, above "basic": FP8 graphs run at most at "basic" (Q/DQ emulation).
FP8_MAX_OPTIMIZATION = "basic"


def version_dir(repository: Path, triton_model: str) -> Path:
    return repository / triton_model / "1"


def read_build_info(directory: Path) -> dict:
    path = directory / BUILD_INFO
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; build the repository first (`make build`)")
    return json.loads(path.read_text())


@dataclass(frozen=True)
class TokenBatch:
    input_ids: np.ndarray  # [B, L] int64, padded with the family's pad id
    attention_mask: np.ndarray  # [B, L] int64


class FamilyTokenizer:
    """One tokenizer family (tokenizers library), padding each call to its longest text.

    It does not truncate: each embedder cuts to its own limit and so knows exactly which
    texts it truncated (the byte limit on texts bounds the token count).
    """

    def __init__(self, directory: Path, family: TokenizerFamily) -> None:
        from tokenizers import Tokenizer

        self.family = family
        self.tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
        self.pad_id = self.tokenizer.token_to_id(family.pad_token)
        self.tokenizer.no_truncation()
        self.tokenizer.enable_padding(pad_id=self.pad_id, pad_token=family.pad_token)

    def encode(self, texts: list[str]) -> TokenBatch:
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(texts), -1)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64).reshape(ids.shape)
        return TokenBatch(ids, mask)

    @property
    def vocabulary_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def terms(self, ids: np.ndarray) -> list[str]:
        """The vocabulary entry of each id (-1, padding, gives ""); ``ids`` must be in range."""
        return ["" if i == -1 else self.tokenizer.id_to_token(int(i)) for i in ids.reshape(-1)]


def length_bucket(lengths: np.ndarray, buckets: tuple[int, ...]) -> list[int]:
    """Per row, the index of the smallest bucket edge holding its length (len(buckets) past
    the last edge); all 0 without buckets."""
    if not buckets:
        return [0] * len(lengths)
    return np.searchsorted(np.asarray(buckets), lengths, side="left").tolist()


def token_fault(batch: TokenBatch, vocabulary: int) -> str | None:
    """Why tokens sent to an embedder directly cannot run (None: they can): ids outside the
    vocabulary would fail the whole batch they are merged into, and so would a mask of
    another shape."""
    ids, mask = batch.input_ids, batch.attention_mask
    if ids.shape != mask.shape:
        return f"attention_mask: shape {list(mask.shape)} where input_ids has {list(ids.shape)}"
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= vocabulary):
        bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
        return f"input_ids: {bad} is outside the vocabulary's ids 0..{vocabulary - 1}"
    if mask.size and not np.isin(mask, (0, 1)).all():
        return "attention_mask: values must be 0 or 1"
    return None


def merge(batches: list[TokenBatch], pad_id: int) -> TokenBatch:
    """Stack token batches of different lengths into one, padding on the right."""
    length = max(b.input_ids.shape[1] for b in batches)
    rows = sum(b.input_ids.shape[0] for b in batches)
    ids = np.full((rows, length), pad_id, dtype=np.int64)
    mask = np.zeros((rows, length), dtype=np.int64)
    r = 0
    for b in batches:
        n, width = b.input_ids.shape
        ids[r:r + n, :width] = b.input_ids
        mask[r:r + n, :width] = b.attention_mask
        r += n
    return TokenBatch(ids, mask)


def truncate(batch: TokenBatch, max_length: int) -> TokenBatch:
    """Cut each row to ``max_length`` tokens as the reference tokenizers do for one text:
    keep the first ``max_length - 1`` tokens and the closing special token."""
    lengths = batch.attention_mask.sum(axis=1)
    # At least one column: a model cannot run on an empty sequence (rows of only padding
    # pool to zeros).
    width = max(1, min(int(lengths.max(initial=0)), max_length))
    ids = batch.input_ids[:, :width].copy()
    mask = batch.attention_mask[:, :width].copy()
    over = np.nonzero(lengths > max_length)[0]
    if over.size:
        ids[over, max_length - 1] = batch.input_ids[over, lengths[over] - 1]
        mask[over] = 1
    return TokenBatch(ids, mask)


def insert_after_first(batch: TokenBatch, ids: list[int]) -> TokenBatch:
    """Put ``ids`` right after each row's first token (the [CLS]/<s> of every family)."""
    if not ids:
        return batch
    rows = batch.input_ids.shape[0]
    extra = np.broadcast_to(np.asarray(ids, dtype=np.int64), (rows, len(ids)))
    ones = np.ones_like(extra)
    return TokenBatch(
        np.concatenate([batch.input_ids[:, :1], extra, batch.input_ids[:, 1:]], axis=1),
        np.concatenate([batch.attention_mask[:, :1], ones, batch.attention_mask[:, 1:]], axis=1))


@dataclass(frozen=True)
class Convention:
    """A source model's text convention resolved to token ids (written by the build)."""

    insert: dict[str, list[int]]  # kind -> ids put after the first token
    query_length: int | None = None  # ColBERT: queries padded with [MASK] to this length
    mask_token_id: int | None = None
    skip_ids: tuple[int, ...] = ()  # ColBERT: tokens left out of a passage's pooled mean

    @classmethod
    def from_info(cls, info: dict | None) -> Convention:
        if not info:
            return cls({})
        return cls({k: list(v) for k, v in info["insert"].items()}, info.get("query_length"),
                   info.get("mask_token_id"), tuple(info.get("skip_ids", ())))


@dataclass(frozen=True)
class TokenLimit:
    """How many tokens an embedder takes per text and kind, its convention's extra tokens in."""

    spec: Embedder
    convention: Convention
    max_length: int

    @classmethod
    def read(cls, spec: Embedder, directory: Path) -> TokenLimit:
        info = read_build_info(directory)
        return cls(spec, Convention.from_info(info.get("convention")), int(info["max_length"]))

    def limit(self, kind: Kind) -> int:
        c = self.convention
        return c.query_length if kind is Kind.QUERY and c.query_length else self.max_length

    def counts(self, batch: TokenBatch, kind: Kind) -> np.ndarray:
        """Tokens per row once the convention's extra tokens are in (before truncation)."""
        return batch.attention_mask.sum(axis=1) + len(self.convention.insert.get(kind.value, []))

    def refusal(self, batch: TokenBatch, kinds: list[Kind]) -> str | None:
        """Why the first row over the limit is refused when truncation is not allowed."""
        for i, kind in enumerate(kinds):
            tokens = int(self.counts(TokenBatch(batch.input_ids[i:i + 1],
                                                batch.attention_mask[i:i + 1]), kind)[0])
            if tokens > self.limit(kind):
                return (f"{TEXT}[{i}]: {tokens} tokens exceed the {self.limit(kind)}-token "
                        f"limit of {self.spec.id} ({self.spec.triton_model}); send "
                        f"{TRUNCATE}=true to truncate")
        return None


def splade_vocabulary(directory: Path) -> int:
    """How many terms a SPLADE embedder's vector has (its projection's rows; SPARSE_TOP_K's
    upper bound), read from the file's header without loading it."""
    return tensor_shape(directory, SPLADE_STEM, "projection")[0]


@dataclass(frozen=True)
class TokenLimits:
    """Every token embedder's limit in one repository: what a request with TRUNCATE=false is
    refused for, checked at an entry point before any embedder runs."""

    limits: tuple[TokenLimit, ...]

    @classmethod
    def read(cls, repository: Path) -> TokenLimits:
        return cls(tuple(TokenLimit.read(s, version_dir(repository, s.triton_model))
                         for s in EMBEDDERS if s.input is Input.TOKENS))

    @property
    def families(self) -> list[TokenizerFamily]:
        """The tokenizer families the limits are counted in, each once."""
        names = dict.fromkeys(limit.spec.tokenizer or "" for limit in self.limits)
        return [tokenizer_family(name) for name in names]

    def refusal(self, tokens: dict[str, TokenBatch], kinds: list[Kind]) -> str | None:
        """Why the texts are refused (the first embedder, in block order, whose limit a
        text exceeds), None if no text exceeds one. ``tokens``: the texts tokenized by each
        family, by family name; a model that is not kind-aware counts every text as a
        passage, as it is sent no KIND."""
        for limit in self.limits:
            spec = limit.spec
            refusal = limit.refusal(tokens[tokenizer_family(spec.tokenizer or "").name],
                                    kinds if spec.convention.kind_aware
                                    else [Kind.PASSAGE] * len(kinds))
            if refusal:
                return refusal
        return None


# Gpu.providers names -> ONNX Runtime execution providers.
PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider"}
CPU_PROVIDER = "CPUExecutionProvider"


@dataclass(frozen=True)
class Placement:
    """Where one model instance runs: the CPU, or GPU ``device_id`` with ``gpu``'s settings
    (from the instance group Triton gave the instance and the config's parameters)."""

    gpu: Gpu | None = None
    device_id: int = 0
    model: str = ""

    @classmethod
    def of_instance(cls, kind: str, device_id: str | int, params: dict[str, str],
                    model: str = "") -> Placement:
        if kind.upper() != "GPU":
            return cls()
        return cls(Gpu.from_parameters(params), int(device_id), model)


def execution_providers(placement: Placement, available: list[str],
                        ) -> tuple[list[tuple[str, dict[str, str]]], list[str]]:
    """ONNX Runtime providers (name, options) for a session, the CPU last, and why each
    accelerator asked for is not among them."""
    if placement.gpu is None:
        return [(CPU_PROVIDER, {})], []
    providers: list[tuple[str, dict[str, str]]] = []
    notes = []
    for name in placement.gpu.providers:
        provider = PROVIDERS.get(name)
        if provider is None:
            notes.append(f"{name}: not an execution provider this server knows "
                         f"({', '.join(PROVIDERS)})")
        elif provider not in available:
            notes.append(f"{name}: this onnxruntime has no {provider} (available: "
                         f"{', '.join(available)}; install onnxruntime-gpu)")
        elif provider == PROVIDERS["tensorrt"]:
            cache = Path(placement.gpu.engine_cache) / (placement.model or "model")
            providers.append((provider, {
                "device_id": str(placement.device_id),
                "trt_fp16_enable": str(placement.gpu.trt_fp16),
                "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache)}))
        else:
            providers.append((provider, {"device_id": str(placement.device_id),
                                         "arena_extend_strategy": "kSameAsRequested"}))
    providers.append((CPU_PROVIDER, {}))
    return providers, notes


def unused_providers(asked: list[tuple[str, dict[str, str]]], active: list[str]) -> list[str]:
    """Providers asked for that the session did not take (they failed to initialise)."""
    return [f"{name}: failed to initialise; the session runs on {', '.join(active)}"
            for name, _ in asked if name not in active]


def onnx_session(path: Path, runtime: Runtime, placement: Placement,
                 level: str | None = None) -> tuple[Any, list[str]]:
    """An ONNX Runtime session of ``path`` with the runtime's threads and graph optimisation
    (``level`` overrides it) on the placement's providers, and why an accelerator asked for
    is not among the session's providers."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = runtime.threads
    options.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, GRAPH_OPTIMIZATION[level or runtime.graph_optimization])
    # Many models share few cores: idle threads must sleep, not spin.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers, notes = execution_providers(placement, ort.get_available_providers())
    session = ort.InferenceSession(str(path), options, providers=[p for p, _ in providers],
                                   provider_options=[o for _, o in providers])
    return session, notes + unused_providers(providers, session.get_providers())


def torch_device(placement: Placement, cuda_available: bool) -> tuple[str, list[str]]:
    """The torch device of an instance and, when a GPU instance falls back, why."""
    if placement.gpu is None:
        return "cpu", []
    if not cuda_available:
        return "cpu", ["torch: CUDA is not available to this torch build; running on the CPU"]
    return f"cuda:{placement.device_id}", []


class TokenEmbedder:
    """A neural embedder: tokens in, pooled unit vectors out (ONNX Runtime or PyTorch)."""

    def __init__(self, spec: Embedder, directory: Path,
                 runtime: Runtime = LIBRARY_DEFAULTS, placement: Placement = Placement()) -> None:
        self.spec = spec
        # Why an accelerator asked for is not used (the adapter logs them).
        self.placement_notes: list[str] = []
        self.length_buckets = runtime.length_buckets
        self.max_batch_tokens = runtime.max_batch_tokens
        info = read_build_info(directory)
        self.info = info
        self.pad_id = int(info["pad_token_id"])
        self.max_length = int(info["max_length"])
        self.runtime = info["runtime"]
        self.convention = Convention.from_info(info.get("convention"))
        self.limits = TokenLimit(spec, self.convention, self.max_length)
        self.precision = info.get("precision", "fp32")
        # Longest text the ONNX graph serves exactly (E5); longer rows run the PyTorch module.
        self.exact_limit = info.get("exact_path_max_tokens")
        self.inputs = [INPUT_IDS, ATTENTION_MASK]
        if "onnx" in self.runtime:
            import onnxruntime as ort

            level = runtime.graph_optimization
            if self.precision == "fp8" and (list(GRAPH_OPTIMIZATION).index(level)
                                            > list(GRAPH_OPTIMIZATION).index(FP8_MAX_OPTIMIZATION)):
                level = FP8_MAX_OPTIMIZATION
            self.session, notes = onnx_session(directory / ONNX_FILE, runtime, placement, level)
            active = self.session.get_providers()
            self.placement_notes += notes
            arenas = ["cpu:0"] + ([f"gpu:{placement.device_id}"]
                                  if PROVIDERS["cuda"] in active else [])
            self.shrink = ort.RunOptions()
            self.shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage",
                                             ";".join(arenas))
            self.output = self.session.get_outputs()[0].name
            self.inputs = [i.name for i in self.session.get_inputs()]
        if "torch" in self.runtime:
            import torch

            from export.architectures import architecture

            if runtime.threads:
                torch.set_num_threads(runtime.threads)
            dtype = torch.float16 if self.precision == "fp16" else torch.float32
            self.device, notes = torch_device(placement, torch.cuda.is_available())
            self.placement_notes += notes
            self.module = architecture(spec).pretrained_module(
                spec, directory / TORCH_DIR, dtype).to(self.device)
        # What runs this model: the session's providers and/or the torch device.
        self.where = "; ".join(
            ([f"onnxruntime {', '.join(self.session.get_providers())}"]
             if "onnx" in self.runtime else [])
            + ([f"torch {self.device}"] if "torch" in self.runtime else []))
        self.projection = None
        if spec.pooling is Pooling.SPLADE_MAX:
            self.projection = load_numpy(directory, SPLADE_STEM, SPLADE_VERSION)["projection"]
            if runtime.max_logits_mib:  # [rows, tokens, vocabulary] float32 logits per run
                vocabulary = self.projection.shape[0]
                logits_tokens = max(1, runtime.max_logits_mib * 2 ** 20 // (vocabulary * 4))
                self.max_batch_tokens = min(self.max_batch_tokens or logits_tokens,
                                            logits_tokens)

    def embed(self, batch: TokenBatch, kinds: list[Kind] | None = None) -> np.ndarray:
        """Rows of ``batch`` (one text each) -> [rows, dim]; ``kinds`` default to passages."""
        return self.embed_with_flags(batch, kinds)[0]

    def token_limit(self, kind: Kind) -> int:
        return self.limits.limit(kind)

    def embed_with_flags(self, batch: TokenBatch, kinds: list[Kind] | None = None,
                         ) -> tuple[np.ndarray, np.ndarray]:
        """Vectors [rows, dim] and, per row, whether the text was cut to the model's limit."""
        out, cut, _ = self._embed_groups(batch, kinds, keep_native=False)
        return out, cut

    @property
    def has_native(self) -> bool:
        """Whether the source model has an output of its own behind the block (E6, E12)."""
        return self.projection is not None or self.spec.pooling is Pooling.COLBERT_MEAN

    def embed_native(self, batch: TokenBatch, kinds: list[Kind] | None = None,
                     ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Vectors [rows, dim], truncation flags, and per row the source model's own output
        the vector came from: E6's vocabulary-sized SPLADE vector [vocabulary] (before the
        projection), E12's ColBERT token vectors [tokens, 128] (before the mean)."""
        if not self.has_native:
            raise ValueError(f"{self.spec.id} has no output besides its block")
        out, cut, native = self._embed_groups(batch, kinds, keep_native=True)
        assert native is not None
        return out, cut, native

    def _embed_groups(self, batch: TokenBatch, kinds: list[Kind] | None, keep_native: bool,
                      ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray] | None]:
        rows = batch.input_ids.shape[0]
        out = np.zeros((rows, self.spec.dim), dtype=np.float32)
        cut = np.zeros(rows, dtype=bool)
        native: list[np.ndarray] | None = [np.empty(0)] * rows if keep_native else None
        if rows == 0:
            return out, cut, native
        kinds = kinds or [Kind.PASSAGE] * rows
        bucket = length_bucket(batch.attention_mask.sum(axis=1), self.length_buckets)
        for group in sorted(set(zip(kinds, bucket))):
            idx = np.array([i for i, g in enumerate(zip(kinds, bucket)) if g == group])
            # truncate() trims the group to its longest row: a short text is not padded
            # to the longest text of the whole batch.
            part = TokenBatch(batch.input_ids[idx], batch.attention_mask[idx])
            out[idx], cut[idx], own = self._embed_kind(part, group[0])
            if native is not None:
                for i, row in zip(idx, own):
                    native[i] = row
        return out, cut, native

    def token_counts(self, batch: TokenBatch, kind: Kind) -> np.ndarray:
        return self.limits.counts(batch, kind)

    def _embed_kind(self, batch: TokenBatch, kind: Kind,
                    ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Vectors, truncation flags, and per row the source model's own output (see
        ``embed_native``; the vector itself for the other models)."""
        c = self.convention
        cut = self.token_counts(batch, kind) > self.token_limit(kind)
        batch = insert_after_first(batch, c.insert.get(kind.value, []))
        if kind is Kind.QUERY and c.query_length:
            batch = truncate(batch, c.query_length)
            width = c.query_length
            ids = np.full((batch.input_ids.shape[0], width), c.mask_token_id, dtype=np.int64)
            mask = np.zeros_like(ids)
            ids[:, :batch.input_ids.shape[1]] = batch.input_ids
            mask[:, :batch.input_ids.shape[1]] = batch.attention_mask
            ids[mask == 0] = c.mask_token_id  # every padding position becomes [MASK]
            batch, pool = TokenBatch(ids, mask), np.ones_like(ids)
        else:
            batch = truncate(batch, self.max_length)
            pool = batch.attention_mask
            if c.skip_ids:
                pool = pool * ~np.isin(batch.input_ids, c.skip_ids)
        raw = self.forward(batch)
        if self.spec.pooling is Pooling.COLBERT_MEAN:
            # ColBERT's block: the mean of the token vectors it keeps, L2.
            keep = pool.astype(bool)
            weights = keep[..., None].astype(np.float32)
            mean = (raw * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
            return l2_normalize(mean), cut, [tokens[k] for tokens, k in zip(raw, keep)]
        if self.projection is None:
            return raw, cut, list(raw)
        return l2_normalize(raw @ self.projection), cut, list(raw)

    def rows_per_run(self, width: int) -> int:
        """Rows of ``width`` tokens one run may take under ``max_batch_tokens`` (at least 1)."""
        if not self.max_batch_tokens:
            return 1 << 30
        return max(1, self.max_batch_tokens // max(1, width))

    def forward(self, batch: TokenBatch) -> np.ndarray:
        """The exported module itself on prepared tokens (E6: before its projection; E12:
        per token, before the mean), in runs of at most ``max_batch_tokens`` tokens."""
        rows, width = batch.input_ids.shape
        step = self.rows_per_run(width)
        if rows <= step:
            return self._forward(batch)
        return np.concatenate([
            self._forward(TokenBatch(batch.input_ids[i:i + step],
                                     batch.attention_mask[i:i + step]))
            for i in range(0, rows, step)])

    def _forward(self, batch: TokenBatch) -> np.ndarray:
        feeds = {INPUT_IDS: batch.input_ids, ATTENTION_MASK: batch.attention_mask}
        if self.runtime == "onnx":
            return self._onnx(feeds)
        if self.runtime == "torch":
            return self._torch(feeds)
        # onnx+torch: rows within the graph's exact range run it, longer rows the module.
        lengths = batch.attention_mask.sum(axis=1)
        short = lengths <= self.exact_limit
        out = np.zeros((len(lengths), self.spec.dim), dtype=np.float32)
        for rows, run in ((np.nonzero(short)[0], self._onnx), (np.nonzero(~short)[0], self._torch)):
            if rows.size:
                width = max(1, int(lengths[rows].max()))
                out[rows] = run({k: v[rows, :width] for k, v in feeds.items()})
        return out

    def _onnx(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        # A run of more than a quarter of the token budget gives its arena buffers back.
        large = bool(self.max_batch_tokens) and feeds[INPUT_IDS].size > self.max_batch_tokens // 4
        out = self.session.run([self.output], {n: feeds[n] for n in self.inputs},
                               self.shrink if large else None)[0]
        return out.astype(np.float32, copy=False)

    def _torch(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.module(*(torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self.device)
                                for n in self.inputs))
        return out.float().cpu().numpy()


class ImageEmbedder:
    """E10's vision tower: prepared images [B, 3, 224, 224] -> unit vectors [B, 768] (ONNX
    Runtime), in runs of at most ``max_images`` images."""

    def __init__(self, directory: Path, runtime: Runtime = LIBRARY_DEFAULTS,
                 placement: Placement = Placement(), max_images: int = 32) -> None:
        self.info = read_build_info(directory)
        self.max_images = max_images
        self.session, self.placement_notes = onnx_session(directory / ONNX_FILE, runtime,
                                                          placement)
        self.where = f"onnxruntime {', '.join(self.session.get_providers())}"
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        rows = pixels.shape[0]
        if rows == 0:
            return np.zeros((0, self.session.get_outputs()[0].shape[-1]), dtype=np.float32)
        return np.concatenate([
            self.session.run([self.output], {self.input: pixels[i:i + self.max_images]})[0]
            for i in range(0, rows, self.max_images)]).astype(np.float32, copy=False)


class CustomEmbedder:
    """E2, E3, E4 (timestamps) and E9 (text): deterministic encoders without weights."""

    def __init__(self, spec: Embedder, directory: Path) -> None:
        self.spec = spec
        self.hdc = HdcEncoder.load(directory) if spec.input is Input.TEXT else None

    def embed_times(self, timestamps: np.ndarray, sessions: list[str] | None = None,
                    ) -> np.ndarray:
        """E2, E3: timestamps; E4: positions (a SEQUENCE or the timestamp) and sessions
        (default: the shared default session)."""
        if self.spec.id == "E4":
            return temporal_positional(timestamps, sessions)
        fn = {"E2": temporal_recent, "E3": temporal_periodic}
        return fn[self.spec.id](timestamps)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        assert self.hdc is not None
        return self.hdc.encode(texts)

