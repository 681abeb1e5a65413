#!/bin/bash
# The cost of each evaluation protocol: one backbone, bundled faces, labels 4,16,64, 1 seed, no baselines.
#   genbackbones pretrain --set train.steps=50 -o runs/quickstart
#   bash benchmarks/results/protocol_cost/run.sh runs/quickstart benchmarks/results/protocol_cost
# Writes OUT/<protocol>/{results.json,summary.csv} and appends wall time and load to OUT/time.log.
set -e
RUN=${1:-runs/quickstart}
OUT=${2:-benchmarks/results/protocol_cost}
mkdir -p "$OUT"
run() {
  name=$1; shift
  rm -rf "$OUT/$name"
  echo "== $name  $(date -Is)  load $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/time.log"
  /usr/bin/time -o "$OUT/.time" -f "$name wall %e s, user %U s, sys %S s, max RSS %M KB" \
    genbackbones evaluate "$RUN" --labels 4,16,64 --seeds 1 --baselines none --out "$OUT/$name" "$@" > /dev/null
  cat "$OUT/.time" >> "$OUT/time.log" && rm -f "$OUT/.time" "$OUT/$name/model_index.json" "$OUT/$name"/*.png
}
run segmentation --task segmentation
run heatmap --task landmarks --set ridge=false
run ridge --task landmarks --set heatmap=false
run linear --task classification --protocol linear
run knn --task classification --protocol knn
run finetune --task classification --protocol finetune
echo "== done $(date -Is)  load $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/time.log"
