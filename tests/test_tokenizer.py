"""The run's tokenizer: a deterministic byte-level BPE, saved and loaded as a Hugging Face tokenizer."""
from corpora.worlds import generate_world
from vintage.tokenizer import load_tokenizer, tokenizer_hash, train_bpe


def test_bpe_roundtrips_and_hash_identifies_it(tmp_path):
    texts = generate_world("synthetic-market", "tiny", seed=0).documents["text"].to_pylist()
    a, b = train_bpe(texts, vocab_size=400), train_bpe(texts, vocab_size=400)
    assert tokenizer_hash(a) == tokenizer_hash(b)
    assert tokenizer_hash(train_bpe(texts[:50], vocab_size=300)) != tokenizer_hash(a)
    sample = "Velormora 2017q3 results: beat. Shares rose 3.1%."
    assert a.decode(a(sample)["input_ids"]) == sample
    assert len(a(sample)["input_ids"]) < len(sample) / 2  # merges learnt, not bytes
    a.save_pretrained(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert tokenizer_hash(loaded) == tokenizer_hash(a)
    assert loaded(sample)["input_ids"] == a(sample)["input_ids"]
    assert loaded.pad_token_id is not None and loaded.eos_token_id is not None
