"""The single source of truth for the twelve embedders, the tokenizer families and FuseMoE.

Every ``config.pbtxt``, the ensemble wiring, the builders and the in-process reference
pipeline are derived from the tables in this module; nothing else names a model, a tensor
or a dimension on its own.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields


class Role(str, enum.Enum):
    SEMANTIC = "semantic"
    TEMPORAL_RECENT = "temporal-recent"
    TEMPORAL_PERIODIC = "temporal-periodic"
    TEMPORAL_POSITIONAL = "temporal-positional"
    CAUSAL = "causal"
    SPARSE = "sparse"
    CODE = "code"
    GRAPH = "graph"
    HDC = "hdc"
    MULTIMODAL = "multimodal"
    ENTITY = "entity"
    LATE_INTERACTION = "late-interaction"


class Pooling(str, enum.Enum):
    """How a model's per-token states become one vector (always L2-normalised after)."""

    MEAN = "mean"  # attention-masked mean of the last hidden state
    SPLADE_MAX = "splade-max"  # max over tokens of log(1 + relu(MLM logits)), then a projection
    EOS_PROJECTION = "eos-projection"  # CLIP: hidden state at the EOS token, text projection
    COLBERT_MEAN = "colbert-mean"  # 128-D head, per-token L2 (the graph), masked mean (after)
    CUSTOM = "custom"  # deterministic encoder without weights (E2, E3, E4, E9)


class Input(str, enum.Enum):
    """What an embedder consumes from the public request."""

    TOKENS = "tokens"  # input_ids + attention_mask from its tokenizer family
    TEXT = "text"  # the raw UTF-8 text
    TIMESTAMP = "timestamp"  # Unix seconds, INT64


@dataclass(frozen=True)
class TokenizerFamily:
    name: str
    triton_model: str
    pad_token: str
    # The longest sequence any model of the family accepts; each embedder truncates further.
    max_length: int


@dataclass(frozen=True)
class Batching:
    max_batch_size: int = 32
    preferred_batch_sizes: tuple[int, ...] = (8, 16, 32)
    max_queue_delay_us: int = 2000
    # Back-pressure (Triton's queue policy, REJECT): a request finding this many requests
    # already queued is refused at once with UNAVAILABLE (HTTP 503) instead of waiting
    # (0 = unbounded). Only the entry points bound their queues (ENTRY_BATCHING): Triton 2.51
    # leaves an ensemble request stuck for good when a later step refuses it (fixed upstream
    # in core PR #466; perf/reports/backpressure.md shows it here). No default queue
    # timeout: the worst valid request waits minutes behind others at E5
    # (perf/reports/burst.md); a client that wants a shorter wait sends its own request
    # timeout, which the entry queues honour by refusing.
    max_queue_size: int = 0
    queue_timeout_us: int = 0


# The entry points' queues: `preprocess` (the first step of both ensembles) and the
# fail-safe. Sized in perf/reports/backpressure.md.
ENTRY_BATCHING = Batching(max_queue_size=32)


@dataclass(frozen=True)
class Runtime:
    """How a neural model runs inside its Triton instance (written as config parameters).

    The defaults are the winners of ``make tune`` on a 2-core machine
    (perf/reports/tuning.md); on bigger machines change them in the built configs
    (``model_repository/<model>/configs/built.pbtxt``: ``instance_group.count`` and the
    ``threads`` / ``graph_optimization`` / ``length_buckets`` parameters) or here.
    """

    # Intra-op threads per instance (ONNX Runtime / torch); 0 = the library default (all cores).
    threads: int = 1
    # Two instances per token embedder: a short request runs beside a batch of long texts
    # instead of behind it (p50 0.11 s against 14.8 s, perf/reports/headofline.md).
    instances: int = 2
    # ONNX Runtime graph optimisation level: disabled | basic | extended | all.
    graph_optimization: str = "extended"
    # A batch is split by token count into these buckets, each padded only to its own
    # longest row; empty = one padded batch (padding to the longest row of the batch).
    length_buckets: tuple[int, ...] = (8, 16, 24, 32, 48, 64, 96, 128, 256, 512)
    # Memory bounds of one forward pass (0 = none): at most this many tokens (rows x padded
    # length) per run, a batch of long texts running in several; and SPLADE's MLM logits
    # ([rows, tokens, vocabulary] floats, the largest tensor of any model) at most this many
    # MiB per run. Measured in perf/reports/burst.md.
    # ONNX Runtime's arena keeps the largest buffers it ever needed: after a run of more than
    # a quarter of its model's token budget it gives them back, so that a burst of long
    # texts does not stay resident.
    max_batch_tokens: int = 8192
    max_logits_mib: int = 128

    def parameters(self) -> dict[str, str]:
        return {"threads": str(self.threads), "graph_optimization": self.graph_optimization,
                "length_buckets": ",".join(map(str, self.length_buckets)),
                "max_batch_tokens": str(self.max_batch_tokens),
                "max_logits_mib": str(self.max_logits_mib)}

    @classmethod
    def from_parameters(cls, params: dict[str, str]) -> Runtime:
        """What a model's config parameters ask for; a missing one is the library default."""
        buckets = params.get("length_buckets", "")
        return cls(threads=int(params.get("threads", "0")),
                   graph_optimization=params.get("graph_optimization", "all"),
                   length_buckets=tuple(int(b) for b in buckets.split(",") if b),
                   max_batch_tokens=int(params.get("max_batch_tokens", "0")),
                   max_logits_mib=int(params.get("max_logits_mib", "0")))


