"""Load MMSegmentation 1.x config files: ``_base_`` inheritance, ``_delete_``, ``{{_base_.x}}`` references,
``--cfg-options`` overrides, zoo names, and dumping back to a Python file.

A config file is Python: it is executed in a fresh namespace and its top-level variables (not modules,
functions or classes, not names starting with ``_``) form the config. ``_base_`` lists files whose configs
are merged first (left to right), then the file's own variables are merged on top; a dict holding
``_delete_=True`` replaces the base value instead of merging into it.
"""

from __future__ import annotations

import ast
import builtins
import copy
import difflib
import keyword
import math
import re
import traceback
import types
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["Config", "ConfigDict", "ConfigError", "find_config", "load_config", "parse_cfg_options"]

CONFIG_ROOT = Path(__file__).parent / "configs"
DELETE_KEY = "_delete_"
_SKIPPED_TYPES = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type)
# `{{ _base_.a.b }}`, optionally quoted: the quotes go too, so the reference is a value, not a string.
_BASE_REF = re.compile(r"""(['"]?)\{\{\s*_base_\.([A-Za-z0-9_.]+)\s*\}\}\1""")


class ConfigError(ValueError):
    """A fault in a config file or a ``--cfg-options`` entry; the message is one line naming the file or the
    key's path (``model.decode_head.num_classes``) and what was expected. Every config fault semseg finds,
    at loading (:func:`load_config`) or at start-up (:func:`semseg.config_check.check_config`), is one.
    The subclasses below are also the built-in error that code written before them caught."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigKeyError(ConfigError, KeyError):
    """A key that does not exist where it is looked up (a ``--cfg-options`` path, a ``{{_base_.x}}``)."""


class ConfigSyntaxError(ConfigError, SyntaxError):
    """A config file that is not valid Python."""


class ConfigFileNotFoundError(ConfigError, FileNotFoundError):
    """A config file (or one in its ``_base_``) that does not exist."""


class ConfigTypeError(ConfigError, TypeError):
    """A value of the wrong type."""


def _nearest(word: str, options: Iterable[Any]) -> str | None:
    """Closest option to ``word`` (difflib), or None when nothing is close."""
    names = [str(o) for o in options]
    match = difflib.get_close_matches(str(word), names, n=1, cutoff=0.5)
    return match[0] if match else None


def _did_you_mean(word: str, options: Iterable[Any]) -> str:
    near = _nearest(word, options)
    return f"; did you mean '{near}'?" if near is not None else ""


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _convert(value: Any, path: str) -> Any:
    """Deep copy of the containers in ``value`` with every dict turned into a ConfigDict."""
    if isinstance(value, Mapping):
        return ConfigDict(value, _path=path)
    if isinstance(value, (list, tuple)):
        items = [_convert(v, _join(path, i)) for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    return value


def _to_plain(value: Any) -> Any:
    """Deep copy of the containers in ``value`` as plain dicts, lists and tuples."""
    if isinstance(value, Mapping):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_to_plain(v) for v in value)
    return value


class ConfigDict(dict):
    """A dict with attribute access (``cfg.model.backbone.depth``) whose nested dicts, also inside lists and
    tuples, are ConfigDicts. A missing attribute names the key, where it was looked up, and the nearest key.
    """

    __slots__ = ("_path",)

    def __init__(self, data: Mapping | Iterable | None = None, _path: str = "", **kwargs: Any) -> None:
        super().__init__()
        object.__setattr__(self, "_path", _path)
        self.update(data if data is not None else {}, **kwargs)

    def _where(self) -> str:
        return getattr(self, "_path", "") or "config"

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, _convert(value, _join(getattr(self, "_path", ""), key)))

    def update(self, data: Mapping | Iterable = (), **kwargs: Any) -> None:  # type: ignore[override]
        items = data.items() if isinstance(data, Mapping) else data
        for key, value in [*items, *kwargs.items()]:
            self[key] = value

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_path":
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(
                f"no key '{name}' in {self._where()}{_did_you_mean(name, self.keys())}"
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(f"no key '{name}' in {self._where()}") from None

    def __reduce__(self) -> tuple:
        return (self.__class__, (self.to_dict(), getattr(self, "_path", "")))

    def copy(self) -> ConfigDict:
        return self.__class__(self, _path=getattr(self, "_path", ""))

    def to_dict(self) -> dict:
        """Plain dicts, lists and tuples all the way down (a deep copy of the containers)."""
        return _to_plain(self)


def _strip_delete(value: Any) -> Any:
    """Copy of ``value`` with every ``_delete_`` key removed (they only mean something while merging)."""
    if isinstance(value, Mapping):
        return {k: _strip_delete(v) for k, v in value.items() if k != DELETE_KEY}
    if isinstance(value, list):
        return [_strip_delete(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_strip_delete(v) for v in value)
    return value


def _override(old: Any, new: Any) -> Any:
    """``new`` applied over ``old``: dicts merge recursively unless ``new`` holds ``_delete_=True``; every
    other value replaces ``old``."""
    if isinstance(new, Mapping) and isinstance(old, Mapping) and not new.get(DELETE_KEY, False):
        return _merge(old, new)
    return _strip_delete(new)


def _merge(base: Mapping, override: Mapping) -> dict:
    """``override`` merged into a copy of ``base``, key by key (see ``_override``)."""
    out = dict(base)
    for key, value in override.items():
        if key != DELETE_KEY:
            out[key] = _override(out.get(key), value)
    return out


def _lookup(data: Any, dotted: str) -> Any:
    """``data['a']['b'][1]`` for ``dotted='a.b.1'``; KeyError naming the first missing part."""
    node, done = data, ""
    for part in dotted.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            options = node.keys() if isinstance(node, Mapping) else []
            raise ConfigKeyError(f"'{_join(done, part)}' not found{_did_you_mean(part, options)}")
        done = _join(done, part)
    return node


def _base_files(tree: ast.Module, path: Path) -> list[str]:
    """The file names assigned to ``_base_`` at the top level of a parsed config (a str or a list)."""
    value = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_base_" for t in node.targets
        ):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                raise ConfigError(f"{path}, line {node.lineno}: _base_ must be a str or a list of str") from None
    if value is None:
        return []
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{path}: _base_ must be a str or a list of str, got {value!r}")
    for name in names:
        if "::" in name:
            raise ConfigError(f"{path}: package-scoped base '{name}' is not supported; use a relative path")
    return list(names)


def _load_file(path: Path, referenced_by: Path | None, chain: tuple[Path, ...]) -> dict:
    """The merged config of one file (its bases first), as plain Python values."""
    if not path.is_file():
        where = f" (listed in _base_ of {referenced_by})" if referenced_by else ""
        raise ConfigFileNotFoundError(f"config file not found: {path}{where}")
    if path.suffix != ".py":
        raise ConfigError(f"{path}: only Python (.py) config files are supported")
    if path.resolve() in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path.resolve()))
        raise ConfigError(f"circular _base_ inheritance: {cycle}")

    refs: dict[str, str] = {}

    def to_placeholder(match: re.Match) -> str:
        name = f"_base_ref_{len(refs)}_"
        refs[name] = match.group(2)
        return name

    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise ConfigError(f"invalid config file {path}, line {line}: not UTF-8 text (byte {err.start})") from None
    source = _BASE_REF.sub(to_placeholder, text)
    try:
        tree = ast.parse(source, filename=str(path))
    except (SyntaxError, ValueError) as err:  # ValueError: null bytes (Python < 3.12)
        line = getattr(err, "lineno", None)
        raise ConfigSyntaxError(
            f"invalid config file {path}, line {line}: {getattr(err, 'msg', None) or err}",
            (str(path), line, getattr(err, "offset", None), getattr(err, "text", None)),
        ) from None
    except (RecursionError, MemoryError):
        raise ConfigSyntaxError(f"invalid config file {path}: nested too deeply to parse") from None

    base: dict = {}
    for name in _base_files(tree, path):
        base = _merge(base, _load_file(path.parent / name, path, (*chain, path.resolve())))

    namespace: dict[str, Any] = {"__builtins__": builtins}
    for name, dotted in refs.items():
        try:
            namespace[name] = copy.deepcopy(_lookup(base, dotted))
        except KeyError as err:
            raise ConfigKeyError(f"{path}: {{{{_base_.{dotted}}}}}: {err.args[0]} in its _base_ configs") from None
    _execute(tree, path, namespace)
    own = {
        k: v for k, v in namespace.items() if not k.startswith("_") and not isinstance(v, _SKIPPED_TYPES)
    }
    return _merge(base, own)


def _execute(tree: ast.Module, path: Path, namespace: dict) -> None:
    """Run a parsed config file in ``namespace``; an error the file's code raises becomes a ConfigError
    naming the file and line (its cause stays chained for ``SEMSEG_DEBUG`` tracebacks)."""
    try:
        exec(compile(tree, str(path), "exec"), namespace)
    except Exception as err:
        frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename == str(path)]
        line = f", line {frames[-1].lineno}" if frames else ""
        message = str(err).splitlines()[0] if str(err).strip() else ""
        raise ConfigError(f"config file {path}{line}: {type(err).__name__}: {message}") from err


class Config:
    """A loaded config: a ConfigDict (``cfg.model``, ``cfg['model']``) plus the file it came from."""

    def __init__(self, cfg: Mapping | Config | None = None, filename: str | Path | None = None) -> None:
        overrides = list(cfg._overrides) if isinstance(cfg, Config) else []
        if isinstance(cfg, Config):
            cfg = cfg._cfg
        object.__setattr__(self, "_cfg", ConfigDict(cfg or {}))
        object.__setattr__(self, "_filename", None if filename is None else str(filename))
        object.__setattr__(self, "_overrides", overrides)

    @classmethod
    def fromfile(cls, path: str | Path) -> Config:
        """Execute a Python config file, resolving ``_base_``, ``_delete_`` and ``{{_base_.x}}``."""
        path = Path(path)
        return cls(_load_file(path, None, ()), filename=path)

    @classmethod
    def from_dict(cls, d: Mapping | Config, filename: str | Path | None = None) -> Config:
        return cls(d, filename=filename)

    @property
    def filename(self) -> str | None:
        return self._filename

    @property
    def overrides(self) -> list[str]:
        """The keys ``merge_from_dict`` (``--cfg-options``) has set, in order."""
        return list(self._overrides)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._cfg, name)

    def __setattr__(self, name: str, value: Any) -> None:
        self._cfg[name] = value

    def __delattr__(self, name: str) -> None:
        delattr(self._cfg, name)

    def __getitem__(self, key: str) -> Any:
        return self._cfg[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._cfg[key] = value

    def __delitem__(self, key: str) -> None:
        del self._cfg[key]

    def __contains__(self, key: object) -> bool:
        return key in self._cfg

    def __iter__(self) -> Iterator[str]:
        return iter(self._cfg)

    def __len__(self) -> int:
        return len(self._cfg)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Config):
            return self._cfg == other._cfg
        return NotImplemented

    def __repr__(self) -> str:
        return f"Config(filename={self._filename!r}):\n{self.pretty_text}"

    def get(self, key: str, default: Any = None) -> Any:
        return self._cfg.get(key, default)

    def keys(self) -> Any:
        return self._cfg.keys()

    def values(self) -> Any:
        return self._cfg.values()

    def items(self) -> Any:
        return self._cfg.items()

    def copy(self) -> Config:
        """A deep copy (overrides applied to it leave this config alone)."""
        return copy.deepcopy(self)

    def to_dict(self) -> dict:
        return self._cfg.to_dict()

    def merge_from_dict(self, options: Mapping[str, Any]) -> None:
        """Apply ``--cfg-options``: ``{'model.decode_head.num_classes': 19, 'model.auxiliary_head.1.x': 2}``.

        Every part of a key but the last must exist (list indices allowed); the last may be new. A dict
        value merges into an existing dict (``_delete_=True`` replaces it); any other value replaces.
        """
        for key, value in options.items():
            self._overrides.append(str(key))
            parts = str(key).split(".")
            node: Any = self._cfg
            for i, part in enumerate(parts):
                where = ".".join(parts[:i]) or "config"
                last = i == len(parts) - 1
                if isinstance(node, Mapping):
                    if last:
                        node[part] = _override(node.get(part), value)
                    elif part in node:
                        node = node[part]
                    else:
                        raise ConfigKeyError(
                            f"cfg-option '{key}': no key '{part}' in {where}{_did_you_mean(part, node.keys())}"
                        )
                elif isinstance(node, (list, tuple)):
                    if not (part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node)):
                        raise ConfigKeyError(f"cfg-option '{key}': {where} is a list of {len(node)} items, "
                                       f"'{part}' is not a valid index")
                    if not last:
                        node = node[int(part)]
                    elif isinstance(node, list):
                        node[int(part)] = _convert(_override(node[int(part)], value), _join(where, part))
                    else:
                        raise ConfigTypeError(f"cfg-option '{key}': {where} is a tuple; set the whole tuple instead")
                else:
                    raise ConfigKeyError(f"cfg-option '{key}': {where} is {type(node).__name__}, not a dict or list")

    @property
    def pretty_text(self) -> str:
        """The config as Python source (``name = value`` lines) that ``fromfile`` loads back."""
        lines = []
        for key, value in self._cfg.items():
            if not isinstance(key, str) or not key.isidentifier() or keyword.iskeyword(key) or key.startswith("_"):
                raise ValueError(f"cannot dump top-level key {key!r}: not a public Python variable name")
            lines.append(f"{key} = {_format(value, 0, key)}")
        return "\n".join(lines) + "\n"

    def dump(self, path: str | Path) -> None:
        """Write ``pretty_text`` to ``path`` (a ``.py`` file)."""
        Path(path).write_text(self.pretty_text, encoding="utf-8")


_WIDTH = 100


def _format(value: Any, indent: int, where: str) -> str:
    """Python source for ``value``: on one line when it fits in the width, else one item a line."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return repr(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else f"float('{value}')"
    pad = " " * (indent + 4)
    if isinstance(value, Mapping):
        as_kwargs = all(isinstance(k, str) and k.isidentifier() and not keyword.iskeyword(k) for k in value)
        items = [
            (f"{k}=" if as_kwargs else f"{k!r}: ") + _format(v, indent + 4, _join(where, k))
            for k, v in value.items()
        ]
        open_, close = ("dict(", ")") if as_kwargs else ("{", "}")
    elif isinstance(value, (list, tuple)):
        items = [_format(v, indent + 4, _join(where, i)) for i, v in enumerate(value)]
        open_, close = ("[", "]") if isinstance(value, list) else ("(", ")")
    else:
        raise TypeError(f"cannot dump {where}: values of type {type(value).__name__} have no config form")
    one_line = open_ + ", ".join(items) + ("," if isinstance(value, tuple) and len(items) == 1 else "") + close
    if "\n" not in one_line and indent + len(one_line) <= _WIDTH:
        return one_line
    return open_ + "\n" + "".join(f"{pad}{item},\n" for item in items) + " " * indent + close


