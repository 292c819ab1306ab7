"""Signatures of remote callables: the text of the module server's ``str(inspect.signature(obj))``
parsed into a local :class:`inspect.Signature` whose ``str()`` is that text.

Only text crosses (the server never hands out a ``Signature``, whose defaults and annotations are
objects). Defaults that are Python literals come back as their values; other defaults (numpy's
``<no value>``, an object's ``<... at 0x...>``) and every annotation become :class:`RemoteText`
placeholders whose ``repr`` is the remote text, so the signature prints as it does remotely.
"""

from __future__ import annotations

import ast
import inspect

_OPEN = "([{<"
_CLOSE = ")]}>"
_Kind = inspect._ParameterKind


class RemoteText:
    """A default or annotation of a remote signature, standing in as its remote text."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemoteText) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def _scan(text: str) -> list[tuple[int, str, int]]:
    """``(index, character, bracket depth before it)`` for every character outside quotes.

    ``<`` and ``>`` count as brackets: they enclose reprs such as ``<object object at 0x...>``,
    which may hold commas.
    """
    out: list[tuple[int, str, int]] = []
    depth = 0
    quote = ""
    escaped = False
    for i, c in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == quote:
                quote = ""
            continue
        if c in "'\"":
            quote = c
            continue
        out.append((i, c, depth))
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth = max(depth - 1, 0)
    return out


def _split_params(text: str) -> list[str]:
    parts: list[str] = []
    start = 0
    for i, c, depth in _scan(text):
        if c == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    last = text[start:].strip()
    if last:
        parts.append(last)
    return parts


def _value(text: str) -> object:
    """The default's value if ``text`` is a literal that prints back as itself, else its text."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return RemoteText(text)
    return value if repr(value) == text else RemoteText(text)


def _parameter(text: str, kind: _Kind) -> inspect.Parameter:
    name_end = 0
    while name_end < len(text) and (text[name_end].isalnum() or text[name_end] == "_"):
        name_end += 1
    name, rest = text[:name_end], text[name_end:].strip()
    if not name.isidentifier():
        raise ValueError(f"no parameter name in {text!r}")
    annotation: object = inspect.Parameter.empty
    default: object = inspect.Parameter.empty
    if rest.startswith(":"):
        # inspect writes "name: annotation = default" (spaced) and "name=default" (not).
        rest = rest[1:]
        split = next(
            (i for i, c, depth in _scan(rest) if depth == 0 and rest.startswith(" = ", i)), None
        )
        if split is None:
            annotation = RemoteText(rest.strip())
        else:
            annotation = RemoteText(rest[:split].strip())
            default = _value(rest[split + 3 :].strip())
    elif rest.startswith("="):
        default = _value(rest[1:].strip())
    elif rest:
        raise ValueError(f"unexpected {rest!r} after parameter {name!r}")
    return inspect.Parameter(name, kind, default=default, annotation=annotation)


def parse_signature(text: str) -> inspect.Signature:
    """The :class:`inspect.Signature` printed as ``text`` (``"(a, /, b=2, *, c) -> int"``).

    Raises ValueError if ``text`` is not a signature inspect would print.
    """
    text = text.strip()
    close = next((i for i, c, depth in _scan(text) if c == ")" and depth == 1), None)
    if not text.startswith("(") or close is None:
        raise ValueError(f"not a signature: {text!r}")
    rest = text[close + 1 :].strip()
    return_annotation: object = inspect.Signature.empty
    if rest.startswith("->"):
        return_annotation = RemoteText(rest[2:].strip())
    elif rest:
        raise ValueError(f"not a signature: {text!r}")
    kind = _Kind.POSITIONAL_OR_KEYWORD
    parameters: list[inspect.Parameter] = []
    for part in _split_params(text[1:close]):
        if part == "/":
            parameters = [p.replace(kind=_Kind.POSITIONAL_ONLY) for p in parameters]
        elif part == "*":
            kind = _Kind.KEYWORD_ONLY
        elif part.startswith("**"):
            parameters.append(_parameter(part[2:], _Kind.VAR_KEYWORD))
        elif part.startswith("*"):
            parameters.append(_parameter(part[1:], _Kind.VAR_POSITIONAL))
            kind = _Kind.KEYWORD_ONLY
        else:
            parameters.append(_parameter(part, kind))
    return inspect.Signature(parameters, return_annotation=return_annotation)