@dataclass(frozen=True)
class Gpu:
    """How the neural models run on a GPU (``make build DEVICE=gpu``; docker/Containerfile.gpu).

    The committed configs are the CPU ones; a GPU build writes its built configs with
    ``KIND_GPU`` instance groups for the token embedders, E10's vision tower and FuseMoE
    (tokenizers, the custom encoders and the entry points stay on CPU) and these settings as
    parameters. ONNX Runtime
    tries ``providers`` in order, then the CPU, and logs why each one it skipped was skipped;
    TensorRT builds its engines (FP16 kernels where ``trt_fp16``, the standard choice on a
    GPU; an FP8 model's Q/DQ layers in FP8) into ``engine_cache``, a volume, so a restart
    does not rebuild them.
    FuseMoE (and any module served from PyTorch) runs on CUDA, or on the CPU with a logged
    reason. Unmeasured: no GPU was available where this was written.
    """

    providers: tuple[str, ...] = ("tensorrt", "cuda")
    engine_cache: str = "/opt/fusedembed/trt-cache"
    trt_fp16: bool = True

    def parameters(self) -> dict[str, str]:
        return {"device": "gpu", "execution_providers": ",".join(self.providers),
                "trt_engine_cache": self.engine_cache,
                "trt_fp16": "true" if self.trt_fp16 else "false"}

    @classmethod
    def from_parameters(cls, params: dict[str, str]) -> Gpu:
        providers = params.get("execution_providers", ",".join(cls.providers))
        return cls(providers=tuple(p for p in providers.split(",") if p),
                   engine_cache=params.get("trt_engine_cache", cls.engine_cache),
                   trt_fp16=params.get("trt_fp16", "true") == "true")


GPU = Gpu()
DEVICES = ("cpu", "gpu")


# What running a model by hand gets: every core, full graph optimisation, one padded batch,
# no bound on a run's memory.
LIBRARY_DEFAULTS = Runtime(threads=0, length_buckets=(), max_batch_tokens=0, max_logits_mib=0)


RUNTIME = Runtime()


class Kind(str, enum.Enum):
    """What a text is for: E1 and E12 encode queries and passages differently."""

    QUERY = "query"
    PASSAGE = "passage"


@dataclass(frozen=True)
class TextConvention:
    """How the source model's reference code prepares a text, per kind.

    ``prefix`` is text put before the text (e5: ``"query: "``); ``marker`` is a token
    inserted right after the first special token (ColBERT: ``[unused0]`` = [Q],
    ``[unused1]`` = [D]). Both are applied on token ids after the shared tokenizer ran.
    """

    query_prefix: str = ""
    passage_prefix: str = ""
    query_marker: str | None = None
    passage_marker: str | None = None
    # ColBERT query augmentation: queries are padded with [MASK] to this many tokens, and
    # the mask tokens are pooled (but not attended to).
    query_length: int | None = None
    # ColBERT drops punctuation tokens from document embeddings.
    skip_punctuation_in_passages: bool = False

    @property
    def kind_aware(self) -> bool:
        return self != TextConvention()


