"""Checkpoint files: read weights without running anything a file names, write them atomically.

Reading tries ``torch.load(weights_only=True)`` first. MMSegmentation's own training checkpoints pickle
mmengine objects (``message_hub``, ConfigDict) and numpy values, which that loader refuses; such a file is
read again with a restricted unpickler that rebuilds tensors, plain containers and numpy arrays and turns
every other global it names into an inert :class:`Unpickled` record: nothing the file names is imported
or called.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import pickle
import re
import tempfile
import types
import urllib.parse
import urllib.request
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "LoadResult",
    "Unpickled",
    "cached_path",
    "check_integrity",
    "download_checkpoint",
    "file_sha256",
    "load_checkpoint",
    "load_state_dict_file",
    "remove_partial_writes",
    "save_checkpoint",
    "weights_cache_dir",
    "write_text_atomic",
]

logger = logging.getLogger(__name__)

# torch.hub's convention: `name-<first hex digits of the file's SHA-256>.ext`.
_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")
_URL = re.compile(r"^(https?|file)://", re.IGNORECASE)
_CONTAINER_KEYS = ("state_dict", "model", "module")
_DDP_PREFIX = "module."


# ----------------------------------------------------------------------------------------------------------
# Restricted unpickling
# ----------------------------------------------------------------------------------------------------------


class Unpickled:
    """Inert stand-in for an object whose class or function the restricted unpickler does not trust.

    The stand-in class for a global ``module.name`` records what the pickle asked of it and runs nothing:
    calling it (or ``__new__``) gives an instance holding ``args``/``kwargs``, and calling that instance gives
    another record; ``__setstate__`` keeps the state in ``state``; dict-like and list-like items land in
    ``items`` and ``list_items``.
    """

    name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Unpickled:
        obj = super().__new__(cls)
        obj.args = args
        obj.kwargs = kwargs
        obj.state = None
        obj.items = {}
        obj.list_items = []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Arguments were recorded by ``__new__``; nothing else happens."""

    def __call__(self, *args: Any, **kwargs: Any) -> Unpickled:
        """A pickle that calls what a stand-in stands for (``getattr(Path, 'touch')(...)``) gets another record."""
        return _stand_in(self.name, "()")(*args, **kwargs)

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, item: Any) -> None:
        self.list_items.append(item)

    def extend(self, items: Any) -> None:
        self.list_items.extend(items)

    def __repr__(self) -> str:
        return f"<unpickled {self.name} (not rebuilt)>"


@functools.cache
def _stand_in(module: str, name: str) -> type[Unpickled]:
    """The inert class standing for the global ``module.name`` (one class per name)."""
    qualname = f"{module}.{name}"
    return type(name, (Unpickled,), {"name": qualname, "__module__": __name__, "__qualname__": qualname})


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol 2 uses it to pickle bytes; other codecs are refused."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None) -> Tensor:
    """torch's tensor rebuild (v2) with the pickled backward hooks dropped: hooks are never weights."""
    return torch._utils._rebuild_tensor_v2(
        storage, storage_offset, size, stride, requires_grad, OrderedDict(), metadata
    )


def _tensor_v3(
    storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None
) -> Tensor:
    """torch's tensor rebuild (v3) with the pickled backward hooks dropped."""
    return torch._utils._rebuild_tensor_v3(
        storage, storage_offset, size, stride, requires_grad, OrderedDict(), dtype, metadata
    )


def _parameter(data, requires_grad, backward_hooks, state=None) -> Any:
    """An ``nn.Parameter`` around ``data``; hooks and Python attributes pickled with it are dropped."""
    if not isinstance(data, Tensor):
        return _stand_in("torch._utils", "_rebuild_parameter")(data, requires_grad)
    return nn.Parameter(data, requires_grad)


