"""The machinery behind common/config.py: fields with validation metadata (`opt`, `section`), building a frozen
dataclass from a mapping with every key, type and bound checked (`build`), `key=value` overrides, and plain
dict views (`to_dict`, `flatten`), and reading a config file (UTF-8, YAML without repeated keys, not empty). Knows
no section of the project's config."""

from __future__ import annotations

import dataclasses
import difflib
import math
import textwrap
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

from common.errors import UserError


class ConfigError(UserError, ValueError):
    """A config file or override names an unknown key or a bad value."""

    exit_code = 2


def opt(default: Any, *, choices: tuple | None = None, ge: float | None = None, gt: float | None = None,
        le: float | None = None, lt: float | None = None, help: str = "") -> Any:
    """A dataclass field with validation metadata (choices, bounds) and a help string."""
    meta = {"choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt, "help": help}
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for list defaults so configs stay immutable")
    return field(default=default, metadata=meta)


def section(cls: type) -> Any:
    return field(default_factory=cls)


def _apply_override(raw: dict, item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value (for example rl.kl_coef=0.1)")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    value = yaml.safe_load(text) if text.strip() else ""
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
    node[parts[-1]] = value


def build(cls: type, raw: Any, prefix: str) -> Any:
    """Construct dataclass `cls` from a mapping, checking keys, types and bounds."""
    where = prefix.rstrip(".") or "the top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown key '{prefix}{key}'{hint}; allowed in {where}: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build(tp, raw[name], f"{prefix}{name}.")
        else:
            kwargs[name] = _check_value(f"{prefix}{name}", raw[name], tp, f.metadata)
    return cls(**kwargs)


def _check_value(key: str, value: Any, tp: Any, meta: typing.Mapping) -> Any:
    value = _coerce(key, value, tp)
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {', '.join(map(repr, choices))}")
    bounds = (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
              ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<"))
    for name, ok, sign in bounds:
        bound = meta.get(name)
        if bound is not None and not ok(value, bound):
            raise ConfigError(f"{key}: must be {sign} {bound}, got {value!r}")
    return value


def _coerce(key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(number):  # inf or nan would train to NaN weights, never an error
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp, _) = typing.get_args(tp)
        return tuple(_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):  # Optional[...]
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(key, value, inner)
    raise TypeError(f"{key}: unsupported config type {tp}")


def to_dict(cfg: Any) -> dict:
    return _plain(dataclasses.asdict(cfg))


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def flatten(d: dict, prefix: str = "") -> dict:
    """A nested config mapping as dotted keys: {"rl": {"kl_coef": 0.1}} -> {"rl.kl_coef": 0.1}."""
    out = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(section, dotted key, default as an override would write it, help with the allowed values) for every key of
    `cls`, in declaration order; a nested section's keys follow its parent's plain keys."""
    hints = typing.get_type_hints(cls)
    rows, nested = [], []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            nested += describe(hints[f.name], f"{prefix}{f.name}.")
            continue
        allowed = _allowed(f.metadata)
        text = " ".join(x for x in (f.metadata.get("help", ""), f"({allowed})" if allowed else "") if x)
        rows.append((prefix.rstrip("."), f"{prefix}{f.name}", _cli_value(f.default), text))
    return rows + nested


def _allowed(meta: typing.Mapping) -> str:
    if meta.get("choices") is not None:
        return "one of " + ", ".join(map(_cli_value, meta["choices"]))
    signs = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
    return ", ".join(f"{sign} {meta[name] if isinstance(meta[name], int) else format(meta[name], 'g')}"
                     for name, sign in signs if meta.get(name) is not None)


def _cli_value(value: Any) -> str:
    """A value as `key=value` writes it (YAML): true, null, [a, b], ''."""
    if isinstance(value, float):
        return repr(value)  # 1e-06, not YAML's 1.0e-06
    if isinstance(value, tuple):
        value = list(value)
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip()


def keys_help(cls: type, width: int = 118) -> str:
    """Every key of `cls` with its default and help, grouped by section: the `launch.py --help` listing, generated
    from the schema so that it never disagrees with what load_config accepts."""
    lines = []
    for section, key, default, text in describe(cls):
        if not lines or lines[-1][0] != section:
            lines.append((section, []))
        lines[-1][1].append(textwrap.fill(f"{key}={default}  {text}".rstrip(), width, initial_indent="    ",
                                          subsequent_indent="        ", break_on_hyphens=False))
    return "\n".join(f"  {section or 'top level'}:\n" + "\n".join(entries) for section, entries in lines)


def read_config_file(path: Path) -> dict:
    """The mapping a config file holds: UTF-8 text, valid YAML, no key given twice, not empty."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text: byte 0x{data[e.start]:02x} at byte offset {e.start} cannot be "
                          f"decoded; save the file as UTF-8") from None
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader that refuses repeated keys
    except DuplicateKeyError as e:
        raise ConfigError(f"{path}: key {e.key!r} is given twice in one mapping (line {e.first} and line {e.second}); "
                          f"the second would silently win: keep one") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if raw is None:  # an empty file (or comments only) would run the built-in defaults, not what was meant
        raise ConfigError(f"{path}: the config file is empty; it would run the built-in defaults (rl.steps=200, "
                          f"rl.lr=1e-06), not a demo: put the settings in it, or leave out --config for the offline "
                          f"demo (configs/tiny.yaml)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return raw


class DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key, first: int, second: int) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key, self.first, self.second = key, first, second


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, except that a key repeated within one mapping is an error (PyYAML keeps the last
    one without a word). Merge keys (<<) may still be overridden, as YAML intends."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            lines: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in lines:
                        raise DuplicateKeyError(key, lines[key], line)
                    lines[key] = line
                except TypeError:  # an unhashable key: the base class names it
                    break
        return super().construct_mapping(node, deep=deep)


def config_diff(old: dict, new: dict) -> dict[str, tuple]:
    """{dotted key: (old, new)}, keys sorted, for every value that differs between two flattened configs
    (`flatten(to_dict(cfg))`, or one stored in a checkpoint, which may give lists back as tuples)."""
    plain = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
    return {k: (old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys())
            if plain(old.get(k)) != plain(new.get(k))}


def changed_keys(old: Any, new: Any, show: int = 3) -> str:
    """`key: old -> new` for the first `show` keys (alphabetically) whose values differ, and how many more."""
    diff = config_diff(flatten(to_dict(old)), flatten(to_dict(new)))
    text = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(diff.items())[:show])
    return text + (f" and {len(diff) - show} more" if len(diff) > show else "")


def parse_resources(items: tuple[str, ...], key: str = "resources") -> dict[str, float]:
    """('node2:1', ...) -> {'node2': 1.0}; a malformed item raises ConfigError naming the key."""
    out = {}
    for item in items:
        name, sep, amount = str(item).partition(":")
        try:
            value = float(amount)
        except ValueError:
            value = -1.0
        if not sep or not name.strip() or value <= 0:
            raise ConfigError(f"{key}: {item!r} is not NAME:AMOUNT with AMOUNT > 0 (for example node2:1)")
        out[name.strip()] = value
    return out
