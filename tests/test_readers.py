"""Readers: tiny invented samples of every format, malformed input, the span helpers'
properties, and a smoke test per shared dataset (skipped where the data is absent)."""
from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ner.datasets import dataset_info, find_data_root, list_datasets, load_dataset, load_manifest
from ner.readers import (
    detect_tag_scheme,
    guess_format,
    read_brat,
    read_conll,
    read_gliner_csv,
    read_gliner_json,
    read_jsonl,
    read_records,
    read_scirex_json,
    read_sener_jsonl,
    read_slimer,
    read_text,
)
from ner.spans import (
    FormatError,
    Span,
    Record,
    char_spans_to_word_spans,
    group_records,
    join_records,
    join_words,
    tags_to_word_spans,
    word_spans_to_char_spans,
    word_spans_to_tags,
)


def write(folder: Path, name: str, content: str) -> Path:
    path = folder / name
    path.write_text(content, encoding="utf-8", newline="")
    return path


def mentions(record) -> list[tuple[str, str]]:
    return [(record.text[span.start:span.end], span.label) for span in record.spans]


# --------------------------------------------------------------------------- CoNLL

CONLL_IOB1_DOCS = """\
-DOCSTART- -X- O O

Mira NNP I-NP I-PER
Holt NNP I-NP I-PER
visited VBD I-VP O
Oslo NNP I-NP I-LOC
. . O O

Acme NNP I-NP I-ORG
Lund NNP I-NP B-ORG
agreed VBD I-VP O

-DOCSTART- -X- O O

Rain NN I-NP O
"""


def test_conll_documents_join_sentences_with_newlines(tmp_path):
    path = write(tmp_path, "sample.conll", CONLL_IOB1_DOCS)
    first, second = read_conll(path)
    assert first.text == "Mira Holt visited Oslo .\nAcme Lund agreed"
    assert first.sentences == [(0, 24), (25, 41)]
    assert first.tokens[:2] == [(0, 4), (5, 9)]
    assert mentions(first) == [("Mira Holt", "PER"), ("Oslo", "LOC"), ("Acme", "ORG"), ("Lund", "ORG")]
    assert first.meta["scheme"] == "IOB1" and first.meta["line"] == 3
    assert (second.text, second.spans) == ("Rain", [])
    assert first.id != second.id


def test_conll_sentence_records_when_asked_or_without_docstart(tmp_path):
    path = write(tmp_path, "sample.conll", CONLL_IOB1_DOCS)
    assert [r.text for r in read_conll(path, documents=False)] == ["Mira Holt visited Oslo .", "Acme Lund agreed", "Rain"]
    plain = write(tmp_path, "plain.tsv", "Ada\tB-PER\nsang\tO\n\t\nBo\tB-PER\n")
    records = list(read_conll(plain))
    assert [r.text for r in records] == ["Ada sang", "Bo"]  # a whitespace-only line ends a sentence
    assert records[0].sentences == [(0, 8)] and records[0].meta["scheme"] == "BIO"


def test_conll_index_first_tag_first_and_bioes_columns(tmp_path):
    wikiann = write(tmp_path, "a.conllu", "0\tNew\tB-LOC\n1\tYork\tI-LOC\n2\trocks\tO\n")
    assert mentions(next(read_conll(wikiann, token_column=1))) == [("New York", "LOC")]
    mit = write(tmp_path, "b.bio", "B-ACTOR\ttom\nI-ACTOR\thanks\nO\tmovies\n")
    assert mentions(next(read_conll(mit, token_column=1, tag_column=0))) == [("tom hanks", "ACTOR")]
    bioes = write(tmp_path, "c.txt", "Li S-PER\nand O\nSan B-LOC\nJose E-LOC\n")
    record = next(read_conll(bioes))
    assert mentions(record) == [("Li", "PER"), ("San Jose", "LOC")] and record.meta["scheme"] == "BIOES"


def test_conll_germeval_two_levels_nest_and_keep_comments(tmp_path):
    sample = (
        "#\thttp://example.org/a\t[2020-01-01]\n"
        "1\tDie\tO\tO\n2\tBerliner\tB-ORG\tB-LOC\n3\tBank\tI-ORG\tO\n4\tzahlt\tO\tO\t\n\n"
    )
    path = write(tmp_path, "g.tsv", sample)
    record = next(read_conll(path, token_column=1, tag_column=(2, 3), comment_prefix="#"))
    assert mentions(record) == [("Berliner", "LOC"), ("Berliner Bank", "ORG")]
    assert record.meta["inner_spans"] == [(4, 12, "LOC")]
    assert record.meta["comments"] == ["http://example.org/a [2020-01-01]"]


