"""Fixtures of the chat page's tests: a server per test module (the embedded model), one browser per
module, and a fresh page for each test."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def server(start_server):
    return start_server()


@pytest.fixture(scope="module")
def browser():
    from tests.static.browser import chromium  # skips the tests where playwright or Chromium is missing

    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser, server):
    from tests.static.browser import opened

    with opened(browser, server.url) as page:
        yield page
