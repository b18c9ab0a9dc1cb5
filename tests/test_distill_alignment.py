"""Alignment: mention strings → character offsets, exact first, then case/whitespace-tolerant."""
from ner.distill.alignment import align_mentions, find_exact, find_tolerant
from ner.spans import Span


def test_every_whole_word_occurrence_becomes_a_span():
    text = "Berlin is big. The USA and US Steel met in Berlin."
    alignment = align_mentions(text, [("Berlin", "location"), ("US", "organization")])
    assert [(text[s.start:s.end], s.label) for s in alignment.spans] == [
        ("Berlin", "location"), ("US", "organization"), ("Berlin", "location")]  # not inside "USA"
    assert alignment.exact == [("Berlin", "location"), ("US", "organization")]
    assert alignment.tolerant == [] and alignment.unalignable == []


def test_case_and_whitespace_differences_align_tolerantly():
    text = "Cases of COVID - 19 rose in New\nYork ."
    alignment = align_mentions(text, [("covid-19", "disease"), ("New York", "location")])
    assert alignment.spans == [Span(9, 19, "disease"), Span(28, 36, "location")]
    assert text[9:19] == "COVID - 19" and text[28:36] == "New\nYork"
    assert alignment.tolerant == [("covid-19", "disease"), ("New York", "location")]
    assert alignment.exact == []


def test_words_stay_words_in_tolerant_matching():
    assert find_tolerant("NewYork and New York", "new york") == [(12, 20)]
    assert find_tolerant("Obamacare", "obama") == []
    assert find_exact("a.b a.b", "a.b") == [(0, 3), (4, 7)]


def test_made_up_mentions_are_unalignable_and_listed():
    alignment = align_mentions("Ada Lovelace wrote notes.", [("Charles Babbage", "person"), ("Ada Lovelace", "person")])
    assert alignment.unalignable == [("Charles Babbage", "person")]
    assert alignment.spans == [Span(0, 12, "person")]


def test_longer_mentions_win_and_overlaps_are_counted():
    text = "The New York Times reported from New York."
    alignment = align_mentions(text, [("New York", "location"), ("New York Times", "organization"),
                                      ("York Times", "organization")])
    assert [(text[s.start:s.end], s.label) for s in alignment.spans] == [
        ("New York Times", "organization"), ("New York", "location")]
    assert alignment.overlapping == 2  # "New York" inside the title, and "York Times"
