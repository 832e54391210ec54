#!/usr/bin/env bash
# Every balancing method and the single-task baselines on MMoE's synthetic benchmark:
# correlations 0, 0.5, 0.9, 1; shared bottom and MMoE; SEEDS seeds. Then the table.
#   bash benchmarks/multitask_synthetic.sh [RUNS] [SEEDS]      (default runs/mtl, "0 1 2")
# METHODS="equal famo" limits the methods (default: every method but `fixed`, which needs its
# weights and with equal ones is `equal`); JOBS=2 runs two at a time.
set -euo pipefail
RUNS=${1:-runs/mtl}
SEEDS=${2:-"0 1 2"}
PY=${PYTHON:-.venv/bin/python}
METHODS=${METHODS:-$($PY -c "from experiments.multitask import config as m; print(' '.join(x for x in m.METHODS if x != 'fixed'))")}
JOBS=${JOBS:-1}
mkdir -p "$RUNS"
jobs_list=()
for seed in $SEEDS; do
  for p in 0 0.5 0.9 1; do
    for arch in shared_bottom mmoe; do
      for m in $METHODS; do
        dir="$RUNS/${arch}_p${p}_${m}_s${seed}"
        [ -f "$dir/results.json" ] && continue
        jobs_list+=("$PY -m experiments.multitask --workdir $dir --config.method=$m --config.arch=$arch --config.correlation=$p --config.seed=$seed --config.progress=false")
      done
    done
  done
done
printf '%s\n' "${jobs_list[@]}" | xargs -P "$JOBS" -I{} bash -c '{} > /dev/null 2>&1 || echo "failed: {}"'
$PY -m benchmarks.multitask_table "$RUNS" --markdown "$RUNS/table.md"
