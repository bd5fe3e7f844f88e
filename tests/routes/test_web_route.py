"""The chat page's route and files, without a browser (tests/static/ drives the page itself)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.main import create_app
from config.settings import Settings


def test_the_page_and_its_files_are_served_without_the_api_key():
    # No `with`: the lifespan (model loading) does not run; the page needs no model.
    client = TestClient(create_app(Settings(api_key="s3cret")))
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for src in ("static/chat.js", "static/chat.css", "static/vendor/markdown-it.min.js"):
        assert f'"{src}"' in page.text
        assert client.get(f"/{src}").status_code == 200
    assert "markdown-it 14.1.0" in client.get("/static/vendor/markdown-it.min.js").text[:100]
    assert "Permission is hereby granted" in client.get("/static/vendor/markdown-it.LICENSE").text
    assert client.get("/static/../main.py").status_code == 404
    assert client.post("/api/chat", json={"prompt": "hi"}).status_code == 401  # the API stays closed
