"""What the monitoring tests need to know about PromQL text: an alert expression's operands (the
expression without its threshold comparisons and set operators, whose data must exist for the
alert to mean anything) and the template variables of the Grafana dashboard."""

from __future__ import annotations

import re

#: Binary operators an alert is made of: comparisons (the thresholds) and set operators.
_SPLITTING = ("unless", "and", "or", ">=", "<=", "==", "!=", ">", "<")
_MODIFIERS = re.compile(
    r"^\s*(?:bool\s+)?(?:(?:on|ignoring)\s*\([^)]*\)\s*)?(?:(?:group_left|group_right)\s*(?:\([^)]*\))?\s*)?"
)
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?$", re.IGNORECASE)
_OFFSET = re.compile(r"\s+offset\s+-?\d+[smhdwy](?:\d+[smhdwy])*")


def _split_top_level(expr: str) -> list[str]:
    """The operands of the top-level comparison and set operators of `expr` (brackets, braces
    and strings are not looked into); [expr] when there are none."""
    parts, depth, start, i, quote = [], 0, 0, 0, ""
    while i < len(expr):
        char = expr[i]
        if quote:
            if char == "\\":
                i += 2
                continue
            if char == quote:
                quote = ""
            i += 1
            continue
        if char in "\"'`":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0:
            for op in _SPLITTING:
                word = op.isalpha()
                if not expr.startswith(op, i):
                    continue
                if word and (
                    (i > 0 and (expr[i - 1].isalnum() or expr[i - 1] in "_:"))
                    or (i + len(op) < len(expr) and (expr[i + len(op)].isalnum() or expr[i + len(op)] in "_:"))
                ):
                    continue
                parts.append(expr[start:i])
                i += len(op)
                i += _MODIFIERS.match(expr[i:]).end()  # type: ignore[union-attr]
                start = i
                break
            else:
                i += 1
            continue
        i += 1
    parts.append(expr[start:])
    return [part.strip() for part in parts]


def _unwrap(expr: str) -> str:
    """`(x)` -> `x` when the parentheses enclose the whole expression."""
    expr = expr.strip()
    while expr.startswith("(") and expr.endswith(")"):
        depth = 0
        for i, char in enumerate(expr):
            depth += char == "("
            depth -= char == ")"
            if depth == 0 and i < len(expr) - 1:
                return expr
        expr = expr[1:-1].strip()
    return expr


def operands(expr: str) -> list[str]:
    """Every operand of an alert's comparisons and set operators, recursively through
    parentheses, with number literals left out and `offset` modifiers removed (the series under
    an offset are the series now)."""
    found: list[str] = []
    parts = _split_top_level(_unwrap(expr))
    if len(parts) == 1:
        part = _OFFSET.sub("", _unwrap(parts[0]))
        if not _NUMBER.match(part):
            found.append(part)
        return found
    for part in parts:
        found.extend(operands(part))
    return found


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's `$name` / `${name}` template variables replaced, longest names first."""
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    return expr


def label_values(query: str) -> tuple[str, str]:
    """`label_values(selector, label)` -> (selector, label)."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", query, re.DOTALL)
    assert match, f"not a label_values() query: {query}"
    return match.group(1).strip(), match.group(2)
