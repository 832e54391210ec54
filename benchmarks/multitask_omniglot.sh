#!/usr/bin/env bash
# Omniglot's alphabets as tasks: every balancing method and the single-task baselines, then the
# table (per-alphabet accuracy / macro-F1, Δm). EXTRA="--config.num_alphabets=5 ..." is passed
# to every run (the shortened CPU protocol: see the README).
#   bash benchmarks/multitask_omniglot.sh [RUNS] [SEEDS]        (default runs/mtl_omniglot, "0")
# METHODS limits the methods.
set -euo pipefail
RUNS=${1:-runs/mtl_omniglot}
SEEDS=${2:-"0"}
PY=${PYTHON:-.venv/bin/python}
METHODS=${METHODS:-$($PY -c "from experiments.multitask_omniglot import config as m; print(' '.join(x for x in m.METHODS if x != 'fixed'))")}
EXTRA=${EXTRA:-}
mkdir -p "$RUNS"
for seed in $SEEDS; do
  for m in $METHODS; do
    dir="$RUNS/${m}_s${seed}"
    [ -f "$dir/results.json" ] && continue
    $PY -m experiments.multitask_omniglot --workdir "$dir" --config.method="$m" \
      --config.seed="$seed" --config.progress=false $EXTRA > "$dir.log" 2>&1 \
      || echo "failed: $m seed $seed (see $dir.log)"
  done
done
$PY -m benchmarks.multitask_intents_table "$RUNS" --benchmark multitask_omniglot --markdown "$RUNS/table.md"
