"""Which CPU numerics settings make a pretrained base the same bits on another processor (docs/BENCHMARKS.md).

    python benchmarks/bench_numerics.py [--steps 60] [--variants default,mkl-compatible,...]

Builds the same small base (the default model shape, `--steps` pretraining steps on `WorldSpec.tiny()`) once per
variant, each in a fresh process (MKL, oneDNN and ATen read these variables when they load), and prints the
weights' sha256 and the wall time. On one machine equal digests across variants say a setting changes nothing
here; the digests are for comparing with the same command on another CPU kind (RESULTS.md §26).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from rlheal.provenance import CPU_KERNEL_VARIABLES

VARIANTS = {
    "default": {},
    "mkl-compatible": {"MKL_CBWR": "COMPATIBLE"},
    "mkl-avx2": {"MKL_CBWR": "AVX2"},
    "portable-avx2": {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}

_CHILD = """
import json, sys, time
from pathlib import Path
from rlheal.models.builtin import BuiltinRecipe, build_base
from rlheal.models.checkpoint import weights_sha256
from rlheal.models.pretrain import PretrainSpec
from rlheal.models.world import WorldSpec
from rlheal.provenance import environment
started = time.perf_counter()
folder = build_base(BuiltinRecipe(world=WorldSpec.tiny(), train=PretrainSpec(steps=int(sys.argv[1]))),
                    Path(sys.argv[2]), progress=False)
env = environment()
print(json.dumps({"sha256": weights_sha256(folder), "wall_s": round(time.perf_counter() - started, 1),
                  "cpu": env["cpu"], "cpu_capability": env["cpu_capability"]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    for name in args.variants.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            env = {k: v for k, v in os.environ.items() if k not in CPU_KERNEL_VARIABLES}
            env.update(VARIANTS[name])
            done = subprocess.run([sys.executable, "-c", _CHILD, str(args.steps), f"{tmp}/base"], env=env,
                                  capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(json.dumps({"variant": name, **VARIANTS[name], **result}), flush=True)


if __name__ == "__main__":
    main()