@dataclass(frozen=True)
class PublishedConfig:
    """A source model's size as its published ``config.json`` gives it (the ``full`` profile
    builds the real architecture from these values, never downloading them).

    Special token ids are not here: they come from the family's tokenizer, which the model
    must agree with.
    """

    layers: int  # num_hidden_layers
    hidden: int  # hidden_size
    heads: int  # num_attention_heads
    intermediate: int  # intermediate_size
    vocab_size: int
    max_positions: int  # max_position_embeddings
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    attention_window: int | None = None  # Longformer, every layer
    projection_dim: int | None = None  # CLIP's text projection


# BERT-base (bert-base-uncased config.json): SPLADE and ColBERTv2 are fine-tuned from it.
BERT_BASE = PublishedConfig(12, 768, 12, 3072, 30522, 512)
# The two MiniLM-L6 sentence-transformers models (nreimers/MiniLM-L6-H384-uncased).
MINILM_L6 = PublishedConfig(6, 384, 12, 1536, 30522, 512)


@dataclass(frozen=True)
class Embedder:
    id: str
    triton_model: str
    role: Role
    dim: int
    source: str  # Hugging Face id of the pretrained profile, or "custom"
    pooling: Pooling
    input: Input
    tokenizer: str | None = None  # TokenizerFamily.name
    max_length: int | None = None  # tokens, including special tokens
    batching: Batching = field(default_factory=Batching)
    convention: TextConvention = field(default_factory=TextConvention)
    published: PublishedConfig | None = None  # the source's config.json (neural models)

    @property
    def block_name(self) -> str:
        """Name of this embedder's block tensor (``E1`` ... ``E12``)."""
        return self.id


BERT = TokenizerFamily("bert-uncased", "tok_bert_uncased", "[PAD]", 512)
ROBERTA = TokenizerFamily("roberta-bpe", "tok_roberta_bpe", "<pad>", 4096)
CLIP = TokenizerFamily("clip-bpe", "tok_clip_bpe", "<|endoftext|>", 77)

TOKENIZER_FAMILIES: tuple[TokenizerFamily, ...] = (BERT, ROBERTA, CLIP)

EMBEDDERS: tuple[Embedder, ...] = (
    Embedder("E1", "e01_semantic", Role.SEMANTIC, 1024, "intfloat/e5-large-v2",
             Pooling.MEAN, Input.TOKENS, BERT.name, 512,
             convention=TextConvention(query_prefix="query: ", passage_prefix="passage: "),
             published=PublishedConfig(24, 1024, 16, 4096, 30522, 512)),
    Embedder("E2", "e02_temporal_recent", Role.TEMPORAL_RECENT, 512, "custom",
             Pooling.CUSTOM, Input.TIMESTAMP),
    Embedder("E3", "e03_temporal_periodic", Role.TEMPORAL_PERIODIC, 512, "custom",
             Pooling.CUSTOM, Input.TIMESTAMP),
    Embedder("E4", "e04_temporal_positional", Role.TEMPORAL_POSITIONAL, 512, "custom",
             Pooling.CUSTOM, Input.TIMESTAMP),
    Embedder("E5", "e05_causal", Role.CAUSAL, 768, "allenai/longformer-base-4096",
             Pooling.MEAN, Input.TOKENS, ROBERTA.name, 4096,
             published=PublishedConfig(12, 768, 12, 3072, 50265, 4098, type_vocab_size=1,
                                       layer_norm_eps=1e-5, attention_window=512)),
    Embedder("E6", "e06_sparse", Role.SPARSE, 1536, "naver/splade-cocondenser-ensembledistil",
             Pooling.SPLADE_MAX, Input.TOKENS, BERT.name, 512, published=BERT_BASE),
    Embedder("E7", "e07_code", Role.CODE, 768, "microsoft/codebert-base",
             Pooling.MEAN, Input.TOKENS, ROBERTA.name, 512,
             published=PublishedConfig(12, 768, 12, 3072, 50265, 514, type_vocab_size=1,
                                       layer_norm_eps=1e-5)),
    # sentence-transformers max_seq_length of the two MiniLM models: 128 and 256.
    Embedder("E8", "e08_graph", Role.GRAPH, 384, "sentence-transformers/paraphrase-MiniLM-L6-v2",
             Pooling.MEAN, Input.TOKENS, BERT.name, 128, published=MINILM_L6),
    Embedder("E9", "e09_hdc", Role.HDC, 1024, "custom", Pooling.CUSTOM, Input.TEXT),
    # The text tower of the CLIP checkpoint (its text_config and projection_dim).
    Embedder("E10", "e10_multimodal", Role.MULTIMODAL, 768, "openai/clip-vit-large-patch14",
             Pooling.EOS_PROJECTION, Input.TOKENS, CLIP.name, 77,
             published=PublishedConfig(12, 768, 12, 3072, 49408, 77, layer_norm_eps=1e-5,
                                       hidden_act="quick_gelu", projection_dim=768)),
    Embedder("E11", "e11_entity", Role.ENTITY, 384, "sentence-transformers/all-MiniLM-L6-v2",
             Pooling.MEAN, Input.TOKENS, BERT.name, 256, published=MINILM_L6),
    # ColBERTv2: doc_maxlen 180, query_maxlen 32, markers [Q] = [unused0], [D] = [unused1].
    Embedder("E12", "e12_late_interaction", Role.LATE_INTERACTION, 128, "colbert-ir/colbertv2.0",
             Pooling.COLBERT_MEAN, Input.TOKENS, BERT.name, 180,
             convention=TextConvention(query_marker="[unused0]", passage_marker="[unused1]",
                                       query_length=32, skip_punctuation_in_passages=True),
             published=BERT_BASE),
)


