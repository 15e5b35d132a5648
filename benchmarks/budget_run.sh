#!/usr/bin/env bash
# One budgeted training run and its evaluation files on the GPU machine, in device calls of <= 10 minutes
# (the run itself goes through benchmarks/hold.sh, so it outlives each call while the machine is held).
#   bash benchmarks/budget_run.sh start  NAME CONFIG [--set items...]   start `dpcdvae train` in /root/runs/NAME
#   bash benchmarks/budget_run.sh wait   NAME [MAX_S]                   return when it ended (or after MAX_S, 570)
#   bash benchmarks/budget_run.sh finish NAME [GEN_N] [PROP_DATASET]    reconstruct the whole test split and
#       generate GEN_N crystals side by side (and train a property predictor on PROP_DATASET for W(E));
#       export the raw weights as bf16 shards; put everything that should come back into $OUT (<= 8 files;
#       a step cut short by FINISH_S brings its finished batches as <step>_parts.tgz)
# Each phase prints one line per step; a failed step is reported and the others go on. RECON_ARGS / GEN_ARGS /
# PROP_ARGS add options to reconstruct / sample / train-property (e.g. RECON_ARGS="--limit 8 --steps 5" for a dry run).
set -u
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1
phase="${1:?phase: start | wait | finish}"; name="${2:?run name}"; shift 2
R="/root/runs/$name"
case "$phase" in
  start)
    config="${1:?config}"; shift
    mkdir -p /root/runs
    bash benchmarks/hold.sh start "$name" python -m dpcdvae train --config "$config" --out "$R" --cache-dir .cache \
      --no-progress "$@";;
  wait)
    bash benchmarks/hold.sh wait "$name" "${1:-570}";;
  finish)
    gen_n="${1:-0}"; prop="${2:-}"
    [ -f "$R/train_summary.json" ] || { echo "budget_run: $R/train_summary.json missing (training not done?)"; exit 1; }
    w="$R/model_raw.pt"; [ -f "$w" ] || w="$R/model.pt"
    # the weights first: if the call is cut short (device time ends), the shards are already in $OUT
    python -m dpcdvae export --ckpt "$w" --out "$R/raw" --max-mb 15 --dtype bfloat16 >"$R/export.log" 2>&1
    echo "budget_run: export rc $?"
    out="${OUT:-/tmp/budget_out}"; mkdir -p "$out"
    i=0; for f in "$R"/raw/*.pt; do [ -f "$f" ] && cp "$f" "$out/$(basename "$f")" && i=$((i + 1)); done
    echo "budget_run: $i weight shards in $out"
    fin="${FINISH_S:-540}"   # seconds each evaluation step may take (FINISH_S=300 when the call has less left)
    timeout "$fin" python -m dpcdvae reconstruct --ckpt "$w" --split test --cache-dir .cache --batch-size 5000 --seed 0 \
      --no-cif ${RECON_ARGS:-} --out "$R/recon" >"$R/recon.log" 2>&1 &
    pr=$!
    if [ "$gen_n" -gt 0 ]; then
      timeout "$fin" python -m dpcdvae sample --ckpt "$w" -n "$gen_n" --batch-size 5120 --seed 0 --no-cif \
        ${GEN_ARGS:-} --out "$R/gen" >"$R/gen.log" 2>&1 &
      pg=$!
    fi
    if [ -n "$prop" ]; then
      timeout 300 python -m dpcdvae train-property --dataset "$prop" --out "$R/property" --cache-dir .cache \
        --max-minutes 2 --no-progress ${PROP_ARGS:-} >"$R/property.log" 2>&1 &
      pp=$!
    fi
    wait $pr; echo "budget_run: reconstruct rc $?"
    [ "$gen_n" -gt 0 ] && { wait $pg; echo "budget_run: sample rc $?"; }
    [ -n "$prop" ] && { wait $pp; echo "budget_run: train-property rc $?"; }
    cp "$R/recon/samples.pt" "$out/recon_samples.pt" 2>/dev/null
    [ "$gen_n" -gt 0 ] && cp "$R/gen/samples.pt" "$out/gen_samples.pt" 2>/dev/null
    # a step cut by its timeout keeps its finished batches: bring those back (score them with
    # `evaluate recon --pred part_0.pt --pred ...`, finish the rest with `reconstruct --start`)
    for job in recon gen; do
      if [ ! -f "$R/$job/samples.pt" ] && [ -d "$R/$job/parts" ]; then
        (cd "$R" && tar czf "$out/${job}_parts.tgz" "$job/run.json" "$job/parts") && \
          echo "budget_run: $job cut short; its finished batches are in ${job}_parts.tgz"
      fi
    done
    prop_pt=$(ls "$R"/property/*.pt 2>/dev/null | head -1); [ -n "$prop_pt" ] && cp "$prop_pt" "$out/property.pt"
    (cd "$R" && tar czf "$out/small.tgz" train_summary.json config.json logs ./*.log recon/run.json gen/run.json \
      property/*.json raw/*.json 2>/dev/null)
    echo "budget_run: back in $out:"; ls -la "$out";;
  *) echo "usage: budget_run.sh start NAME CONFIG [--set ...] | wait NAME [MAX_S] | finish NAME [GEN_N] [PROP_DATASET]"; exit 2;;
esac
