#!/usr/bin/env bash
# Every method of the intent table (experiments/intents/main.py), one workdir each, then the table.
#   bash benchmarks/intents_table.sh [RUNS] [methods...]
#   TEST_DATA=other.jsonl bash benchmarks/intents_table.sh runs/intents   # also that file
# PRESET=cpu (the default) is the shortened protocol the README's table was run with on a
# 2-core CPU (about 2 hours):
#   - meta-trained prompts: 200 meta-steps of 4 tasks (config default 500), 1 inner step in
#     meta-training (default 3), outer lr 3e-3; evaluated without per-episode adaptation
#     (eval_inner_steps=(0,)), which the 0-step shortcut makes cheap: 600 test and 200
#     validation episodes at every setting;
#   - the rows that must run each episode through the encoder (generated prompts, per-episode
#     prompt tuning, per-episode fine-tuning) are shortened to 300 test and 100 validation
#     episodes and fewer settings (listed below), the minimum the issue allows;
#   - average: 34 supervised steps per domain (6 domains, 204 in all); multitask (outer lr
#     3e-3) and finetune (its own lr, 2e-5): 200 supervised steps.
# The README's table also has a frozen_prototypes run on the shortened rows' 300 episodes (for
# paired differences) and two longer runs; their commands are in the README.
# PRESET=full keeps the config's defaults. EXTRA adds --config flags to every run.
# Results: RUNS/METHOD/results.json (RUNS defaults to runs/intents); PYTHON the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
RUNS=${1:-runs/intents}
shift || true
METHODS=${*:-frozen_prototypes frozen_logreg fomaml multitask maml reptile average prompt_pool metasgd finetune generated prompt_tuning episode_finetune generated_maml}
mkdir -p "$RUNS"
cpu=1
[ "${PRESET:-cpu}" = cpu ] || cpu=0
train=(--config.num_steps=200 --config.inner_steps=1 "--config.eval_inner_steps=(0,)"
       --config.outer_lr=3e-3 --config.checkpoint_every=100)
short=(--config.eval_tasks=300 --config.val_tasks=100)
for m in $METHODS; do
  extra=()
  if [ $cpu = 1 ]; then
    case "$m" in
      frozen_prototypes|frozen_logreg) ;;
      average) extra=(--config.supervised_steps=34 --config.outer_lr=3e-3 "--config.eval_inner_steps=(0,)") ;;
      finetune) extra=(--config.num_steps=200 --config.checkpoint_every=100) ;;
      generated) extra=(--config.num_steps=200 --config.outer_lr=3e-3 --config.checkpoint_every=100
                        "${short[@]}" "--config.eval_settings=('5x1','5x2','15x1')") ;;
      generated_maml) extra=("${train[@]}" "${short[@]}" "--config.eval_inner_steps=(0,5)"
                             "--config.eval_settings=('5x2','5x5')") ;;
      # inner lr 30: chosen on 40 validation episodes (2- and 5-shot) over 0.1, 3 and 30.
      prompt_tuning) extra=(--config.inner_lr=30 "${short[@]}"
                            "--config.eval_settings=('5x1','5x2','5x5','15x1')") ;;
      episode_finetune) extra=("${short[@]}" "--config.eval_settings=('5x1','5x2','15x1')") ;;
      *) extra=("${train[@]}") ;;
    esac
  fi
  if [ -n "${TEST_DATA:-}" ]; then extra+=(--config.test_data="$TEST_DATA"); fi
  echo "$(date +%T) $m" >&2
  "$PY" -m experiments.intents --workdir "$RUNS/$m" --config.method="$m" --config.progress=False \
    "${extra[@]}" ${EXTRA:-} > "$RUNS/$m.log" 2>&1 \
    || echo "$m failed, exit status $? (see $RUNS/$m.log)"
done
"$PY" -m benchmarks.intents_table "$RUNS"
