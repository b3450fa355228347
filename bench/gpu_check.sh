#!/usr/bin/env bash
# One prepared GPU check for the lent GPU machine (one H200, no network, Python 3.12 with torch,
# transformers, peft, safetensors, sentencepiece, but no spaCy or thinc). Two halves:
#
#   bench/gpu_check.sh prepare              # HERE (network): spaCy, thinc and what they need that
#                                           # the GPU machine lacks as cp312 manylinux wheels into
#                                           # .whl/, the sentencepiece model and a few hundred UNER
#                                           # sentences into .gpu_carry/ (both git-ignored); prints
#                                           # the size of what travels (limit 64 MiB)
#   bench/gpu_check.sh run [OPTIONS]        # THERE: installs the wheels (--no-index) into
#                                           # /tmp/site, then bench/gpu_check.py OPTIONS: one JSON
#                                           # of figures into $OUT (or --out DIR)
#   bench/gpu_check.sh run --cpu-dry-run    # anywhere: tiny shapes on the CPU, nothing installed
#
# With the device tool:  run(command="bash bench/gpu_check.sh run", carry=[".whl", ".gpu_carry"])
# The steps and their figures are described in bench/gpu_check.py and bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEEL_DIR=.whl
CARRY_DIR=.gpu_carry
LIMIT_BYTES=$((64 * 1024 * 1024))
# UNER Danish sentences carried: train / dev (the first N of each file)
TRAIN_SENTENCES=${GPU_CHECK_TRAIN_SENTENCES:-400}
DEV_SENTENCES=${GPU_CHECK_DEV_SENTENCES:-100}
# spaCy, thinc and every requirement of theirs that the GPU machine's image lacks (read from the
# wheels' Requires-Dist; click, jinja2, packaging, requests, setuptools, tqdm, typer, wrapt, httpx,
# numpy are there). typing-extensions is carried because pydantic-core needs >= 4.14.1.
WHEELS=(
  spacy==3.8.18 thinc==8.3.14 spacy-legacy==3.0.12 spacy-loggers==1.0.5
  murmurhash==1.0.16 cymem==2.0.16 preshed==3.0.15 blis==1.3.4
  wasabi==1.1.3 srsly==2.5.6 catalogue==2.0.10 confection==1.3.4 weasel==1.0.1
  cloudpathlib==0.26.0 smart-open==9.0.4
  pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2
  typing-extensions==4.16.0
)

travelling_bytes() {
  # what the device tool sends: tracked + untracked-not-ignored files, plus the carried folders
  { git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null
    find "$WHEEL_DIR" "$CARRY_DIR" -type f -printf '%s\n' 2>/dev/null; } | awk '{s += $1} END {print s + 0}'
}

prepare() {
  local shared=../shared/data
  [[ -f $shared/tokenizer/sentencepiece.bpe.model ]] || { echo "prepare: $shared/tokenizer is missing" >&2; exit 1; }
  mkdir -p "$WHEEL_DIR"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHEEL_DIR" "${WHEELS[@]}"
  # the gzipped sentencepiece model and the first UNER Danish train / dev sentences
  python3 bench/gpu_check.py --prepare-carry --carry "$CARRY_DIR" \
    --train-sentences "$TRAIN_SENTENCES" --dev-sentences "$DEV_SENTENCES"
  local wheels carry total
  wheels=$(du -cb "$WHEEL_DIR"/*.whl | tail -1 | cut -f1)
  carry=$(du -cb "$CARRY_DIR" | tail -1 | cut -f1)
  total=$(travelling_bytes)
  printf 'prepare: %d wheels, %.1f MiB; %s %.1f MiB; travelling in all %.1f MiB (limit 64 MiB)\n' \
    "$(ls "$WHEEL_DIR"/*.whl | wc -l)" "$(echo "$wheels / 1048576" | bc -l)" "$CARRY_DIR" \
    "$(echo "$carry / 1048576" | bc -l)" "$(echo "$total / 1048576" | bc -l)"
  if (( total > LIMIT_BYTES )); then echo "prepare: over the 64 MiB the device tool carries" >&2; exit 1; fi
}

install_wheels() {
  ls "$WHEEL_DIR"/*.whl >/dev/null 2>&1 || { echo "run: no wheels in $WHEEL_DIR (bench/gpu_check.sh prepare, then carry .whl)" >&2; exit 1; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEEL_DIR"/*.whl
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
}

case "${1:-}" in
  prepare)
    prepare ;;
  run)
    shift
    if [[ " $* " == *" --cpu-dry-run "* ]]; then
      export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
    else
      install_wheels
    fi
    exec python3 bench/gpu_check.py --carry "$CARRY_DIR" "$@" ;;
  *)
    echo "usage: bench/gpu_check.sh prepare | run [--cpu-dry-run] [--out DIR] [--skip STEP ...]" >&2
    exit 2 ;;
esac
