#!/usr/bin/env bash
# Every method of the intent table (experiments/intents.py), one workdir each, then the table.
#   bash benchmarks/intents_table.sh [RUNS] [methods...]
#   TEST_DATA=other.jsonl bash benchmarks/intents_table.sh runs/intents   # also that file
# PRESET=cpu (the default) is the shortened protocol the README's table was run with on a
# 2-core CPU: 200 meta-steps (supervised rows: 200 steps), 1 inner step in meta-training,
# every method evaluated without per-episode adaptation (eval_inner_steps=(0,)), 600 test and
# 200 validation episodes per setting. PRESET=full keeps the config's defaults (500 meta-steps,
# 3 inner steps, 0 and 5 inner steps per test episode). EXTRA adds --config flags to every run.
# Results: RUNS/METHOD/results.json (RUNS defaults to runs/intents); PYTHON the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
RUNS=${1:-runs/intents}
shift || true
METHODS=${*:-frozen_prototypes frozen_logreg fomaml multitask maml reptile average prompt_pool generated metasgd finetune prompt_tuning generated_maml episode_finetune}
mkdir -p "$RUNS"
preset=()
if [ "${PRESET:-cpu}" = cpu ]; then
  preset=(--config.num_steps=200 --config.inner_steps=1 "--config.eval_inner_steps=(0,)"
          --config.outer_lr=3e-3 --config.checkpoint_every=100)
fi
for m in $METHODS; do
  extra=("${preset[@]}")
  case "$m" in
    frozen_prototypes|frozen_logreg|prompt_tuning|episode_finetune) extra=() ;;  # nothing to train
    average) extra=(--config.supervised_steps=34 --config.outer_lr=3e-3 "--config.eval_inner_steps=(0,)") ;;
    finetune) extra=(--config.num_steps=200 --config.checkpoint_every=100) ;;  # its own lr (2e-5)
    generated) extra=(--config.num_steps=200 --config.outer_lr=3e-3 --config.checkpoint_every=100) ;;
  esac
  if [ -n "${TEST_DATA:-}" ]; then extra+=(--config.test_data="$TEST_DATA"); fi
  echo "$(date +%T) $m" >&2
  "$PY" -m experiments.intents --workdir "$RUNS/$m" --config.method="$m" --config.progress=False \
    "${extra[@]}" ${EXTRA:-} > "$RUNS/$m.log" 2>&1 \
    || echo "$m failed, exit status $? (see $RUNS/$m.log)"
done
"$PY" -m benchmarks.intents_table "$RUNS"
