"""Keeping Hugging Face tokens out of everything we print or write: redaction, token-free argument copies."""

from __future__ import annotations

import argparse
import os
import re
from typing import Any, Mapping

REDACTED = "***"

# Anything shaped like a secret, whether or not we know the token: Hugging Face user/org tokens, the value of
# an Authorization header or a Bearer credential, and token query parameters in URLs.
_SECRET_PATTERNS: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"\bhf_[A-Za-z0-9]{16,}"), REDACTED),
    (re.compile(r"(?i)\b(bearer\s+)[^\s'\",;}\]]+"), rf"\1{REDACTED}"),
    (re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(?!bearer\b)[^\s'\",;}\]]+"), rf"\1{REDACTED}"),
    (re.compile(r"(?i)([?&](?:access_)?token=)[^&\s'\"]+"), rf"\1{REDACTED}"),
)
# Argument / config keys whose values are secrets: left out of logs and saved configs altogether.
SECRET_KEY = re.compile(r"(?i)token|secret|password|api_key|apikey|credential")


class HubError(ValueError):
    """A publishing failure the user can act on; the message is one redacted line (the CLI prints it as is)."""


def resolve_token(token: str | None = None) -> str | None:
    """The token to use: `token`, else huggingface_hub's (`get_token`: $HF_TOKEN, else the one saved by
    `hf auth login`; None if there is none)."""
    if token:
        return token
    from huggingface_hub import get_token

    return get_token()


def redact(text: Any, token: str | None = None) -> str:
    """`str(text)` with `token` and anything that looks like a token or an auth header replaced by ***.

    Use it on every message that may carry a huggingface_hub error (they can include request URLs and
    headers) before printing or logging it. With `token=None`, the token from $HF_TOKEN is scrubbed too.
    """
    text = str(text)
    for secret in {token, os.environ.get("HF_TOKEN")}:
        if secret and len(secret) >= 8:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def loggable_args(args: argparse.Namespace | Mapping[str, Any], token: str | None = None) -> dict[str, Any]:
    """A copy of a script's arguments that is safe to log or save (training_config.json, tensorboard hparams).

    Keys that name secrets (`hub_token`, `api_key`, ...) are dropped; every string value is redacted.
    """
    items = vars(args).items() if isinstance(args, argparse.Namespace) else dict(args).items()
    out: dict[str, Any] = {}
    for key, value in items:
        if SECRET_KEY.search(str(key)):
            continue
        out[key] = _redact_value(value, token)
    return out


def _redact_value(value: Any, token: str | None) -> Any:
    if isinstance(value, str):
        return redact(value, token)
    if isinstance(value, (list, tuple)):
        return type(value)(_redact_value(v, token) for v in value)
    if isinstance(value, Mapping):
        return loggable_args(value, token)
    return value
