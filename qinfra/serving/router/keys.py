"""Which user a request belongs to: the sticky header, else the OpenAI `user` field, else a cookie,
else a hash of the bearer token; None when it carries none of them (it is then assigned at random)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from http.cookies import CookieError, SimpleCookie
from typing import Any

# A key longer than this is not a user id but noise (or an attack on memory): treated as no key.
MAX_KEY_CHARS = 512
_BEARER = "bearer "


def request_key(
    headers: Mapping[str, str], body: Any, key_header: str, cookie_name: str
) -> str | None:
    """The request's key from `headers` (names lower-case) and its parsed JSON `body`.

    Blank, non-string or over-long values are skipped, so a malformed key falls through to the next
    source instead of failing a request the engine would have served. The bearer token is hashed so
    the router never holds a credential as a key.
    """
    key = _usable(headers.get(key_header.lower()))
    if key is not None:
        return key
    if isinstance(body, dict):
        key = _usable(body.get("user"))
        if key is not None:
            return key
    cookie = headers.get("cookie")
    if cookie:
        key = _usable(_cookie_value(cookie, cookie_name))
        if key is not None:
            return key
    auth = headers.get("authorization", "")
    if auth[: len(_BEARER)].lower() == _BEARER:
        token = auth[len(_BEARER) :].strip()
        if token:
            return "bearer:" + hashlib.blake2b(token.encode(), digest_size=16).hexdigest()
    return None


def _usable(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value if 0 < len(value) <= MAX_KEY_CHARS else None


def _cookie_value(header: str, name: str) -> str | None:
    try:
        jar = SimpleCookie(header)
    except CookieError:
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None