def _tensor_from_type(func, new_type, args, state) -> Any:
    """``torch._tensor._rebuild_from_type_v2`` for plain tensors and parameters only; attributes dropped."""
    obj = func(*args)
    if not isinstance(obj, Tensor) or new_type not in (Tensor, nn.Parameter):
        return _stand_in("torch._tensor", "_rebuild_from_type_v2")(func, new_type, args)
    return obj if type(obj) is new_type else obj.as_subclass(new_type)


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """numpy's array, dtype and scalar reconstruction, restricted to plain ``ndarray`` and string dtypes."""
    try:
        import numpy as np
    except ImportError:
        return {}
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray

    def reconstruct(subtype, shape, dtype):
        if subtype is not np.ndarray:  # ndarray subclasses (masked arrays, matrices) stay records
            return _stand_in("numpy", "ndarray_subclass")(subtype, shape, dtype)
        return multiarray._reconstruct(np.ndarray, shape, dtype)

    def dtype(spec, align=False, copy=False):
        if not isinstance(spec, str):
            return _stand_in("numpy", "dtype")(spec, align, copy)
        return np.dtype(spec, align, copy)

    def scalar(dt, data=None):
        if not isinstance(dt, np.dtype):
            return _stand_in("numpy", "scalar")(dt, data)
        return multiarray.scalar(dt) if data is None else multiarray.scalar(dt, data)

    table: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1.x and 2.x names
        table[(module, "_reconstruct")] = reconstruct
        table[(module, "scalar")] = scalar
    return table


@functools.lru_cache(maxsize=1)
def _allowed_globals() -> dict[tuple[str, str], Any]:
    """(module, name) -> object for the globals needed to rebuild tensors, containers and numpy values."""
    table: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): OrderedDict,
        ("_codecs", "encode"): _latin1_encode,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("torch", "Tensor"): Tensor,
        ("torch._tensor", "Tensor"): Tensor,
        ("torch.nn.parameter", "Parameter"): nn.Parameter,
        ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _tensor_v2,
        ("torch._utils", "_rebuild_tensor_v3"): _tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _tensor_from_type,
    }
    for container in (dict, list, tuple, set, frozenset, bytearray):
        table[("builtins", container.__name__)] = container
    for name in dir(torch):
        obj = getattr(torch, name)
        if isinstance(obj, torch.dtype):
            table[("torch", name)] = obj
        elif (
            isinstance(obj, type)
            and name.endswith("Storage")
            and issubclass(obj, (torch.storage.TypedStorage, torch.UntypedStorage))
        ):
            table[("torch", name)] = obj  # the legacy format names storage classes in its headers
    table.update(_numpy_globals())
    return table


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals and gives :class:`Unpickled` stand-ins for the rest.

    ``find_class`` never imports: a name is looked up in a fixed table built from modules already loaded.
    """

    def find_class(self, module: str, name: str) -> Any:
        module = "builtins" if module == "__builtin__" else module  # protocol 2 writes Python 2 names
        obj = _allowed_globals().get((module, name))
        return obj if obj is not None else _stand_in(module, name)


def _restricted_load(file, **kwargs: Any) -> Any:
    return _RestrictedUnpickler(file, **kwargs).load()


# What torch.load needs of a `pickle_module`: its `Unpickler` (subclassed to add storage handling and
# `persistent_load`) and `load` (the legacy format's header records).
_restricted_pickle = types.ModuleType("semseg_restricted_pickle", "Restricted unpickling for torch.load.")
_restricted_pickle.Unpickler = _RestrictedUnpickler
_restricted_pickle.load = _restricted_load


# ----------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------


def _torch_load(path: Path, map_location: Any) -> Any:
    """``torch.load`` with weights_only, then with the restricted unpickler if the file holds other globals."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        pass  # foreign globals (or a damaged pickle: the second attempt reports that)
    except Exception as e:
        # Other refusals are final: with weights_only=False torch.load would hand a TorchScript archive
        # to torch.jit.load, which runs code.
        raise RuntimeError(f"cannot read checkpoint {path}: {e} (truncated or corrupt file?)") from e
    try:
        return torch.load(
            path, map_location=map_location, weights_only=False, pickle_module=_restricted_pickle
        )
    except Exception as e:
        raise RuntimeError(f"cannot read checkpoint {path}: {e} (truncated or corrupt file?)") from e


def _load_safetensors(path: Path, map_location: Any) -> tuple[dict[str, Tensor], dict]:
    try:
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file
    except ImportError as e:
        raise ImportError(f"reading {path} needs the safetensors package: pip install safetensors") from e
    if map_location is not None and not isinstance(map_location, (str, torch.device)):
        raise ValueError(f"a .safetensors file takes a device as map_location, got {map_location!r}")
    device = str(map_location) if map_location is not None else "cpu"
    try:
        state_dict = load_file(str(path), device=device)
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except (SafetensorError, OSError) as e:
        raise RuntimeError(f"cannot read checkpoint {path}: {e} (truncated or corrupt file?)") from e
    return state_dict, meta


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def _find_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    """The tensor dict under ``state_dict``/``model``/``module``, or ``obj`` itself if it is one."""
    if isinstance(obj, Mapping):
        for key in _CONTAINER_KEYS:
            if _is_state_dict(obj.get(key)):
                return dict(obj[key])
        if _is_state_dict(obj):
            return dict(obj)
        found = f"top-level keys {sorted(map(str, obj))[:20]}"
    else:
        found = f"a {type(obj).__name__}, not a dict"
    raise ValueError(
        f"no state dict in checkpoint {path}: expected a dict of tensors under one of "
        f"{list(_CONTAINER_KEYS)} or at the top level; found {found}"
    )


