#!/usr/bin/env bash
# The first GPU session's check (bench/gpu_check.py): every CUDA path the review found, then the inference
# and training benches in fp16, ~10 minutes.
#
#   bash bench/gpu_check.sh --prepare   # here, once: runs/gpu_carry/ = the bitsandbytes wheel (py3.12,
#                                       # manylinux x86_64) + the demo model's tokenizer and config, no
#                                       # weights (the device has none of them; 47 MB of the 64 allowed)
#   device run: command "bash bench/gpu_check.sh", carry ["runs/gpu_carry"], timeout_s 600 (the JSON is
#                                       # written after each step, so a cut-off run keeps what it ran)
#   bash bench/gpu_check.sh --dry-run   # on this CPU: the script itself (make test runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prepare" ]; then
    mkdir -p runs/gpu_carry/wheels
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d runs/gpu_carry/wheels bitsandbytes==0.50.2
    .venv/bin/python -c "import shutil; from kaggle_kit.models import demo_model_dir, load_tokenizer; \
        load_tokenizer(demo_model_dir()).save_pretrained('runs/gpu_carry/smollm2'); \
        shutil.copy(demo_model_dir() / 'config.json', 'runs/gpu_carry/smollm2/')"
    du -sh runs/gpu_carry
    exit 0
fi
PY=python3
if [ "${1:-}" = "--dry-run" ] && [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
fi
if ls runs/gpu_carry/wheels/*.whl >/dev/null 2>&1 && ! $PY -c "import bitsandbytes" 2>/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site runs/gpu_carry/wheels/*.whl
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec $PY bench/gpu_check.py "$@"