def test_conll_tags_with_spaces_in_tab_files(tmp_path):
    path = write(tmp_path, "slimer.txt", "Graph\tB-field of study\ntheory\tI-field of study\n")
    assert mentions(next(read_conll(path))) == [("Graph theory", "field of study")]


@pytest.mark.parametrize(
    "content, line, reason",
    [
        ("Ada B-PER\nsang O\n\nBo B-PER extra\n", 4, "expected 2 columns"),
        ("Ada B-PER\nsang X-PER\n", 2, "is not O or"),
        ("Ada PER\n", 1, "is not O or"),
    ],
)
def test_conll_malformed_line_names_file_and_line(tmp_path, content, line, reason):
    path = write(tmp_path, "bad.conll", content)
    with pytest.raises(FormatError) as caught:
        list(read_conll(path))
    assert caught.value.line_number == line and reason in caught.value.reason
    assert f"bad.conll:{line}" in str(caught.value)


def test_conll_explicit_scheme_rejects_foreign_prefixes(tmp_path):
    path = write(tmp_path, "x.conll", "Li S-PER\n")
    with pytest.raises(FormatError, match="x.conll:1"):
        list(read_conll(path, scheme="BIO"))


def test_conll_skip_mode_drops_the_bad_sentence_and_logs_it(tmp_path, caplog):
    path = write(tmp_path, "bad.conll", "Ada B-PER\n\nBo B-PER extra\nsang O\n\nCy B-PER\n")
    with caplog.at_level(logging.WARNING, logger="ner.readers"):
        records = list(read_conll(path, errors="skip"))
    assert [r.text for r in records] == ["Ada", "Cy"]
    assert "bad.conll:3" in caplog.text


def test_detect_tag_scheme():
    assert detect_tag_scheme([["B-PER", "I-PER", "O"]]) == "BIO"
    assert detect_tag_scheme([["O", "I-PER"]]) == "IOB1"
    assert detect_tag_scheme([["B-PER", "E-PER"]]) == "BIOES"


# --------------------------------------------------------------------------- word-index JSON formats


def test_gliner_json_inclusive_ends_and_streamed_items(tmp_path):
    items = [
        {"tokenized_text": ["Lena", "Ortiz", "runs", "Nimbus", "Labs"], "ner": [[0, 1, "person"], [3, 4, "org"]]},
        {"tokenized_text": ["quiet"], "ner": []},
    ]
    path = write(tmp_path, "g.json", json.dumps(items, indent=1))
    first, second = read_gliner_json(path)
    assert mentions(first) == [("Lena Ortiz", "person"), ("Nimbus Labs", "org")]
    assert second.text == "quiet" and second.tokens == [(0, 5)]


def test_gliner_json_errors_carry_line_numbers(tmp_path):
    path = write(tmp_path, "g.json", '[\n{"tokenized_text": ["a"], "ner": [[0, 3, "x"]]}\n]')
    with pytest.raises(FormatError, match="g.json:2"):
        list(read_gliner_json(path))
    broken = write(tmp_path, "h.json", '[\n{"tokenized_text": ["a"], "ner": []},\n{"tokenized_text": [\n')
    with pytest.raises(FormatError, match="h.json:4"):  # the file ends inside the item
        list(read_gliner_json(broken))


def test_gliner_csv_python_literal_cells(tmp_path):
    content = 'tokenized_text,ner\n"[\'The\', \'spinning\', \'mule\', \'hummed\']","[[1, 2, \'Textile Machinery\']]"\n'
    record = next(read_gliner_csv(write(tmp_path, "t.csv", content)))
    assert mentions(record) == [("spinning mule", "Textile Machinery")]


def test_sener_exclusive_ends_and_nesting(tmp_path):
    line = {"doc_id": "d1", "text": ["Prof", "Kim", "of", "Vale", "University"],
            "entity": [[0, 1, ["Prof"], "title"], [3, 5, ["Vale", "University"], "work_for"], [3, 4, ["Vale"], "address"]]}
    record = next(read_sener_jsonl(write(tmp_path, "s.json", json.dumps(line) + "\n")))
    assert record.id == "d1"
    assert mentions(record) == [("Prof", "title"), ("Vale", "address"), ("Vale University", "work_for")]


