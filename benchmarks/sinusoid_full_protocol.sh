#!/usr/bin/env bash
# Full sinusoid protocol: 10-shot for every algorithm, 5- and 20-shot for MAML and Meta-SGD.
set -e
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
for algo in maml metasgd fomaml anil cavia prompt_maml reptile; do
  .venv/bin/python -m experiments.sinusoid --workdir $RUNS/sin10_$algo --config.algorithm=$algo --config.progress=false
done
for shots in 5 20; do for algo in maml metasgd; do
  .venv/bin/python -m experiments.sinusoid --workdir $RUNS/sin${shots}_$algo --config.algorithm=$algo --config.shots=$shots --config.progress=false
done; done