def load_state_dict_file(path: str | Path, map_location: Any = "cpu") -> tuple[dict[str, Tensor], dict]:
    """Read a checkpoint file into ``(state_dict, meta)`` without executing anything it names.

    Args:
        path: ``.safetensors``, or a ``torch.save`` file (zip or legacy format): a dict with ``state_dict``
            (MMSegmentation), ``model`` or ``module``, or a bare state dict.
        map_location: where tensors go, as in ``torch.load``.

    Returns:
        The state dict with DDP ``module.`` prefixes stripped, and the file's ``meta`` dict (safetensors
        metadata; globals the restricted unpickler did not trust appear as :class:`Unpickled` records).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        state_dict, meta = _load_safetensors(path, map_location)
    else:
        obj = _torch_load(path, map_location)
        state_dict = _find_state_dict(obj, path)
        meta = obj.get("meta") if isinstance(obj, Mapping) else None
        meta = dict(meta) if isinstance(meta, Mapping) else {}
    state_dict = {k.removeprefix(_DDP_PREFIX): v for k, v in state_dict.items()}
    return state_dict, meta


# ----------------------------------------------------------------------------------------------------------
# Downloading
# ----------------------------------------------------------------------------------------------------------

# Environment: the cache's root (weights in `$SEMSEG_HOME/checkpoints`) and a mirror tried before the
# original URL (a base URL or a folder; the file name is appended).
HOME_ENV = "SEMSEG_HOME"
MIRROR_ENV = "SEMSEG_WEIGHTS_MIRROR"

# (bytes received, total bytes or 0 when the server does not say) -> None
DownloadCallback = Callable[[int, int], None]


def weights_cache_dir() -> Path:
    """Where downloaded weights live: ``$SEMSEG_HOME/checkpoints``, by default ``~/.cache/semseg/checkpoints``."""
    home = os.environ.get(HOME_ENV)
    base = Path(home) if home else Path.home() / ".cache" / "semseg"
    return base / "checkpoints"


def _file_name(url: str) -> str:
    """The last part of the URL's path; never one that could lead out of the cache folder."""
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    if name in ("", ".", "..") or any(c in name for c in "\\/\0"):
        raise ValueError(f"cannot tell a safe file name from the URL {url} (got {name!r})")
    return name


def hash_in_name(url: str) -> str | None:
    """The SHA-256 prefix a file name ends with (``..._20200604_192608-efe53f0d.pth`` -> ``'efe53f0d'``)."""
    match = _HASH_IN_NAME.search(_file_name(url))
    return match.group(1) if match else None


def cached_path(url: str, cache_dir: str | Path | None = None) -> Path:
    """The exact path at which the cache keeps ``url``'s file (whether or not it is there).

    A name with a content hash is kept by name (``<cache>/pspnet_..._-efe53f0d.pth``), so a file copied there
    by hand is found; a name without one (``latest.pth``) may stand for different files at different URLs
    and is kept under a folder named after the URL (``<cache>/<sha256(url)[:16]>/latest.pth``).
    """
    name = _file_name(url)
    cache = Path(cache_dir) if cache_dir is not None else weights_cache_dir()
    if _HASH_IN_NAME.search(name) is None:
        cache = cache / hashlib.sha256(url.encode()).hexdigest()[:16]
    return cache / name


def file_sha256(path: str | Path) -> str:
    """The hex SHA-256 of a file, read in 1 MiB chunks."""
    sha256 = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha256.update(chunk)
    return sha256.hexdigest()


def mirror_url(url: str, mirror: str) -> str:
    """Where a mirror keeps ``url``'s file: the mirror's base URL (or folder) with the file name appended."""
    name = _file_name(url)
    if not _URL.match(mirror):
        return (Path(mirror).expanduser().resolve() / name).as_uri()
    return f"{mirror.rstrip('/')}/{urllib.parse.quote(name)}"


