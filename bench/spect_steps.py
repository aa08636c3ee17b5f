"""CPU of the SPECT pipeline's ``analyse`` and ``predict`` steps per study, split by sub-step.

``python bench/spect_steps.py [--rounds 5] [--threads 1|default] [--seed 4242] [--no-pin]``

One demo SPECT MPI study (``node.synth.spect.demo``: stress + rest, gated 8 gates and summed,
64^3 short axis, LAD defect, Tc-99m sestamibi, fixed ``--seed``) is made once and kept as the
bytes of its DICOM files, as a worker finds them in the artifact store. Then ``--rounds``
alternating rounds of:

* **reference**: one bare 64^3 complex FFT of fixed float64 data (``numpy.fft.fftn``), median of 5;
* **analyse** as the worker runs it (:func:`node.queue.steps.run_step`): the instances read from
  bytes with pydicom, :meth:`SpectMpiPipeline.analyse`, the result encoded for the next step
  (:func:`node.queue.codec.encode`);
* **predict** the same way: the analyse result decoded, :meth:`SpectMpiPipeline.predict` (models
  on: the AI segmentation cross-check and the polar-map models with Grad-CAM), the result encoded.

Each step is timed in CPU seconds (``time.process_time``: every thread of the process) and split
by the functions the pipeline calls (wrapped in their modules' namespaces; "of which" rows are
inside the row above them, "rest" is what no row covers). ``--threads 1`` (the default) runs
numpy/scipy (OpenBLAS) and torch on one thread each, as ``cardionode worker`` does
(``node.cli.single_threaded_numerics``); ``--threads default`` leaves the libraries their own
thread pools (the worker before 2026-12-07) and does not pin. Prints the machine and its load
before and after (shared 2-core machine: expect +-30 %), the medians and their ratio to the
reference. Target of issue 14: 3.6 s of CPU per study for analyse + predict + report together.
"""

from __future__ import annotations

import sys

_THREADS = "default" if "--threads=default" in sys.argv or (
    "--threads" in sys.argv and sys.argv[sys.argv.index("--threads") + 1:][:1] == ["default"]) else "1"
if _THREADS == "1":  # before numpy, scipy and torch are imported (they read these once)
    import os as _os

    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        _os.environ[_var] = "1"

import argparse  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

if __package__ in (None, ""):  # `python bench/spect_steps.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from machine import pin_one_core  # noqa: E402  (bench/ is first on sys.path)

from bench.latency import describe_machine  # noqa: E402

#: (module, attribute, row label, parent row or "" for a top-level row of the step)
_SUBSTEPS: tuple[tuple[str, str, str, str], ...] = (
    ("node.pipelines.spect_mpi", "group_nm_reconstructions", "load NM reconstructions (pixels, geometry)", ""),
    ("node.pipelines.spect_mpi", "locate_lv", "locate LV", ""),
    ("node.quant.orientation", "_apex_from_shell_model", "apex shell-model fit", "locate LV"),
    ("node.pipelines.spect_mpi", "reorient_to_short_axis", "reorient to short axis", ""),
    ("node.pipelines.spect_mpi", "midwall_surface_rows", "polar maps: mid-wall surface", ""),
    ("node.pipelines.spect_mpi", "perfusion_polar_map", "polar maps: summed map", ""),
    ("node.pipelines.spect_mpi", "prefilter_gated_voxels", "polar maps: prefilter gates", ""),
    ("node.pipelines.spect_mpi", "sample_gated_polar_maps", "polar maps: per-gate maps", ""),
    ("node.pipelines.spect_mpi", "measure_function", "gated function (volumes, EF, motion)", ""),
    ("node.pipelines.spect_mpi", "analyse_phase", "phase", ""),
    ("node.pipelines.spect_mpi", "score_map", "scores, TPD", ""),
    ("node.pipelines.spect_mpi", "source_header", "source headers", ""),
    ("node.ai.segmentation", "segment_myocardium", "AI segmentation (U-Net, per state)", ""),
    ("node.ai", "predict_spect", "polar-map models (CAD, tracer, CRT)", ""),
    ("node.ai.inference", "gradcam_maps", "Grad-CAM", "polar-map models (CAD, tracer, CRT)"),
)