def test_scirex_folder_of_documents(tmp_path):
    doc = {"doc_id": "p1", "words": ["We", "use", "BERT", ".", "It", "works", "."],
           "sentences": [[0, 4], [4, 7]], "sections": [[0, 7]], "ner": [[2, 3, "Method"]],
           "coref": {}, "n_ary_relations": []}
    write(tmp_path, "p1.json", json.dumps(doc))
    (record,) = read_scirex_json(tmp_path)
    assert record.text == "We use BERT .\nIt works ." and record.sentences == [(0, 13), (14, 24)]
    assert mentions(record) == [("BERT", "Method")] and record.meta["sections"] == [(0, 24)]


# --------------------------------------------------------------------------- BRAT


def test_brat_discontinuous_spans_relations_and_crlf(tmp_path):
    write(tmp_path, "n1.txt", "Left\r\nand right lung fields are clear.")
    write(tmp_path, "n1.ann", "T1\tAnatomy 0 4;16 20\tLeft lung\nT2\tAnatomy 10 20\tright lung\n"
                              "R1\tPart Arg1:T1 Arg2:T2\n#1\tAnnotatorNotes T1\tchecked\nA1\tNegated T2\n")
    (record,) = read_brat(tmp_path)
    assert record.id == "n1" and record.text.startswith("Left\r\n")
    assert [(s.start, s.end) for s in record.spans] == [(0, 20), (10, 20)]  # "\r\n" counts as 2
    assert record.meta["fragments"] == [[0, 20, "Anatomy", [[0, 4], [16, 20]]]]


@pytest.mark.parametrize("ann, reason", [("T1\tAnatomy 0 x\tLeft\n", "expected"),
                                         ("T1\tAnatomy 0 99\tLeft\n", "outside"),
                                         ("T1\tAnatomy 0 4\tLeFT\n", "does not match")])
def test_brat_malformed_lines(tmp_path, ann, reason):
    write(tmp_path, "n.txt", "Left lung")
    path = write(tmp_path, "n.ann", "T0\tAnatomy 5 9\tlung\n" + ann)
    with pytest.raises(FormatError, match=f"n.ann:2: .*{reason}"):
        list(read_brat(path))


# --------------------------------------------------------------------------- SLIMER


def test_slimer_bio_and_instruction_lines(tmp_path):
    bio = write(tmp_path, "dev.txt", "Kepler\tB-person\nwrote\tO\nAstronomia\tB-book title\nnova\tI-book title\n")
    assert mentions(next(read_slimer(bio))) == [("Kepler", "person"), ("Astronomia nova", "book title")]
    line = {"doc_question_pairID": "7:1", "tagName": "file format", "input": "Save as notes.srt or SRT, not .srt2.",
            "instruction": "Extract ...", "output": json.dumps([".srt", "SRT", "docx"])}
    record = next(read_slimer(write(tmp_path, "validation.jsonl", json.dumps(line) + "\n")))
    assert record.id == "7:1" and record.labels == ["file format"]
    assert mentions(record) == [(".srt", "file format"), ("SRT", "file format")]
    assert record.meta["unmatched"] == ["docx"]


# --------------------------------------------------------------------------- user formats


def test_text_keeps_empty_lines_aligned(tmp_path):
    path = write(tmp_path, "in.txt", "First line.\n\nThird line.\n")
    records = list(read_text(path))
    assert [r.text for r in records] == ["First line.", "", "Third line."]
    assert [r.id for r in records] == ["in.txt:1", "in.txt:2", "in.txt:3"]
    assert [r.text for r in read_text(["a\n", "b"])] == ["a", "b"]


def test_jsonl_fields_entities_and_meta(tmp_path):
    lines = [{"doc": 5, "body": "Ana met Bo.", "entities": [{"start": 0, "end": 3, "label": "PER", "score": 0.9, "text": "Ana"}],
              "source": "forum"}]
    path = write(tmp_path, "in.jsonl", "\n".join(json.dumps(line) for line in lines) + "\n\n")
    (record,) = read_jsonl(path, text_field="body", id_field="doc")
    assert (record.id, record.text, record.meta) == ("5", "Ana met Bo.", {"source": "forum"})
    assert record.spans == [Span(0, 3, "PER")] and record.spans[0].score == 0.9


