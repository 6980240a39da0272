"""Tokenizers for the three families, trained offline on a small fixed corpus (tiny profile).

Each is saved in the standard ``tokenizer.json`` form that the server's tokenizer models
and the in-process reference load with the ``tokenizers`` library. The pipelines mirror
what ``transformers`` converts BERT (uncased WordPiece), RoBERTa (byte-level BPE) and
CLIP (lower-cased BPE with ``</w>`` word ends) tokenizers to.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from export.registry import BERT, CLIP, ROBERTA, TokenizerFamily

CORPUS = Path(__file__).parent / "data" / "tiny_corpus.txt"
TINY_VOCAB = 1200
# Printable ASCII: WordPiece maps characters outside its vocabulary to [UNK].
ALPHABET = [chr(c) for c in range(32, 127)]


def _corpus() -> list[str]:
    return CORPUS.read_text(encoding="utf-8").splitlines()


def _bert_pipeline(tok: Tokenizer) -> None:
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=None, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")


def bert_uncased() -> Tokenizer:
    # The WordPiece trainer breaks count ties in hash order (a different vocabulary on every
    # run), so the tiny vocabulary is built directly: specials, every character alone and as
    # a "##" continuation, then the corpus words by descending count.
    probe = Tokenizer(models.WordPiece({"[UNK]": 0}, unk_token="[UNK]"))
    _bert_pipeline(probe)
    counts: Counter[str] = Counter()
    for line in _corpus():
        normalized = probe.normalizer.normalize_str(line)
        counts.update(w for w, _ in probe.pre_tokenizer.pre_tokenize_str(normalized))
    chars = sorted({c.lower() for c in ALPHABET} | {c for w in counts for c in w})
    # [unused0] and [unused1] are ColBERT's query and document markers, as in BERT's vocab.
    specials = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens = specials + chars + ["##" + c for c in chars]
    words = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))
    tokens += words[: max(0, TINY_VOCAB - len(tokens))]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]",
                                     max_input_chars_per_word=100))
    _bert_pipeline(tok)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tok


ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids 0..4


def roberta_pipeline(tok: Tokenizer) -> Tokenizer:
    """RoBERTa's byte-level BPE pipeline (what transformers converts its tokenizer to)."""
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")),
        trim_offsets=True, add_prefix_space=False)
    return tok


def roberta_bpe() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB, special_tokens=ROBERTA_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return roberta_pipeline(tok)


CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"


def _clip_normalizer():
    return normalizers.Sequence([
        normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])


def _clip_pre_tokenizer():
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(
            Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
            behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])


def clip_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
    """CLIP's lower-cased BPE with "</w>" word ends over ``vocab`` and ``merges``."""
    tok = Tokenizer(models.BPE(vocab, merges, unk_token=CLIP_EOS, continuing_subword_prefix="",
                               end_of_word_suffix="</w>", fuse_unk=False))
    tok.normalizer, tok.pre_tokenizer = _clip_normalizer(), _clip_pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing(
        (CLIP_EOS, tok.token_to_id(CLIP_EOS)), (CLIP_BOS, tok.token_to_id(CLIP_BOS)),
        trim_offsets=False, add_prefix_space=False)
    return tok


def clip_bpe() -> Tokenizer:
    # The BPE trainer is deterministic only without an end-of-word suffix: learn the merges
    # without it, then add CLIP's "</w>" word-final form of every byte symbol.
    learner = Tokenizer(models.BPE())
    learner.normalizer, learner.pre_tokenizer = _clip_normalizer(), _clip_pre_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB, special_tokens=[CLIP_BOS, CLIP_EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    learner.train_from_iterator(_corpus(), trainer=trainer)
    learned = json.loads(learner.to_str())["model"]
    vocab: dict[str, int] = dict(learned["vocab"])
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol + "</w>"] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    return clip_tokenizer(vocab, merges)


TINY_BUILDERS: dict[str, Callable[[], Tokenizer]] = {
    BERT.name: bert_uncased,
    ROBERTA.name: roberta_bpe,
    CLIP.name: clip_bpe,
}


def build_tiny(family: TokenizerFamily, path: Path) -> Tokenizer:
    tok = TINY_BUILDERS[family.name]()
    tok.enable_truncation(max_length=family.max_length)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return tok
