"""Typed values to bytes and back without running code: how step results travel between workers.

A pipeline's ``analyse`` and ``predict`` return a value of its declared
:attr:`~node.pipelines.base.Pipeline.result_type` (frozen dataclasses of numbers,
strings, tuples, dicts, NumPy arrays and pydicom Datasets). :func:`encode` stores
such a value as one ZIP archive (deflate) with these members, and nothing else:

* ``value.json``: the value as JSON. Numbers, strings, booleans, ``null`` and lists
  are themselves; every other value is an object with a ``"$"`` tag: ``tuple``,
  ``dict``, ``set``, ``frozenset``, ``float`` (NaN and infinities), ``number`` (a
  NumPy scalar with its dtype), ``bytes`` (base64), ``ndarray`` (a member name, dtype
  and shape), ``dataset`` (member names) and ``dataclass`` (a type tag
  ``module.QualName`` and the fields by name);
* ``arrays/NNNNNN.npy``: NumPy arrays in the ``.npy`` format (booleans, integers,
  floats and complex numbers only), read with ``allow_pickle=False``;
* ``dicom/NNNNNN.dcm`` and ``dicom/NNNNNN.meta``: Datasets and their file meta
  information as DICOM data sets (Explicit VR Little Endian, no preamble).

:func:`decode` builds only those values. The dataclasses it may build form an
explicit allow-list, the :class:`Schema` of the declared root type: the
dataclass types that the root type reaches through its field annotations
(``typing.get_type_hints``), so the queue needs no list of a pipeline's types and
no type outside that closure can ever be named. Decoding constructs each dataclass
through its constructor (its ``__post_init__`` checks run) and checks every field
value against its annotation. Anything else is refused with :class:`CodecError`,
which names where in the value it happened and why: an archive that is not ours
(a pickle is recognised and named), a type tag outside the allow-list, a field
that does not match its annotation, an array whose dtype is an object, structured
or string type or whose dtype or shape differs from the document, a member or a
whole archive over the :class:`Limits`, nesting deeper than ``max_depth``. Nothing
in this module imports a module or calls code named by the data.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import math
import numbers
import re
import types
import typing
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

__all__ = ["CodecError", "SchemaError", "Limits", "DEFAULT_LIMITS", "Schema", "schema_for", "encode", "decode", "FORMAT"]

#: the ``format`` field of ``value.json``; ``version`` is :data:`VERSION`
FORMAT = "cardionode-values"
VERSION = 1

_VALUE_MEMBER = "value.json"
_MEMBER_RE = re.compile(r"^(value\.json|arrays/[0-9]{6}\.npy|dicom/[0-9]{6}\.(dcm|meta))$")
_ARRAY_KINDS = frozenset("biufc")  # bool, signed and unsigned integers, floats, complex
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # member time stamps: the same value encodes to the same bytes


class CodecError(ValueError):
    """Bytes that are not a valid stored value of the expected type; the message says where and why."""


class SchemaError(TypeError):
    """A result type that cannot be stored (an annotation that cannot be resolved or stored)."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what :func:`decode` reads (bytes unless named otherwise).

    ``max_archive_bytes``: the archive as stored; ``max_member_bytes``: one member
    after decompression; ``max_total_bytes``: all members after decompression;
    ``max_json_bytes``: ``value.json``; ``max_members``: members in the archive;
    ``max_depth``: nesting of containers and dataclasses.
    """

    max_archive_bytes: int = 1 << 30
    max_member_bytes: int = 1 << 30
    max_total_bytes: int = 2 << 30
    max_json_bytes: int = 16 << 20
    max_members: int = 100_000
    max_depth: int = 64


DEFAULT_LIMITS = Limits()


# --------------------------------------------------------------------------- schema


def _tag(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class Schema:
    """The dataclass types a stored value may contain: the closure of ``roots`` over field annotations.

    ``types`` maps each type tag (``module.QualName``) to its class; ``hints`` holds
    the resolved annotations of every field. Raises :class:`SchemaError` for an
    annotation that cannot be resolved or that names something that cannot be
    stored (a callable, a type variable).
    """

    def __init__(self, *roots: type) -> None:
        if not roots:
            raise SchemaError("a schema needs at least one root type")
        self.roots = roots
        self.types: dict[str, type] = {}
        self.hints: dict[type, dict[str, Any]] = {}
        for root in roots:
            self._visit(root, _tag(root))

    def __repr__(self) -> str:
        return f"Schema({', '.join(r.__qualname__ for r in self.roots)}; {len(self.types)} types)"

    def _visit(self, hint: Any, where: str) -> None:
        if hint is Any or hint is object or hint is None or hint is type(None) or hint is Ellipsis:
            return
        if isinstance(hint, typing.TypeVar) or hint is typing.Callable or typing.get_origin(hint) in (
            Callable, typing.Callable, type
        ):
            raise SchemaError(f"{where}: {hint!r} cannot be stored (callables, types and type variables are not data)")
        origin = typing.get_origin(hint)
        if origin is typing.Annotated:
            self._visit(typing.get_args(hint)[0], where)
            return
        if origin is typing.Literal:
            return
        if origin is not None:
            for arg in typing.get_args(hint):
                self._visit(arg, where)
            return
        if not isinstance(hint, type):
            raise SchemaError(f"{where}: annotation {hint!r} is not a type the codec knows")
        if not dataclasses.is_dataclass(hint) or hint in self.hints:
            return
        tag = _tag(hint)
        if tag in self.types and self.types[tag] is not hint:
            raise SchemaError(f"{where}: two types are named {tag}")
        try:
            resolved = typing.get_type_hints(hint)
        except Exception as exc:  # NameError for a name imported under TYPE_CHECKING only, ...
            raise SchemaError(f"{tag}: its annotations cannot be resolved ({type(exc).__name__}: {exc})") from exc
        self.types[tag] = hint
        self.hints[hint] = {f.name: resolved.get(f.name, Any) for f in dataclasses.fields(hint)}
        for name, field_hint in self.hints[hint].items():
            self._visit(field_hint, f"{hint.__qualname__}.{name}")


_schemas: dict[tuple[type, ...], Schema] = {}


def schema_for(*roots: type) -> Schema:
    """The :class:`Schema` of ``roots`` (built once per process)."""
    schema = _schemas.get(roots)
    if schema is None:
        schema = _schemas[roots] = Schema(*roots)
    return schema


# --------------------------------------------------------------------------- encoding


class _Encoder:
    def __init__(self, schema: Schema, limits: Limits) -> None:
        self.schema = schema
        self.limits = limits
        self.members: list[tuple[str, bytes]] = []
        self._arrays: dict[int, tuple[np.ndarray, str]] = {}  # id -> (array kept alive, member)
        self._datasets: dict[int, tuple[Dataset, dict[str, Any]]] = {}

    def _member(self, folder: str, suffix: str, data: bytes) -> str:
        name = f"{folder}/{len(self.members):06d}.{suffix}"
        self.members.append((name, data))
        return name

    def value(self, value: Any, path: str, depth: int) -> Any:
        if depth > self.limits.max_depth:
            raise CodecError(f"{path}: nested deeper than {self.limits.max_depth} levels (a cycle?)")
        if value is None or isinstance(value, (bool, str)):
            return value
        if type(value) is int:
            return value
        if isinstance(value, float) and not isinstance(value, np.generic):
            return float(value) if math.isfinite(value) else {"$": "float", "v": repr(float(value))}
        if isinstance(value, np.generic):
            return self._scalar(value, path)
        if isinstance(value, np.ndarray):
            return self._array(value, path)
        if isinstance(value, Dataset):
            return self._dataset(value, path)
        if isinstance(value, (bytes, bytearray)):
            return {"$": "bytes", "v": base64.b64encode(bytes(value)).decode("ascii")}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return self._dataclass(value, path, depth)
        if type(value) is list:
            return [self.value(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
        if type(value) is tuple:
            return {"$": "tuple", "items": [self.value(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]}
        if type(value) in (set, frozenset):
            tag = "set" if type(value) is set else "frozenset"
            items = sorted(value, key=repr)  # a stable order, so that one value has one encoding
            return {"$": tag, "items": [self.value(v, f"{path}{{}}", depth + 1) for v in items]}
        if type(value) is dict:
            if all(type(k) is str for k in value):
                return {"$": "dict", "items": {k: self.value(v, f"{path}[{k!r}]", depth + 1) for k, v in value.items()}}
            return {"$": "dict", "pairs": [[self.value(k, f"{path}.key", depth + 1), self.value(v, f"{path}[{k!r}]", depth + 1)]
                                           for k, v in value.items()]}
        raise CodecError(f"{path}: a {type(value).__module__}.{type(value).__qualname__} cannot be stored "
                         "(numbers, strings, lists, tuples, sets, dicts, arrays, Datasets and dataclasses can)")

    def _scalar(self, value: np.generic, path: str) -> Any:
        dtype = value.dtype
        if dtype.kind not in _ARRAY_KINDS or dtype.itemsize > 16:
            raise CodecError(f"{path}: a NumPy {dtype} scalar cannot be stored")
        if dtype.kind == "c":
            v: Any = [self.value(float(value.real), path, 0), self.value(float(value.imag), path, 0)]
        elif dtype.kind == "f":
            if dtype.itemsize > 8:
                raise CodecError(f"{path}: a NumPy {dtype} scalar cannot be stored exactly; use float64")
            v = self.value(float(value), path, 0)
        else:
            v = value.item()
        return {"$": "number", "dtype": dtype.str, "v": v}

    def _array(self, array: np.ndarray, path: str) -> dict[str, Any]:
        if type(array) is not np.ndarray:
            raise CodecError(f"{path}: a {type(array).__qualname__} (ndarray subclass) cannot be stored; store a plain array")
        dtype = array.dtype
        if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None or dtype.subdtype is not None:
            raise CodecError(f"{path}: arrays of dtype {dtype} cannot be stored (bool, integer, float and complex can)")
        known = self._arrays.get(id(array))
        if known is None:
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array, allow_pickle=False)
            known = self._arrays[id(array)] = (array, self._member("arrays", "npy", buffer.getvalue()))
        return {"$": "ndarray", "ref": known[1], "dtype": dtype.str, "shape": list(array.shape)}

    def _dataset(self, dataset: Dataset, path: str) -> dict[str, Any]:
        known = self._datasets.get(id(dataset))
        if known is not None:
            return known[1]
        try:
            body = _write_dataset(dataset)
            meta = getattr(dataset, "file_meta", None)
            meta_bytes = _write_dataset(meta) if meta is not None and len(meta) else None
        except Exception as exc:  # pydicom's encoding errors name the element
            raise CodecError(f"{path}: the Dataset cannot be encoded as DICOM ({type(exc).__name__}: {exc})") from exc
        entry = {"$": "dataset", "ref": self._member("dicom", "dcm", body),
                 "meta": None if meta_bytes is None else self._member("dicom", "meta", meta_bytes)}
        self._datasets[id(dataset)] = (dataset, entry)
        return entry

    def _dataclass(self, value: Any, path: str, depth: int) -> dict[str, Any]:
        cls = type(value)
        tag = _tag(cls)
        if self.schema.types.get(tag) is not cls:
            raise CodecError(f"{path}: {tag} is not in the allow-list of {self.schema!r}; a stored result may hold only "
                             "the dataclasses its result type names in its field annotations")
        fields = {f.name: self.value(getattr(value, f.name), f"{path}.{f.name}", depth + 1) for f in dataclasses.fields(value)}
        return {"$": "dataclass", "type": tag, "fields": fields}


def _write_dataset(dataset: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, dataset)
    return fp.getvalue()


def encode(value: Any, schema: Schema, *, level: int = 1) -> bytes:
    """The archive of ``value`` (see the module docstring); ``level`` is the deflate level (0-9).

    Raises :class:`CodecError` for a value that cannot be stored (a type outside
    ``schema``'s allow-list, an object array, a callable, ...), naming where it is.
    """
    if type(value) not in schema.roots:
        raise CodecError(f"result: a {_tag(type(value))} is not a {' or '.join(_tag(r) for r in schema.roots)}")
    encoder = _Encoder(schema, DEFAULT_LIMITS)
    document = {"format": FORMAT, "version": VERSION, "root": _tag(type(value)),
                "value": encoder.value(value, "result", 0)}
    text = json.dumps(document, allow_nan=False, separators=(",", ":")).encode("utf-8")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level) as archive:
        for name, data in [(_VALUE_MEMBER, text), *encoder.members]:
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data, compresslevel=level)
    return buffer.getvalue()


# --------------------------------------------------------------------------- decoding


def _describe(hint: Any) -> str:
    return getattr(hint, "__qualname__", None) or str(hint).replace("typing.", "")


def _conforms(value: Any, hint: Any) -> bool:
    """Whether a decoded ``value`` is a value of annotation ``hint``."""
    if hint is Any or hint is object:
        return True
    if hint is None or hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        return _conforms(value, args[0])
    if origin is typing.Union or origin is types.UnionType:
        return any(_conforms(value, arg) for arg in args)
    if origin is typing.Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_conforms(v, args[0]) for v in value)
        if args == ((),):
            return value == ()
        return not args or (len(value) == len(args) and all(_conforms(v, a) for v, a in zip(value, args, strict=True)))
    if origin in (list, set, frozenset, Sequence):
        container = {list: list, set: set, frozenset: frozenset}.get(origin, (list, tuple))
        return isinstance(value, container) and all(_conforms(v, args[0]) for v in value) if args else isinstance(value, container)
    if origin in (dict, Mapping):
        if not isinstance(value, dict):
            return False
        return not args or all(_conforms(k, args[0]) and _conforms(v, args[1]) for k, v in value.items())
    if origin is not None:  # e.g. numpy.typing.NDArray[...]: its origin class
        return isinstance(value, origin) if isinstance(origin, type) else True
    if hint is float:
        return isinstance(value, numbers.Real)
    if hint is int:
        return isinstance(value, numbers.Integral)
    if hint is complex:
        return isinstance(value, numbers.Complex)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


class _Decoder:
    def __init__(self, archive: zipfile.ZipFile, schema: Schema, limits: Limits) -> None:
        self.archive = archive
        self.schema = schema
        self.limits = limits
        self.infos = {info.filename: info for info in archive.infolist()}
        self.used: set[str] = {_VALUE_MEMBER}
        self._arrays: dict[str, np.ndarray] = {}
        self._datasets: dict[str, Dataset] = {}

    def read(self, name: str, limit: int) -> bytes:
        info = self.infos.get(name) if isinstance(name, str) else None
        if info is None:
            raise CodecError(f"the archive has no member {name!r}")
        if info.file_size > limit:
            raise CodecError(f"member {name} is {info.file_size} bytes, more than the limit of {limit}")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise CodecError(f"member {name} uses compression method {info.compress_type}; only stored or deflated")
        try:
            with self.archive.open(info) as handle:
                data = handle.read(limit + 1)
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as exc:  # CRC, zlib errors
            raise CodecError(f"member {name} cannot be read: {exc}") from exc
        if len(data) != info.file_size:
            raise CodecError(f"member {name} holds {len(data)} bytes where the archive says {info.file_size}")
        self.used.add(name)
        return data

    def value(self, node: Any, path: str, depth: int) -> Any:
        if depth > self.limits.max_depth:
            raise CodecError(f"{path}: nested deeper than {self.limits.max_depth} levels")
        if node is None or isinstance(node, (bool, str, int, float)):
            return node
        if isinstance(node, list):
            return [self.value(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(node)]
        if not isinstance(node, dict):
            raise CodecError(f"{path}: unexpected JSON value {type(node).__name__}")
        tag = node.get("$")
        handler = self._handlers.get(tag) if isinstance(tag, str) else None
        if handler is None:
            raise CodecError(f"{path}: unknown value tag {tag!r}")
        return handler(self, node, path, depth)

    def _items(self, node: dict[str, Any], path: str, key: str = "items") -> list[Any]:
        items = node.get(key)
        if not isinstance(items, list):
            raise CodecError(f"{path}: {node['$']} without a list of {key}")
        return items

    def _tuple(self, node: dict[str, Any], path: str, depth: int) -> tuple[Any, ...]:
        return tuple(self.value(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(self._items(node, path)))

    def _set(self, node: dict[str, Any], path: str, depth: int) -> set[Any] | frozenset[Any]:
        items = [self.value(v, f"{path}{{}}", depth + 1) for v in self._items(node, path)]
        try:
            return set(items) if node["$"] == "set" else frozenset(items)
        except TypeError as exc:
            raise CodecError(f"{path}: a set item is not hashable ({exc})") from None

    def _dict(self, node: dict[str, Any], path: str, depth: int) -> dict[Any, Any]:
        if isinstance(node.get("items"), dict):
            return {k: self.value(v, f"{path}[{k!r}]", depth + 1) for k, v in node["items"].items()}
        out: dict[Any, Any] = {}
        for i, pair in enumerate(self._items(node, path, "pairs")):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise CodecError(f"{path}: pair {i} is not a [key, value] list")
            key = self.value(pair[0], f"{path}.key", depth + 1)
            try:
                out[key] = self.value(pair[1], f"{path}[{key!r}]", depth + 1)
            except TypeError as exc:
                raise CodecError(f"{path}: key {i} is not hashable ({exc})") from None
        return out

    def _float(self, node: dict[str, Any], path: str, depth: int) -> float:
        if node.get("v") not in ("nan", "inf", "-inf"):
            raise CodecError(f"{path}: float {node.get('v')!r} is not nan, inf or -inf")
        return float(node["v"])

    def _bytes(self, node: dict[str, Any], path: str, depth: int) -> bytes:
        try:
            return base64.b64decode(str(node["v"]), validate=True)
        except (KeyError, ValueError) as exc:
            raise CodecError(f"{path}: bytes that are not base64 ({exc})") from None

    def _number(self, node: dict[str, Any], path: str, depth: int) -> np.generic:
        dtype = self._dtype(node.get("dtype"), path)
        v = node.get("v")
        try:
            if dtype.kind == "c":
                if not (isinstance(v, list) and len(v) == 2):
                    raise CodecError(f"{path}: a complex number needs [real, imag]")
                parts = [self.value(p, path, depth + 1) for p in v]
                return dtype.type(complex(*parts))
            value = self.value(v, path, depth + 1)
            if not isinstance(value, (bool, int, float)):
                raise CodecError(f"{path}: a number of dtype {dtype} holds {type(value).__name__}")
            scalar = dtype.type(value)
        except CodecError:
            raise
        except (OverflowError, ValueError, TypeError) as exc:
            raise CodecError(f"{path}: {v!r} is not a {dtype} ({exc})") from None
        return scalar

    def _dtype(self, text: Any, path: str) -> np.dtype[Any]:
        if not isinstance(text, str) or len(text) > 8:
            raise CodecError(f"{path}: dtype {text!r} is not a plain dtype string")
        try:
            dtype = np.dtype(text)
        except TypeError as exc:
            raise CodecError(f"{path}: dtype {text!r}: {exc}") from None
        if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None or dtype.subdtype is not None or dtype.hasobject:
            raise CodecError(f"{path}: dtype {dtype} is not allowed (bool, integer, float and complex are)")
        return dtype

    def _array(self, node: dict[str, Any], path: str, depth: int) -> np.ndarray:
        ref = node.get("ref")
        dtype = self._dtype(node.get("dtype"), path)
        shape = node.get("shape")
        if not (isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape) and len(shape) <= 32):
            raise CodecError(f"{path}: shape {shape!r} is not a list of at most 32 sizes")
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > self.limits.max_member_bytes:
            raise CodecError(f"{path}: an array of {nbytes} bytes, more than the limit of {self.limits.max_member_bytes}")
        if not (isinstance(ref, str) and ref.startswith("arrays/")):
            raise CodecError(f"{path}: array reference {ref!r} is not an arrays/ member")
        known = self._arrays.get(ref)
        if known is None:
            raw = self.read(ref, self.limits.max_member_bytes)
            known = self._arrays[ref] = self._npy(raw, ref)
        if known.dtype != dtype or list(known.shape) != shape:
            raise CodecError(f"{path}: {ref} holds a {known.dtype} array of shape {list(known.shape)}, "
                             f"the value says {dtype} {shape}")
        return known

    def _npy(self, raw: bytes, name: str) -> np.ndarray:
        handle = io.BytesIO(raw)
        try:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                raise CodecError(f"{name}: .npy format version {version} is not read")
        except CodecError:
            raise
        except Exception as exc:
            raise CodecError(f"{name} is not a .npy array ({type(exc).__name__}: {exc})") from None
        if dtype.hasobject or dtype.kind not in _ARRAY_KINDS or dtype.fields is not None or dtype.subdtype is not None:
            raise CodecError(f"{name}: arrays of dtype {dtype} are refused (bool, integer, float and complex are read)")
        expected = math.prod(shape) * dtype.itemsize
        if len(raw) - handle.tell() != expected:
            raise CodecError(f"{name}: {len(raw) - handle.tell()} bytes of data for a {dtype} array of shape {shape}")
        handle.seek(0)
        try:
            array = np.lib.format.read_array(handle, allow_pickle=False)
        except Exception as exc:
            raise CodecError(f"{name} cannot be read as an array ({type(exc).__name__}: {exc})") from None
        return array if array.flags.writeable else array.copy()

    def _dataset(self, node: dict[str, Any], path: str, depth: int) -> Dataset:
        ref, meta_ref = node.get("ref"), node.get("meta")
        if not (isinstance(ref, str) and ref.endswith(".dcm") and (meta_ref is None or isinstance(meta_ref, str) and meta_ref.endswith(".meta"))):
            raise CodecError(f"{path}: dataset references {ref!r}, {meta_ref!r} are not dicom/ members")
        known = self._datasets.get(ref)
        if known is None:
            dataset = self._read_dataset(ref, path)
            if meta_ref is not None:
                dataset.file_meta = FileMetaDataset(self._read_dataset(meta_ref, path))
            known = self._datasets[ref] = dataset
        return known

    def _read_dataset(self, ref: str, path: str) -> Dataset:
        raw = self.read(ref, self.limits.max_member_bytes)
        try:
            dataset = read_dataset(io.BytesIO(raw), is_implicit_VR=False, is_little_endian=True)
            dataset.walk(lambda _ds, _elem: None)  # parse every element now, so that bad bytes fail here
        except Exception as exc:
            raise CodecError(f"{path}: {ref} is not a DICOM data set ({type(exc).__name__}: {exc})") from None
        return dataset

    def _dataclass(self, node: dict[str, Any], path: str, depth: int) -> Any:
        tag = node.get("type")
        cls = self.schema.types.get(tag) if isinstance(tag, str) else None
        if cls is None:
            raise CodecError(f"{path}: type {tag!r} is not in the allow-list of {self.schema!r}")
        stored = node.get("fields")
        hints = self.schema.hints[cls]
        if not isinstance(stored, dict) or set(stored) != set(hints):
            got = sorted(stored) if isinstance(stored, dict) else stored
            raise CodecError(f"{path}: {cls.__qualname__} needs the fields {sorted(hints)}, the value has {got}")
        values: dict[str, Any] = {}
        for name, hint in hints.items():
            value = self.value(stored[name], f"{path}.{name}", depth + 1)
            if not _conforms(value, hint):
                raise CodecError(f"{path}.{name}: expected {_describe(hint)}, found {type(value).__qualname__}")
            values[name] = value
        init = {f.name for f in dataclasses.fields(cls) if f.init}
        try:
            obj = cls(**{k: v for k, v in values.items() if k in init})
        except Exception as exc:  # the dataclass's own checks (__post_init__) refuse the values
            raise CodecError(f"{path}: {cls.__qualname__} refuses the stored fields ({type(exc).__name__}: {exc})") from None
        for name in set(values) - init:
            object.__setattr__(obj, name, values[name])
        return obj

    _handlers: dict[str, Callable[[_Decoder, dict[str, Any], str, int], Any]] = {
        "tuple": _tuple,
        "set": _set,
        "frozenset": _set,
        "dict": _dict,
        "float": _float,
        "bytes": _bytes,
        "number": _number,
        "ndarray": _array,
        "dataset": _dataset,
        "dataclass": _dataclass,
    }


def _not_ours(data: bytes) -> str:
    if data[:1] == b"\x80" or data[:2] in (b"(d", b"(l", b"(i", b"cc", b"cp", b"c_"):
        return "it looks like a Python pickle, which is never loaded (unpickling can run any code)"
    return "it is not a ZIP archive"


def decode(data: bytes, schema: Schema, limits: Limits = DEFAULT_LIMITS) -> Any:
    """The value stored by :func:`encode`, checked against ``schema`` (see the module docstring).

    Raises :class:`CodecError` for anything else, before any object of the value is built
    when the archive itself is wrong.
    """
    if len(data) > limits.max_archive_bytes:
        raise CodecError(f"the stored value is {len(data)} bytes, more than the limit of {limits.max_archive_bytes}")
    if not data.startswith(b"PK\x03\x04"):
        raise CodecError(f"not a stored CardioNode value: {_not_ours(data)}")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CodecError(f"not a stored CardioNode value: the ZIP archive is damaged ({exc})") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_members:
            raise CodecError(f"the archive has {len(infos)} members, more than the limit of {limits.max_members}")
        names = [i.filename for i in infos]
        if len(set(names)) != len(names):
            raise CodecError("the archive names a member twice")
        for info in infos:
            if not _MEMBER_RE.match(info.filename):
                raise CodecError(f"the archive has an unexpected member {info.filename[:80]!r}")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.flag_bits & 0x1:
                raise CodecError(f"member {info.filename} is encrypted or compressed with an unexpected method")
        total = sum(i.file_size for i in infos)
        if total > limits.max_total_bytes:
            raise CodecError(f"the archive unpacks to {total} bytes, more than the limit of {limits.max_total_bytes}")
        decoder = _Decoder(archive, schema, limits)
        try:
            document = json.loads(decoder.read(_VALUE_MEMBER, limits.max_json_bytes))
        except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, an integer of 5000 digits, too deep
            raise CodecError(f"{_VALUE_MEMBER} is not JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
        if not (isinstance(document, dict) and document.get("format") == FORMAT):
            raise CodecError(f"{_VALUE_MEMBER} is not a {FORMAT} document")
        if document.get("version") != VERSION:
            raise CodecError(f"{FORMAT} version {document.get('version')!r} is not read by this worker (it reads {VERSION})")
        root_tag = document.get("root")
        root = schema.types.get(root_tag) if isinstance(root_tag, str) else None
        if root is None or root not in schema.roots:
            raise CodecError(f"the stored value is a {root_tag!r}, not a "
                             f"{' or '.join(_tag(r) for r in schema.roots)}")
        value = decoder.value(document.get("value"), "result", 0)
        if type(value) is not root:
            raise CodecError(f"result: the stored value is a {type(value).__qualname__}, not the {root.__qualname__} it claims")
        unused = sorted(set(names) - decoder.used)
        if unused:
            raise CodecError(f"the archive has members no value refers to: {', '.join(unused[:5])}")
    return value