@pytest.mark.parametrize(
    "line, reason",
    [('{"text": "ok"', "invalid JSON"), ('{"body": "no text"}', "missing"),
     ('{"text": "Ana", "entities": [{"start": 0, "end": 2, "label": "P", "text": "Ana"}]}', "entity text"),
     ('{"text": "Ana", "entities": [{"start": 0, "label": "P"}]}', "bad entity")],
)
def test_jsonl_bad_lines_raise_or_skip(tmp_path, caplog, line, reason):
    path = write(tmp_path, "in.jsonl", '{"text": "fine"}\n' + line + '\n{"text": "also fine"}\n')
    with pytest.raises(FormatError, match=f"in.jsonl:2: .*{reason}"):
        list(read_jsonl(path))
    with caplog.at_level(logging.WARNING, logger="ner.readers"):
        assert [r.text for r in read_jsonl(path, errors="skip")] == ["fine", "also fine"]
    assert "in.jsonl:2" in caplog.text


def test_read_records_dispatch(tmp_path):
    assert guess_format("x/eng.testb") == "conll" and guess_format("x/a.jsonl") == "jsonl"
    assert guess_format("x/a.spacy") == "docbin" and guess_format("x/a.txt") == "text"
    write(tmp_path, "n.txt", "Left")
    write(tmp_path, "n.ann", "T1\tAnatomy 0 4\tLeft\n")
    assert guess_format(tmp_path) == "brat"
    assert [r.text for r in read_records(tmp_path / "n.txt")] == ["Left"]
    assert [r.id for r in read_records(tmp_path)] == ["n"]
    with pytest.raises(ValueError, match="cannot tell"):
        guess_format("x/a.unknown")


# --------------------------------------------------------------------------- span helpers (properties)

LABELS = ("PER", "LOC", "ORG")


@st.composite
def bio_tags(draw):
    tags = []
    for _ in range(draw(st.integers(0, 15))):
        options = ["O", *(f"B-{label}" for label in LABELS)]
        if tags and tags[-1] != "O":
            options.append("I-" + tags[-1][2:])
        tags.append(draw(st.sampled_from(options)))
    return tags


@st.composite
def iob1_tags(draw):
    tags = []
    for _ in range(draw(st.integers(0, 15))):
        options = ["O", *(f"I-{label}" for label in LABELS)]
        if tags and tags[-1] != "O":
            options.append("B-" + tags[-1][2:])  # IOB1's B- only between same-type neighbours
        tags.append(draw(st.sampled_from(options)))
    return tags


@st.composite
def flat_word_spans(draw):
    """(n_words, non-overlapping sorted word spans)."""
    n_words, spans, position = draw(st.integers(0, 15)), [], 0
    while position < n_words and draw(st.booleans()):
        start = draw(st.integers(position, n_words - 1))
        end = draw(st.integers(start + 1, n_words))
        spans.append((start, end, draw(st.sampled_from(LABELS))))
        position = end
    return n_words, spans


@given(bio_tags())
def test_bio_tags_spans_tags_is_identity(tags):
    assert word_spans_to_tags(len(tags), tags_to_word_spans(tags), "BIO") == tags


@given(iob1_tags())
def test_iob1_tags_spans_tags_is_identity(tags):
    assert word_spans_to_tags(len(tags), tags_to_word_spans(tags), "IOB1") == tags


@given(flat_word_spans(), st.sampled_from(["BIO", "IOB1"]))
def test_spans_tags_spans_is_identity(case, scheme):
    n_words, spans = case
    assert tags_to_word_spans(word_spans_to_tags(n_words, spans, scheme)) == spans


@given(flat_word_spans())
def test_bioes_decodes_to_the_encoded_spans(case):
    n_words, spans = case
    tags = ["O"] * n_words
    for start, end, label in spans:
        if end - start == 1:
            tags[start] = f"S-{label}"
        else:
            tags[start:end] = [f"B-{label}", *[f"I-{label}"] * (end - start - 2), f"E-{label}"]
    assert tags_to_word_spans(tags) == spans


@given(st.lists(st.sampled_from(["O", "B-PER", "I-PER", "I-LOC", "E-LOC", "S-ORG"]), max_size=15))
def test_any_tag_sequence_decodes_to_ordered_disjoint_spans(tags):
    spans = tags_to_word_spans(tags)
    ends = [0] + [end for _, end, _ in spans]
    assert all(ends[i] <= start < end <= len(tags) for i, (start, end, _) in enumerate(spans))


@given(st.lists(st.text("abcXYZ.-é", min_size=1, max_size=6), min_size=1, max_size=10), st.data())
def test_char_and_word_spans_convert_both_ways(words, data):
    text, tokens = join_words(words)
    starts = st.integers(0, len(words) - 1)
    spans = [(s, data.draw(st.integers(s + 1, len(words))), "X") for s in data.draw(st.lists(starts, max_size=4))]
    char_spans = word_spans_to_char_spans(tokens, spans)
    assert [text[s.start:s.end] for s in char_spans] == [" ".join(words[s:e]) for s, e, _ in spans]
    assert char_spans_to_word_spans(tokens, char_spans) == spans


