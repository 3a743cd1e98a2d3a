"""BIMT on a Hugging Face GPT-2 (or Llama) trained on the text-lm corpus, against the same loop
without the cost: the connection cost at the start and end of both runs, and their validation
losses.

Both runs go through ``bimt.fit(model=..., data=..., loss="ce")`` from the same random model
(the same seed), the same data and batches, the same steps and learning rate; the baseline is
method ``vanilla`` (lambda 0, no swaps), and its cost is measured with the same settings (A,
y*). The data: byte sequences of the Python standard library's source
(``bimt.tasks.language.text_sequences``; training windows from the training files, validation
windows from the held-out files); each window of ``context + 1`` bytes gives the inputs and
next-byte targets.

Run (a few minutes on one core):
    .venv/bin/python scripts/gpt2_text_experiment.py --out docs/families/gpt2_text.json \
        --figures docs/families
    .venv/bin/python scripts/gpt2_text_experiment.py --family llama --out docs/families/llama_text.json \
        --figures docs/families
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

import bimt
from bimt.tasks.language import BYTE_VOCAB, stdlib_corpus, text_sequences


def make_model(family: str, seed: int, args):
    """A 2-layer byte-level model from a config, random weights, no dropout."""
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    if family == "gpt2":
        config = GPT2Config(n_layer=args.layers, n_embd=args.d_model, n_head=args.heads,
                            vocab_size=BYTE_VOCAB, n_positions=args.context, resid_pdrop=0.0,
                            embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
        return GPT2LMHeadModel(config)
    config = LlamaConfig(hidden_size=args.d_model, intermediate_size=4 * args.d_model,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.heads, vocab_size=BYTE_VOCAB,
                         max_position_embeddings=args.context, bos_token_id=0, eos_token_id=0,
                         pad_token_id=0, tie_word_embeddings=True)
    return LlamaForCausalLM(config)


def text_data(args):
    train = text_sequences(args.train_windows, args.context + 1, "train", seed=args.seed)
    valid = text_sequences(args.valid_windows, args.context + 1, "valid", seed=0)
    return train[:, :-1], train[:, 1:], valid[:, :-1], valid[:, 1:]


def schedule(args) -> list:
    """Lambda 0 for the first ``warmup`` of the steps (the model learns the data first), then
    ``lam``."""
    return [[0.0, args.warmup], [args.lam, 1 - args.warmup]] if args.warmup else [[args.lam, 1]]


def run(method: str, data, args) -> dict:
    model = make_model(args.family, args.seed, args)
    wiring = bimt.attach(model, A=args.A, y_star=args.y_star)
    start = wiring.connection_cost.total(model)
    t0 = time.perf_counter()
    result = bimt.fit(model=model, data=data, loss="ce", method=method, seed=args.seed,
                      steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                      lambda_schedule=schedule(args), swap_every=args.swap_every,
                      top_k=args.top_k, eval_every=args.eval_every, progress=False, plots=False)
    m = result.metrics
    if args.figures is not None:  # the trained network in its family's picture
        args.figures.mkdir(parents=True, exist_ok=True)
        bimt.viz.save_figure(bimt.viz.plot(model, title=f"{args.family}, {method}"),
                             args.figures / f"{args.family}_text_{method}", formats=("png",), dpi=60)
    history = [{k: r[k] for k in ("step", "connection_cost", "train_loss", "test_loss")}
               for r in result.history]
    return {"method": method, "cost_start": start, "cost_end": m["connection_cost"],
            "valid_loss": m["test_loss"], "valid_acc": m["test_acc"],
            "train_loss": m["train_loss"], "modularity": m["modularity"],
            "wall_s": round(time.perf_counter() - t0, 1), "history": history}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", choices=("gpt2", "llama"), default="gpt2")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--lam", type=float, default=3e-4, help="lambda of the BIMT run")
    p.add_argument("--warmup", type=float, default=1 / 3,
                   help="fraction of the steps at lambda 0 before lambda starts")
    p.add_argument("--A", type=float, default=1.0)
    p.add_argument("--y-star", type=float, default=0.5)
    p.add_argument("--top-k", type=int, default=16)
    p.add_argument("--swap-every", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--train-windows", type=int, default=4096)
    p.add_argument("--valid-windows", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--figures", type=Path, default=None,
                   help="draw both trained networks into this folder (FAMILY_text_METHOD.png)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = text_data(args)
    bimt_run, baseline = run("bimt", data, args), run("vanilla", data, args)
    import transformers

    corpus = stdlib_corpus()
    out = {
        "what": f"2-layer {args.family} on the text-lm corpus: BIMT against the same loop without "
                "the cost (method vanilla: lambda 0, no swaps), same seed, data, batches, steps",
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "figures")},
        "bimt": bimt_run, "baseline": baseline,
        "cost_reduction_over_run": bimt_run["cost_start"] / bimt_run["cost_end"],
        "cost_ratio_baseline_over_bimt": baseline["cost_end"] / bimt_run["cost_end"],
        "valid_loss_relative_difference": (bimt_run["valid_loss"] - baseline["valid_loss"])
        / baseline["valid_loss"],
        "corpus": {"chars": corpus.chars, "sha256": corpus.sha256,
                   "train_files": len(corpus.train_files), "valid_files": len(corpus.valid_files)},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "bimt": bimt.__version__},
    }
    summary = {k: out[k] for k in ("cost_reduction_over_run", "cost_ratio_baseline_over_bimt",
                                   "valid_loss_relative_difference")}
    for name in ("bimt", "baseline"):
        r = out[name]
        print(f"{name:8s} cost {r['cost_start']:.1f} -> {r['cost_end']:.1f}, validation loss "
              f"{r['valid_loss']:.4f}, {r['wall_s']} s")
    print(json.dumps(summary, indent=1))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    sys.exit(main() and 0)
