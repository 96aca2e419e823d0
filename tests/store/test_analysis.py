"""The analyzer: one definition of a BM25 term for chunks and queries."""

from __future__ import annotations

import threading

import pytest
import Stemmer

from meshrag.store.analysis import ENGLISH_STOP_WORDS, MAX_QUERY_TERMS, Analyzer, fold


def test_english_stems_and_drops_stop_words() -> None:
    assert Analyzer().terms("The flows were measured at the boundary layers") == ["flow", "were", "measur", "boundari", "layer"]
    assert Analyzer().terms("measurement measuring measured") == ["measur"] * 3


def test_stop_words_are_matched_before_stemming() -> None:
    # "thing" is no stop word, though stemming would not turn it into one either; "is" is.
    assert Analyzer().terms("this is a thing") == ["thing"]
    assert Analyzer(stopwords="none").terms("this is a thing") == ["this", "is", "a", "thing"]


def test_the_stop_word_list_is_lucenes_english_set() -> None:
    assert len(ENGLISH_STOP_WORDS) == 33
    assert {"the", "a", "with", "will", "into", "such"} <= ENGLISH_STOP_WORDS
    assert "he" not in ENGLISH_STOP_WORDS  # Lucene's list is short on purpose


def test_no_stemmer_keeps_words_as_folded() -> None:
    assert Analyzer(language="none").terms("Flows MEASURED the") == ["flows", "measured"]
    assert Analyzer(language="none", stopwords="none").terms("The end") == ["the", "end"]


def test_case_diacritics_and_compatibility_forms_fold_away() -> None:
    analyzer = Analyzer(language="none", stopwords="none")
    assert analyzer.terms("Café CAFÉ café cafe\u0301") == ["cafe"] * 4
    assert analyzer.terms("Ångström Straße ﬁnal x²") == ["angstrom", "strasse", "final", "x2"]
    assert analyzer.terms("İstanbul") == ["istanbul"]
    assert fold("한국어") == "한국어"  # not a diacritic: recomposed


def test_words_are_runs_of_letters_and_digits() -> None:
    analyzer = Analyzer(language="none", stopwords="none")
    assert analyzer.terms("snake_case, e-mail; R2-D2 3.14 'quoted' (x)") == ["snake", "case", "e", "mail", "r2", "d2", "3", "14", "quoted", "x"]
    assert analyzer.terms("  ?! -- \x00 ") == []


def test_query_terms_are_distinct_in_order_and_bounded() -> None:
    analyzer = Analyzer()
    assert analyzer.query_terms("Flow flows, the FLOWING wing; flow") == ["flow", "wing"]
    many = " ".join(f"w{i}" for i in range(MAX_QUERY_TERMS + 10))
    assert analyzer.query_terms(many) == [f"w{i}" for i in range(MAX_QUERY_TERMS)]
    assert analyzer.query_terms(many, limit=3) == ["w0", "w1", "w2"]


def test_the_fingerprint_names_every_setting() -> None:
    fingerprints = {
        Analyzer().fingerprint(),
        Analyzer(language="german").fingerprint(),
        Analyzer(language="none").fingerprint(),
        Analyzer(stopwords="none").fingerprint(),
        Analyzer(language="none", stopwords="none").fingerprint(),
    }
    assert len(fingerprints) == 5
    assert Analyzer().fingerprint() == "snowball-english/stop-english/v1"
    assert Analyzer(language="none", stopwords="none").fingerprint() == "none/stop-none/v1"


def test_unknown_settings_are_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="english"):
        Analyzer(language="klingon")
    with pytest.raises(ValueError, match="english, none"):
        Analyzer(stopwords="french")
    assert "english" in Stemmer.algorithms()


def test_analyzers_compare_by_settings() -> None:
    assert Analyzer() == Analyzer("english", "english") and hash(Analyzer()) == hash(Analyzer())
    assert Analyzer() != Analyzer(language="none")


def test_one_analyzer_is_safe_from_many_threads() -> None:
    analyzer = Analyzer()
    text = " ".join(f"measured flows wings{i % 50} generalizations" for i in range(2000))
    expected = analyzer.terms(text)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                results.append(analyzer.terms(text))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 40 and all(r == expected for r in results)
