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


def test_llama3s_packaged_tokenizer_converts_and_a_corpus_uses_a_sliver_of_it():
    from vintage.compact import corpus_vocabulary, worth_compacting
    from vintage.pretrained import real_tokenizer

    tokenizer = load_tokenizer(real_tokenizer("llama3"))  # converted once into .build/, then the cache
    assert len(tokenizer) == 128_256 and tokenizer.eos_token == "<|end_of_text|>" == tokenizer.pad_token
    assert tokenizer.convert_ids_to_tokens([128_000, 128_255]) == ["<|begin_of_text|>",
                                                                  "<|reserved_special_token_245|>"]  # as llama-models names them
    # Llama 3's own ids: "The" 791, " President" 4900, and digits split in threes (" ", "201", "8")
    sample = "The President said: 2018q3 results beat the estimate.\n\nShares rose 3.1%."
    ids = tokenizer(sample, add_special_tokens=False)["input_ids"]
    assert ids[:5] == [791, 4900, 1071, 25, 220] and ids[5:7] == [679, 23]
    assert tokenizer.decode(ids) == sample
    texts = generate_world("synthetic-market", "tiny", seed=0).documents["text"].to_pylist()
    used = corpus_vocabulary(tokenizer(texts, add_special_tokens=False)["input_ids"], len(tokenizer),
                             always=(tokenizer.eos_token_id,))
    assert used.rows < len(tokenizer) / 50 and worth_compacting("auto", used)
