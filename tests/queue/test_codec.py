"""How step results are stored (:mod:`node.queue.codec`): a real SPECT result survives the round trip
exactly, and everything that is not a valid stored value of the expected type is refused with
:class:`CodecError` before anything runs: pickles (also inside ``.npy`` members), type tags outside
the allow-list, fields that do not match their annotations, object dtypes, lying shapes and dtypes,
oversize archives and members (a deflate bomb), nesting bombs."""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from node.pipelines import registry
from node.pipelines.spect_mpi import PIPELINE, SpectMpiResult
from node.queue.codec import CodecError, Limits, decode, encode, schema_for
from node.queue.steps import dataset_to_bytes
from node.synth.spect.phantom import PhantomSpec, make_study
from node.synth.spect.study import write_study
from tests.support.payloads import malicious_npy, malicious_pickle
from tests.support.report import context


@dataclass(frozen=True)
class Inner:
    values: np.ndarray  # 1-D
    label: str = ""

    def __post_init__(self) -> None:
        if self.values.ndim != 1:
            raise ValueError(f"values must be 1-D, got shape {self.values.shape}")


@dataclass(frozen=True)
class Outer:
    inner: Inner
    items: tuple[Inner, ...]
    scores: dict[str, float]
    maybe: Inner | None
    header: Dataset | None
    mixed: Any = None


@dataclass(frozen=True)
class Unlisted:
    """A dataclass no annotation of :class:`Outer` reaches: never built from stored bytes."""

    command: str


SCHEMA = schema_for(Outer)