def _split_top(text: str) -> list[str]:
    """Split at commas that are outside brackets and quotes; None when brackets or quotes do not balance."""
    parts, depth, quote, start = [], 0, "", 0
    pairs = {"(": ")", "[": "]", "{": "}"}
    stack: list[str] = []
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in pairs:
            stack.append(pairs[ch])
            depth += 1
        elif ch in ")]}":
            if not stack or stack.pop() != ch:
                return None
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if quote or stack:
        return None
    parts.append(text[start:])
    return parts


def _parse_scalar(text: str) -> Any:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _parse_value(text: str) -> Any:
    """A command-line value: scalars, ``[..]`` lists, ``(..)`` tuples (nested), and ``1,2,3`` lists."""
    text = text.strip()
    parts = _split_top(text)
    if parts is None:
        return text
    if len(parts) > 1:
        if parts[-1].strip() == "":
            parts = parts[:-1]
        return [_parse_value(p) for p in parts]
    inner = _split_top(text[1:-1])
    if text[:1] + text[-1:] in ("[]", "()") and inner is not None:
        items = [_parse_value(p) for p in inner if p.strip()]
        return items if text[0] == "[" else tuple(items)
    if text[:1] == "{":
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    return _parse_scalar(text)


def parse_cfg_options(items: Iterable[str]) -> dict[str, Any]:
    """``['model.decode_head.num_classes=19', 'crop=(512,512)']`` -> ``{'model.decode_head.num_classes': 19,
    'crop': (512, 512)}``, values parsed as on MMSegmentation's command line."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"cfg-option {item!r} is not KEY=VALUE (e.g. model.decode_head.num_classes=19)")
        options[key.strip()] = _parse_value(value)
    return options


def _zoo_names(root: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(root.rglob("*.py")) if "_base_" not in p.relative_to(root).parts}


def find_config(name: str | Path, root: str | Path | None = None) -> Path:
    """A zoo config name (``pspnet_r50-d8_4xb2-40k_cityscapes-512x1024``, ``.py`` optional) -> its file under
    ``semseg/configs`` (or ``root``); an existing file path is returned as is."""
    path = Path(name)
    if path.is_file():
        return path
    root = CONFIG_ROOT if root is None else Path(root)
    stem = path.name[:-3] if path.name.endswith(".py") else path.name
    zoo = _zoo_names(root) if root.is_dir() else {}
    if stem in zoo and path.parent == Path("."):
        return zoo[stem]
    near = difflib.get_close_matches(stem, list(zoo), n=5, cutoff=0.4)
    hint = f"; nearest zoo configs: {', '.join(near)}" if near else f" ({len(zoo)} zoo configs under {root})"
    raise ConfigFileNotFoundError(f"no config file or zoo config named '{name}'{hint}")


def load_config(
    cfg: str | Path | Mapping | Config, cfg_options: Mapping[str, Any] | list[str] | None = None
) -> Config:
    """One entry point: a zoo name, a file path, a dict or a Config (copied), with overrides applied."""
    if isinstance(cfg, Config):
        config = cfg.copy()
    elif isinstance(cfg, Mapping):
        config = Config.from_dict(copy.deepcopy(dict(cfg)))
    else:
        config = Config.fromfile(find_config(cfg))
    if cfg_options:
        if isinstance(cfg_options, (list, tuple)):
            cfg_options = parse_cfg_options(cfg_options)
        config.merge_from_dict(cfg_options)
    return config
