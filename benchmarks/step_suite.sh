#!/usr/bin/env bash
# Issue 9 item 1 on the GPU machine: eager vs padded (static shapes) vs padded + CUDA graphs training
# step at the paper's batch sizes, then the sampler's network call the same three ways. Every line is
# one JSON record in $OUT/step_suite.jsonl; a failing configuration is logged and the suite goes on.
#   OUT=/tmp/o bash benchmarks/step_suite.sh [train] [e2e] [sample]   (default: all three)
set -u
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/step_suite}"; mkdir -p "$OUT"
J="$OUT/step_suite.jsonl"; L="$OUT/step_suite.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$L" 2>&1
python -c "import torch; print('torch', torch.__version__)" >>"$L" 2>&1
T="python benchmarks/train_throughput.py --cache-dir .cache --steps 30 --fused-adam"
S="python benchmarks/sample_throughput.py --cache-dir .cache --steps 100 --precision bf16"
run() {  # run LABEL TIMEOUT_S CMD...
  local label="$1" to="$2"; shift 2
  echo "== $label: $*" | tee -a "$L"
  local t0=$(date +%s)
  timeout "$to" "$@" >"$OUT/tmp.out" 2>>"$L"; local rc=$?
  grep '^{' "$OUT/tmp.out" | sed "s/^{/{\"label\": \"$label\", /" >>"$J"
  cat "$OUT/tmp.out" >>"$L"; echo "-- rc $rc, $(( $(date +%s) - t0 )) s" | tee -a "$L"
}
want() { [ -z "$SECTIONS" ] || [[ " $SECTIONS " == *" $1 "* ]]; }
SECTIONS="$*"
want train && for spec in "perov_5 512 32" "mp_20 256 40" "carbon_24 256 32"; do
  set -- $spec; p=$1; b=$2; d=$3
  run "$p-b$b-eager" 150 $T --presets $p --batch-size $b --warmup 5
  [ $p != carbon_24 ] && run "$p-b$b-static" 150 $T --presets $p --batch-size $b --warmup 5 --static-shapes --max-degree $d
  run "$p-b$b-cudagraphs" 300 $T --presets $p --batch-size $b --warmup 20 --static-shapes --cuda-graphs --max-degree $d
done
# end to end: `dpcdvae train` at the paper's batch sizes with the padded step + CUDA graphs, validation
# included (the preset's cadence); each run's train_summary.json lands in $OUT/e2e-<label>.json
e2e() {  # e2e LABEL TIMEOUT_S PRESET BATCH MINUTES [extra --set items]
  local label="$1" to="$2" p="$3" b="$4" m="$5"; shift 5
  rm -rf "/root/e2e/$label"
  run "e2e-$label" "$to" python -m dpcdvae train --config "$p" --out "/root/e2e/$label" --cache-dir .cache \
    --no-progress --set data.batch_size="$b" train.max_minutes="$m" train.static_shapes=true train.cuda_graphs=true \
    train.checkpoint_minutes=100 "$@"
  cp "/root/e2e/$label/train_summary.json" "$OUT/e2e-$label.json" 2>/dev/null
}
want e2e && {
  e2e perov_5-b512 330 perov_5 512 4.0 train.static_max_degree=32  # 4 min: a cold compile took > 2.5
  e2e mp_20-b256 250 mp_20 256 3.0 train.static_atom_multiple=512
}
want sample || exit 0
run "sample-perov_5-eager" 150 $S --preset perov_5 -n 4096
run "sample-perov_5-static" 150 $S --preset perov_5 -n 4096 --static-shapes --warmup-steps 3
run "sample-perov_5-cudagraphs" 300 $S --preset perov_5 -n 4096 --cuda-graphs --warmup-steps 3
run "sample-carbon_24_cdvae-eager" 150 $S --preset carbon_24_cdvae -n 1024 --sampler langevin
run "sample-carbon_24_cdvae-cudagraphs" 300 $S --preset carbon_24_cdvae -n 1024 --sampler langevin --cuda-graphs --warmup-steps 3
rm -f "$OUT/tmp.out"
