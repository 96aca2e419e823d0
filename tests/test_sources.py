"""sources.py: files and directories become documents with stable ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshrag.sources import (
    SourceDocument,
    SourceError,
    count_documents,
    html_to_text,
    iter_documents,
    markdown_title,
    unsupported_files,
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def by_id(documents: list[SourceDocument]) -> dict[str, SourceDocument]:
    return {doc.id: doc for doc in documents}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "notes"
    write(root / "b.txt", "Plain text about tides.\n")
    write(root / "a.md", "Intro line\n\n# Dome Safety\n\nClose the dome above 40 km/h.\n")
    write(root / "sub" / "page.html", "<html><head><title>Ferry  Times</title></head><body><p>Hourly.</p></body></html>")
    write(root / "sub" / "records.jsonl", '{"id": "r1", "text": "One."}\n\n{"text": "Two."}\n')
    write(root / ".hidden.md", "# secret\n")
    write(root / ".git" / "config.txt", "not a document\n")
    write(root / "image.png", "\x89PNG")
    return root


def test_directory_walk_is_sorted_recursive_and_ids_are_relative(tree: Path) -> None:
    ids = [doc.id for doc in iter_documents([tree])]
    assert ids == ["a.md", "b.txt", "sub/page.html", "sub/records:r1", "sub/records:3"]


def test_hidden_files_and_directories_are_skipped(tree: Path) -> None:
    ids = {doc.id for doc in iter_documents([tree])}
    assert not any("secret" in i or "config" in i or i.startswith(".") for i in ids)


def test_ids_and_metadata_do_not_depend_on_working_directory(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absolute = list(iter_documents([tree]))
    monkeypatch.chdir(tree.parent)
    relative = list(iter_documents([Path(tree.name)]))
    assert absolute == relative


def test_a_file_argument_is_named_by_its_file_name(tree: Path) -> None:
    [doc] = list(iter_documents([tree / "sub" / "page.html"]))
    assert doc.id == "page.html"
    assert doc.metadata["source"] == "page.html"


def test_markdown_keeps_text_and_takes_first_heading_as_title(tree: Path) -> None:
    doc = by_id(list(iter_documents([tree])))["a.md"]
    assert doc.text == "Intro line\n\n# Dome Safety\n\nClose the dome above 40 km/h."
    assert doc.metadata == {"source": "a.md", "format": "markdown", "title": "Dome Safety"}


def test_markdown_title_variants() -> None:
    assert markdown_title("Setext Title\n============\nbody") == "Setext Title"
    assert markdown_title("```\n# not a heading\n```\n## Real ##\n") == "Real"
    assert markdown_title("no heading here\n") is None


def test_text_file_title_falls_back_to_stem(tree: Path) -> None:
    doc = by_id(list(iter_documents([tree])))["b.txt"]
    assert doc.text == "Plain text about tides."
    assert doc.metadata == {"source": "b.txt", "format": "text", "title": "b"}


def test_html_strips_tags_scripts_and_styles_and_reads_title() -> None:
    markup = """<!doctype html><html><head><title> Dome &amp; Wind </title>
    <style>p { color: red }</style><script>var hidden = 1;</script></head>
    <body><h1>Rules</h1><p>Close the <b>dome</b>
    when wind exceeds 40&nbsp;km/h.</p><noscript>enable js</noscript><ul><li>one</li><li>two</li></ul></body></html>"""
    title, text = html_to_text(markup)
    assert title == "Dome & Wind"
    assert text == "Rules\n\nClose the dome when wind exceeds 40 km/h.\n\none\n\ntwo"


def test_html_document_metadata(tree: Path) -> None:
    doc = by_id(list(iter_documents([tree])))["sub/page.html"]
    assert doc.text == "Hourly."
    assert doc.metadata == {"source": "sub/page.html", "format": "html", "title": "Ferry Times"}


def test_a_blank_or_non_string_title_adds_nothing_to_the_text(tmp_path: Path) -> None:
    write(tmp_path / "t.jsonl", '{"id": 1, "title": "  ", "text": "Only text."}\n{"id": 2, "title": 5, "text": "Also."}\n')
    docs = by_id(list(iter_documents([tmp_path / "t.jsonl"])))
    assert docs["t:1"].text == "Only text." and docs["t:2"].text == "Also."


def test_jsonl_ids_text_fields_and_scalar_metadata(tmp_path: Path) -> None:
    write(tmp_path / "recs.jsonl", "\n".join([
        '{"_id": 7, "title": "Seven", "body": "Body text.", "year": 1999, "score": 0.5, "ok": true, "tags": ["x"], "nested": {"a": 1}}',
        '{"doc_id": "d-2", "content": "Content text."}',
        '{"text": "No id here."}',
    ]))
    docs = by_id(list(iter_documents([tmp_path / "recs.jsonl"])))
    assert list(docs) == ["recs:7", "recs:d-2", "recs:3"]
    assert docs["recs:7"].text == "Seven\n\nBody text.", "a record's title leads its searchable text"
    assert docs["recs:7"].metadata == {"source": "recs.jsonl", "format": "jsonl", "title": "Seven", "year": 1999, "score": 0.5, "ok": True}
    assert docs["recs:d-2"].text == "Content text."


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"title": "no text"}', "no text field"),
        ('{"text": 42}', "must be a string"),
        ('{"id": [1], "text": "x"}', "non-empty string or integer"),
    ],
)
def test_bad_jsonl_line_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path / "bad.jsonl", '{"text": "fine"}\n' + line + "\n")
    with pytest.raises(SourceError, match=message) as caught:
        list(iter_documents([path]))
    assert str(caught.value).startswith(f"{path}:2: ")
    assert caught.value.line == 2


def test_duplicate_jsonl_ids_are_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "dup.jsonl", '{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n')
    with pytest.raises(SourceError, match=r"duplicate id 'dup:a' \(first on line 1\)"):
        list(iter_documents([path]))


def test_unsupported_and_blank_files_are_skipped_and_reported(tree: Path) -> None:
    write(tree / "empty.txt", "  \n")
    write(tree / "scripts.html", "<script>only()</script>")
    skipped: list[tuple[str, str]] = []
    ids = {doc.id for doc in iter_documents([tree], on_skip=lambda path, reason: skipped.append((path.name, reason)))}
    assert "empty.txt" not in ids and "scripts.html" not in ids
    assert skipped == [("empty.txt", "no text"), ("image.png", "unsupported extension '.png'"), ("scripts.html", "no text")]
    assert unsupported_files([tree]) == [tree / "image.png"]


def test_count_documents_matches_documents_for_ordinary_trees(tree: Path) -> None:
    assert count_documents([tree]) == len(list(iter_documents([tree]))) == 5


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file or directory"):
        list(iter_documents([tmp_path / "nope"]))


def test_undecodable_bytes_do_not_stop_ingest(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"caf\xe9 au lait")
    [doc] = list(iter_documents([path]))
    assert doc.text == "caf\ufffd au lait"

