"""Language data made on the spot, nothing downloaded: induction sequences and a byte-level
corpus from the running interpreter's standard library.

Both give integer token sequences ``(n, length)``; a model's logits at position ``t`` predict
the token at ``t + 1``, so :func:`next_token_loss` compares ``logits[:, :-1]`` with
``tokens[:, 1:]``.

**induction** (:func:`induction_data`). Each sequence holds a segment of ``S`` distinct tokens
twice in a row, ``S`` drawn from ``[min_segment, max_segment]``, after ``r`` filler tokens
(``r`` drawn from ``[0, length - 2 S]``) and before more filler up to ``length``. Filler
tokens are drawn uniformly from the tokens *not* in the segment (they may repeat among
themselves), so each segment token occurs exactly twice. Because ``S`` and ``r`` vary, only
matching content finds the earlier copy (a fixed positional offset does not). An induction
mechanism ("the token after the last time I saw the current token") predicts the next token
at every position ``t`` of the second copy but its last: ``r + S <= t <= r + 2 S - 2``; those
positions are the ``mask``. Everything else is unpredictable (filler is random; the first
copy is new). Defaults: vocabulary 32, length 32, segments of 4 to 12 tokens.
The metric is :func:`induction_accuracy`: next-token accuracy at the masked positions.

**text-lm** (:func:`stdlib_corpus`, :func:`text_sequences`). The source of
:data:`STDLIB_MODULES` (68 single-file modules of the standard library, ``<stdlib>/<name>.py``,
names sorted; a name missing from this interpreter is skipped and the corpus lists the files
it used), read as bytes, so the vocabulary is the 256 byte values. Split by file: the file at
index ``i`` of the sorted list is validation when ``i % 5 == 4`` (13 of the 68), training
otherwise; each split is its files joined by a newline. The corpus records its size (bytes,
which are characters for this all-ASCII source) and the sha256 of every file's name and
bytes, so a run on another Python says so. Sequences start at offsets drawn uniformly from a
seeded generator. The metric is :func:`bits_per_char`: the validation next-token loss in bits.
The corpus is read once per process.
"""

from __future__ import annotations

import functools
import hashlib
import math
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = [
    "InductionBatch", "induction_data", "induction_accuracy", "next_token_loss",
    "STDLIB_MODULES", "TextCorpus", "stdlib_corpus", "text_sequences", "bits_per_char",
    "BYTE_VOCAB",
]

BYTE_VOCAB = 256


