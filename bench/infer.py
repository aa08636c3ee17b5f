"""Inference benchmark of the SPECT models: throughput at batch sizes 1, 8, 32 and per-study latency.

Usage::

    .venv/bin/python bench/infer.py [--device cpu|cuda] [--studies 64] [--write-docs]

Every figure is reported with the device named and as a ratio to a reference
measured in the same process (DESIGN section 8): the reference is the
networks' bare forward passes on the same batch (no input preparation, no
Grad-CAM, no report objects), i.e. the floor of "running each model once".
Per-study latency (all SPECT models incl. Grad-CAM, plus the segmentation
U-Net on a 64^3 volume) is measured with one CPU thread. ``--write-docs``
replaces the "Inference" section of docs/performance.md.
"""

from __future__ import annotations

import argparse
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from node.ai import bundles
from node.ai.features import cad_inputs, crt_inputs, crt_tabular, tracer_inputs
from node.ai.inference import StudyInputs, predict_studies
from node.ai.segmentation import segment_myocardium
from node.synth.spect import cohort as cohorts

REPO = Path(__file__).resolve().parents[1]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"CUDA {torch.cuda.get_device_name(device)}"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {model} ({torch.get_num_threads()} torch threads)"


def make_studies(n: int, seed: int = 7) -> list[StudyInputs]:
    cad = cohorts.make_cad_cohort(n, "test", seed)
    crt = cohorts.make_crt_cohort(n, "test", seed)
    limits = cohorts.normal_limits(seed, n_per_group=40)
    deficit, severity, _ = cohorts.quantitative_maps(cad.maps["stress_perfusion"], cad.tracer, cad.features["sex_male"], limits)
    rest_deficit = cohorts.quantitative_maps(crt.maps["rest_perfusion"], cad.tracer, cad.features["sex_male"], limits)[0]
    out = []
    for i in range(n):
        out.append(StudyInputs(
            key=f"study{i}", tracer="tl201" if cad.tracer[i] == "tl201" else "tc99m_sestamibi",
            age=float(cad.features["age"][i]), sex_male=float(cad.features["sex_male"][i]),
            stress_perfusion=cad.maps["stress_perfusion"][i], rest_perfusion=crt.maps["rest_perfusion"][i],
            stress_motion=cad.maps["stress_motion"][i], stress_thickening=cad.maps["stress_thickening"][i],
            stress_deficit=deficit[i], stress_severity=severity[i], rest_deficit=rest_deficit[i],
            rest_phase=crt.maps["rest_phase"][i], rest_thickening=crt.maps["rest_thickening"][i],
            edv=float(cad.features["edv"][i]), esv=float(cad.features["esv"][i]), lvef=float(cad.features["lvef"][i]),
            rest_lvef=30.0, rest_esv=float(crt.features["esv"][i]), scar=float(crt.features["scar"][i]),
            psd=float(crt.features["psd"][i]), pbw=float(crt.features["pbw"][i]),
        ))
    return out


def bare_forward(tensors: tuple[dict, dict], device: torch.device) -> None:
    """Reference: each network's forward pass once on pre-built tensors."""
    x, t = tensors
    with torch.no_grad():
        bundles.load_bundle("cad_polar", device=device).network(x["cad"], t["cad"])
        bundles.load_bundle("tracer_heads", device=device).network(x["tracer"])
        bundles.load_bundle("crt_response", device=device).network(x["crt"], t["crt"])
    if device.type == "cuda":
        torch.cuda.synchronize()


def batch_tensors(studies: list[StudyInputs], device: torch.device) -> tuple[dict, dict]:
    """Model inputs of a batch, built outside the timed region."""
    stack = lambda name: np.stack([getattr(s, name) for s in studies])  # noqa: E731
    tab = {k: np.array([getattr(s, k) for s in studies], float) for k in ("age", "sex_male", "edv", "esv")}
    xc, tc = cad_inputs(stack("stress_perfusion"), stack("stress_motion"), stack("stress_thickening"), tab,
                        stack("stress_deficit"), stack("stress_severity"))
    crt_b = bundles.load_bundle("crt_response", device=device)
    feats = {k: np.array([np.nan if getattr(s, k) is None else getattr(s, k) for s in studies], float)
             for k in ("age", "sex_male", "lvef", "esv", "scar", "psd", "pbw", "qrs", "lbbb", "nyha")}
    tabc = crt_tabular(feats, crt_b.metadata["imputation"]).values
    xr = crt_inputs(stack("rest_perfusion"), stack("rest_phase"), stack("rest_thickening"))
    xt = tracer_inputs(stack("stress_perfusion"), stack("rest_perfusion"), None, stack("stress_deficit"), stack("rest_deficit"))
    to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
    return {"cad": to(xc), "tracer": to(xt), "crt": to(xr)}, {"cad": to(tc), "crt": to(tabc)}


