"""Language data: induction sequences (shapes, what the mask promises, determinism) and the
standard-library corpus (recorded size and hash, split by file, reproducible sequences)."""

import math

import pytest
import torch

from bimt.tasks.language import (
    BYTE_VOCAB, STDLIB_MODULES, bits_per_char, induction_accuracy, induction_data,
    next_token_loss, stdlib_corpus, text_sequences,
)


def test_induction_sequences_hold_what_the_mask_promises():
    b = induction_data(200, vocab_size=20, length=30, min_segment=3, max_segment=9, seed=4)
    assert b.tokens.shape == b.mask.shape == (200, 30) and len(b) == 200
    assert b.tokens.dtype == torch.long and b.mask.dtype == torch.bool
    assert int(b.tokens.min()) >= 0 and int(b.tokens.max()) < 20
    assert set(b.period.tolist()) <= set(range(3, 10)) and len(set(b.period.tolist())) > 3
    for i in range(200):
        x, S, start = b.tokens[i].tolist(), int(b.period[i]), int(b.start[i])
        seg = x[start - S:start]
        assert x[start:start + S] == seg and len(set(seg)) == S  # a segment of distinct tokens, twice
        for v in seg:
            assert x.count(v) == 2  # and nowhere else
        masked = [t for t in range(30) if b.mask[i, t]]
        assert masked == list(range(start, start + S - 1))
        for t in masked:  # an induction mechanism predicts the next token there
            earlier = [s for s in range(t) if x[s] == x[t]]
            assert earlier == [t - S] and x[earlier[0] + 1] == x[t + 1]
    # where the repeat starts varies, so no fixed offset finds the earlier copy
    assert len(set(b.start.tolist())) > 5


def test_induction_data_is_deterministic_and_checked():
    a, b = induction_data(8, seed=3), induction_data(8, seed=3)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask)
    assert not torch.equal(a.tokens, induction_data(8, seed=4).tokens)
    with pytest.raises(ValueError, match="vocab_size must be an integer >= 13"):
        induction_data(4, vocab_size=12, max_segment=12)
    with pytest.raises(ValueError, match="length must be an integer >= 25"):
        induction_data(4, length=24)  # two segments of 12 and a token before them
    lead = lambda b: b.start - b.period  # filler tokens before the first copy
    assert (lead(induction_data(300, seed=1)) >= 1).all()
    assert (lead(induction_data(300, min_lead=0, seed=1)) == 0).any()


def test_induction_accuracy_and_losses():
    b = induction_data(16, vocab_size=10, length=24, min_segment=3, max_segment=6, seed=1)
    perfect = torch.full((16, 24, 10), -10.0)
    perfect[:, :-1].scatter_(2, b.tokens[:, 1:, None], 10.0)
    assert induction_accuracy(perfect, b) == 1.0
    copy_current = torch.nn.functional.one_hot(b.tokens, 10).float()  # predicts the current token
    assert induction_accuracy(copy_current, b) == 0.0
    uniform = torch.zeros(16, 24, 10)
    assert float(next_token_loss(uniform, b.tokens)) == pytest.approx(math.log(10))
    assert bits_per_char(uniform, b.tokens) == pytest.approx(math.log2(10))
    with pytest.raises(ValueError, match="logits"):
        induction_accuracy(uniform[:, :5], b)


def test_stdlib_corpus_is_recorded_and_split_by_file():
    c = stdlib_corpus()
    assert stdlib_corpus() is c  # read once per process
    files = c.train_files + c.valid_files
    assert sorted(files) == [f"{m}.py" for m in STDLIB_MODULES if f"{m}.py" in files]
    assert not set(c.train_files) & set(c.valid_files)
    assert len(c.valid_files) == len(files) // 5
    assert c.chars == len(c.train) + len(c.valid) - (len(c.train_files) - 1) - (len(c.valid_files) - 1)
    assert c.chars > 1_000_000 and len(c.sha256) == 64
    assert c.train.dtype == torch.uint8
    # a file's text sits whole in its split
    import sysconfig
    from pathlib import Path

    text = (Path(sysconfig.get_paths()["stdlib"]) / c.valid_files[0]).read_bytes()
    assert text in bytes(c.valid.numpy()) and text not in bytes(c.train.numpy())


def test_text_sequences_are_reproducible_byte_windows():
    x = text_sequences(5, 64, "valid", seed=7)
    assert x.shape == (5, 64) and x.dtype == torch.long and int(x.max()) < BYTE_VOCAB
    assert torch.equal(x, text_sequences(5, 64, "valid", seed=7))
    assert not torch.equal(x, text_sequences(5, 64, "valid", seed=8))
    valid = bytes(stdlib_corpus().valid.numpy())
    assert all(bytes(row.tolist()) in valid for row in x)
    with pytest.raises(ValueError, match="unknown split 'test'"):
        text_sequences(2, 8, "test")
