"""Typed, validated dataclasses from plain data (as parsed from YAML): the machinery behind
srclib.params.

A field declares its constraints in its metadata (``constrained(ge=0)``, ``choices=...``,
``pattern=...`` (the whole string must match), ``min_len``, ``item_*``, ``key_choices``,
``key_pattern`` (with ``key_rule``: the pattern in words), ``key=`` for a YAML
name that is a Python keyword); ``build(cls, data, where)`` converts and checks every field and
raises ``ParamsError`` naming the dotted key, the value and what is allowed.

``load_yaml_text(text, where)`` is the YAML reader behind it: PyYAML's safe loader, refusing a
mapping key given twice at any depth (block or flow style; plain PyYAML keeps the last one);
``key_lines(text, where)`` says on which line each dotted key of such a text is;
``dump_yaml(data)`` writes plain data back as YAML that reads back equal.

``merge(cls, base, override)`` lays an override's plain data over a base's, following the
dataclass ``cls``: a mapping that ``cls`` declares as a dataclass (a section, a group of settings)
merges key by key, recursively; every other value -- a scalar, a list, a mapping of named entries
(``dict[str, X]``: models, prune instances, tasks) -- is replaced whole by the override's.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import field
from typing import Any, Callable, Union

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = ["ParamsError", "constrained", "build", "validate_fields", "as_dict", "load_yaml_text", "key_lines",
           "merge", "dump_yaml"]


class ParamsError(ValueError):
    """A params.yaml (or override) value is invalid; the message names the key and what is allowed."""


def constrained(**constraints: Any) -> Any:
    """A dataclass field with validation constraints and no default (params.yaml holds values).

    ``optional=True``: the key may be left out of the YAML mapping; it then reads as None (the
    field's type must admit None). Used where absence has a meaning of its own (e.g. a prune
    instance without ``structure`` is unstructured), never to hide a default value."""
    return field(metadata=constraints)


# ---------------------------------------------------------------------------------------------
# YAML
_MERGE_TAG = "tag:yaml.org,2002:merge"  # ``<<: *anchor``: merged keys may be overridden, by design


def load_yaml_text(text: str, where: str) -> Any:
    """Parse one YAML document with the safe loader; refuse a mapping key given twice.

    ``where`` names the source in every message (a file, or ``argument instance``). Raises
    ``ParamsError``: on a syntax error (the whole of PyYAML's message, with line and column), or on
    a duplicate key, naming its dotted path and both lines (PyYAML would silently keep the last).
    """
    loader = yaml.SafeLoader(text)
    loader.name = where  # PyYAML's marks then say `in "<where>", line L` instead of "<unicode string>"
    try:
        node = loader.get_single_node()
        if node is None:  # an empty document
            return None
        _check_unique_keys(loader, node, "", set(), where)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{where}: not valid YAML: {_yaml_message(exc)}") from None
    finally:
        loader.dispose()


def key_lines(text: str, where: str) -> dict[str, int]:
    """The line (1-based) of every key of a YAML text, by dotted path (``prune.instances.x.model``;
    a list item as ``collect.models[2]``, at the item's line). A node reached again through an alias
    is listed at its first path only (``prune.sink: *sink_rule`` lists ``prune.sink``, not its keys).
    For a text that ``load_yaml_text`` read; a YAML error is a ParamsError naming ``where``."""
    loader = yaml.SafeLoader(text)
    loader.name = where
    out: dict[str, int] = {}
    try:
        node = loader.get_single_node()
        if node is not None:
            _walk_lines(node, "", set(), out)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{where}: not valid YAML: {_yaml_message(exc)}") from None
    finally:
        loader.dispose()
    return out


def _walk_lines(node: Node, path: str, seen: set[int], out: dict[str, int]) -> None:
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, MappingNode):
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                _walk_lines(value_node, path, seen, out)
                continue
            sub = f"{path}.{_key_text(key_node)}" if path else _key_text(key_node)
            out.setdefault(sub, key_node.start_mark.line + 1)
            _walk_lines(value_node, sub, seen, out)
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            out.setdefault(f"{path}[{i}]", item.start_mark.line + 1)
            _walk_lines(item, f"{path}[{i}]", seen, out)


class _PlainDumper(yaml.SafeDumper):
    """Writes a value shared by two keys (a YAML alias when read) out twice, never as ``&id001``."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(data: dict[str, Any], width: int = 1 << 12) -> str:
    """A mapping of sections as block YAML, one blank line between sections, keys in their order,
    leaf lists and mappings in flow style on one line each (``arch: {n_layers: 4, ...}``, up to
    ``width`` characters); ``load_yaml_text`` reads it back to equal data (strings YAML would read
    otherwise, such as ``'2:4'``, are quoted)."""
    return "\n".join(yaml.dump({k: v}, Dumper=_PlainDumper, sort_keys=False, default_flow_style=None,
                               width=width, allow_unicode=True) for k, v in data.items())


def _yaml_message(exc: yaml.YAMLError) -> str:
    """PyYAML's message, with the source line shown once (carets at both columns) when its context
    and problem marks fall on the same line, as they always do for a one-line argument."""
    c, p = getattr(exc, "context_mark", None), getattr(exc, "problem_mark", None)
    if c is None or p is None or (c.name, c.line) != (p.name, p.line) or exc.note:
        return str(exc)
    (c_text, c_caret), (p_text, p_caret) = (m.get_snippet().split("\n") for m in (c, p))
    if c_text != p_text:  # a long line, cut differently around each mark
        return str(exc)
    cols = sorted({c_caret.index("^"), p_caret.index("^")})
    carets = "".join("^" if i in cols else " " for i in range(cols[-1] + 1))
    where = (f"column {c.column + 1}" if c.column == p.column else f"columns {c.column + 1} and {p.column + 1}")
    return f"{exc.context}: {exc.problem}\n  in \"{p.name}\", line {p.line + 1}, {where}:\n{p_text}\n{carets}"


def _key_id(loader: yaml.SafeLoader, node: Node) -> Any:
    """What makes two keys equal: the constructed scalar (``1`` and ``0x1`` are one key), else the
    node's tag and source text."""
    if isinstance(node, ScalarNode):
        try:
            value = loader.construct_object(node)
            hash(value)
            return (type(value).__name__, value)
        except (yaml.YAMLError, TypeError):
            pass
    return (node.tag, repr(getattr(node, "value", None)))


def _key_text(node: Node) -> str:
    return str(node.value) if isinstance(node, ScalarNode) else f"<{node.tag.rsplit(':', 1)[-1]} key>"


def _lines(a: Node, b: Node) -> str:
    (la, ca) = (a.start_mark.line + 1, a.start_mark.column + 1)
    (lb, cb) = (b.start_mark.line + 1, b.start_mark.column + 1)
    if la == lb:
        return f"line {la}, columns {ca} and {cb}"
    return f"lines {la} and {lb}"


def _check_unique_keys(loader: yaml.SafeLoader, node: Node, path: str, seen: set[int], where: str) -> None:
    """Walk the composed node tree (aliases visited once) and raise on a key repeated in a mapping."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, MappingNode):
        first: dict[Any, Node] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:  # merged mappings are checked where they are defined
                _check_unique_keys(loader, value_node, path, seen, where)
                continue
            key = _key_text(key_node)
            sub = f"{path}.{key}" if path else key
            kid = _key_id(loader, key_node)
            if kid in first:
                raise ParamsError(
                    f"{where}: duplicate key {sub} ({_lines(first[kid], key_node)}); a key may appear "
                    f"only once in a mapping (YAML readers would silently keep the last value): remove "
                    f"or rename one of them"
                )
            first[kid] = key_node
            _check_unique_keys(loader, value_node, sub, seen, where)
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            _check_unique_keys(loader, item, f"{path}[{i}]", seen, where)


# ---------------------------------------------------------------------------------------------
# generic validation
_NUM_CHECKS = {
    "ge": (lambda v, b: v >= b, ">= {}"), "gt": (lambda v, b: v > b, "> {}"),
    "le": (lambda v, b: v <= b, "<= {}"), "lt": (lambda v, b: v < b, "< {}"),
}


SHOW_CHARS = 80  # a value is quoted in a message up to this many characters (never a file's whole content)


def _show(value: Any) -> str:
    """``repr(value)``, cut to SHOW_CHARS characters with its full length said when longer."""
    text = repr(value)
    if len(text) <= SHOW_CHARS:
        return text
    return f"{text[:SHOW_CHARS - 3]}... ({len(text)} characters)"


def _what(value: Any) -> str:
    """What a value is, in words, for a message about a mapping that is not one."""
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, str):
        return f"a text of {len(value)} characters ({_show(value)})"
    return f"{type(value).__name__} {_show(value)}"


_NM = re.compile(r"\d+:\d+")


def _base60(value: int) -> str:
    """YAML 1.1 reads an unquoted ``2:4`` as the base-60 integer 2 * 60 + 4 = 124: the N:M text back."""
    digits: list[int] = []
    v = abs(value)
    while v:
        v, d = divmod(v, 60)
        digits.append(d)
    return ":".join(str(d) for d in reversed(digits)) or "0"


def _unquoted_nm(where: str, value: int, choices: list[str]) -> str:
    """The message for an integer where an N:M string is expected (an unquoted ``2:4`` in YAML)."""
    key = where.rsplit(".", 1)[-1]
    text = _base60(value)
    if ":" in text:
        read = (f"YAML reads an unquoted {text} as the base-60 integer {value} "
                f"({' * 60 + '.join(text.split(':'))}); ")
        example = text if text in choices else next(c for c in choices if _NM.fullmatch(c))
    else:
        read = ""
        example = next(c for c in choices if _NM.fullmatch(c))
    return (f"{where} = {value}: must be a string; {read}N:M patterns must be quoted, e.g. "
            f"{key}: \"{example}\" (one of {choices})")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _check_num(where: str, value: Any, meta: dict[str, Any], prefix: str = "") -> None:
    for name, (ok, text) in _NUM_CHECKS.items():
        bound = meta.get(prefix + name)
        if bound is not None and not ok(value, bound):
            raise ParamsError(f"{where} = {_show(value)}: must be {text.format(bound)}")


def _convert(where: str, value: Any, tp: Any, meta: dict[str, Any]) -> Any:
    if tp is Any:  # free-form YAML (e.g. adapter options): checked by its consumer, which names the key
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(where, value, inner, meta)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if origin is tuple:  # tuple[X, ...]: validated like a list, stored as a tuple
        (item_tp, _) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{where} = {_show(value)}: must be a list of {_type_name(item_tp)}")
        return tuple(_convert(where, list(value), list[item_tp], meta))
    if origin is list:
        return _convert_list(where, value, typing.get_args(tp)[0], meta)
    if origin is dict:
        return _convert_dict(where, value, typing.get_args(tp)[1], meta)
    if tp in _SCALARS:
        return _SCALARS[tp](where, value, meta)
    raise TypeError(f"unsupported field type {tp!r} at {where}")  # programming error


def _convert_list(where: str, value: Any, item_tp: Any, meta: dict[str, Any]) -> list:
    if not isinstance(value, list):
        raise ParamsError(f"{where} = {_show(value)}: must be a list of {_type_name(item_tp)}")
    if len(value) < meta.get("min_len", 0):
        raise ParamsError(f"{where}: must have at least {meta['min_len']} item(s)")
    item_meta = {k[5:]: v for k, v in meta.items() if k.startswith("item_")}
    return [_convert(f"{where}[{i}]", v, item_tp, item_meta) for i, v in enumerate(value)]


def _convert_dict(where: str, value: Any, val_tp: Any, meta: dict[str, Any]) -> dict:
    if not isinstance(value, dict):
        raise ParamsError(f"{where} = {_show(value)}: must be a mapping")
    if len(value) < meta.get("min_len", 0):
        raise ParamsError(f"{where}: must have at least {meta['min_len']} entr(y/ies)")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str):
            raise ParamsError(f"{where}: key {_show(k)} must be a string")
        if "key_choices" in meta and k not in meta["key_choices"]:
            raise ParamsError(f"{where}.{k}: unknown key; allowed: {list(meta['key_choices'])}")
        if "key_pattern" in meta and not re.fullmatch(meta["key_pattern"], k):
            rule = f" ({meta['key_rule']})" if "key_rule" in meta else ""
            raise ParamsError(f"{where}: key {_show(k)} is not a valid name: must match "
                              f"{meta['key_pattern']}{rule}")
        out[k] = _convert(f"{where}.{k}", v, val_tp, {})
    return out


def _convert_bool(where: str, value: Any, meta: dict[str, Any]) -> bool:
    if not isinstance(value, bool):
        raise ParamsError(f"{where} = {_show(value)}: must be true or false")
    return value


def _convert_int(where: str, value: Any, meta: dict[str, Any]) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamsError(f"{where} = {_show(value)}: must be an integer")
    _check_num(where, value, meta)
    return value


def _convert_float(where: str, value: Any, meta: dict[str, Any]) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParamsError(f"{where} = {_show(value)}: must be a number")
    value = float(value)
    if not math.isfinite(value):
        raise ParamsError(f"{where} = {_show(value)}: must be finite")
    _check_num(where, value, meta)
    return value


def _convert_str(where: str, value: Any, meta: dict[str, Any]) -> str:
    if not isinstance(value, str):
        nm = [c for c in meta.get("choices", ()) if isinstance(c, str) and _NM.fullmatch(c)]
        if nm and isinstance(value, int) and not isinstance(value, bool):
            raise ParamsError(_unquoted_nm(where, value, list(meta["choices"])))
        raise ParamsError(f"{where} = {_show(value)}: must be a string")
    if "choices" in meta and value not in meta["choices"]:
        raise ParamsError(f"{where} = {_show(value)}: must be one of {list(meta['choices'])}")
    if "pattern" in meta and not re.fullmatch(meta["pattern"], value):
        raise ParamsError(f"{where} = {_show(value)}: must match {meta['pattern']}")
    return value


_SCALARS: dict[type, Callable[[str, Any, dict[str, Any]], Any]] = {
    bool: _convert_bool, int: _convert_int, float: _convert_float, str: _convert_str,
}


def build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ParamsError(f"{where or 'params'}: must be a mapping, got {_what(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.metadata.get("key", f.name): f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise ParamsError(
            f"{where + '.' if where else ''}{str(unknown[0])[:SHOW_CHARS]}: unknown key; allowed keys: {sorted(fields)}"
        )
    missing = sorted(k for k in set(fields) - set(data) if not fields[k].metadata.get("optional"))
    if missing:
        raise ParamsError(f"{where + '.' if where else ''}{missing[0]}: missing key")
    kwargs = {}
    for key, f in fields.items():
        sub = f"{where}.{key}" if where else key
        kwargs[f.name] = _convert(sub, data.get(key), hints[f.name], dict(f.metadata))
    try:
        return cls(**kwargs)
    except ParamsError as exc:  # cross-field checks: prefix the section they belong to
        if where and not str(exc).startswith(where):
            raise ParamsError(f"{where}: {exc}") from None
        raise


def _section_type(tp: Any) -> Any:
    """The dataclass a field's type declares (``X`` or ``X | None``), else None."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        tp = next((a for a in typing.get_args(tp) if a is not type(None)), None)
    return tp if dataclasses.is_dataclass(tp) else None


def merge(cls: type, base: Any, override: Any, merged: set[str] | None = None, where: str = "") -> Any:
    """``override`` laid over ``base`` (plain data, as read from YAML), following dataclass ``cls``.

    Where ``cls`` is a dataclass and both values are mappings, the result has base's keys in base's
    order, each key the override gives merged in the same way with its field's type (new keys come
    last); every other override value replaces base's whole: scalars, lists and mappings of named
    entries (``dict[str, X]``), so an override's ``models:`` or ``prune.instances`` is the complete
    collection, never a union with base's. Nothing is validated (``build`` does that on the result;
    a key ``cls`` does not declare is kept, for build to refuse) and neither input is modified.
    ``merged``: receives the dotted keys (below ``where``) of the mappings merged key by key."""
    if not (dataclasses.is_dataclass(cls) and isinstance(base, dict) and isinstance(override, dict)):
        return override
    if merged is not None and where:
        merged.add(where)
    hints = typing.get_type_hints(cls)
    fields = {f.metadata.get("key", f.name): f for f in dataclasses.fields(cls)}
    out = dict(base)
    for key, value in override.items():
        f = fields.get(key)
        if f is None or key not in base:
            out[key] = value
            continue
        sub = f"{where}.{key}" if where else str(key)
        out[key] = merge(_section_type(hints[f.name]), base[key], value, merged, sub)
    return out


def validate_fields(obj: Any, where: str) -> None:
    """Check every field of a constructed dataclass against its constraints (for dataclasses that
    library code also builds directly, such as PruneSpec)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, tp = getattr(obj, f.name), hints[f.name]
        if dataclasses.is_dataclass(tp):  # a section object (e.g. PruneSpec.sink): its own fields
            if not isinstance(value, tp):
                raise ParamsError(f"{where}.{f.name} = {_show(value)}: must be a {tp.__name__}")
            validate_fields(value, f"{where}.{f.name}")
            continue
        _convert(f"{where}.{f.name}", value, tp, dict(f.metadata))




def as_dict(obj: Any) -> Any:
    """Plain JSON-able dict of a params dataclass (for provenance), with params.yaml's key names."""
    if dataclasses.is_dataclass(obj):
        return {f.metadata.get("key", f.name): as_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: as_dict(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [as_dict(v) for v in obj]
    return obj

