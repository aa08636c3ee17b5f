"""``cardionode demo``: generate a synthetic SPECT MPI study and C-STORE it to a running node.

The study is a stress + rest phantom (gated, 8 time slots by default) with a
perfusion defect per ``--defect`` (LAD, LCx, RCA: reversible, 50 % severity;
``none``), the tracer per ``--tracer`` and a fresh random seed unless
``--seed`` is given (the seed is printed, so a run can be repeated). The
destination defaults to the configured listener (``node.config``: port and
AE title) on ``--host``. ``--save DIR`` also writes the files and
``truth.json``. Patient identities are synthetic and never printed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import numpy as np
from pydicom.dataset import Dataset

from node import RESEARCH_USE_NOTICE
from node.config import load_settings
from node.synth.geometry import SHAPES
from node.synth.spect.phantom import PhantomSpec, make_study, territory_defect
from node.synth.spect.study import build_study_datasets

__all__ = ["demo_main", "demo_spec", "destination", "send_datasets", "save_datasets"]


def demo_spec(defect: str, tracer: str, n_gates: int = 8, shape: str = "normal", sex: str = "M") -> PhantomSpec:
    """The phantom spec of a demo study (defect: LAD, LCx, RCA or none)."""
    defects = () if defect.lower() in ("none", "", "normal") else (territory_defect(defect, 0.5, reversible=True),)
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {sorted(SHAPES)}, got {shape!r}")
    return PhantomSpec(shape=SHAPES[shape], tracer=tracer, n_gates=n_gates, defects=defects, sex=sex)


def save_datasets(datasets: Sequence[Dataset], truth: dict, folder: Path) -> list[Path]:
    """Write datasets as ``<SeriesDescription>.dcm`` plus ``truth.json`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / (str(ds.SeriesDescription).replace(" ", "_") + ".dcm")
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    (folder / "truth.json").write_text(json.dumps(truth, indent=1))
    return paths


def send_datasets(
    datasets: Sequence[Dataset], host: str, port: int, called_aet: str, calling_aet: str, out: TextIO = sys.stdout
) -> int:
    """C-STORE ``datasets`` over one association; returns the number of failed stores (-1: no association).

    One line per multi-frame instance (NM), one per run of a series' single-frame instances (PET).
    """
    from pynetdicom import AE

    ae = AE(ae_title=calling_aet)
    for sop_class in dict.fromkeys(str(ds.SOPClassUID) for ds in datasets):
        ae.add_requested_context(sop_class, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    assoc = ae.associate(host, port, ae_title=called_aet)
    if not assoc.is_established:
        print(f"error: no association with {called_aet} at {host}:{port} "
              "(is `cardionode serve` running, and does it accept calling AE "
              f"{calling_aet!r}?)", file=out)
        return -1
    failed = run_sent = run_failed = 0
    try:
        for number, ds in enumerate(datasets, start=1):
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            ok = code is not None and int(code) in (0x0000, 0xB000, 0xB007, 0xB006)
            failed += 0 if ok else 1
            shown = f"0x{int(code):04X}" if code is not None else "no response"
            if "NumberOfFrames" in ds:
                print(f"[{number}/{len(datasets)}] {ds.SeriesDescription}: {int(ds.NumberOfFrames)} frames -> {shown}"
                      f"{'' if ok else ' FAILED'}", file=out, flush=True)
                continue
            run_sent, run_failed = run_sent + 1, run_failed + (0 if ok else 1)
            if number == len(datasets) or datasets[number].SeriesInstanceUID != ds.SeriesInstanceUID:
                print(f"[{number}/{len(datasets)}] {ds.SeriesDescription}: {run_sent} instances -> "
                      f"{f'{run_failed} FAILED' if run_failed else 'stored'}", file=out, flush=True)
                run_sent = run_failed = 0
    finally:
        assoc.release()
    return failed


def destination(args: argparse.Namespace) -> tuple[int, str]:
    """(port, called AE title): ``--port`` / ``--called-aet``, else the configured listener's."""
    port, called = args.port, args.called_aet
    if port is not None and called is not None:
        return port, called
    try:
        settings = load_settings(getattr(args, "config", None))
    except Exception as exc:  # ConfigError and validation errors name the setting
        raise SystemExit(f"error: cannot read the node configuration: {exc}; pass --port and --called-aet") from None
    return (port if port is not None else int(settings.port)), (called if called is not None else str(settings.ae_title))


def send_demo_study(args: argparse.Namespace, datasets: Sequence[Dataset]) -> int:
    """Send a demo study to the destination of ``args`` (:func:`destination`); the demo's exit code:
    0 all stored, 1 some stores failed, 2 no association."""
    port, called = destination(args)
    print(f"sending to {called} at {args.host}:{port} as {args.calling_aet}")
    failed = send_datasets(datasets, args.host, port, called, args.calling_aet)
    if failed < 0:
        return 2
    if failed:
        print(f"{failed} of {len(datasets)} stores failed")
        return 1
    print("done")
    return 0


def demo_main(args: argparse.Namespace) -> int:
    """Entry point of ``cardionode demo``."""
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    n_gates = int(getattr(args, "gates", 8))
    orientation = "transaxial" if getattr(args, "orientation", "sa") in ("transaxial", "trans") else "short_axis"
    try:
        spec = demo_spec(args.defect, args.tracer or "tc99m_sestamibi", n_gates, getattr(args, "shape", "normal"),
                         getattr(args, "sex", "M"))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(RESEARCH_USE_NOTICE)
    print(f"seed {seed}: {spec.shape.name} LV, {spec.tracer}, defect {args.defect}, {n_gates} gates, {orientation}")
    rng = np.random.default_rng(seed)
    study = make_study(spec, rng, orientation=orientation)
    datasets, truth = build_study_datasets(study, key=f"seed-{seed}")
    stress = study.stress.truth
    print(f"study {truth['study_instance_uid']}: {len(datasets)} series; truth: stress defect segments "
          f"{list(stress.defect_segments) or 'none'}, SSS {stress.sss}, TPD {stress.tpd_pct:.1f} %, "
          f"EF {stress.ef_pct:.1f} %")
    if args.save is not None:
        paths = save_datasets(datasets, truth, Path(args.save))
        print(f"saved {len(paths)} files and truth.json to {args.save}")
    if getattr(args, "no_send", False):
        return 0
    return send_demo_study(args, datasets)
