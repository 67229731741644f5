"""YAML with line numbers: mappings load as :class:`Node` dicts that remember where each key is.

PyYAML's marks are 0-based; every line reported here is 1-based, as editors show it.
"""

from __future__ import annotations

from typing import Any

import yaml

from metricsmith.alerts.errors import AlertRuleError


class Node(dict[str, Any]):
    """A YAML mapping: ``line`` is where it starts, ``lines[key]`` where each key is."""

    line: int
    lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.lines.get(key, self.line)


class Seq(list[Any]):
    """A YAML sequence with its start line and the line of each item."""

    line: int
    lines: list[int]


class _Loader(yaml.SafeLoader):
    pass


def _mapping(loader: _Loader, node: yaml.MappingNode) -> Node:
    out = Node()
    out.line = node.start_mark.line + 1
    out.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise AlertRuleError(f"keys must be text, got {key!r}", line=key_node.start_mark.line + 1)
        if key in out:
            raise AlertRuleError(f"duplicate key {key!r}", line=key_node.start_mark.line + 1)
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> Seq:
    out = Seq(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.lines = [child.start_mark.line + 1 for child in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)


def load(text: str, source: str) -> Any:
    """Parse ``text``; any YAML problem is an :class:`AlertRuleError` with its line."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except AlertRuleError as exc:
        raise AlertRuleError(exc.detail, line=exc.line, source=source) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise AlertRuleError(f"not valid YAML: {exc.problem or exc.context}", line=line, source=source) from None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise AlertRuleError(f"not valid YAML: {exc}", source=source) from None
