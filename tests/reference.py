"""Reference embeddings computed the way each source model's own code computes them.

Straight from transformers (and ColBERT's tokenization as its reference code does it),
independent of the project's export path: what a served block must equal.
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import torch

from ensemble.stages import version_dir
from export.artifacts import load_numpy
from export.hf_folders import LINEAR_FILE
from export.layout import SPLADE_STEM, SPLADE_VERSION
from export.registry import Kind, embedder


def _mean_l2(states: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    m = mask.unsqueeze(-1).float()
    pooled = (states * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def reference(block: str, folder: Path, texts: list[str], kind: Kind, repo: Path) -> np.ndarray:
    """The source model's own convention, straight from transformers."""
    import transformers as tf

    tok = tf.AutoTokenizer.from_pretrained(folder)
    max_length = embedder(block).max_length
    with torch.no_grad():
        if block in ("E1", "E7", "E8", "E11"):
            if block == "E1":
                texts = [f"{kind.value}: {t}" for t in texts]
            enc = tok(texts, padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt")
            model = tf.AutoModel.from_pretrained(folder).eval()
            return _mean_l2(model(**enc).last_hidden_state, enc["attention_mask"])
        if block == "E5":
            enc = tok(texts, padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt")
            model = tf.LongformerModel.from_pretrained(folder).eval()
            glob = torch.zeros_like(enc["attention_mask"])
            glob[:, 0] = 1
            out = model(**enc, global_attention_mask=glob).last_hidden_state
            return _mean_l2(out, enc["attention_mask"])
        if block == "E6":
            sparse = splade_reference(folder, texts)
            proj = load_numpy(version_dir(repo, "e06_sparse"), SPLADE_STEM,
                              SPLADE_VERSION)["projection"]
            dense = sparse @ proj
            return dense / np.linalg.norm(dense, axis=1, keepdims=True)
        if block == "E10":
            enc = tok(texts, padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt")
            feats = tf.CLIPModel.from_pretrained(folder).eval().get_text_features(**enc)
            feats = getattr(feats, "pooler_output", feats)
            return torch.nn.functional.normalize(feats, dim=-1).numpy()
        if block == "E12":
            return colbert_reference(folder, texts, kind)
    raise AssertionError(block)


def splade_reference(folder: Path, texts: list[str]) -> np.ndarray:
    """SPLADE's vocabulary-sized vectors [n, vocabulary] as its model card computes them:
    max over the attended tokens of log(1 + relu(MLM logits))."""
    import transformers as tf

    tok = tf.AutoTokenizer.from_pretrained(folder)
    enc = tok(texts, padding=True, truncation=True, max_length=embedder("E6").max_length,
              return_tensors="pt")
    with torch.no_grad():
        logits = tf.BertForMaskedLM.from_pretrained(folder).eval()(**enc).logits
    return (torch.log1p(torch.relu(logits))
            * enc["attention_mask"].unsqueeze(-1)).max(dim=1).values.numpy()


def colbert_reference(folder: Path, texts: list[str], kind: Kind) -> np.ndarray:
    """E12's block: the mean of ColBERT's token vectors, L2."""
    return np.stack([_mean_l2(torch.from_numpy(v)[None], torch.ones(1, len(v)))[0]
                     for v in colbert_token_reference(folder, texts, kind)])


def colbert_token_reference(folder: Path, texts: list[str], kind: Kind) -> list[np.ndarray]:
    """ColBERT's token vectors per text [n, 128], as ColBERT.query / ColBERT.doc keep them
    (its tokenizers: the [Q]/[D] marker, a query padded with [MASK] to 32 and attending to
    its text only, a document's punctuation and padding dropped)."""
    import transformers as tf
    from safetensors import safe_open

    tok = tf.AutoTokenizer.from_pretrained(folder)
    bert = tf.BertModel.from_pretrained(folder, add_pooling_layer=False).eval()
    # A checkpoint holds the head beside BERT; a seeded model's folder holds it on its own.
    head = folder / LINEAR_FILE if (folder / LINEAR_FILE).is_file() else folder / "model.safetensors"
    with safe_open(str(head), framework="pt") as f:
        linear = f.get_tensor("linear.weight")
    texts = [". " + t for t in texts]  # the "." is replaced by the marker
    if kind is Kind.QUERY:
        enc = tok(texts, padding="max_length", truncation=True, max_length=32,
                  return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        ids[:, 1] = tok.convert_tokens_to_ids("[unused0]")
        ids[ids == tok.pad_token_id] = tok.mask_token_id
        keep = torch.ones_like(ids)
    else:
        enc = tok(texts, padding="longest", truncation=True, max_length=180,
                  return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        ids[:, 1] = tok.convert_tokens_to_ids("[unused1]")
        skip = {tok.encode(p, add_special_tokens=False)[0] for p in string.punctuation}
        keep = torch.tensor([[int(x not in skip and x != tok.pad_token_id) for x in row]
                             for row in ids.tolist()])
    with torch.no_grad():
        vectors = bert(input_ids=ids, attention_mask=mask).last_hidden_state @ linear.T
    vectors = torch.nn.functional.normalize(vectors, dim=-1)
    return [v[k.bool()].numpy() for v, k in zip(vectors, keep)]


def sentence_transformers_reference(folder: Path, texts: list[str]) -> np.ndarray:
    """sentence-transformers itself, for checkpoints that carry its modules.json."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    return model.encode(texts, batch_size=8, normalize_embeddings=True)