def _sample() -> Outer:
    header = Dataset()
    header.PatientName, header.StudyInstanceUID = "Test^Codec", "1.2.3"
    shared = np.arange(5, dtype=np.float32)
    return Outer(Inner(shared, "a"), (Inner(shared), Inner(np.array([1, 2], dtype=np.int64))), {"sss": 3.0, "nan": float("nan")},
                 None, header, mixed=[1, (2, 3), {4: "x"}, {"k": np.float32(2.5)}, frozenset({"a"}), b"\x00\x01", np.bool_(True)])


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _rebuild(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _edit(change: Callable[[dict[str, Any], dict[str, bytes]], None]) -> bytes:
    """A valid archive of :func:`_sample`, its document and members changed by ``change``."""
    members = _members(encode(_sample(), SCHEMA))
    document = json.loads(members["value.json"])
    change(document, members)
    members["value.json"] = json.dumps(document).encode()
    return _rebuild(members)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _assert_same(a: Any, b: Any, path: str = "result") -> None:
    """Equal values of equal types all the way down (arrays: dtype, shape and every element)."""
    assert type(a) is type(b), (path, type(a), type(b))
    if dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            _assert_same(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        np.testing.assert_array_equal(a, b, err_msg=path)
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for key in a:
            _assert_same(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, float) and a != a:
        assert b != b, path
    else:
        assert a == b, (path, a, b)


def test_spect_result_round_trip_gives_equal_arrays_and_the_same_outputs(tmp_path: Path, seed: int) -> None:
    study = make_study(PhantomSpec(n_gates=8), np.random.default_rng(seed), orientation="short_axis")
    write_study(study, tmp_path / "study", seed=seed)
    datasets = [pydicom.dcmread(p) for p in sorted((tmp_path / "study").glob("*.dcm"))]
    result = PIPELINE.predict(PIPELINE.analyse(datasets))  # models on: AI groups and heat maps in the result
    assert result.stress is not None and result.stress.gated is not None and result.predictions[0]
    schema = schema_for(PIPELINE.result_type)

    data = encode(result, schema)
    stored = decode(data, schema)

    _assert_same(result, stored)  # every array equal, of the same dtype and shape; every Dataset equal
    assert encode(stored, schema) == data  # deterministic: a redelivered step writes the same bytes
    array_bytes = sum(m.nbytes for m in _arrays(result))
    assert len(data) < 0.5 * array_bytes, f"seed {seed}: {len(data)} bytes stored for {array_bytes} bytes of arrays"
    # the report step gives the same objects, byte for byte, from the stored result
    direct = [dataset_to_bytes(ds) for ds in PIPELINE.report(result, context())]
    via_store = PIPELINE.report(stored, context())
    assert [str(ds.SOPInstanceUID) for ds in via_store] == [
        str(pydicom.dcmread(io.BytesIO(b)).SOPInstanceUID) for b in direct]
    assert [dataset_to_bytes(ds) for ds in via_store] == direct


def _arrays(value: Any) -> list[np.ndarray]:
    if isinstance(value, np.ndarray):
        return [value]
    if dataclasses.is_dataclass(value):
        return [a for f in dataclasses.fields(value) for a in _arrays(getattr(value, f.name))]
    if isinstance(value, (tuple, list)):
        return [a for v in value for a in _arrays(v)]
    if isinstance(value, dict):
        return [a for v in value.values() for a in _arrays(v)]
    return []


def test_small_values_round_trip_with_their_types() -> None:
    sample = _sample()
    stored = decode(encode(sample, SCHEMA), SCHEMA)
    _assert_same(sample, stored)
    assert stored.inner.values is stored.items[0].values  # a shared array stays shared (one member)
    assert stored.inner.values.flags.writeable
    assert len([n for n in _members(encode(sample, SCHEMA)) if n.startswith("arrays/")]) == 2


def test_a_pickle_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(CodecError, match="pickle"):
        decode(malicious_pickle(marker), SCHEMA)
    assert not marker.exists()

    # a pickle inside the archive: an object array in the .npy format (numpy pickles its items)
    def plant(document: dict[str, Any], members: dict[str, bytes]) -> None:
        ref = document["value"]["fields"]["inner"]["fields"]["values"]["ref"]
        members[ref] = malicious_npy(marker)

    with pytest.raises(CodecError, match="dtype object"):
        decode(_edit(plant), SCHEMA)
    assert not marker.exists()


def _field(document: dict[str, Any], *names: str) -> dict[str, Any]:
    node = document["value"]
    for name in names:
        node = node["fields"][name]
    return node


REFUSALS: list[tuple[str, Callable[[dict[str, Any], dict[str, bytes]], None], str]] = [
    ("unknown value tag", lambda d, m: _field(d, "inner").update({"$": "pickle"}), "unknown value tag 'pickle'"),
    ("type outside the allow-list", lambda d, m: _field(d, "inner").update(
        {"type": f"{__name__}.Unlisted", "fields": {"command": "rm -rf /"}}), "not in the allow-list"),
    ("a callable named as type", lambda d, m: _field(d, "inner").update({"type": "os.system"}), "not in the allow-list"),
    ("wrong field type", lambda d, m: _field(d, "inner")["fields"].update({"values": "not an array"}),
     "result.inner.values: expected ndarray, found str"),
    ("wrong type in a union", lambda d, m: _field(d)["fields"].update({"maybe": 7}), "result.maybe: expected"),
    ("missing field", lambda d, m: _field(d, "inner")["fields"].pop("label"), "needs the fields"),
    ("extra field", lambda d, m: _field(d, "inner")["fields"].update({"__class__": None}), "needs the fields"),
    ("object dtype named", lambda d, m: _field(d, "inner", "values").update({"dtype": "|O"}), "not allowed"),
    ("string dtype named", lambda d, m: _field(d, "inner", "values").update({"dtype": "<U4"}), "not allowed"),
    ("dtype differs from the member", lambda d, m: _field(d, "inner", "values").update({"dtype": "<f8"}),
     "holds a float32 array"),
    ("shape differs from the member", lambda d, m: _field(d, "inner", "values").update({"shape": [6]}),
     "holds a float32 array of shape [5]"),
    ("member data shorter than its header", lambda d, m: m.update(
        {_field(d, "inner", "values")["ref"]: _npy(np.arange(5, dtype=np.float32))[:-4]}), "bytes of data"),
    ("the dataclass's own check", lambda d, m: (
        _field(d, "inner", "values").update({"shape": [1, 5]}),
        m.update({_field(d, "inner", "values")["ref"]: _npy(np.arange(5, dtype=np.float32).reshape(1, 5))})),
     "Inner refuses the stored fields"),
    ("another root type", lambda d, m: d.update({"root": f"{__name__}.Inner"}), "not a"),
    ("a member outside the layout", lambda d, m: m.update({"../evil.pkl": b"x"}), "unexpected member"),
    ("a missing member", lambda d, m: m.pop(_field(d, "inner", "values")["ref"]), "has no member"),
    ("a member nothing refers to", lambda d, m: m.update({"arrays/999999.npy": _npy(np.zeros(3))}), "no value refers to"),
    ("nesting bomb", lambda d, m: _field(d)["fields"].update({"mixed": json.loads("[" * 200 + "]" * 200)}),
     "nested deeper"),
    ("another format version", lambda d, m: d.update({"version": 99}), "version 99"),
    ("unhashable set item", lambda d, m: _field(d)["fields"].update({"mixed": {"$": "set", "items": [[1]]}}),
     "not hashable"),
]


@pytest.mark.parametrize("change,expected", [(c, e) for _, c, e in REFUSALS], ids=[n for n, _, _ in REFUSALS])
def test_what_is_not_a_valid_value_is_refused(change: Callable[[dict[str, Any], dict[str, bytes]], None],
                                              expected: str) -> None:
    data = _edit(change)
    with pytest.raises(CodecError) as refused:
        decode(data, SCHEMA)
    assert expected in str(refused.value), str(refused.value)


def test_damaged_and_oversize_archives_are_refused() -> None:
    data = encode(_sample(), SCHEMA)
    for damaged, expected in ((b"", "not a ZIP"), (b"PK\x03\x04garbage", "damaged"), (data[:-30], "damaged"),
                              (json.dumps({"format": "x"}).encode(), "not a ZIP")):
        with pytest.raises(CodecError, match=expected):
            decode(damaged, SCHEMA)
    with pytest.raises(CodecError, match="more than the limit"):
        decode(data, SCHEMA, Limits(max_archive_bytes=len(data) - 1))
    with pytest.raises(CodecError, match="members, more than the limit"):
        decode(data, SCHEMA, Limits(max_members=2))
    # a deflate bomb: 256 MiB of zeros in a ~256 KiB member is refused from the archive's directory, unread
    members = _members(data)
    members["arrays/000009.npy"] = b"\x00" * (256 << 20)
    bomb = _rebuild(members)
    assert len(bomb) < 1 << 20
    with pytest.raises(CodecError, match="unpacks to"):
        decode(bomb, SCHEMA, Limits(max_total_bytes=64 << 20))
    with pytest.raises(CodecError, match="value.json is .* more than the limit"):
        decode(data, SCHEMA, Limits(max_json_bytes=10))
    with pytest.raises(CodecError, match="more than the limit"):
        decode(data, SCHEMA, Limits(max_member_bytes=8))


def test_the_encoder_refuses_what_it_cannot_store() -> None:
    sample = _sample()
    cases: list[tuple[Any, str]] = [
        (dataclasses.replace(sample, mixed=np.array([object()], dtype=object)), "dtype object cannot be stored"),
        (dataclasses.replace(sample, mixed=Unlisted("x")), "Unlisted is not in the allow-list"),
        (dataclasses.replace(sample, mixed=print), "cannot be stored"),
        (dataclasses.replace(sample, mixed=np.ma.array([1.0])), "ndarray subclass"),
        (sample.inner, "is not a"),
    ]
    for value, expected in cases:
        with pytest.raises(CodecError, match=expected):
            encode(value, SCHEMA)


@pytest.mark.uses_test_pipelines
def test_every_registered_pipeline_declares_a_storable_result_type() -> None:
    import tests.support.pipelines.flowtest  # noqa: F401 (registers the test pipelines)
    import tests.support.pipelines.results_e2e  # noqa: F401

    pipelines = registry.all_pipelines()
    assert {p.name for p in pipelines} >= {"spect_mpi", "flowtest_nm", "results_e2e"}
    for pipeline in pipelines:
        schema = schema_for(pipeline.result_type)
        assert schema.roots == (pipeline.result_type,)
    assert "node.quant.polar_map.GatedPolarMaps" in schema_for(SpectMpiResult).types
    assert "pydicom.dataset.Dataset" not in schema_for(SpectMpiResult).types  # Datasets travel as DICOM bytes
