#!/usr/bin/env bash
# CLINC150's domains as tasks: every balancing method and the single-task baselines, then the
# table (per-domain accuracy / macro-F1, Δm, aggregation and distillation).
#   bash benchmarks/multitask_intents.sh [RUNS] [SEEDS]        (default runs/mtl_intents, "0")
# Aggregation and distillation run for STAGED methods (default "equal famo single_task"); the
# others train and test the multi-task model only. METHODS limits the methods.
set -euo pipefail
RUNS=${1:-runs/mtl_intents}
SEEDS=${2:-"0"}
PY=${PYTHON:-.venv/bin/python}
METHODS=${METHODS:-$($PY -c "from experiments.multitask_intents import config as m; print(' '.join(x for x in m.METHODS if x != 'fixed'))")}
STAGED=${STAGED:-"equal famo single_task"}
mkdir -p "$RUNS"
for seed in $SEEDS; do
  for m in $METHODS; do
    dir="$RUNS/${m}_s${seed}"
    [ -f "$dir/results.json" ] && continue
    extra="--config.transfer_steps=0 --config.distill_steps=0"
    [[ " $STAGED " == *" $m "* ]] && extra=""
    $PY -m experiments.multitask_intents --workdir "$dir" --config.method="$m" \
      --config.seed="$seed" --config.progress=false $extra > "$dir.log" 2>&1 \
      || echo "failed: $m seed $seed (see $dir.log)"
  done
done
$PY -m benchmarks.multitask_intents_table "$RUNS" --markdown "$RUNS/table.md"
