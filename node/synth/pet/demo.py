"""``cardionode demo --modality pet``: a synthetic rest + stress dynamic PET study, sent with C-STORE or saved.

The study is an image-tier phantom (:func:`node.synth.pet.phantom.make_pet_study`) of the
tracer ``--tracer`` (``rb82_chloride`` or ``n13_ammonia``) with a stress defect in ``--defect``
(LAD, LCx, RCA; ``none``), written as PET Image Storage instances
(:func:`node.synth.pet.study.build_phantom_pet_study`) in the timing convention of
``--vendor`` with Decay Correction ``--decay``; rest and stress in one study, or in two studies
on two days with ``--two-days``; ``--shuffle`` sends each series' instances in random order;
``--voxel-mm`` sets the voxel size (default 3.2 mm: 40 x 64 x 64 voxels, 16 frames, 1280
instances; the field of view stays the same, so larger voxels give fewer slices and instances).
A fresh random seed is drawn unless ``--seed`` is given (it is printed, so a run can be
repeated). ``--save DIR`` writes the files and ``truth.json``; the study is sent with the
SPECT demo's sender (:func:`node.synth.spect.demo.send_datasets`) to the configured listener
unless ``--no-send``. Patient identities are synthetic and never printed.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np

from node import RESEARCH_USE_NOTICE
from node.quant.kinetics import default_model
from node.quant.segments import TERRITORY_SEGMENTS
from node.synth.pet.dicom import pet_tracer
from node.synth.pet.phantom import PetPhantomSpec, make_pet_study
from node.synth.pet.study import build_phantom_pet_study, write_pet_study
from node.synth.spect.demo import send_demo_study

__all__ = ["PET_DEMO_TRACERS", "pet_demo_main"]

#: tracers the image-tier phantom makes (O-15 water has no late myocardial contrast to locate the LV on)
PET_DEMO_TRACERS: tuple[str, ...] = ("rb82_chloride", "n13_ammonia")


def _territory(defect: str) -> str | None:
    if defect.lower() in ("none", "", "normal"):
        return None
    for name in TERRITORY_SEGMENTS:
        if name.lower() == defect.lower():
            return name
    raise ValueError(f"defect must be one of {sorted(TERRITORY_SEGMENTS)} or none, got {defect!r}")


def pet_demo_main(args: argparse.Namespace) -> int:
    """Entry point of ``cardionode demo --modality pet``."""
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    tracer = args.tracer or PET_DEMO_TRACERS[0]
    try:
        if pet_tracer(tracer).key not in PET_DEMO_TRACERS:
            raise ValueError(f"the PET demo makes {', '.join(PET_DEMO_TRACERS)}, not {tracer!r}")
        territory = _territory(args.defect)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not 2.0 <= args.voxel_mm <= 12.8:
        print(f"error: --voxel-mm must be within 2 and 12.8 mm, got {args.voxel_mm:g}", file=sys.stderr)
        return 2
    arrangement = "two_studies" if args.two_days else "one_study"
    print(RESEARCH_USE_NOTICE)
    print(f"seed {seed}: PET {pet_tracer(tracer).display_name}, stress defect {territory or 'none'}, "
          f"{args.vendor} timing, decay correction {args.decay}, {arrangement.replace('_', ' ')}")
    default = PetPhantomSpec()  # the field of view of the default grid, at the asked voxel size
    matrix = tuple(max(8, round(n * default.voxel_mm / args.voxel_mm)) for n in default.matrix)
    spec = PetPhantomSpec(tracer=default_model(tracer).tracer.name, matrix=matrix,
                          voxel_mm=float(args.voxel_mm))
    phantom = make_pet_study(np.random.default_rng(seed), spec=spec, defect_territory=territory)
    study = build_phantom_pet_study(phantom, vendor=args.vendor, decay_correction=args.decay, arrangement=arrangement,
                                    shuffle=args.shuffle, key=f"seed-{seed}")
    rest, stress = phantom.rest.truth, phantom.stress.truth
    studies = "1 study" if len(study.study_uids) == 1 else f"{len(study.study_uids)} studies"
    print(f"{studies} {', '.join(study.study_uids)}: rest + stress, "
          f"{len(study.datasets)} instances ({phantom.rest.volume.voxels.shape[0]} frames x "
          f"{phantom.rest.volume.voxels.shape[1]} slices per series); truth: global MBF rest "
          f"{rest.global_mbf_ml_per_min_per_g:.2f}, stress {stress.global_mbf_ml_per_min_per_g:.2f} mL/min/g, "
          f"MFR {phantom.truth.global_mfr:.2f}, impaired territories {list(phantom.truth.impaired_territories) or 'none'}")
    if args.save is not None:
        files = write_pet_study(study, Path(args.save))
        print(f"saved {len(files.paths)} files and truth.json to {args.save}")
    if args.no_send:
        return 0
    return send_demo_study(args, study.datasets)
