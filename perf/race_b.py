"""Race B: fused_text served, against the same pipeline written by hand in one process.

The hand-written side is what a user writes with the source models' libraries, in FP32 at
their defaults (torch on every core), given the whole list of texts at once:

- sentence-transformers ``encode`` for the models it loads as they are published: e5
  (mean pooling, "passage: " prefix), CodeBERT (mean pooling), the two MiniLMs;
  ``SparseEncoder`` (MLM head + SPLADE max pooling) for SPLADE, then our seeded projection.
  These sort the list by length before batching by 32, as the library does by default.
- transformers loops of 32 for the models no such library loads with their convention:
  Longformer with global attention on <s>, CLIP's projected text state, ColBERT's document
  encoder ([D] marker, per-token L2 of the 128-D head, punctuation left out of the pooled
  mean). They get the same length sorting (more than a hand loop does by default).
- the four custom encoders and FuseMoE (FP32) are the project's own code, as served; the
  texts pass the same validation and PII scrubbing.

Both sides get exactly the same texts, the same number of repeats, taking turns.
"""

from __future__ import annotations

import string
import time
from pathlib import Path

import numpy as np

from perf.workload import RUN, T0, model_stats, served_pipeline, stats_delta

BATCH = 32


def _by_length(texts: list[str]) -> np.ndarray:
    """sentence-transformers' order: longest text (characters) first."""
    return np.argsort([-len(t) for t in texts], kind="stable")


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class HandWritten:
    """fused_text's pipeline as a user writes it by hand with the libraries (FP32)."""

    def __init__(self, repository: Path, only: set[str] | None = None) -> None:
        """``only``: the token embedders to load and run (every one when None); the custom
        encoders and FuseMoE are always loaded."""
        import torch
        from sentence_transformers import SentenceTransformer, SparseEncoder
        from sentence_transformers.sentence_transformer.modules import (
            Normalize,
            Pooling,
            Transformer,
        )
        from sentence_transformers.sparse_encoder.modules import SpladePooling
        from transformers import (
            AutoTokenizer,
            BertModel,
            CLIPTextModelWithProjection,
            LongformerModel,
        )

        from ensemble import fusemoe
        from ensemble.stages import CustomEmbedder, version_dir
        from ensemble.validation import Validator
        from export.artifacts import load_numpy
        from export.hf_folders import LINEAR_FILE, hf_folder
        from export.layout import SPLADE_STEM, SPLADE_VERSION
        from export.registry import EMBEDDERS, FUSEMOE_MODEL, Input, embedder

        cache = RUN / "hand-written" / repository.name
        self.neural = {e.id for e in EMBEDDERS if e.input is Input.TOKENS
                       and (only is None or e.id in only)}
        folders = {b: hf_folder(embedder(b), repository, cache) for b in self.neural}
        self.torch = torch

        def sentence_transformer(block: str) -> SentenceTransformer:
            folder = folders[block]
            if (folder / "modules.json").is_file():  # published as a sentence-transformers model
                return SentenceTransformer(str(folder), device="cpu")
            word = Transformer(str(folder), max_seq_length=embedder(block).max_length)
            return SentenceTransformer(device="cpu", modules=[
                word, Pooling(word.get_embedding_dimension(), "mean"), Normalize()])

        self.st = {b: sentence_transformer(b) for b in ("E1", "E7", "E8", "E11")
                   if b in self.neural}
        if "E6" in self.neural:
            mlm = Transformer(str(folders["E6"]), max_seq_length=embedder("E6").max_length,
                              transformer_task="fill-mask")
            self.splade = SparseEncoder(device="cpu", modules=[
                mlm, SpladePooling("max", activation_function="relu")])
            self.splade_projection = load_numpy(version_dir(repository, "e06_sparse"),
                                                SPLADE_STEM, SPLADE_VERSION)["projection"]
        self.tokenizers = {b: AutoTokenizer.from_pretrained(folders[b])
                           for b in ("E5", "E10", "E12") if b in self.neural}
        if "E5" in self.neural:
            self.longformer = LongformerModel.from_pretrained(folders["E5"],
                                                              add_pooling_layer=False).eval()
        if "E10" in self.neural:
            self.clip = CLIPTextModelWithProjection.from_pretrained(folders["E10"]).eval()
        if "E12" in self.neural:
            self.colbert = BertModel.from_pretrained(folders["E12"],
                                                     add_pooling_layer=False).eval()
            linear = folders["E12"] / LINEAR_FILE
            self.colbert_linear = _tensor(linear if linear.is_file() else
                                          folders["E12"] / "model.safetensors", "linear.weight")
            tok = self.tokenizers["E12"]
            self.colbert_skip = {tok.encode(p, add_special_tokens=False)[0]
                                 for p in string.punctuation}
        self.custom = {e.id: CustomEmbedder(e, version_dir(repository, e.triton_model))
                       for e in EMBEDDERS if e.input is not Input.TOKENS}
        self.fusemoe, _ = fusemoe.load(version_dir(repository, FUSEMOE_MODEL), precision="fp32")
        self.validator = Validator()
        self.order = [e.id for e in EMBEDDERS]
        self.max_length = {e.id: e.max_length for e in EMBEDDERS}
        self.seconds: dict[str, float] = {}  # per block, the last call of blocks()

    # -- the models no library loads with their convention: loops of 32, by length --------

    def _loop(self, texts: list[str], encode) -> np.ndarray:
        out: list[np.ndarray | None] = [None] * len(texts)
        order = _by_length(texts)
        with self.torch.inference_mode():
            for start in range(0, len(texts), BATCH):
                rows = order[start:start + BATCH]
                for i, v in zip(rows, encode([texts[i] for i in rows])):
                    out[i] = v
        return np.stack(out)

    def _longformer(self, chunk: list[str]) -> np.ndarray:
        enc = self.tokenizers["E5"](chunk, padding=True, truncation=True,
                                    max_length=self.max_length["E5"], return_tensors="pt")
        glob = self.torch.zeros_like(enc["attention_mask"])
        glob[:, 0] = 1
        states = self.longformer(**enc, global_attention_mask=glob).last_hidden_state
        return _mean(states, enc["attention_mask"]).numpy()

    def _clip(self, chunk: list[str]) -> np.ndarray:
        enc = self.tokenizers["E10"](chunk, padding=True, truncation=True,
                                     max_length=self.max_length["E10"], return_tensors="pt")
        return _l2(self.clip(**enc).text_embeds.numpy())

    def _colbert(self, chunk: list[str]) -> np.ndarray:
        """ColBERT's document encoder: ". " + text, the "." replaced by [D] ([unused1])."""
        tok = self.tokenizers["E12"]
        enc = tok([". " + t for t in chunk], padding="longest", truncation=True,
                  max_length=self.max_length["E12"], return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        ids[:, 1] = tok.convert_tokens_to_ids("[unused1]")
        keep = mask.clone()
        for token in self.colbert_skip:
            keep[ids == token] = 0
        states = self.colbert(input_ids=ids, attention_mask=mask).last_hidden_state
        vectors = self.torch.nn.functional.normalize(states @ self.colbert_linear.T, dim=-1)
        return _mean(vectors, keep).numpy()

    # -- the whole pipeline ----------------------------------------------------------------

    def prepared(self, texts: list[str]) -> list[str]:
        """The texts as the server embeds them: validated, PII scrubbed."""
        from ensemble.pii import scrub_texts

        raw = np.array([t.encode("utf-8") for t in texts], dtype=np.object_)
        return scrub_texts(self.validator.texts(raw), self.validator.limits.pii_scrubbing)[0]

    def blocks(self, texts: list[str], prepared: bool = False) -> dict[str, np.ndarray]:
        """Every loaded block of ``texts`` (the custom encoders' and the token embedders'
        of ``only``); ``prepared``: the texts are already ``prepared()``'s."""
        if not prepared:
            texts = self.prepared(texts)
        stamps = self.validator.timestamps(np.full(len(texts), T0))
        steps = {
            "E1": lambda: self.st["E1"].encode([f"passage: {t}" for t in texts],
                                               batch_size=BATCH),
            "E5": lambda: _l2(self._loop(texts, self._longformer)),
            "E6": lambda: _l2(self.splade.encode(
                texts, batch_size=BATCH, convert_to_tensor=True,
                convert_to_sparse_tensor=False).cpu().numpy() @ self.splade_projection),
            "E7": lambda: self.st["E7"].encode(texts, batch_size=BATCH),
            "E8": lambda: self.st["E8"].encode(texts, batch_size=BATCH,
                                               normalize_embeddings=True),
            "E10": lambda: self._loop(texts, self._clip),
            "E11": lambda: self.st["E11"].encode(texts, batch_size=BATCH,
                                                 normalize_embeddings=True),
            "E12": lambda: _l2(self._loop(texts, self._colbert)),
        }
        for block, encoder in self.custom.items():
            steps[block] = ((lambda e=encoder: e.embed_texts(texts)) if encoder.hdc is not None
                            else (lambda e=encoder: e.embed_times(stamps)))
        steps = {b: step for b, step in steps.items() if b in self.neural or b in self.custom}
        out = {}
        for block, step in steps.items():
            start = time.perf_counter()
            out[block] = step()
            self.seconds[block] = time.perf_counter() - start
        return {b: np.asarray(out[b], dtype=np.float32) for b in self.order if b in out}

    def fuse(self, blocks: dict[str, np.ndarray]) -> np.ndarray:
        """FuseMoE (FP32, the served checkpoint) over every block, at the default controls."""
        from ensemble import fusemoe

        start = time.perf_counter()
        x = self.torch.from_numpy(np.concatenate([blocks[b] for b in self.order], axis=1))
        controls = self.validator.controls(len(x))
        fused = fusemoe.fuse(self.fusemoe, x, controls).fused.numpy()
        self.seconds["fusemoe"] = time.perf_counter() - start
        return fused

    def embed(self, texts: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        blocks = self.blocks(texts)
        return self.fuse(blocks), blocks


def _mean(states, mask):
    m = mask.unsqueeze(-1).to(states.dtype)
    return (states * m).sum(1) / m.sum(1).clamp(min=1e-9)


def _tensor(path: Path, name: str):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(name)


def agreement(hand: HandWritten, grpc_url: str, texts: list[str]) -> dict[str, float]:
    """Lowest cosine per block and for FUSED between the two sides on the same texts: the
    same work, not a faster approximation (INT8 serving lowers them a little)."""
    from fusedembed_client import FusedEmbedClient

    fused, blocks = hand.embed(texts)
    with FusedEmbedClient(grpc_url, "grpc") as client:
        served = client.embed_batch(texts, [T0] * len(texts), blocks=hand.order)
    out = {"FUSED": float(np.min(np.sum(_l2(fused) * _l2(np.stack([e.vector for e in served])),
                                        axis=1)))}
    for b in hand.order:
        got = _l2(np.stack([e.blocks[b] for e in served]))
        out[b] = float(np.min(np.sum(_l2(blocks[b]) * got, axis=1)))
    return out


def hand_written_run(hand: HandWritten, texts: list[str]) -> dict:
    start = time.perf_counter()
    hand.embed(texts)
    seconds = time.perf_counter() - start
    print(f"  hand-written pipeline: {len(texts) / seconds:.2f} texts/s", flush=True)
    return {"texts": len(texts), "seconds": seconds, "items_per_s": len(texts) / seconds,
            "model_seconds": dict(hand.seconds)}


def race(hand: HandWritten, grpc_url: str, http_url: str, texts: list[str], turns: int,
         concurrency: tuple[int, ...] = (2, 4)) -> dict:
    """The two sides taking turns ``turns`` times on the same texts (the hand-written side
    gets the whole list, the served side the same texts as requests of 32 from each of
    ``concurrency`` clients); ratio = median over turns of the best served texts/s over
    the hand-written texts/s measured just before it; ``models``: Triton's per-model
    statistics over the served runs."""
    hand.embed(texts[:BATCH])  # warm-up: both sides are measured warm
    before = model_stats(http_url)
    chunks = [texts[i:i + BATCH] for i in range(0, len(texts), BATCH)]
    rows = []
    for k in range(turns):
        print(f"  Race B turn {k + 1}/{turns}:", flush=True)
        alone = hand_written_run(hand, texts)
        served = [served_pipeline(grpc_url, chunks, c) for c in concurrency]
        best = max(x["items_per_s"] for x in served)
        rows.append({"hand_written": alone, "served": served,
                     "ratio": best / alone["items_per_s"]})
    return {"turns": rows, "texts": len(texts),
            "ratio": float(np.median([t["ratio"] for t in rows])),
            "models": stats_delta(before, model_stats(http_url))}


def time_table(result: dict) -> list[str]:
    """Where each side spends its time, per model and batch of 32 texts: the hand-written
    side's seconds (median over the turns, whole list, every core) against the served
    side's compute ms per request of 32 (Triton's statistics over every served run, one
    thread per model)."""
    from export.registry import EMBEDDERS, FUSEMOE_MODEL

    served_names = {e.id: e.triton_model for e in EMBEDDERS} | {"fusemoe": FUSEMOE_MODEL}
    turns = [t["hand_written"] for t in result["turns"] if "model_seconds" in t["hand_written"]]
    if not turns:
        return []
    per_batch = BATCH / result["texts"]
    lines = [("| model | hand-written ms per 32 texts (every core) | "
              "served compute ms per request of 32 (one thread, the cores shared with every "
              "other model) |"), "|---|---|---|"]
    first = turns[0]["model_seconds"]
    for block in sorted(first, key=lambda b: -first[b]):
        hand = 1000 * per_batch * float(np.median([t["model_seconds"][block] for t in turns]))
        model = served_names.get(block, block)
        served = result.get("models", {}).get(model, {}).get("compute_ms")
        lines.append(f"| {block} ({model}) | {hand:.0f} | "
                     + (f"{served:.0f}" if served is not None else "") + " |")
    return lines


def table(result: dict) -> list[str]:
    served = result["turns"][0]["served"]
    lines = ["| turn | hand-written texts/s | "
             + " | ".join(f"fused_text, {x['concurrency']} clients" for x in served)
             + " | ratio |", "|---" * (len(served) + 3) + "|"]
    for k, t in enumerate(result["turns"]):
        lines.append(f"| {k + 1} | {t['hand_written']['items_per_s']:.2f} | "
                     + " | ".join(f"{x['items_per_s']:.2f}" for x in t["served"])
                     + f" | {t['ratio']:.2f} |")
    return lines
