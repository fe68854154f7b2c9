#!/usr/bin/env bash
# Everything GPU-related in one device call (docs/BENCHMARKS.md, "GPU"): versions, the real-model check
# (gpu_check.py: eval, the episode engine's tokens/s against plain HF generate at batch 64 and 512, SFT, PPO on
# a Qwen2.5-0.5B-shaped model), the spectral timing of a whole 7B-shaped
# checkpoint (gpu_spectral.py: ~5 min, ~40 GB of temporary files in $TMPDIR), then built-in studies run side
# by side on the one GPU until the deadline. Each part has
# its own time limit and a failing part does not stop the next. Results go to $OUT (default /tmp/gpu-session):
# env.txt, gpu_check.json/.log, gpu_spectral.log and one LABEL.tgz per study (its run folder without weights,
# about 4 MB, and its log). The device tool returns at most 8 files of 16 MiB: keep to 4 studies.
#
#   bash benchmarks/gpu_session.sh                 # on the GPU machine, from the repository root
#   GPU_SESSION_SMOKE=1 bash benchmarks/gpu_session.sh   # tiny shapes and the quick study, on CPU (a dry run)
#
# Settings (environment): GPU_SESSION_DEADLINE seconds for the whole script (default 560),
# GPU_SESSION_SPECTRAL_TIMEOUT seconds for gpu_spectral.py (default 300; it prints each part as it ends),
# GPU_SESSION_STUDIES "label|rlheal study arguments;..." (default: configs/xl.yaml, seeds 3-5, and its rank task).
# Python packages missing on the machine travel as wheels in .whl/ (device README); a built-in base cached in
# .devcache/ (RLHEAL_CACHE) saves pretraining it there.
set -u
OUT=${OUT:-/tmp/gpu-session}
mkdir -p "$OUT"
DEADLINE=${GPU_SESSION_DEADLINE:-560}
SMOKE=${GPU_SESSION_SMOKE:-0}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || echo "wheel install failed" >&2
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
[ -d .devcache ] && export RLHEAL_CACHE=$PWD/.devcache

left() { echo $((DEADLINE - SECONDS)); }

{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; nproc
  $PY - <<'EOF'
import importlib
for name in ("torch", "transformers", "trl", "accelerate", "datasets", "pyarrow", "fsspec", "pydantic", "tokenizers",
             "safetensors", "scipy", "numpy", "typer", "rich", "rlheal"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as exc:  # report every missing piece, not only the first
        print(name, "IMPORT FAILED:", exc)
import torch
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
} 2>&1 | tee "$OUT/env.txt"

if [ "$SMOKE" = 1 ]; then
  CHECK_ARGS="--smoke --device cpu"; SPECTRAL_ARGS="--device cpu --scale 64 --layers 2"
  DEFAULT_STUDIES="quick|--config configs/quick.yaml --seed 0"
else
  CHECK_ARGS=""; SPECTRAL_ARGS="--device cuda"
  DEFAULT_STUDIES="xl-s3|--config configs/xl.yaml --seed 3;xl-s4|--config configs/xl.yaml --seed 4;"
  DEFAULT_STUDIES+="xl-s5|--config configs/xl.yaml --seed 5;xl-rank-s0|--config configs/xl.yaml --set tasks=[rank] --seed 0"
fi
STUDIES=${GPU_SESSION_STUDIES:-$DEFAULT_STUDIES}

echo "== gpu_check ($(left) s left)"
timeout 300 $PY benchmarks/gpu_check.py $CHECK_ARGS --skip spectral --out "$OUT/gpu_check.json" 2>&1 \
  | tee "$OUT/gpu_check.log" | grep -v "it/s\]$" | tail -40
echo "== gpu_spectral ($(left) s left)"
timeout "${GPU_SESSION_SPECTRAL_TIMEOUT:-300}" $PY benchmarks/gpu_spectral.py $SPECTRAL_ARGS 2>&1 \
  | tee "$OUT/gpu_spectral.log"

echo "== ZeRO-3 SFT, one process per GPU ($(left) s left; needs deepspeed, skipped without it)"
if $PY -c "import deepspeed" 2>/dev/null && [ -z "${GPU_SESSION_SMOKE:-}" ]; then
  timeout 240 $PY -m accelerate.commands.launch --config_file configs/accelerate/deepspeed_zero3.yaml \
    --num_processes "$($PY -c 'import torch; print(torch.cuda.device_count())')" -m rlheal sft \
    --config configs/quick.yaml --set bf16=true --out runs/gpu-session/zero3 >"$OUT/zero3.log" 2>&1
  echo "exit $? (log: zero3.log)"; tail -3 "$OUT/zero3.log"
fi

echo "== studies ($(left) s left): $STUDIES"
mkdir -p runs/gpu-session
n=$(echo "$STUDIES" | tr ';' '\n' | grep -c .)
threads=$(( $(nproc) / n )); [ "$threads" -lt 1 ] && threads=1
IFS=';' read -ra SPECS <<<"$STUDIES"
budget=$(( $(left) - 25 ))
for spec in "${SPECS[@]}"; do
  label=${spec%%|*}; args=${spec#*|}
  # shellcheck disable=SC2086  # the arguments are split on purpose
  OMP_NUM_THREADS=$threads timeout "$budget" $PY -m rlheal study $args --out "runs/gpu-session/$label" \
    >"runs/gpu-session/$label.log" 2>&1 &
done
wait
for spec in "${SPECS[@]}"; do
  label=${spec%%|*}
  echo "-- $label"; grep -v "it/s\]\|s/it\]" "runs/gpu-session/$label.log" | tail -6
  tar czf "$OUT/$label.tgz" --exclude='*.safetensors' -C runs/gpu-session "$label" "$label.log"
done
echo "== done at $SECONDS s"
