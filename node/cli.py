"""The ``cardionode`` command.

Each subcommand is implemented by ``main(args) -> int`` in the module that
owns the capability; the module is imported only when its subcommand runs, so
``cardionode status`` does not load torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from node import __version__

# subcommand -> "module:function"
_HANDLERS = {
    "serve": "node.service:serve_main",
    "listen": "node.service:listen_main",
    "web": "node.web.server:web_main",
    "worker": "node.queue.worker:worker_main",
    "config": "node.ops.preflight:config_main",
    "echo": "node.ops.preflight:echo_main",
    "db": "node.ledger.commands:db_main",
    "status": "node.ops.admin:status_main",
    "retry": "node.ops.admin:retry_main",
    "discard": "node.ops.admin:discard_main",
    "complete": "node.ops.admin:complete_main",
    "prune": "node.ops.retention:prune_main",
    "process": "node.pipelines.process:process_main",
    "demo": "node.synth.spect.demo:demo_main",
    "demo --modality pet": "node.synth.pet.demo:pet_demo_main",
    "demo --modality mr": "node.synth.cmr.demo:mr_demo_main",
    "train": "node.ai.training:train_main",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cardionode",
        description="CardioNode: DICOM processing node for cardiac imaging (research use only).",
    )
    parser.add_argument("--version", action="version", version=f"cardionode {__version__}")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML configuration file (default: $CARDIONODE_CONFIG, else embedded defaults)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("serve", help="run the node: DICOM listener, assembler, sender and local workers")
    sub.add_parser("listen", help="run the DICOM listener alone (spool and ledger; no processing, no sending)")
    sub.add_parser("web", help="run the operator web page alone, on the configured ledger (a node running elsewhere); "
                   "`serve` starts it too when [web] enabled")

    p = sub.add_parser("worker", help="run a Celery worker on this machine")
    p.add_argument("--queues", default="cpu,gpu,io", help="comma-separated queues (cpu, gpu, io)")
    p.add_argument("--concurrency", type=int, default=1, help="worker processes (default 1)")

    p = sub.add_parser("config", help="configuration tools")
    p.add_argument("action", choices=["check"], help="check: print the effective configuration and every problem found "
                   "(unknown keys, names that do not resolve, a taken port, destinations that do not answer C-ECHO, ...)")

    p = sub.add_parser("echo", help="send a C-ECHO to destinations, as results are sent (exit 1 unless all answer)")
    p.add_argument("destinations", nargs="*", metavar="DEST", help="destination names (default: every destination)")

    p = sub.add_parser("db", help="the ledger's schema revision: upgrade it after installing a new CardioNode, or show it")
    p.add_argument("action", choices=["upgrade", "current"],
                   help="upgrade: bring the configured ledger to this CardioNode's revision, keeping every record "
                        "(creates an empty one); current: show its revision (exit 1 unless the node can use it)")

    p = sub.add_parser("status", help="list studies, jobs and sends with their states and reasons")
    p.add_argument("--peer-text", action="store_true",
                   help="also show what destinations said about failed sends (patient identifiers replaced; audited)")
    p.add_argument("--study", metavar="UID", default=None,
                   help="one study in full: its jobs, sends and state changes with their whole reasons")
    p.add_argument("--json", action="store_true", help="the status as JSON (whole reasons)")
    p.add_argument("--results", action="store_true",
                   help="with --study: also the results of each job as text tables (the SR's numbers, objects, send states)")
    p.add_argument("--wide", action="store_true", help="tables with whole reasons (default: cut at 64 characters)")
    p = sub.add_parser("retry", help="run a failed or dead-lettered job again")
    p.add_argument("job", help="job id, as shown by `cardionode status`")
    p.add_argument("--force", action="store_true",
                   help="process a job already done (sent) again; objects already sent are not sent again")
    p = sub.add_parser("discard", help="stop working on a job and mark it discarded")
    p.add_argument("job", help="job id, as shown by `cardionode status`")
    p = sub.add_parser("complete", help="declare a study complete now and process what is there")
    p.add_argument("study", help="Study Instance UID")
    p.add_argument("--pipeline", default=None, metavar="NAME",
                   help="process it with this pipeline, even one whose rules do not accept the study "
                        "(default: the study's pipeline, or the first that accepts it)")
    p = sub.add_parser("prune", help="remove the files of finished studies past the [retention] limits now "
                       "(never what an unfinished job or an unsent result needs)")
    p.add_argument("--dry-run", action="store_true", help="only list what would be removed")

    p = sub.add_parser("process", help="run a pipeline on a folder of DICOM files, without any server")
    p.add_argument("folder", type=Path, help="folder with the study's DICOM files (searched recursively)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: FOLDER/cardionode-results)")
    p.add_argument("--pipeline", default=None, help="pipeline name (default: the one that accepts the study)")
    p.add_argument("--no-models", action="store_true", help="skip the deep-learning models")

    p = sub.add_parser("demo", help="send a synthetic SPECT, PET or cardiac MR study to a running node")
    p.add_argument("--modality", choices=("spect", "pet", "mr"), default="spect",
                   help="spect: stress/rest NM reconstructions (default); pet: rest/stress dynamic PET series; "
                   "mr: cine + LGE cardiac MR")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default: the configured listening port")
    p.add_argument("--called-aet", default=None, help="default: the configured AE title")
    p.add_argument("--calling-aet", default="CARDIODEMO")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: fresh)")
    p.add_argument("--defect", default="LAD", help="LAD, LCx, RCA or none")
    p.add_argument("--tracer", default=None, help="SPECT: tc99m_sestamibi (default), tc99m_tetrofosmin or tl201; "
                   "PET: rb82_chloride (default) or n13_ammonia")
    p.add_argument("--save", type=Path, default=None, help="also write the files (and truth.json) to this folder")
    p.add_argument("--gates", type=int, choices=(0, 8, 16), default=8,
                   help="SPECT: time slots of the gated series (0: ungated)")
    p.add_argument("--orientation", choices=("sa", "transaxial"), default="sa",
                   help="SPECT: short-axis or transaxial reconstructions")
    p.add_argument("--shape", choices=("normal", "small", "dilated", "thick"), default="normal",
                   help="SPECT: LV shape preset")
    p.add_argument("--sex", choices=("M", "F"), default="M", help="SPECT: patient sex")
    p.add_argument("--vendor", choices=("ge", "philips", "siemens"), default="ge",
                   help="PET: frame timing convention of the instances (default ge)")
    p.add_argument("--decay", choices=("START", "ADMIN", "NONE"), default="START",
                   help="PET: Decay Correction of the stored values (default START)")
    p.add_argument("--two-days", action="store_true", help="PET: rest and stress in two studies on two days")
    p.add_argument("--shuffle", action="store_true", help="PET: send each series' instances in random order")
    p.add_argument("--voxel-mm", type=float, default=3.2,
                   help="PET: voxel size in mm, same field of view (default 3.2: 40 x 64 x 64 voxels per frame)")
    p.add_argument("--cmr-layout", default="standard",
                   help="MR: standard, siemens, philips, enhanced, reversed_instances or missing_slice")
    p.add_argument("--pattern", default=None, help="MR: LGE scar pattern (default: from the seed), e.g. "
                   "sarcoid_multifocal_rv, ischaemic_transmural_mvo, scar_free")
    p.add_argument("--no-send", action="store_true", help="only generate (use with --save)")

    p = sub.add_parser("train", help="train a model bundle from polar maps or a synthetic cohort")
    p.add_argument("bundle", help="bundle name, e.g. cad_polar")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="folder with polar maps and labels.csv (format in docs/training.md)")
    src.add_argument("--synthetic", type=int, metavar="N", help="generate a synthetic cohort of N cases")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None,
                   help="bundle folder to write (default: DATA_DIR/models/BUNDLE; never a shipped bundle in models/ "
                        "unless --overwrite-shipped)")
    p.add_argument("--overwrite-shipped", action="store_true",
                   help="allow --out to be a bundle shipped with CardioNode (replaces its weights)")
    p.add_argument("--pretrain", type=int, default=0, metavar="N",
                   help="first pretrain on a separate synthetic cohort of N cases (polar-map bundles)")
    p.add_argument("--checkpoints", type=Path, default=None,
                   help="checkpoint folder (default: DATA_DIR/checkpoints/BUNDLE)")
    p.add_argument("--init", type=Path, default=None, metavar="BUNDLE_DIR",
                   help="start from the weights of this bundle folder (fine-tuning; lv_segmentation, cmr_segmentation)")
    p.add_argument("--steps-per-epoch", type=int, default=None, metavar="N",
                   help="optimiser steps per epoch on batches of random crops (lv_segmentation: default 8; "
                        "cmr_segmentation: default 150)")
    return parser


#: thread-pool variables of the numerical libraries (OpenMP: torch; OpenBLAS, MKL: numpy/scipy) that a
#: worker sets to 1 unless the operator set them: a worker runs its steps in processes (``--concurrency``),
#: and idle pool threads spinning for work cost more CPU than they save (docs/performance.md)
WORKER_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def single_threaded_numerics() -> None:
    """Give the numerical libraries of this process one thread each, unless the environment says otherwise.

    Must run before numpy, scipy or torch are imported (the libraries read these variables once).
    """
    import os

    for name in WORKER_THREAD_VARIABLES:
        os.environ.setdefault(name, "1")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "worker":
        single_threaded_numerics()
    command = f"demo --modality {args.modality}" if args.command == "demo" and args.modality != "spect" else args.command
    module_name, function_name = _HANDLERS[command].split(":")
    handler = getattr(importlib.import_module(module_name), function_name)
    try:
        code = int(handler(args) or 0)
        sys.stdout.flush()
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`cardionode status | head`): stop quietly
        if not _stdout_closed():
            raise
        return 1


def _stdout_closed() -> bool:
    """Whether standard output is a pipe whose reader has gone (``POLLERR``); if so, what is still
    buffered goes to /dev/null, so that the interpreter's exit does not complain either."""
    import os
    import select

    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    if not any(events & select.POLLERR for _, events in poller.poll(0)):
        return False
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    return True


if __name__ == "__main__":
    sys.exit(main())
