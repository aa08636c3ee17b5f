"""``cardionode demo --modality mr``: a synthetic cardiac MR study (cine + LGE), sent with C-STORE or saved.

The study is :func:`node.synth.cmr.study.build_cmr_study` (full size: 256 x 256 pixels of
1.5 mm, 25 cine phases; a long-axis cine, a TI scout and LGE magnitude + PSIR) in the layout
``--cmr-layout`` (one of :data:`node.synth.cmr.study.VARIANTS`, default ``standard``) with the
scar pattern ``--pattern`` (:data:`node.synth.cmr.phantom.PATTERNS`; default: drawn from the
seed). A fresh random seed is drawn unless ``--seed`` is given (it is printed, so a run can be
repeated). ``--save DIR`` writes the files and ``truth.json``; the study is sent with the
SPECT demo's sender (:func:`node.synth.spect.demo.send_datasets`) to the configured listener
unless ``--no-send``. Patient identities are synthetic and never printed.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from node import RESEARCH_USE_NOTICE
from node.synth.cmr.phantom import PATTERNS
from node.synth.cmr.study import VARIANTS, build_cmr_study, save_cmr_study
from node.synth.spect.demo import send_demo_study

__all__ = ["mr_demo_main"]


def mr_demo_main(args: argparse.Namespace) -> int:
    """Entry point of ``cardionode demo --modality mr``."""
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    layout = getattr(args, "cmr_layout", None) or "standard"
    pattern = getattr(args, "pattern", None)
    if layout not in VARIANTS:
        print(f"error: --cmr-layout must be one of {', '.join(VARIANTS)}, got {layout!r}")
        return 2
    if pattern is not None and pattern not in PATTERNS:
        print(f"error: --pattern must be one of {', '.join(PATTERNS)}, got {pattern!r}")
        return 2
    print(RESEARCH_USE_NOTICE)
    study = build_cmr_study(layout, seed, pattern=pattern, small=bool(getattr(args, "small", False)))
    truth = study.truth
    roles = sorted(set(truth.series_roles.values()))
    print(f"seed {seed}: cardiac MR, layout {layout} ({truth.vendor} flavour), LGE pattern {truth.pattern}; "
          f"{len(study.datasets)} instances in {len(truth.series_roles)} series ({', '.join(roles)}); truth: "
          f"LGE {truth.lge.scar_pct_sampled:.1f} % of LV mass (sampled), LV mass {truth.lge.lv_mass_g_sampled:.0f} g, "
          f"EF {truth.cine.ef_pct:.1f} % (analytic), {truth.cine.ef_pct_sampled:.1f} % (sampled)")
    if args.save is not None:
        paths = save_cmr_study(study, Path(args.save))
        print(f"saved {len(paths)} files and truth.json to {args.save}")
    if args.no_send:
        return 0
    return send_demo_study(args, study.datasets)
