"""Size and time of a stored step result: :mod:`node.queue.codec` against pickle (the format it replaced).

``python bench/codec.py [--runs 7] [--seed N] [--levels 0,1,6] [--models]``

Makes one synthetic stress + rest SPECT study (8 gates, 64^3 voxels; the seed is printed),
runs ``analyse`` (and ``predict`` with ``--models``) once, then stores the result ``--runs``
times each way on one core and reports the median encode and decode times (ms) and the
stored size (MB, 10^6 bytes). The reference in the same run is ``pickle`` protocol 5, which
the queue used before issue 21 and which a worker must never load from a store others can
write. ``--levels`` are the deflate levels tried (the queue uses 1). The round trip is
checked for equality of every array, so a faster but lossy setting cannot win.
"""

from __future__ import annotations

import argparse
import os
import pickle
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import numpy as np  # noqa: E402


def _median_ms(action: Callable[[], Any], runs: int) -> tuple[float, Any]:
    times: list[float] = []
    value: Any = None
    for _ in range(runs):
        start = time.perf_counter()
        value = action()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times), value


def _arrays_equal(a: Any, b: Any) -> bool:
    import dataclasses

    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and all(_arrays_equal(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_arrays_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_arrays_equal(a[k], b[k]) for k in a)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--levels", default="0,1,6")
    parser.add_argument("--models", action="store_true", help="run predict too (AI groups and heat maps in the result)")
    args = parser.parse_args(argv)

    import pydicom

    from node.pipelines.spect_mpi import PIPELINE
    from node.queue.codec import decode, encode, schema_for
    from node.synth.spect.phantom import PhantomSpec, make_study
    from node.synth.spect.study import write_study

    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        pinned = "one core"
    except (AttributeError, OSError):
        pinned = "all cores"
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "study"
        write_study(make_study(PhantomSpec(n_gates=8), np.random.default_rng(seed), orientation="short_axis"), folder, seed=seed)
        datasets = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    result = PIPELINE.analyse(datasets)
    if args.models:
        result = PIPELINE.predict(result)
    schema = schema_for(PIPELINE.result_type)
    print(f"SPECT result of seed {seed} (8 gates, 64^3 voxels, models {'on' if args.models else 'off'}); "
          f"median of {args.runs} runs on {pinned}; numpy {np.__version__}, Python {sys.version.split()[0]}")
    print(f"{'format':<26}{'size MB':>9}{'encode ms':>11}{'decode ms':>11}")
    encode_ms, data = _median_ms(lambda: pickle.dumps(result, protocol=5), args.runs)
    decode_ms, _ = _median_ms(lambda: pickle.loads(data), args.runs)
    print(f"{'pickle protocol 5 (ref.)':<26}{len(data) / 1e6:>9.2f}{encode_ms:>11.1f}{decode_ms:>11.1f}")
    for level in (int(x) for x in args.levels.split(",")):
        encode_ms, data = _median_ms(lambda level=level: encode(result, schema, level=level), args.runs)  # type: ignore[misc]
        decode_ms, stored = _median_ms(lambda data=data: decode(data, schema), args.runs)  # type: ignore[misc]
        if not _arrays_equal(result, stored):
            print(f"codec level {level}: the round trip changed an array", file=sys.stderr)
            return 1
        print(f"{f'codec, deflate level {level}':<26}{len(data) / 1e6:>9.2f}{encode_ms:>11.1f}{decode_ms:>11.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