def throughput(studies: list[StudyInputs], batch: int, device: torch.device, repeats: int = 2) -> tuple[float, float]:
    """(studies/s of predict_studies with Grad-CAM, studies/s of the bare forward reference)."""
    batches = [studies[i : i + batch] for i in range(0, len(studies), batch) if len(studies[i : i + batch]) == batch]
    tensors = [batch_tensors(b, device) for b in batches]
    n = sum(len(b) for b in batches)
    full, ref = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in batches:
            predict_studies(b, device=str(device), batch_independent=False)
        full.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for t in tensors:
            bare_forward(t, device)
        ref.append(time.perf_counter() - t0)
    return n / min(full), n / min(ref)


def node_mode(studies: list[StudyInputs], device: torch.device) -> float:
    """studies/s of the node's default (batch-independent) mode, 32 studies per call."""
    t0 = time.perf_counter()
    for i in range(0, len(studies), 32):
        predict_studies(studies[i : i + 32], device=str(device))
    return len(studies) / (time.perf_counter() - t0)


def latency_one_core(studies: list[StudyInputs]) -> dict[str, float]:
    """Median seconds per study on one CPU thread: polar-map models incl. Grad-CAM, and segmentation."""
    from node.synth.spect import phantom as ph

    torch.set_num_threads(1)
    rng = np.random.default_rng(3)
    volume = ph.make_acquisition(ph.PhantomSpec(n_gates=8), "stress", rng).frames
    segment_myocardium(volume)
    predict_studies(studies[:1], device="cpu")
    polar, seg = [], []
    for s in studies[:10]:
        t0 = time.perf_counter()
        predict_studies([s], device="cpu")
        polar.append(time.perf_counter() - t0)
    for _ in range(5):
        t0 = time.perf_counter()
        segment_myocardium(volume)
        seg.append(time.perf_counter() - t0)
    p, g = statistics.median(polar), statistics.median(seg)
    return {"polar_models_with_gradcam_s": p, "segmentation_64cubed_s": g, "all_models_s": p + 2 * g}