@dataclass(frozen=True)
class FuseMoEConfig:
    input_dim: int = 8320
    num_blocks: int = 12
    gate_hidden: int = 2048
    num_experts: int = 8
    expert_hidden: int = 4096
    output_dim: int = 1536
    top_k: int = 2
    temperature: float = 1.0
    layer_norm_eps: float = 1e-5
    seed: int = 20260101
    batching: Batching = field(default_factory=Batching)


FUSEMOE = FuseMoEConfig()


@dataclass(frozen=True)
class Limits:
    """What the public ensemble accepts; anything else is an error naming field and limit."""

    max_text_bytes: int = 65_536  # UTF-8 bytes per text (also bounds the tokens per text)
    min_timestamp: int = -2_208_988_800  # 1900-01-01T00:00:00Z
    max_timestamp: int = 4_102_444_800  # 2100-01-01T00:00:00Z
    pii_scrubbing: bool = True
    # Gate controls (optional inputs): TEMPERATURE in [min, max], TOP_K in 1..experts,
    # FOCUS multipliers in [0, max_focus].
    min_temperature: float = 0.05
    max_temperature: float = 20.0
    max_focus: float = 100.0
    # E4's optional SESSION (UTF-8 bytes; "" is the default shared session) and SEQUENCE
    # (a position in the session, 0..max_sequence; the TIMESTAMP stands in without one).
    max_session_bytes: int = 256
    max_sequence: int = 10**12
    # fused_image's IMAGE: encoded bytes, the pixels its header declares (checked before
    # decoding), and how elongated it may be (resized to 224 on its short side, a 1 x N
    # image would become 224 x 224N).
    max_image_bytes: int = 20 * 2**20
    max_image_pixels: int = 40_000_000
    max_image_aspect: int = 100

    @property
    def max_request_bytes(self) -> int:
        """The largest valid request body (or gRPC message): a full batch of the largest
        images, each row's other inputs at their limits JSON-escaped (6 bytes a byte at
        worst), plus 64 KiB of framing. The public front refuses larger ones (HTTP 413)."""
        row = self.max_image_bytes + 6 * self.max_session_bytes + 4096
        return ENSEMBLE_MAX_BATCH_SIZE * max(row, 6 * self.max_text_bytes + 4096) + 65_536

    def parameters(self, *names: str) -> dict[str, str]:
        """These limits (``names`` of them) as a model config's parameters."""
        return {n: ("on" if getattr(self, n) else "off") if n == "pii_scrubbing"
                else str(getattr(self, n)) for n in names}

    @classmethod
    def from_parameters(cls, params: dict[str, str]) -> Limits:
        """The limits a model's config parameters name; the others at their defaults."""
        values: dict[str, object] = {}
        for f in fields(cls):
            if f.name == "pii_scrubbing" and f.name in params:
                values[f.name] = params[f.name] != "off"
            elif f.name in params:
                values[f.name] = type(f.default)(params[f.name])
        return cls(**values)


