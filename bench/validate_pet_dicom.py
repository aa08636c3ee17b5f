"""Validation of the PET DICOM tier (issue 15): image-tier phantoms through PET Image Storage and back.

``python bench/validate_pet_dicom.py [--phantoms 4] [--seed S] [--matrix 24,40,40] [--voxel-mm 4.8] [--no-mbf]
[--json out.json]``

For each phantom (a fresh rest + stress image-tier study, :func:`node.synth.pet.phantom.make_pet_study`)
and each vendor timing variant (ge, philips, siemens) x Decay Correction (START, ADMIN, NONE),
alternating one study / two studies and shuffled order: write both series
(:func:`node.synth.pet.study.build_phantom_pet_study`), encode every instance to bytes and parse it
again, load it (:func:`node.imaging.pet.load_dynamic_pet`) and report

* the largest |loaded frame start - truth| (s) and |duration error| (s);
* the largest voxel error after undoing the declared decay state, in units of the instance's
  Rescale Slope (0.5 = the quantisation bound);
* unless ``--no-mbf``: the largest relative difference of segment MBF between the loaded series
  and the phantom's own volume, both through :func:`node.quant.mbf.analyse_dynamic` (the DICOM
  tier must change no number);
* time to write (build datasets) and to load one series.

Seeds are fresh unless ``--seed`` is given; they are printed (and stored in the JSON).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import pydicom

from node.imaging.pet import TIMING_VARIANTS, load_dynamic_pet
from node.imaging.volume import FrameSchedule
from node.quant.kinetics import default_model
from node.quant.mbf import analyse_dynamic
from node.synth.pet.dicom import DECAY_CORRECTIONS
from node.synth.pet.phantom import PetPhantomSpec, make_pet_study
from node.synth.pet.study import ARRANGEMENTS, build_phantom_pet_study


def _reread(datasets: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    out: list[pydicom.Dataset] = []
    for ds in datasets:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(pydicom.dcmread(io.BytesIO(buffer.getvalue())))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phantoms", type=int, default=4)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--matrix", default="24,40,40", help="slices,rows,cols of the phantom grid")
    parser.add_argument("--voxel-mm", type=float, default=4.8)
    parser.add_argument("--no-mbf", action="store_true", help="skip the MBF comparison (the slow part)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    matrix = tuple(int(v) for v in args.matrix.split(","))
    spec = PetPhantomSpec(matrix=matrix, voxel_mm=args.voxel_mm)  # type: ignore[arg-type]
    model = default_model(spec.tracer)
    rows = []
    for index in range(args.phantoms):
        phantom = make_pet_study(rng, spec=spec)
        direct = {} if args.no_mbf else {
            state: analyse_dynamic(getattr(phantom, state).volume, state=state, model=model).fit
            for state in ("rest", "stress")}
        combos = [(v, d) for v in sorted(TIMING_VARIANTS) for d in DECAY_CORRECTIONS]
        for number, (vendor, decay) in enumerate(combos):
            arrangement = ARRANGEMENTS[number % 2]
            started = time.perf_counter()
            study = build_phantom_pet_study(phantom, vendor=vendor, decay_correction=decay, arrangement=arrangement,
                                            shuffle=True, key=f"bench-{seed}-{index}-{vendor}-{decay}")
            write_s = (time.perf_counter() - started) / 2
            for doc in study.truth["series"]:
                state = doc["state"]
                truth_volume = getattr(phantom, state).volume
                datasets = _reread([ds for ds in study.datasets if ds.SeriesInstanceUID == doc["series_instance_uid"]])
                started = time.perf_counter()
                loaded = load_dynamic_pet(datasets)
                load_s = time.perf_counter() - started
                schedule = truth_volume.frame_axis.schedule
                lam = math.log(2.0) / loaded.half_life_s
                if loaded.decay_correction == "NONE":
                    to_injection = 1.0 / FrameSchedule(loaded.start_s, loaded.duration_s).mean_decay_factor(lam)
                else:
                    to_injection = np.full(loaded.n_frames, math.exp(lam * float(loaded.decay_reference_s or 0.0)))
                error = np.abs(loaded.volume.voxels * to_injection[:, None, None, None] - truth_volume.voxels)
                slopes = study.series[state].rescale_slope * to_injection[:, None]
                row = {
                    "phantom": index, "vendor": vendor, "decay": decay, "arrangement": arrangement, "state": state,
                    "start_error_s": float(np.max(np.abs(loaded.start_s - schedule.start_s))),
                    "duration_error_s": float(np.max(np.abs(loaded.duration_s - schedule.duration_s))),
                    "voxel_error_slopes": float(np.max(error.max(axis=(2, 3)) / slopes)),
                    "write_s": write_s, "load_s": load_s, "instances": len(datasets),
                }
                if not args.no_mbf:
                    fit = analyse_dynamic(loaded.volume, state=loaded.state, model=model,
                                          decay_corrected=loaded.decay_correction != "NONE").fit
                    row["mbf_rel_diff"] = float(np.max(np.abs(
                        fit.segment_mbf_ml_per_min_per_g / direct[state].segment_mbf_ml_per_min_per_g - 1)))
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = {
        "seed": seed, "phantoms": args.phantoms, "matrix": matrix, "voxel_mm": args.voxel_mm, "series": len(rows),
        "max_start_error_s": max(r["start_error_s"] for r in rows),
        "max_duration_error_s": max(r["duration_error_s"] for r in rows),
        "max_voxel_error_slopes": max(r["voxel_error_slopes"] for r in rows),
        "median_write_s": float(np.median([r["write_s"] for r in rows])),
        "median_load_s": float(np.median([r["load_s"] for r in rows])),
    }
    if not args.no_mbf:
        summary["max_mbf_rel_diff"] = max(r["mbf_rel_diff"] for r in rows)
    print(json.dumps(summary, indent=1))
    if args.json is not None:
        args.json.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