def pet_lines(n: int, device: torch.device) -> list[str]:
    """The PET flow-reserve model (issue 16, bundle ``pet_mfr``): studies/s at batch 1, 8, 32 against the bare
    forward pass on the same tensors, and the per-study latency on one CPU thread (Grad-CAM included; occlusion,
    an offline explanation, timed apart)."""
    from node.ai.pet_mfr import network_input, occlusion_maps, predict_pet_maps
    from node.ai.training.pet_mfr import polar_phantoms

    bundle = bundles.load_bundle("pet_mfr", device=device)
    maps = polar_phantoms(n, first_seed=16_900_000).maps
    keys = [f"pet{i}" for i in range(n)]
    predict_pet_maps([maps[0]], ["warm"], bundle)
    rows = []
    for batch in (b for b in (1, 8, 32) if b <= n):
        starts = [i for i in range(0, n, batch) if i + batch <= n]
        tensors = [torch.from_numpy(network_input(maps[i:i + batch])).to(device) for i in starts]
        full, ref = [], []
        for _ in range(2):
            t0 = time.perf_counter()
            for i in starts:
                predict_pet_maps(list(maps[i:i + batch]), keys[i:i + batch], bundle, batch_independent=False)
            full.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with torch.no_grad():
                for x in tensors:
                    bundle.network(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            ref.append(time.perf_counter() - t0)
        done = len(starts) * batch
        rows.append(f"| {batch} | {done / min(full):.1f} | {done / min(ref):.1f} | {min(ref) / min(full):.2f} |")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cpu = bundles.load_bundle("pet_mfr", device="cpu")
    one, one_cpu, occ = [], [], []
    for i in range(min(n, 8)):
        t0, c0 = time.perf_counter(), time.process_time()
        predict_pet_maps([maps[i]], [keys[i]], cpu, gradcam=True)
        one.append(time.perf_counter() - t0)
        one_cpu.append(time.process_time() - c0)
    for i in range(2):
        t0 = time.perf_counter()
        occlusion_maps(cpu.network, torch.from_numpy(network_input(maps[i])))
        occ.append(time.perf_counter() - t0)
    torch.set_num_threads(threads)
    latency = statistics.median(one)
    import os

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return ["", "### PET flow-reserve model (pet_mfr, issue 16)", "",
            f"ResNet-50 (MONAI, 19 outputs) on stacked rest/stress/MFR polar maps; {n} polar-level phantoms per run; "
            "`predict_pet_maps` with Grad-CAM and the report objects vs the bare forward pass on the same tensors.", "",
            "| batch | studies/s (predict_pet_maps, Grad-CAM) | studies/s (bare forward, reference) | ratio full/reference |",
            "|---|---|---|---|", *rows, "",
            f"Per-study latency on one CPU thread (median of {len(one)}): {latency * 1000:.0f} ms wall, "
            f"{statistics.median(one_cpu) * 1000:.0f} ms CPU, incl. Grad-CAM (target < 1 s on one core; the PET MFR "
            f"model is the only PET model; load average {load:.1f} on 2 cores, so wall time includes waiting). Occlusion (64 tiles of 5 x 9 cells): "
            f"{statistics.median(occ):.2f} s per study; the pipeline does not run it (an offline explanation for the "
            "evaluation)."]


def cmr_lines(n: int, device: torch.device) -> list[str]:
    """The CMR outcome models (issue 18, bundles ``cmr_lge_outcome_resnet50`` and ``cmr_lge_outcome_inceptionv3``):
    studies/s at batch 1, 8, 32 of ``predict_outcomes`` (both outputs' Grad-CAM) against the bare forward pass on
    the same tensors, and the per-study latency on one CPU thread. Frames: the synthetic test cohort's basal
    frames when it is in the cohort cache, else normalised noise of the same shape (the cost does not depend on
    the content)."""
    from node.ai.cmr_outcome import FRAME_SIZE, OUTCOME_BUNDLES, predict_outcomes
    from node.synth.cmr.cohort import default_cohort_dir, load_cmr_cohort

    path = default_cohort_dir() / "test.npz"
    if path.is_file():
        frames, source = load_cmr_cohort(path).frames[:n], "the synthetic test cohort's basal frames"
    else:
        frames = np.random.default_rng(5).normal(0.3, 0.3, (n, 1, FRAME_SIZE, FRAME_SIZE)).astype(np.float32)
        source = "noise frames (no test cohort in the cache)"
    out = ["", "### CMR outcome models (cmr_lge_outcome_*, issue 18)", "",
           f"{len(frames)} frames [1, {FRAME_SIZE}, {FRAME_SIZE}] ({source}); `predict_outcomes` (probabilities and "
           "Grad-CAM of both outputs) vs the bare forward pass on the same tensors.", "",
           "| model | batch | studies/s (predict_outcomes, Grad-CAM) | studies/s (bare forward, reference) | ratio |",
           "|---|---|---|---|---|"]
    latencies = []
    for name in sorted(OUTCOME_BUNDLES):
        bundle = bundles.load_bundle(name, device=device)
        predict_outcomes(frames[:2], bundle=name, device=device)  # load once, warm up
        for batch in (1, 8, 32):
            starts = [i for i in range(0, len(frames), batch) if i + batch <= len(frames)]
            tensors = [torch.from_numpy(np.ascontiguousarray(frames[i:i + batch])).to(device) for i in starts]
            full, ref = [], []
            for _ in range(2):
                t0 = time.perf_counter()
                for i in starts:
                    predict_outcomes(frames[i:i + batch], bundle=name, device=device)
                full.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                with torch.no_grad():
                    for x in tensors:
                        bundle.network(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                ref.append(time.perf_counter() - t0)
            done = len(starts) * batch
            out.append(f"| {name} | {batch} | {done / min(full):.1f} | {done / min(ref):.1f} | "
                       f"{min(ref) / min(full):.2f} |")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        one = []
        for i in range(min(len(frames), 8)):
            t0 = time.perf_counter()
            predict_outcomes(frames[i:i + 1], bundle=name, device="cpu")
            one.append(time.perf_counter() - t0)
        torch.set_num_threads(threads)
        latencies.append(f"{name} {statistics.median(one) * 1000:.0f} ms")
    out += ["", f"Per-study latency on one CPU thread (median of 8, Grad-CAM of both outputs included; target < 1 s): "
            f"{'; '.join(latencies)}.",
            "Regenerate: `.venv/bin/python bench/infer.py --cmr-only` (prints; `--write-docs` writes the whole section)"]
    return out


def write_docs(text: str) -> None:
    path = REPO / "docs" / "performance.md"
    body = path.read_text() if path.is_file() else "# Performance\n"
    section = "## Inference\n\n" + text.strip() + "\n"
    if re.search(r"^## Inference\s*$", body, flags=re.M):
        body = re.sub(r"^## Inference\s*$.*?(?=^## |\Z)", section + "\n", body, flags=re.M | re.S)
    else:
        body = body.rstrip() + "\n\n" + section
    path.write_text(body)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--studies", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for the throughput runs (default 1: on a shared CPU more threads spin and slow down)")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--pet-studies", type=int, default=32, help="polar-level phantoms for the PET model (0: skip it)")
    ap.add_argument("--pet-only", action="store_true", help="only the PET flow-reserve model (prints; no --write-docs)")
    ap.add_argument("--cmr-studies", type=int, default=32, help="frames for the CMR outcome models (0: skip them)")
    ap.add_argument("--cmr-only", action="store_true", help="only the CMR outcome models (prints; no --write-docs)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.pet_only:
        print("\n".join([f"Device: {device_name(device)}; torch {torch.__version__}", *pet_lines(args.pet_studies, device)]))
        return 0
    if args.cmr_only:
        print("\n".join([f"Device: {device_name(device)}; torch {torch.__version__}", *cmr_lines(args.cmr_studies, device)]))
        return 0
    studies = make_studies(args.studies)
    predict_studies(studies[:2], device=str(device))  # load once, warm up
    lines = [f"Device: {device_name(device)}; torch {torch.__version__}; {args.studies} synthetic studies per run; "
             f"all three polar-map models (CAD with Grad-CAM, tracer heads with Grad-CAM, CRT).", "",
             "| batch | studies/s (predict_studies, Grad-CAM) | studies/s (bare forward, reference) | ratio full/reference |",
             "|---|---|---|---|"]
    for batch in (1, 8, 32):
        full, ref = throughput(studies, batch, device)
        lines.append(f"| {batch} | {full:.1f} | {ref:.1f} | {full / ref:.2f} |")
    node_rate = node_mode(studies, device)
    lines += ["", f"The node's default mode (`batch_independent=True`: models loaded once per batch, each study's tensors "
              f"run on their own so its output bytes never depend on the batch): {node_rate:.1f} studies/s. The table "
              "uses `batch_independent=False` (one stacked tensor per model)."]
    lat = latency_one_core(studies)
    import os

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cuda = (f"CUDA available: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available()
            else "CUDA: not available on this machine; `bench/infer.py --device cuda` measures a GPU where there is one")
    lines += ["", f"{cuda}. Load average during the run: {load:.1f} (shared machine; expect +-30 %). The throughput "
              "ratio to the bare forward passes is the cost of input preparation, Grad-CAM (one backward pass per "
              "explained model) and the report objects."]
    lines += ["", "Per-study latency on one CPU thread (median): polar-map models incl. Grad-CAM "
              f"{lat['polar_models_with_gradcam_s'] * 1000:.0f} ms; segmentation U-Net on a 64^3 volume "
              f"{lat['segmentation_64cubed_s'] * 1000:.0f} ms (x2: stress and rest); all SPECT models "
              f"{lat['all_models_s'] * 1000:.0f} ms per study (target < 1 s).", "",
              "Regenerate: `.venv/bin/python bench/infer.py --write-docs`"]
    if args.pet_studies:
        lines += pet_lines(args.pet_studies, device)
    if args.cmr_studies:
        lines += cmr_lines(args.cmr_studies, device)
    text = "\n".join(lines)
    print(text)
    if args.write_docs:
        write_docs(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
