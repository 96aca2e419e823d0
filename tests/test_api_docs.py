"""docs/api.md is the OpenAPI document as the code builds it (scripts/gen_api_docs.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gen_api_docs.py"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_api_docs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_api_md_is_up_to_date_with_the_openapi_document() -> None:
    generator = _generator()
    expected = generator.generate()
    current = generator.OUTPUT.read_text() if generator.OUTPUT.exists() else ""
    assert current == expected, (
        "docs/api.md differs from the OpenAPI document the code builds (a route, field, scope or limit changed): "
        "run `.venv/bin/python scripts/gen_api_docs.py` and commit docs/api.md"
    )


def test_every_route_and_schema_is_in_the_reference() -> None:
    generator = _generator()
    from meshrag.api.openapi import document
    from meshrag.config import Config

    doc = document(Config(), generator.BUNDLED_DIM)
    text = generator.render(doc)
    for path, item in doc["paths"].items():
        for method in item:
            assert f"### {method.upper()} {path}\n" in text
    for name in doc["components"]["schemas"]:
        assert f"### {name}\n" in text