# --------------------------------------------------------------------------- datasets

try:
    DATA_ROOT = find_data_root()
except FileNotFoundError:
    DATA_ROOT = None
needs_data = pytest.mark.skipif(DATA_ROOT is None, reason="shared data folder not available")


def test_manifest_names_and_errors(tmp_path):
    names = list_datasets()
    assert "conll2003_en" in names and "wikiann/en" in names and "hiner/collapsed" in names
    assert dataset_info("masakhaner2/swa")["splits"]["dev"] == "masakhaner2/swa/dev.txt"
    with pytest.raises(ValueError, match="missing from this copy"):
        load_dataset("wikineural/en", "train", data_root=tmp_path)
    with pytest.raises(ValueError, match="choose one of"):
        dataset_info("wikiann")


def test_load_dataset_from_another_root_with_label_map(tmp_path):
    (tmp_path / "wnut17").mkdir()
    write(tmp_path / "wnut17", "emerging.dev.conll", "Mo\tB-person\nat\tO\nAcme\tB-corporation\n")
    (record,) = load_dataset("wnut17", "validation", data_root=tmp_path, map_labels=True)
    assert mentions(record) == [("Mo", "PER"), ("Acme", "ORG")]


def test_data_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NER_SUITE_DATA", str(tmp_path))
    assert find_data_root() == tmp_path


@needs_data
@pytest.mark.parametrize("dataset", sorted(load_manifest()))
def test_shared_dataset_first_records(dataset):
    """Every file in the manifest reads; its first records have text and sane spans."""
    for name in (n for n in list_datasets() if n.split("/")[0] == dataset):
        for split in dataset_info(name)["splits"]:
            records = list(itertools.islice(load_dataset(name, split), 30))
            assert records, (name, split)
            for record in records:
                assert record.text and all(s.end <= len(record.text) for s in record.spans)
            assert any(record.spans for record in records) or dataset == "pile_ner_slimer_instruct"


def counts(records) -> tuple[int, int, int]:
    """(records, sentences, mentions), the way the datasets' READMEs count."""
    n_records = n_sentences = n_mentions = 0
    for record in records:
        n_records += 1
        n_sentences += len(record.sentences)
        n_mentions += len(record.spans)
    return n_records, n_sentences, n_mentions


@needs_data
@pytest.mark.parametrize(
    "name, split, expected",
    [
        ("conll2003_en", "train", (946, 14_041, 23_499)),  # documents, sentences, mentions
        ("wnut17", "train", (3_394, 3_394, 1_975)),
        ("wnut17", "test", (1_287, 1_287, 1_079)),
        ("ncbi_disease", "train", (5_424, 5_424, 5_134)),
        # outer + inner level; the source's dev file is carved into train + dev (datasets.toml)
        ("germeval2014", "train+dev", (2_200, 2_200, 2_674 + 212)),
    ],
)
def test_shared_dataset_counts_match_readme(name, split, expected):
    records = [r for part in split.split("+") for r in load_dataset(name, part)]
    assert counts(records) == expected


@given(st.lists(st.lists(st.sampled_from(["a", "Bb", "ccc", "Ü"]), min_size=1, max_size=6), min_size=1, max_size=7),
       st.integers(1, 4))
def test_grouped_records_keep_every_word_entity_and_sentence(sentences, size):
    """Sentences joined in groups of ``size`` keep their words in order, each entity over
    the same words and text, and one sentence per part."""
    records = []
    for i, words in enumerate(sentences):
        text, tokens = join_words(words)
        records.append(Record(text, [Span(tokens[0][0], tokens[-1][1], "X")], f"s{i}", tokens))
    grouped = list(group_records(records, size))
    assert len(grouped) == -(-len(records) // size)
    assert [w for r in grouped for w in r.words] == [w for r in records for w in r.words]
    assert [r.text[s.start:s.end] for r in grouped for s in r.spans] == [r.text for r in records]
    assert [len(r.sentences) for r in grouped] == [len(records[i:i + size]) for i in range(0, len(records), size)]
    for record in grouped:
        assert [record.text[a:b] for a, b in record.sentences] == record.text.split("\n")


def test_joining_nothing_or_groups_of_zero_is_an_error():
    with pytest.raises(ValueError):
        join_records([])
    with pytest.raises(ValueError):
        list(group_records([Record("a")], 0))
