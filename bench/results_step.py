"""CPU of the results step (DICOM outputs of one study), split by output kind, and the bytes it makes.

``python bench/results_step.py [--rounds 5] [--kinds spect,pet] [--pet-matrix 47 128 128] [--no-codecs]``

One synthetic study per kind is made and analysed once (SPECT: the demo stress + rest gated
phantom with an LAD defect, ``analyse`` and ``predict`` as the worker runs them; PET: the Rb-82
rest + stress dynamic phantom of ``bench/pet_study.py``, one instance per slice per frame, so
that every result object references a few thousand source instances). Then, in one process
pinned to one core, ``--rounds`` alternating rounds of:

* **reference**: one bare 512 x 512 matplotlib Agg figure with one ``imshow`` drawn to RGB (the
  size of a bull's-eye; the unit of per-figure matplotlib cost);
* **results step**: :meth:`~node.pipelines.base.Pipeline.report` and every object serialised as
  the worker stores it (:func:`node.queue.steps.dataset_to_bytes`), CPU seconds
  (``time.process_time``), split by what :mod:`node.results.outputs` calls (bull's-eyes, plots,
  segment table, SR, SC objects, parametric maps, screen pages, PDF) and by the serialisation of
  each output kind.

Then, once per kind, the size of every output kind and, for the SC and result-screen objects,
what a lossless compressed transfer syntax would cost and save (``--no-codecs`` skips it): RLE
Lossless (pydicom's encoder), JPEG-LS Lossless (pyjpegls) and Deflated Explicit VR Little
Endian (zlib level 1 and 6 of the whole dataset), each CPU seconds to encode and bytes.

Prints medians over the rounds, each with its ratio to the reference, and the machine with its
load (8 engineers share 2 cores: ``uptime`` load averages are printed before and after).
Target of issue 14: the results step under 0.3 s of CPU per SPECT study.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

if __package__ in (None, ""):  # `python bench/results_step.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
from machine import pin_one_core  # noqa: E402  (bench/ is first on sys.path)
from pydicom import Dataset  # noqa: E402

from bench.latency import describe_machine  # noqa: E402

#: what node.results.outputs calls, and the name of its row
_STAGES = {
    "render_images": "render bull's-eyes",
    "render_plots": "render curve plots",
    "render_grid_screen": "render segment table",
    "build_sr": "SR (build)",
    "build_sc": "SC objects (build)",
    "build_rendered_sc": "SC objects (build)",
    "build_parametric_map": "parametric maps (build)",
    "plan_screen": "screen pages (plan + compose)",
    "render_screen_page": "screen pages (plan + compose)",
    "_global_frames": "multi-frame screen (build)",
    "build_multiframe_screen": "multi-frame screen (build)",
    "render_summary_pdf": "PDF (render + wrap)",
    "build_encapsulated_pdf": "PDF (render + wrap)",
    "SourceReferences": "source references (once per study)",
}



def _kind_of(name: str) -> str:
    """Output kind of an :func:`node.results.output_names` stem."""
    if name.startswith("results_screen"):
        return "results screen pages"
    return {"sr": "SR", "sc": "SC images", "pm": "parametric maps", "screen": "multi-frame screen",
            "pdf": "PDF"}.get(name.split("_")[0], name)


def _bare_figure() -> float:
    """CPU seconds of the reference: one 512 x 512 Agg figure, one imshow, drawn to RGB."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    start = time.process_time()
    fig = Figure(figsize=(5.12, 5.12), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(np.linspace(0, 1, 256 * 256).reshape(256, 256), cmap="jet", interpolation="nearest")
    ax.axis("off")
    fig.canvas.draw()
    np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    return time.process_time() - start


class _Timer:
    """Wraps the callables of :mod:`node.results.outputs` to sum their CPU seconds by stage."""

    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()
        self._depth = 0

    def install(self) -> None:
        import node.results.outputs as outputs

        for name, stage in _STAGES.items():
            original = getattr(outputs, name, None)
            if original is None:
                continue
            if isinstance(original, type):  # SourceReferences: time its factory
                original.of = classmethod(self._wrap(original.of.__func__, stage))  # type: ignore[attr-defined]
            else:
                setattr(outputs, name, self._wrap(original, stage))

    def _wrap(self, function: Callable[..., Any], stage: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._depth += 1
            start = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:  # nested calls (build_sc -> build_rendered_sc) count once
                    self.seconds[stage] += time.process_time() - start
        return timed


def _make_spect() -> tuple[Any, Any]:
    from node.pipelines.spect_mpi import PIPELINE
    from node.synth.spect.demo import demo_spec
    from node.synth.spect.phantom import make_study
    from node.synth.spect.study import build_study_datasets

    made = make_study(demo_spec("LAD", "tc99m_sestamibi"), np.random.default_rng(1), orientation="short_axis")
    datasets, _ = build_study_datasets(made, key="bench-results-step")
    return PIPELINE, PIPELINE.predict(PIPELINE.analyse(datasets))


def _make_pet(matrix: tuple[int, int, int]) -> tuple[Any, Any]:
    from node.pipelines.pet_mbf import PIPELINE
    from node.synth.pet.phantom import PetPhantomSpec, make_pet_study
    from node.synth.pet.study import build_phantom_pet_study

    spec = PetPhantomSpec(matrix=matrix, voxel_mm=3.2, schedule_variant="fast")
    phantom = make_pet_study(np.random.default_rng(1), spec=spec, defect_territory="LAD")
    study = build_phantom_pet_study(phantom, vendor="siemens", shuffle=True, key="bench-results-step",
                                    when=datetime(2026, 1, 1, 9, 0, 0))
    datasets = []
    for ds in study.datasets:  # as a worker gets them: read from bytes
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        datasets.append(pydicom.dcmread(io.BytesIO(buffer.getvalue())))
    return PIPELINE, PIPELINE.analyse(datasets)


def _one_round(pipeline: Any, result: Any, timer: _Timer) -> tuple[dict[str, float], dict[str, int], list[Dataset]]:
    from node.queue.steps import dataset_to_bytes
    from node.results import output_names
    from node.results.content import ReportContext

    context = ReportContext(device_uid="1.2.826.0.1.3680043.8.498.4712", device_name="cardionode-bench")
    timer.seconds.clear()
    start = time.process_time()
    outputs = pipeline.report(result, context)
    report = time.process_time() - start
    names = output_names(pipeline.report_content(result), outputs)
    row: dict[str, float] = dict(timer.seconds)
    row["(rest of report: content, identity, patient data)"] = report - sum(timer.seconds.values())
    sizes: Counter[str] = Counter()
    for name, ds in zip(names, outputs):
        start = time.process_time()
        data = dataset_to_bytes(ds)
        row[f"serialise {_kind_of(name)}"] = row.get(f"serialise {_kind_of(name)}", 0.0) + time.process_time() - start
        sizes[_kind_of(name)] += len(data)
    row["results step (report + serialise)"] = report + sum(v for k, v in row.items() if k.startswith("serialise "))
    return row, dict(sizes), outputs


def _codecs(outputs: list[Dataset]) -> list[tuple[str, float, int, int]]:
    """``(transfer syntax, encode CPU s, bytes, uncompressed bytes)`` over the SC and screen objects."""
    from pydicom.uid import JPEGLSLossless, RLELossless

    from node.queue.steps import dataset_to_bytes
    from node.results.sc import MULTIFRAME_TRUE_COLOR_SC, SECONDARY_CAPTURE

    images = [dataset_to_bytes(ds) for ds in outputs if str(ds.SOPClassUID) in (SECONDARY_CAPTURE, MULTIFRAME_TRUE_COLOR_SC)]
    plain = sum(len(b) for b in images)
    rows = []
    for label, syntax in (("RLE Lossless (pydicom)", RLELossless), ("JPEG-LS Lossless (pyjpegls)", JPEGLSLossless)):
        total, cpu = 0, 0.0
        for data in images:
            ds = pydicom.dcmread(io.BytesIO(data))
            start = time.process_time()
            ds.compress(syntax, generate_instance_uid=False)
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            cpu += time.process_time() - start
            total += buffer.tell()
        rows.append((label, cpu, total, plain))
    for level in (1, 6):  # Deflated Explicit VR Little Endian: the dataset after the file meta, deflated
        start = time.process_time()
        total = sum(len(zlib.compress(data, level)) for data in images)  # an upper bound of its CPU and size
        rows.append((f"Deflated Explicit VR LE (zlib {level})", time.process_time() - start, total, plain))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--kinds", default="spect,pet")
    parser.add_argument("--pet-matrix", type=int, nargs=3, default=(47, 128, 128), metavar=("SLICES", "ROWS", "COLS"))
    parser.add_argument("--no-codecs", action="store_true")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]

    pin = pin_one_core()
    print(f"machine: {describe_machine()} ({pin})")
    studies = {}
    for kind in kinds:
        start = time.perf_counter()
        studies[kind] = _make_spect() if kind == "spect" else _make_pet(tuple(args.pet_matrix))
        print(f"{kind}: study made and analysed in {time.perf_counter() - start:.1f} s "
              f"({len(studies[kind][1].sources)} source instances referenced)")
    timer = _Timer()
    timer.install()
    for kind in kinds:  # warm-up: imports, fonts, templates, matplotlib caches
        _one_round(*studies[kind], timer)
    _bare_figure()

    reference: list[float] = []
    rows: dict[str, dict[str, list[float]]] = {kind: defaultdict(list) for kind in kinds}
    sizes: dict[str, dict[str, int]] = {}
    last: dict[str, list[Dataset]] = {}
    for _ in range(args.rounds):
        reference.append(statistics.median(_bare_figure() for _ in range(3)))
        for kind in kinds:
            row, sizes[kind], last[kind] = _one_round(*studies[kind], timer)
            for name, seconds in row.items():
                rows[kind][name].append(seconds)
    ref = statistics.median(reference)
    print(f"\nreference: one bare 512x512 matplotlib figure, {ref * 1000:.1f} ms CPU (median of {args.rounds} rounds)")
    for kind in kinds:
        print(f"\n{kind}: median of {args.rounds} rounds | CPU s | ratio to the reference")
        ordered = sorted(rows[kind].items(), key=lambda item: (item[0].startswith("results step"), -statistics.median(item[1])))
        for name, values in ordered:
            median = statistics.median(values)
            print(f"  {name:52s} | {median:6.3f} | {median / ref:6.1f}")
        total = sum(sizes[kind].values())
        print(f"  bytes: {total / 1e6:.2f} MB in all; " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes[kind].items()))
        if not args.no_codecs:
            for label, cpu, size, plain in _codecs(last[kind]):
                print(f"  SC + screen objects as {label:38s}: encode {cpu:6.3f} s CPU, {size / 1e6:6.2f} MB "
                      f"(uncompressed {plain / 1e6:.2f} MB, {size / plain:.1%})")
    print(f"\nload after: {os.getloadavg()[0]:.2f}, {os.getloadavg()[1]:.2f}, {os.getloadavg()[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
