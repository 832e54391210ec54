#!/usr/bin/env bash
# The full Omniglot protocol (Finn et al. 2017; experiments/omniglot/config.py's defaults:
# 60,000 meta-steps, meta-batch 32 for 5-way and 16 for 20-way, test episodes with 15 query
# images per class), meant for an accelerator. The README's Omniglot section says which of
# these runs have been done and where.
#   bash benchmarks/omniglot_full_protocol.sh [runs...]
#   .venv/bin/python -m benchmarks.omniglot_table runs/omniglot_full
# runs (default: all, in this order):
#   speed        the MAML meta-step with each conv_impl (xla, im2col), mtpjax alone (for an
#                accelerator: on a CPU, conv_impl xla takes ~22 s per meta-step)
#   maml_5w1s maml_5w5s maml_20w1s maml_20w5s                  one model per setting
#   maml_bn_5w1s   MAML 5-way 1-shot with the paper's transductive batch norm (NAME_bn_...:
#                  --config.norm=batch_transductive); the library's default is GroupNorm
#   fomaml_5w1s metasgd_5w1s anil_5w1s protonet_5w1s cavia_5w1s  5-way 1-shot models
# Every run checkpoints each 1,000 meta-steps and resumes from its last checkpoint when the
# same command is run again, so a run cut off by a time limit loses at most 1,000 steps:
#   timeout 550 bash benchmarks/omniglot_full_protocol.sh maml_5w1s   # again until done
# Environment: PYTHON (default .venv/bin/python if present, else python), RUNS (default
# runs/omniglot_full), STEPS (meta-steps per run, default the protocol's 60,000; a small
# value checks the script), EVAL_TASKS (test episodes per setting, default 600),
# STEPS_PER_CALL (meta-steps per jitted call, default 50: on an H100 a meta-step takes ~2 ms).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
RUNS=${RUNS:-runs/omniglot_full}
K=${STEPS_PER_CALL:-50}
ALL="speed maml_5w1s maml_bn_5w1s maml_5w5s maml_20w1s maml_20w5s fomaml_5w1s metasgd_5w1s
     anil_5w1s protonet_5w1s cavia_5w1s"
mkdir -p "$RUNS"
for run in ${*:-$ALL}; do
  if [ "$run" = speed ]; then
    for impl in xla im2col; do
      "$PYTHON" -m benchmarks.omniglot_speed --conv_impl "$impl" --steps_per_call "$K" \
        --rounds 3 --steps 5 --out "$RUNS/speed" | tee "$RUNS/speed_$impl.log"
    done
    continue
  fi
  if [[ ! "$run" =~ ^([a-z_]+)_([0-9]+)w([0-9]+)s$ ]]; then
    echo "unknown run '$run' (expected speed or ALGORITHM[_bn]_{5,20}w{1,5}s)" >&2
    exit 2
  fi
  algo=${BASH_REMATCH[1]} ways=${BASH_REMATCH[2]} shots=${BASH_REMATCH[3]}
  extra=()
  if [[ "$algo" == *_bn ]]; then algo=${algo%_bn}; extra+=(--config.norm=batch_transductive); fi
  if [ -n "${STEPS:-}" ]; then extra+=(--config.num_steps="$STEPS"); fi
  if [ -n "${EVAL_TASKS:-}" ]; then extra+=(--config.eval_tasks="$EVAL_TASKS"); fi
  echo "== $run: $(date -u +%FT%TZ)"
  "$PYTHON" -m experiments.omniglot --workdir "$RUNS/$run" --config.algorithm="$algo" \
    --config.ways="$ways" --config.shots="$shots" --config.steps_per_call="$K" \
    --config.log_every=100 --config.checkpoint_every=1000 --config.progress=False \
    "${extra[@]}" 2>&1 | tee -a "$RUNS/$run.log"
done