LIMITS = Limits()


@dataclass(frozen=True)
class MemoryBudget:
    """Resident memory (MiB) the server stays under at the worst valid load: concurrent
    requests of 32 texts past every model's token limit (perf/burst.py). Per process (the
    tritonserver process and each model's Python stub) and for the whole server."""

    server_mib: int
    default_process_mib: int
    process_overrides: tuple[tuple[str, int], ...] = ()

    def process_mib(self, name: str) -> int:
        """The budget of a process: ``model`` or a further instance ``model#2``."""
        return dict(self.process_overrides).get(name.split("#")[0], self.default_process_mib)


# The default profile (tiny models, the real E11 and the trained FuseMoE), two instances per
# token embedder: measured peak 8.3 GiB for the whole server, FuseMoE's weights 1.5 GiB,
# each E5 instance (4096 tokens) 1.1 GiB, every other process under 0.7 GiB
# (perf/reports/burst-2inst.md).
MEMORY_BUDGET = MemoryBudget(server_mib=10240, default_process_mib=1024,
                             process_overrides=(("fusemoe", 2048), ("e05_causal", 2048)))
# The full profile, INT8, two instances per token embedder: measured peak 13.1 GiB, each E5
# instance 2.4 GiB, each E1 instance 1.5 GiB, FuseMoE 1.4 GiB, every other process under
# 1 GiB (perf/reports/burst-full.md).
FULL_MEMORY_BUDGET = MemoryBudget(server_mib=16384, default_process_mib=1536,
                                  process_overrides=(("e05_causal", 3072),
                                                     ("e01_semantic", 2048),
                                                     ("fusemoe", 2048)))
PREPROCESS_MODEL = "preprocess"
FUSEMOE_MODEL = "fusemoe"
ENSEMBLE_MODEL = "fused_text"
ENSEMBLE_MAX_BATCH_SIZE = 32
# fused_text with Triton's response cache: FUSED only. Triton 2.51's cache key is the model,
# its version and the inputs, not the requested outputs, so a cached entry point must have
# a single output (a cached FUSED-only answer would otherwise reach a request for E11). A
# hot swap loads a new version of it too, so no answer of the old FuseMoE is served from
# the cache afterwards.
CACHED_MODEL = "fused_text_cached"

