#!/usr/bin/env bash
# The shortened CPU protocol of the README's Omniglot table: 5-way 1-shot training episodes,
# meta-batch 8 (paper: 32), 2,000 meta-steps (paper: 60,000), test episodes with 5 query images
# per class (paper code: 15 in most re-implementations); every other field as in
# experiments/omniglot/config.py. Each model is tested on 600 5-way 1-shot and 600 5-way
# 5-shot episodes (the paper trains a separate 5-shot model); ProtoNet, which has no head, also
# on 20-way 1-shot and 5-shot episodes. "NAME_zero" runs NAME with the zeroing trick
# (--config.zero_head=True: the head starts every task at zero). "NAME_20way" trains NAME on
# 20-way 1-shot episodes with the 20-way defaults (inner lr 0.1, 5 inner steps) at the same
# meta-batch 8 and 2,000 steps, 4 meta-steps per jitted call (10 test episodes per vmapped
# chunk, which bounds memory to ~6.5 GB), and tests it on 20-way 1-shot and
# 5-shot episodes (not part of the default list: ~100 minutes of training and 15 of
# evaluation on 2 cores). "NAME_bn" runs NAME with the paper's transductive batch norm
# (--config.norm=batch_transductive), and composes with the others ("maml_bn_20way").
# Results: runs/omniglot_cpu/*/ (RUNS overrides the folder, PYTHON the interpreter).
#   bash benchmarks/omniglot_cpu_protocol.sh [algorithms...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
ALGOS=${*:-maml protonet fomaml anil metasgd cavia fomaml_zero}
RUNS=${RUNS:-runs/omniglot_cpu}
mkdir -p "$RUNS"
for algo in $ALGOS; do
  extra=()
  name=$algo
  if [[ "$algo" == *_20way ]]; then
    algo=${algo%_20way}; extra+=(--config.ways=20 --config.steps_per_call=4)
    extra+=(--config.eval_batch_size=10)  # 50 per chunk: out of memory at 24 GB (batch norm)
  fi
  if [[ "$algo" == *_bn ]]; then algo=${algo%_bn}; extra+=(--config.norm=batch_transductive); fi
  if [[ "$algo" == *_zero ]]; then algo=${algo%_zero}; extra+=(--config.zero_head=True); fi
  if [ "$algo" = protonet ]; then extra+=("--config.eval_settings=('5x1','5x5','20x1','20x5')"); fi
  "$PY" -m experiments.omniglot --workdir "$RUNS/$name" \
    --config.algorithm="$algo" --config.num_steps=2000 --config.meta_batch_size=8 \
    --config.eval_queries=5 --config.checkpoint_every=500 --config.progress=False "${extra[@]}" \
    > "$RUNS/$name.log" 2>&1 || echo "$name failed, exit status $? (137: killed, e.g. out of memory; see $RUNS/$name.log)"
done