class _Timer:
    """Sums the CPU seconds of wrapped callables by row; a row's parent is recorded for the report."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.step = ""

    def install(self) -> None:
        import importlib

        for module_name, attribute, label, _parent in _SUBSTEPS:
            module = importlib.import_module(module_name)
            original = getattr(module, attribute, None)
            if original is not None:
                setattr(module, attribute, self._wrap(original, label))

    def _wrap(self, function: Callable[..., Any], label: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                name = label
                if label.startswith("locate LV") and self.step == "predict":
                    name = "AI cross-check: locate LV on the AI mask"
                elif label == "apex shell-model fit" and self.step == "predict":
                    name = "AI cross-check: apex shell-model fit"
                self.seconds[name] += time.process_time() - start
        return timed


def _parent(name: str) -> str:
    if name == "AI cross-check: apex shell-model fit":
        return "AI cross-check: locate LV on the AI mask"
    return next((parent for _m, _a, label, parent in _SUBSTEPS if label == name), "")



def _study_bytes(seed: int) -> list[bytes]:
    """The demo study's DICOM files as bytes (what the artifact store holds)."""
    from node.synth.spect.demo import demo_spec
    from node.synth.spect.phantom import make_study
    from node.synth.spect.study import build_study_datasets

    made = make_study(demo_spec("LAD", "tc99m_sestamibi"), np.random.default_rng(seed), orientation="short_axis")
    datasets, _ = build_study_datasets(made, key=f"bench-spect-steps-{seed}")
    out = []
    for ds in datasets:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def _reference(data: np.ndarray) -> float:
    """CPU seconds of one 64^3 complex FFT (median of 5)."""
    times = []
    for _ in range(5):
        start = time.process_time()
        np.fft.fftn(data)
        times.append(time.process_time() - start)
    return statistics.median(times)


def _steps(files: list[bytes], timer: _Timer) -> dict[str, dict[str, float]]:
    """One analyse and one predict as the worker runs them: ``{step: {row: CPU s}}``."""
    import pydicom

    from node.pipelines.spect_mpi import PIPELINE
    from node.queue import codec

    schema = codec.schema_for(PIPELINE.result_type)
    rows: dict[str, dict[str, float]] = {}

    timer.step, timer.seconds = "analyse", defaultdict(float)
    start = time.process_time()
    t = time.process_time()
    datasets = [pydicom.dcmread(io.BytesIO(data)) for data in files]
    read = time.process_time() - t
    result = PIPELINE.analyse(datasets)
    t = time.process_time()
    stored = codec.encode(result, schema)
    encode = time.process_time() - t
    total = time.process_time() - start
    rows["analyse"] = {"worker: read inputs (pydicom)": read, **timer.seconds, "worker: encode result (codec)": encode,
                       "step total": total}

    timer.step, timer.seconds = "predict", defaultdict(float)
    start = time.process_time()
    t = time.process_time()
    value = codec.decode(stored, schema)
    decode = time.process_time() - t
    predicted = PIPELINE.predict(value)
    t = time.process_time()
    codec.encode(predicted, schema)
    encode = time.process_time() - t
    total = time.process_time() - start
    rows["predict"] = {"worker: decode analyse result (codec)": decode, **timer.seconds,
                       "worker: encode result (codec)": encode, "step total": total}
    for row in rows.values():
        top = sum(v for k, v in row.items() if k != "step total" and not _parent(k))
        row["rest (not covered by a row)"] = row["step total"] - top
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", choices=("1", "default"), default="1",
                        help="1: one thread per numerical library, as `cardionode worker` runs; default: the libraries' own")
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--no-pin", action="store_true", help="do not pin the process to one core")
    args = parser.parse_args(argv)

    import torch

    if args.threads == "1":
        torch.set_num_threads(1)
    pin = "not pinned" if args.no_pin or args.threads == "default" else pin_one_core()
    import node

    print(f"machine: {describe_machine()} ({pin})")
    print(f"code: {Path(node.__file__).resolve().parent}; threads: {args.threads} "
          f"(torch {torch.get_num_threads()}, OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}); "
          f"numpy {np.__version__}, torch {torch.__version__}")
    files = _study_bytes(args.seed)
    print(f"study: demo seed {args.seed}, {len(files)} NM files, {sum(map(len, files)) / 1e6:.1f} MB")
    timer = _Timer()
    timer.install()
    _steps(files, timer)  # warm-up: imports, model bundles, normal limits
    data = np.random.default_rng(0).random((64, 64, 64))

    reference: list[float] = []
    rows: dict[str, dict[str, list[float]]] = {"analyse": defaultdict(list), "predict": defaultdict(list)}
    for _ in range(args.rounds):
        reference.append(_reference(data))
        for step, row in _steps(files, timer).items():
            for name, seconds in row.items():
                rows[step][name].append(seconds)
    ref = statistics.median(reference)
    print(f"\nreference: one 64^3 complex FFT, {ref * 1000:.2f} ms CPU (median of {args.rounds} rounds)")
    totals = 0.0
    for step, table in rows.items():
        print(f"\n{step}: median of {args.rounds} rounds     | CPU s  | x reference | min-max")
        names = [n for n in table if n not in ("step total", "rest (not covered by a row)")]
        ordered = [n for n in names if not _parent(n)]
        for name in ["step total", *ordered, "rest (not covered by a row)"]:
            for shown in [name, *(n for n in names if _parent(n) == name)]:
                values = table[shown]
                median = statistics.median(values)
                label = ("  of which " + shown) if _parent(shown) else shown
                print(f"  {label:52s} | {median:6.3f} | {median / ref:8.0f} | {min(values):.3f}-{max(values):.3f}")
        totals += statistics.median(table["step total"])
    print(f"\nanalyse + predict: {totals:.2f} s CPU per study (issue 14: 3.6 s for every step of a study)")
    print(f"load after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