# Public tensor names of the ensemble (a contract with every client).
TEXT = "TEXT"
TIMESTAMP = "TIMESTAMP"
KIND = "KIND"  # optional: "query" | "passage" (default)
TRUNCATE = "TRUNCATE"  # optional BOOL: false turns over-long texts into errors
REDACTIONS = "REDACTIONS"  # INT32 [7]: PII redactions per type (ensemble/pii.py TYPES)
TRUNCATED = "TRUNCATED"  # BOOL [12]: which blocks saw a truncated text
FUSED = "FUSED"
EXPERT_WEIGHTS = "EXPERT_WEIGHTS"
SELECTED_EXPERTS = "SELECTED_EXPERTS"  # INT32 [k]: by descending weight, -1 past a row's k
FUSION_VERSION = "FUSION_VERSION"  # BYTES [1]: the FuseMoE checkpoint that produced FUSED
# INT32 [1]: the text's tokens under USAGE_TOKENIZER, special tokens included, before any
# model's truncation (what a client bills or meters; the OpenAI-compatible gateway's usage).
TOKENS = "TOKENS"
# E6's SPLADE vector (vocabulary-sized, before the projection into E6), sent only when asked
# for: a row's non-zero terms by ascending vocabulary id, padded to the request's longest row
# with index -1 and weight 0.
E6_SPARSE_INDICES = "E6_SPARSE_INDICES"  # INT32 [k]
E6_SPARSE_WEIGHTS = "E6_SPARSE_WEIGHTS"  # FP32 [k]
SPARSE_TOP_K = "SPARSE_TOP_K"  # optional INT32 [1]: keep a row's k heaviest terms (0: all)
# E12's ColBERT token vectors (unit, 128-D), sent only when asked for: the vectors ColBERT's
# reference keeps (a query's 32 with its [MASK] augmentation; a passage's tokens but its
# punctuation), padded with zero vectors to the request's longest row; E12_TOKEN_COUNT is
# each row's own count.
E12_TOKENS = "E12_TOKENS"  # FP32 [n, 128]
E12_TOKEN_COUNT = "E12_TOKEN_COUNT"  # INT32 [1]
# A tokenizer model also answers IDS (INT32 [n]) with TERMS (BYTES [n]): its vocabulary's
# entries, so that a client can read SPLADE's indices as words (-1 gives "").
IDS = "IDS"
TERMS = "TERMS"
# fused_image: one encoded image (PNG, JPEG, WebP, GIF, BMP) instead of TEXT.
IMAGE = "IMAGE"  # BYTES [1]
IMAGE_MODEL = "fused_image"
IMAGE_EMBEDDER_MODEL = "e10_image"  # E10's vision tower: PIXELS -> the E10 block
PIXELS = "pixel_values"  # FP32 [3, 224, 224]: an image prepared as CLIP's processor does
# The blocks an image fills: E10 from the image, the time blocks from its TIMESTAMP; the
# text blocks are missing (FuseMoE's presence mask and fill, as in the fail-safe).
IMAGE_BLOCKS = ("E2", "E3", "E4", "E10")
# E4 is a session signature and a position. Optional, per item: without SESSION every text
# is in the default session (""), without SEQUENCE its TIMESTAMP is its position.
SESSION = "SESSION"  # BYTES [1]
SEQUENCE = "SEQUENCE"  # INT64 [1]
# Optional gate controls, per item (defaults: FuseMoEConfig and "every block, weight 1").
TEMPERATURE = "TEMPERATURE"  # FP32 [1]: softmax temperature of the gate
TOP_K = "TOP_K"  # INT32 [1]: experts mixed per item, 1..num_experts
FOCUS = "FOCUS"  # FP32 [12]: non-negative multipliers of E1..E12 before gating
PRESENCE = "PRESENCE"  # BOOL [12]: false marks a block missing (FuseMoE's fill, as in the fail-safe)
GATE_CONTROLS = (TEMPERATURE, TOP_K, FOCUS, PRESENCE)
# fusemoe only, set by fused_image: BOOL [1], true where E10 came from the image tower (its
# checkpoint's image_scale and image_offset map it to where the text tower's E10 lies).
FROM_IMAGE = "FROM_IMAGE"
# Optional, per request (every row of a request alike): the size and encoding of FUSED.
# DIMENSIONS: one of the checkpoint's Matryoshka prefixes (its manifest's "dimensions"; a
# checkpoint trained without them offers the full size only): FUSED is the first DIMENSIONS
# values of the full vector, L2-normalised again.
DIMENSIONS = "DIMENSIONS"  # INT32 [1]
# ENCODING: "float" (default: FUSED), "int8" (FUSED_INT8: round(v / scale) clipped to
# +-127, with the checkpoint's per-dimension scale, FUSED_SCALE), "binary" (FUSED_BINARY:
# the signs, v > 0 as 1, packed 8 per byte, first dimension in the high bit). The outputs
# of the other encodings come back with no columns.
ENCODING = "ENCODING"  # BYTES [1]
ENCODINGS = ("float", "int8", "binary")
FUSED_INT8 = "FUSED_INT8"  # INT8 [d]
FUSED_BINARY = "FUSED_BINARY"  # UINT8 [d / 8]
FUSED_SCALE = "FUSED_SCALE"  # FP32 [d]: int8 code * scale = the float value
OUTPUT_CONTROLS = (DIMENSIONS, ENCODING)
# The prefixes FuseMoE training makes meaningful (Matryoshka: each one, normalised, carries
# the objectives); multiples of 8 so that a binary vector fills its bytes.
MATRYOSHKA_DIMENSIONS = (1536, 1024, 768, 512, 256, 128)

