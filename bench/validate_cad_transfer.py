"""cad_polar on the node's own maps of full-volume phantoms (docs/validation.md, "Transfer").

    .venv/bin/python bench/validate_cad_transfer.py --seeds 24 --first-seed 3000 [--json out.json]

For each seed (sex M on odd seeds, F on even, as in tests/ai/test_end_to_end.py) four short-axis
Tc-99m studies with 8 gates (``node.synth.spect.demo.demo_spec``: no defect, or a 50 % reversible LAD, LCx
or RCA territory defect, each from ``default_rng(seed)``) go through the SPECT pipeline's
``analyse`` and ``node.ai.predict_spect``. Reported: p(CAD) of the normals per sex, p(CAD) of the
defects, and per defect territory how often the highest territory output is the defect's territory
and how often Grad-CAM puts at least 60 % of its mass there. Synthetic phantoms only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

import node.ai as ai
from node.ai.explain import summarise_attention
from node.pipelines.spect_mpi import SpectMpiPipeline
from node.synth.spect import phantom as ph
from node.synth.spect.demo import demo_spec
from node.synth.spect.study import build_study_datasets

TERRITORIES = ("LAD", "LCx", "RCA")


def predict_study(pipe: SpectMpiPipeline, defect: str, sex: str, seed: int) -> dict:
    """p(CAD) per site (``heart``, ``territory_lad`` ...) and the Grad-CAM mass share per territory."""
    study = ph.make_study(demo_spec(defect, "tc99m_sestamibi", sex=sex), np.random.default_rng(seed), orientation="short_axis")
    datasets, _ = build_study_datasets(study)
    groups, images, _ = ai.predict_spect(pipe.analyse(datasets))
    p = {g.site: float(g.measurements[0].value) for g in groups if g.finding == "obstructive_cad"}
    cam = next(i for i in images if i.key == "gradcam_cad")
    return {"p": p, "gradcam_share": dict(summarise_attention(cam.values).territory_share)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=12)
    parser.add_argument("--first-seed", type=int, default=3000)
    parser.add_argument("--json", help="write every study's outputs as JSON to this path")
    args = parser.parse_args(argv)
    pipe = SpectMpiPipeline()
    rows = []
    t0 = time.perf_counter()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        sex = "M" if seed % 2 else "F"
        row = {"seed": seed, "sex": sex}
        for defect in ("none",) + TERRITORIES:
            row[defect] = predict_study(pipe, defect, sex, seed)
        rows.append(row)
        print(f"seed {seed} done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    print(f"# validate_cad_transfer: seeds {args.first_seed}..{args.first_seed + args.seeds - 1} (synthetic phantoms only)")
    for sex in ("M", "F"):
        normals = [r["none"]["p"]["heart"] for r in rows if r["sex"] == sex]
        if normals:
            print(f"normal {sex}: p(CAD) {min(normals):.2f}-{max(normals):.2f} (n={len(normals)})")
    for territory in TERRITORIES:
        outs = [r[territory] for r in rows]
        top = sum(max(TERRITORIES, key=lambda t: o["p"][f"territory_{t.lower()}"]) == territory for o in outs)
        cam = [o["gradcam_share"][territory] for o in outs]
        heart = [o["p"]["heart"] for o in outs]
        print(f"{territory} defect: p(CAD) {min(heart):.2f}-{max(heart):.2f}; highest territory output {top}/{len(outs)}; "
              f"Grad-CAM share >= 0.6 {sum(c >= 0.6 for c in cam)}/{len(outs)} (min {min(cam):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
