"""The page's language: Chinese first, English when asked or preferred."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from monitor.web.i18n import language


def request(query: str = "", accept: str | None = None, cookie: str | None = None) -> Request:
    headers = []
    if accept is not None:
        headers.append((b"accept-language", accept.encode()))
    if cookie is not None:
        headers.append((b"cookie", f"envmon_lang={cookie}".encode()))
    return Request({"type": "http", "query_string": query.encode(), "headers": headers})


@pytest.mark.parametrize(
    ("query", "accept", "cookie", "expected"),
    [
        ("", None, None, "zh-CN"),  # a browser that asks for nothing gets Chinese
        ("", "zh-CN,zh;q=0.9,en;q=0.8", None, "zh-CN"),
        ("", "en-US,en;q=0.9,zh-CN;q=0.5", None, "en"),
        ("", "zh;q=0.4, en;q=0.6", None, "en"),
        ("lang=en", "zh-CN", None, "en"),
        ("lang=zh-CN", "en", None, "zh-CN"),
        ("", "zh-CN", "en", "en"),  # a remembered ?lang= choice wins over the header
    ],
)
def test_language_prefers_chinese_unless_english_is_asked_for(
    query: str, accept: str | None, cookie: str | None, expected: str
) -> None:
    assert language(request(query, accept, cookie)) == expected
