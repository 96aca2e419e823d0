from __future__ import annotations

from meshrag.rag.prompt import INSTRUCTIONS, TRUNCATION_MARK, Passage, build_messages, cited_numbers


def passage(n: int, text: str, doc_id: str | None = None) -> Passage:
    doc = doc_id or f"doc-{n}"
    return Passage(n=n, doc_id=doc, chunk_id=f"{doc}#1.0", text=text, score=1.0 / n)


def content_of(messages: list[dict[str, str]]) -> str:
    assert len(messages) == 1
    return messages[0]["content"]


def test_single_user_message_holds_instructions_passages_and_question() -> None:
    messages = build_messages("Who founded it?", [passage(1, "Marta Olsen founded it.", "atlas")])
    assert messages[0]["role"] == "user"  # Gemma's template has no system role
    content = content_of(messages)
    assert content.startswith(INSTRUCTIONS)
    assert "[1] (doc atlas) Marta Olsen founded it." in content
    assert content.rstrip().endswith("Question: Who founded it?")


def test_instructions_ask_for_citations_and_admitting_ignorance() -> None:
    assert "[1]" in INSTRUCTIONS
    assert "only" in INSTRUCTIONS
    assert "don't know" in INSTRUCTIONS


def test_passages_appear_in_rank_order_with_their_numbers() -> None:
    content = content_of(build_messages("q", [passage(2, "second"), passage(1, "first"), passage(3, "third")]))
    positions = [content.index(f"[{n}] (doc doc-{n})") for n in (1, 2, 3)]
    assert positions == sorted(positions)


def test_passage_and_question_whitespace_is_flattened_to_one_line() -> None:
    content = content_of(build_messages("what\n is  it?", [passage(1, "line one\n\nline   two")]))
    assert "[1] (doc doc-1) line one line two" in content
    assert "Question: what is it?" in content


def test_budget_drops_lowest_ranked_passages_whole() -> None:
    passages = [passage(n, "x" * 100) for n in (1, 2, 3)]
    one_rendered = len("[1] (doc doc-1) ") + 100
    content = content_of(build_messages("q", passages, max_context_chars=2 * one_rendered + 2))
    assert "[1] (doc doc-1) " + "x" * 100 in content
    assert "[2] (doc doc-2) " + "x" * 100 in content
    assert "[3] (doc" not in content


def test_budget_counts_the_separator_between_passages() -> None:
    passages = [passage(n, "x" * 100) for n in (1, 2)]
    one_rendered = len("[1] (doc doc-1) ") + 100
    content = content_of(build_messages("q", passages, max_context_chars=2 * one_rendered + 1))
    assert "[2] (doc" not in content


def test_single_passage_over_budget_is_cut_with_a_mark() -> None:
    content = content_of(build_messages("q", [passage(1, "y" * 500), passage(2, "z")], max_context_chars=120))
    passages_block = content.split("Passages:\n", 1)[1].split("\n\nQuestion:", 1)[0]
    assert passages_block.startswith("[1] (doc doc-1) yyy")
    assert passages_block.endswith(TRUNCATION_MARK)
    assert len(passages_block) <= 120
    assert "[2] (doc" not in content


def test_no_passages_says_so() -> None:
    content = content_of(build_messages("q", []))
    assert "(no passages were found)" in content


def test_cited_numbers_single_list_and_adjacent_forms() -> None:
    assert cited_numbers("Paris [1].") == [1]
    assert cited_numbers("It is [1, 3] and also [ 2 ,4 ].") == [1, 3, 2, 4]
    assert cited_numbers("Both [2][1] say so.") == [2, 1]


def test_cited_numbers_deduplicates_in_first_citation_order() -> None:
    assert cited_numbers("[3] then [1] then [3, 1] and [2]") == [3, 1, 2]


def test_cited_numbers_ignores_non_citations() -> None:
    assert cited_numbers("no citations, just [a] and [1.5] and 1] and [ ]") == []