def _console_progress(label: str) -> DownloadCallback:
    from semseg.cli.progress import DownloadProgress  # a console display: imported only when shown

    return DownloadProgress(label)


def _fetch_to(url: str, dest: Path, expected: str | None, progress: DownloadCallback | None) -> None:
    """Write ``url``'s bytes to ``dest`` through a temporary file beside it; on any error (a SHA-256 that does
    not start with ``expected`` included) nothing is left behind."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        sha256 = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    total = int(response.headers.get("Content-Length") or 0)
                    done = 0
                    if progress is not None:
                        progress(0, total)
                    while chunk := response.read(1 << 20):
                        sha256.update(chunk)
                        out.write(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(done, total)
                    if progress is not None and done != total:
                        progress(done, done)  # the size was unknown: tell the display that it is complete
            except OSError as e:  # URLError and HTTPError are OSErrors
                raise OSError(f"cannot download {url}: {e}") from e
        actual = sha256.hexdigest()
        if expected is not None and not actual.startswith(expected):
            raise ValueError(
                f"checksum mismatch for {url}: expected SHA-256 {expected}..., the downloaded file has "
                f"{actual[: len(expected)]}...; the file was deleted"
            )
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; the cache is shared
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def download_checkpoint(
    url: str,
    cache_dir: str | Path | None = None,
    *,
    sha256: str | None = None,
    mirror: str | None = None,
    progress: DownloadCallback | bool = True,
) -> Path:
    """The cached copy of ``url``'s file (http, https or file URL), downloaded first if it is not there.

    Sources, in order: the cache (:func:`cached_path`: a file put there by hand counts), the mirror (``mirror``
    or ``$SEMSEG_WEIGHTS_MIRROR``: a base URL or a folder, the file name appended; a mirror without the file
    falls through), then ``url``. A download goes to a temporary name beside its cache path and is renamed
    when complete and checked, so the cache never holds a partial or mismatching file.

    Args:
        url: where the checkpoint lives.
        cache_dir: defaults to :func:`weights_cache_dir` (``$SEMSEG_HOME/checkpoints``).
        sha256: hex prefix the file's SHA-256 must start with; defaults to the one in the file name
            (torch.hub's ``name-<sha256 prefix>.ext``); a name without one is not checked.
        progress: a ``(bytes done, total bytes)`` callback; ``True`` shows a bar on stderr (a line at every
            tenth when stderr is not a terminal), ``False`` shows nothing.

    Raises:
        ValueError: the downloaded file's hash does not match (the file is deleted).
        OSError: no source could deliver the file; the message names the path to copy it to by hand.
    """
    dest = cached_path(url, cache_dir)
    if dest.is_file():
        return dest
    expected = sha256.lower() if sha256 else hash_in_name(url)
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV)
    sources = ([mirror_url(url, mirror)] if mirror else []) + [url]
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for source in sources:
        logger.info("downloading %s to %s", source, dest)
        callback = _console_progress(dest.name) if progress is True else (progress or None)
        try:
            _fetch_to(source, dest, expected, callback)
            return dest
        except OSError as e:
            errors.append(str(e))
    raise OSError(
        "; ".join(errors) + f". Without network access, copy the file {dest.name} (from {url}) to {dest}"
        + ("" if mirror else f", or set {MIRROR_ENV} to a server or folder that has it")
    )


# ----------------------------------------------------------------------------------------------------------
# Loading into a model, saving
# ----------------------------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    """What :func:`load_checkpoint` found: keys the model lacks, extra keys, shape mismatches, file meta."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 10) -> str:
        """One line per kind of problem, the first ``limit`` keys of each."""

        def listed(items: list[str]) -> str:
            more = f", ... and {len(items) - limit} more" if len(items) > limit else ""
            return ", ".join(items[:limit]) + more

        lines = []
        if self.missing:
            lines.append(f"missing keys ({len(self.missing)}): {listed(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected keys ({len(self.unexpected)}): {listed(self.unexpected)}")
        if self.mismatched:
            shapes = [f"{k} (checkpoint {list(c)}, model {list(m)})" for k, c, m in self.mismatched]
            lines.append(f"shape mismatches ({len(self.mismatched)}): {listed(shapes)}")
        return "\n".join(lines)


def _revise(state_dict: dict[str, Tensor], revise_keys: list[tuple[str, str]]) -> dict[str, Tensor]:
    for pattern, repl in revise_keys:
        state_dict = {re.sub(pattern, repl, k): v for k, v in state_dict.items()}
    return state_dict


def load_checkpoint(
    model: nn.Module,
    path_or_url: str | Path,
    strict: bool = True,
    map_location: Any = "cpu",
    revise_keys: list[tuple[str, str]] | None = None,
    ignore_keys: tuple[str, ...] = (),
) -> LoadResult:
    """Load a checkpoint file or URL into ``model``'s parameters and buffers.

    Keys are compared with ``model.state_dict()``. With ``strict`` any missing, unexpected or wrongly
    shaped key raises ``RuntimeError`` listing them and nothing is loaded; otherwise the matching keys
    load and a warning summarises the rest. A shape mismatch is never loaded.

    Args:
        revise_keys: ``(regex, replacement)`` pairs applied with ``re.sub`` to every checkpoint key, in order
            (after the DDP ``module.`` prefix is stripped).
        ignore_keys: checkpoint keys to drop before comparing (an ImageNet classifier's ``fc.weight``).
    """
    source = str(path_or_url)
    path = download_checkpoint(source) if _URL.match(source) else Path(path_or_url)
    state_dict, meta = load_state_dict_file(path, map_location)
    if revise_keys:
        state_dict = _revise(state_dict, revise_keys)
    state_dict = {k: v for k, v in state_dict.items() if k not in ignore_keys}

    own = model.state_dict()
    result = LoadResult(
        missing=[k for k in own if k not in state_dict],
        unexpected=[k for k in state_dict if k not in own],
        mismatched=[
            (k, tuple(v.shape), tuple(own[k].shape))
            for k, v in state_dict.items()
            if k in own and v.shape != own[k].shape
        ],
        meta=meta,
    )
    if strict and not result.ok:
        raise RuntimeError(f"checkpoint {path} does not fit {type(model).__name__}:\n{result.summary()}")
    bad = {k for k, _, _ in result.mismatched}
    model.load_state_dict({k: v for k, v in state_dict.items() if k in own and k not in bad}, strict=strict)
    if not result.ok:
        loaded = len(own) - len(result.missing) - len(bad)
        warnings.warn(
            f"checkpoint {path}: loaded {loaded} of {len(own)} tensors of {type(model).__name__}\n"
            f"{result.summary()}",
            stacklevel=2,
        )
    return result


# save_checkpoint's temporary files: `.<name>.<random>.tmp` beside their target
_PARTIAL = re.compile(r"^\..+\.pth\.[^.]+\.tmp$")


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint(obj: dict, path: str | Path) -> None:
    """``torch.save(obj, path)`` atomically: a temporary file in the same directory, flushed to disk, then
    ``os.replace``. The file under ``path`` is always complete: a crash, a kill or an error while writing
    (a full disk) leaves any previous file at ``path`` untouched, and an error removes the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        # a failed write (ENOSPC) inside torch.save surfaces as the RuntimeError of its zip writer's cleanup
        cause = _os_error_in(error)
        if cause is not None and cause is not error:
            raise OSError(cause.errno, cause.strerror or str(cause)) from error
        raise
    _fsync_dir(path.parent)


def _os_error_in(error: BaseException) -> OSError | None:
    """The first ``OSError`` in an exception's chain of causes and contexts."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace a small text file (a pointer such as ``last_checkpoint``) atomically and durably."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def remove_partial_writes(directory: str | Path) -> list[Path]:
    """Delete the temporary files :func:`save_checkpoint` leaves when its process is killed while writing
    (``.<name>.pth.<random>.tmp``); returns them. Call it only while nothing writes to ``directory``."""
    removed = []
    for path in sorted(Path(directory).glob(".*.tmp")):
        if _PARTIAL.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def check_integrity(path: str | Path) -> None:
    """Raise ``RuntimeError`` if a zip-format checkpoint has a record whose CRC-32 does not match its bytes.

    ``torch.load`` reads a truncated file as an error but a damaged byte inside a tensor as a silently wrong
    weight; the zip container holds a CRC-32 per record, checked here (one extra read of the file).
    """
    path = Path(path)
    try:
        if not zipfile.is_zipfile(path):
            return  # the legacy format has no checksums; torch.load judges it
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise RuntimeError(f"cannot read checkpoint {path}: {e} (truncated or corrupt file?)") from e
    if bad is not None:
        raise RuntimeError(f"checkpoint {path} is corrupt: its record {bad} fails its CRC-32 check")