# -- induction ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class InductionBatch:
    """Sequences with a repeated segment.

    ``tokens`` ``(n, length)``; ``mask`` ``(n, length)``: the next token is predictable by
    induction (and the current token occurred once before, ``period`` positions earlier);
    ``period`` ``(n,)``: the segment length; ``start`` ``(n,)``: where the second copy starts.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    period: torch.Tensor
    start: torch.Tensor
    vocab_size: int

    def __len__(self) -> int:
        return self.tokens.shape[0]


def _check_int(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def induction_data(n: int, *, vocab_size: int = 32, length: int = 32, min_segment: int = 4,
                   max_segment: int = 12, seed: int = 0) -> InductionBatch:
    """``n`` induction sequences (see the module's docstring), the same for the same seed."""
    _check_int(n, "n", 1)
    _check_int(min_segment, "min_segment", 2)
    _check_int(max_segment, "max_segment", min_segment)
    _check_int(vocab_size, "vocab_size", max_segment + 1)
    _check_int(length, "length", 2 * max_segment)
    g = torch.Generator().manual_seed(int(seed))
    # the first S tokens of a random permutation are the segment, the rest feed the filler
    perm = torch.rand(n, vocab_size, generator=g).argsort(1)
    S = torch.randint(min_segment, max_segment + 1, (n,), generator=g)
    r = (torch.rand(n, generator=g) * (length - 2 * S + 1)).long()
    filler_pick = (torch.rand(n, length, generator=g) * (vocab_size - S)[:, None]).long()
    filler = perm.gather(1, S[:, None] + filler_pick)
    rel = torch.arange(length)[None, :] - r[:, None]  # position relative to the first copy
    first, second = (rel >= 0) & (rel < S[:, None]), (rel >= S[:, None]) & (rel < 2 * S[:, None])
    seg_index = torch.where(second, rel - S[:, None], rel).clamp(0, vocab_size - 1)
    tokens = torch.where(first | second, perm.gather(1, seg_index), filler)
    start = r + S
    mask = second & (rel <= 2 * S[:, None] - 2)
    return InductionBatch(tokens, mask, S, start, vocab_size)


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats) of predicting ``tokens[:, t + 1]`` from ``logits[:, t]``."""
    if logits.dim() != 3 or logits.shape[:2] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} must be (batch, seq, vocab) for tokens "
                         f"{tuple(tokens.shape)}")
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                           tokens[:, 1:].reshape(-1).long())


def induction_accuracy(logits: torch.Tensor, batch: InductionBatch) -> float:
    """Next-token accuracy at the positions an induction mechanism can predict."""
    if logits.dim() != 3 or logits.shape[:2] != batch.tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} must be (batch, seq, vocab) for tokens "
                         f"{tuple(batch.tokens.shape)}")
    guess = logits[:, :-1].argmax(-1)
    right = (guess == batch.tokens[:, 1:]) & batch.mask[:, :-1]
    return float(right.sum()) / max(1, int(batch.mask.sum()))


# -- text-lm ------------------------------------------------------------------------------------
#: Single-file modules of the standard library that the text-lm corpus reads (sorted).
STDLIB_MODULES = tuple(sorted("""
abc argparse ast base64 bisect calendar cmd code codecs colorsys configparser contextlib copy
csv dataclasses difflib dis enum fnmatch fractions functools getopt gettext glob gzip hashlib
heapq hmac inspect ipaddress keyword linecache locale numbers operator optparse pickle pprint
queue quopri random reprlib sched secrets selectors shlex shutil signal socket statistics string
stringprep subprocess tabnanny tempfile textwrap threading timeit token tokenize trace traceback
types typing uuid warnings wave weakref
""".split()))


@dataclass(frozen=True)
class TextCorpus:
    """Bytes of the training and validation files (uint8 tensors) and where they came from."""

    train: torch.Tensor
    valid: torch.Tensor
    train_files: tuple[str, ...]
    valid_files: tuple[str, ...]
    chars: int  # bytes in all files together (the two splits without their separators)
    sha256: str  # of every file's name, a NUL, its bytes, in sorted order
    source: str = field(default="")


@functools.lru_cache(maxsize=4)
def stdlib_corpus(stdlib: str | None = None) -> TextCorpus:
    """The text-lm corpus from the standard library at ``stdlib`` (default: this interpreter's),
    read once per process."""
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    files = [(name, root / f"{name}.py") for name in STDLIB_MODULES]
    files = [(name, path) for name, path in files if path.is_file()]
    if not files:
        raise FileNotFoundError(f"none of the corpus modules is in {root}; pass the directory "
                                "of a Python standard library")
    digest = hashlib.sha256()
    parts: dict[str, list] = {"train": [], "valid": []}
    names: dict[str, list] = {"train": [], "valid": []}
    chars = 0
    for i, (name, path) in enumerate(files):
        data = path.read_bytes()
        digest.update(name.encode() + b"\0" + data)
        chars += len(data)
        split = "valid" if i % 5 == 4 else "train"
        parts[split].append(data)
        names[split].append(f"{name}.py")
    as_tensor = lambda chunks: torch.frombuffer(bytearray(b"\n".join(chunks)), dtype=torch.uint8)
    return TextCorpus(as_tensor(parts["train"]), as_tensor(parts["valid"]),
                      tuple(names["train"]), tuple(names["valid"]), chars, digest.hexdigest(),
                      str(root))


def text_sequences(n: int, length: int, split: str = "train", seed: int = 0,
                   corpus: TextCorpus | None = None) -> torch.Tensor:
    """``n`` byte sequences of ``length`` (long, ``(n, length)``) from one split, starting at
    offsets drawn uniformly with ``seed``."""
    _check_int(n, "n", 1)
    _check_int(length, "length", 2)
    if split not in ("train", "valid"):
        raise ValueError(f"unknown split {split!r}; allowed: train, valid")
    corpus = corpus or stdlib_corpus()
    data = corpus.train if split == "train" else corpus.valid
    if len(data) < length:
        raise ValueError(f"the {split} split has {len(data)} bytes, fewer than length={length}")
    g = torch.Generator().manual_seed(int(seed))
    starts = torch.randint(0, len(data) - length + 1, (n,), generator=g)
    return data[starts[:, None] + torch.arange(length)[None, :]].long()


def bits_per_char(logits: torch.Tensor, tokens: torch.Tensor) -> float:
    """Next-token loss in bits per character (byte)."""
    return float(next_token_loss(logits, tokens)) / math.log(2)
