"""Write the HTTP API's OpenAPI document (`softprompt serve`) to docs/openapi.json.

The document describes the routes and request bodies only, not the prompts a server has
loaded, so it is built from the app around a stand-in server: no model is loaded.
tests/test_serve_api_fuzz.py checks the file is current.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from softprompt.serving.app import create_app
from softprompt.serving.server import ServeOptions

DOCUMENT = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"


def openapi_document() -> dict:
    """The app's OpenAPI document. `create_app` reads only the server's options while it
    builds the app (its routes and middleware use the server when requests come), so a
    server with default options and nothing loaded gives the document every server has."""
    stand_in = SimpleNamespace(options=ServeOptions(prompts_dir="."), metrics=None)
    return create_app(stand_in, manage=False).openapi()


def render() -> str:
    """The document as docs/openapi.json holds it."""
    return json.dumps(openapi_document(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    DOCUMENT.write_text(render(), encoding="utf-8")
    print(f"wrote {DOCUMENT}")