# Internal tensor names, named on purpose (never exporter node names).
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
EMBEDDING = "embedding"
# FuseMoE echoes the blocks it fused as E1_BLOCK ... E12_BLOCK (the ensemble's E1 ... E12),
# only when asked. Every ensemble output then comes from one step: in Triton 2.51 a tensor
# that is both an ensemble output and another step's input is pruned when a client does not
# ask for it, and the ensemble then deadlocks.
BLOCK_SUFFIX = "_BLOCK"
TRUNCATED_SUFFIX = "_TRUNCATED"  # FuseMoE inputs: each token embedder's truncation flag
CLEAN_TEXT = "text"  # preprocess outputs: the validated (and scrubbed) text ...
CLEAN_TIMESTAMP = "timestamp"  # ... the validated timestamp ...
CLEAN_SESSION = "session"  # ... E4's session ...
CLEAN_POSITION = "position"  # ... and E4's position (SEQUENCE, else TIMESTAMP)
FLAG = "truncated"  # a token embedder's per-text truncation flag
TOKEN_COUNT = "token_count"  # a tokenizer's per-text token count (the ensemble's TOKENS)
SPARSE_INDICES = "sparse_indices"  # E6's outputs behind E6_SPARSE_INDICES ...
SPARSE_WEIGHTS = "sparse_weights"  # ... and E6_SPARSE_WEIGHTS
TOKEN_VECTORS = "token_vectors"  # E12's outputs behind E12_TOKENS (also its graph's output) ...
TOKEN_VECTOR_COUNT = "token_vector_count"  # ... and E12_TOKEN_COUNT
FAILSAFE_MODEL = "fused_text_failsafe"
MISSING = "MISSING"  # BOOL [12]: blocks the fail-safe entry point left out


@dataclass(frozen=True)
class Failsafe:
    deadline_ms: int = 5000  # per request, for all twelve embedders together
    required: tuple[str, ...] = ("E1",)
    min_other_blocks: int = 6  # besides the required ones
    # One circuit breaker per embedder (ensemble/breaker.py): this many failures or missed
    # deadlines in a row, each within the window of the last, open it; open, the block is
    # skipped at once for the cool-down; then probes, this many successes close it again.
    breaker_failures: int = 3
    breaker_window_ms: int = 30_000
    breaker_cooldown_ms: int = 10_000
    breaker_probes: int = 2

    def parameters(self) -> dict[str, str]:
        return {"deadline_ms": str(self.deadline_ms), "required": ",".join(self.required),
                "min_other_blocks": str(self.min_other_blocks),
                **{name: str(getattr(self, name)) for name in (
                    "breaker_failures", "breaker_window_ms", "breaker_cooldown_ms",
                    "breaker_probes")}}


FAILSAFE = Failsafe()


def embedder(block_id: str) -> Embedder:
    for spec in EMBEDDERS:
        if spec.id == block_id:
            return spec
    raise KeyError(f"unknown embedder {block_id!r}; known: {[e.id for e in EMBEDDERS]}")


def usage_tokenizer() -> TokenizerFamily:
    """The family whose counts are TOKENS: E1's (WordPiece, shared by five of the twelve)."""
    return tokenizer_family(embedder("E1").tokenizer or "")


def tokenizer_family(name: str) -> TokenizerFamily:
    for family in TOKENIZER_FAMILIES:
        if family.name == name:
            return family
    raise KeyError(f"unknown tokenizer family {name!r}")


def block_offsets() -> dict[str, tuple[int, int]]:
    """Start and end of each block in the 8320-D concatenation."""
    offsets: dict[str, tuple[int, int]] = {}
    start = 0
    for spec in EMBEDDERS:
        offsets[spec.id] = (start, start + spec.dim)
        start += spec.dim
    return offsets


def _check() -> None:
    total = sum(e.dim for e in EMBEDDERS)
    if total != FUSEMOE.input_dim:
        raise AssertionError(f"embedder dims sum to {total}, FuseMoE expects {FUSEMOE.input_dim}")
    if len(EMBEDDERS) != FUSEMOE.num_blocks:
        raise AssertionError("FuseMoE block count differs from the registry")
    for spec in EMBEDDERS:
        if (spec.input is Input.TOKENS) != (spec.tokenizer is not None):
            raise AssertionError(f"{spec.id}: a token model needs a tokenizer family, no other")
        if spec.tokenizer is not None:
            family = tokenizer_family(spec.tokenizer)
            if spec.max_length is None or spec.max_length > family.max_length:
                raise AssertionError(f"{spec.id}: max_length must fit in {family.name}")
            if spec.published is None:
                raise AssertionError(f"{spec.id}: a neural model needs its published config")


_check()
