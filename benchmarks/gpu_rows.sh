#!/usr/bin/env bash
# Every GPU row of docs/benchmarks.md in one run (target: under 8 minutes on one H200), JSON per row group in $OUT.
#
#   OUT=gpu-results bash benchmarks/gpu_rows.sh                       # on the GPU machine
#   DEVICE=cpu DTYPE=float32 BATCH=4 REPEATS=1 SHAPE="--hidden-size 32 --num-hidden-layers 4 --num-attention-heads 2 \
#     --intermediate-size 64 --image-size 32 --patch-size 4" TTA="--epochs 5 --max-train-samples 64 --seeds 0" \
#     MERGE_R="2 4" OUT=/tmp/gpu-dry bash benchmarks/gpu_rows.sh   # CPU dry run
#
# Rows: dense vs TriLevel keep rates and attention sparsity (inference and training steps), and the three token
# selectors at fixed-rate's token budget (random weights: selector overhead; a trained folder via MODEL=path), and
# a dense/sparse training step (the operating points' own throughputs are the keep-rate inference rows), and
# physically slimmed shapes (fewer heads and MLP neurons per layer, as `hf-trilevel slim` leaves them) on PRESET and,
# without SHAPE, on deit-tiny too; token merging (ToMe, r tokens per layer; MERGE_R: the inference values, the first
# one also for training); batch-1 latency rows, eager and compiled (issue 26; onnxruntime runs on the CPU only;
# slimmed shapes at batch 1 left out to keep the run short); DeiT distilled, DINOv2, CLIP and SigLIP at their base
# presets against their own transformers classifiers (issue 27; with SHAPE, that shape in every family);
# and the data level's time to accuracy on the redundant digits (TTA: its run length and seeds).
set -euo pipefail
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bfloat16}
BATCH=${BATCH:-256}
REPEATS=${REPEATS:-9}
PRESET=${PRESET:-deit-small}
SHAPE=${SHAPE:-}
OUT=${OUT:-gpu-results}
MODEL=${MODEL:-}
read -r -a MERGE_R <<< "${MERGE_R:-8 13}"
mkdir -p "$OUT"
BENCH=(python -m hf_trilevel bench)
COMMON=(--device "$DEVICE" --dtype "$DTYPE" --batch-size "$BATCH" --repeats "$REPEATS" --no-progress)
if [[ -z "$SHAPE" ]]; then read -r -a SHAPE_ARGS <<< "--preset $PRESET"; else read -r -a SHAPE_ARGS <<< "$SHAPE"; fi

echo "== inference: keep rates and attention sparsity"
"${BENCH[@]}" inference "${SHAPE_ARGS[@]}" "${COMMON[@]}" --keep-rates 1 0.7 0.5 --attention-keep-rates 1 0.3 \
    --json "$OUT/inference.json"
echo "== training steps"
"${BENCH[@]}" train "${SHAPE_ARGS[@]}" "${COMMON[@]}" --keep-rates 1 0.7 0.5 --attention-keep-rates 1 \
    --json "$OUT/train.json"
echo "== token selectors at fixed-rate's token budget (issue 11)"
SOURCE=("${SHAPE_ARGS[@]}")
if [[ -n "$MODEL" ]]; then SOURCE=(--model "$MODEL"); fi
"${BENCH[@]}" inference "${SOURCE[@]}" "${COMMON[@]}" --keep-rates 0.7 0.5 --attention-keep-rates 1 \
    --token-selector class_attention learned adaptive --match-fixed-rate --json "$OUT/selectors.json"
"${BENCH[@]}" inference "${SOURCE[@]}" "${COMMON[@]}" --keep-rates 0.7 --attention-keep-rates 1 \
    --token-selector adaptive --match-fixed-rate --token-count-buckets 4 --json "$OUT/selectors_groups.json"
echo "== dense/sparse training step: one checkpoint for keep rates 1 / 0.7 / 0.5 against dense (issue 12)"
"${BENCH[@]}" train "${SHAPE_ARGS[@]}" "${COMMON[@]}" --keep-rates 1 --attention-keep-rates 1 \
    --dense-sparse-keep-rates 1 0.7 0.5 --json "$OUT/dense_sparse_train.json"
echo "== physically slimmed shapes: heads / MLP neurons 1, 0.7, 0.5 at token keep 1 and 0.7 (issue 13)"
"${BENCH[@]}" inference "${SHAPE_ARGS[@]}" "${COMMON[@]}" --keep-rates 1 0.7 --attention-keep-rates 1 \
    --head-densities 1 0.7 0.5 --neuron-densities 1 0.7 0.5 --json "$OUT/slimmed.json"
if [[ -z "$SHAPE" && "$PRESET" != deit-tiny ]]; then
    "${BENCH[@]}" inference --preset deit-tiny "${COMMON[@]}" --keep-rates 1 0.7 --attention-keep-rates 1 \
        --head-densities 1 0.7 0.5 --neuron-densities 1 0.7 0.5 --json "$OUT/slimmed_tiny.json"
fi
echo "== token merging: r tokens merged per layer, against dense (keep-rate rows: inference.json) (issue 25)"
"${BENCH[@]}" inference "${SHAPE_ARGS[@]}" "${COMMON[@]}" --keep-rates 1 --attention-keep-rates 1 \
    --token-merge-r 0 "${MERGE_R[@]}" --json "$OUT/merging.json"
"${BENCH[@]}" train "${SHAPE_ARGS[@]}" "${COMMON[@]}" --keep-rates 1 --attention-keep-rates 1 \
    --token-merge-r 0 "${MERGE_R[0]}" --example-keep-fractions 1 --json "$OUT/merging_train.json"
echo "== batch 1 (latency): keep rates, fusion, learned and adaptive at fixed-rate's budget, merging; eager and compiled (issue 26)"
B1=(--device "$DEVICE" --dtype "$DTYPE" --batch-size 1 --repeats "$((REPEATS * 5))" --no-progress)
"${BENCH[@]}" inference "${SHAPE_ARGS[@]}" "${B1[@]}" --keep-rates 1 0.7 0.5 --attention-keep-rates 1 --fusion both \
    --json "$OUT/batch1.json"
"${BENCH[@]}" inference "${SOURCE[@]}" "${B1[@]}" --keep-rates 0.7 --attention-keep-rates 1 \
    --token-selector class_attention learned adaptive --match-fixed-rate --json "$OUT/batch1_selectors.json"
"${BENCH[@]}" inference "${SHAPE_ARGS[@]}" "${B1[@]}" --keep-rates 1 --attention-keep-rates 1 \
    --token-merge-r 0 "${MERGE_R[0]}" --json "$OUT/batch1_merging.json"
"${BENCH[@]}" inference "${SHAPE_ARGS[@]}" "${B1[@]}" --keep-rates 1 0.7 0.5 --attention-keep-rates 1 --compile \
    --json "$OUT/batch1_compiled.json"
echo "== other families, each against its own transformers classifier: keep rates (issue 27)"
for FAMILY_PRESET in deit-distilled:deit-small dinov2:dinov2-base clip:clip-b16 siglip:siglip-base; do
    FAMILY=${FAMILY_PRESET%%:*}
    if [[ -z "$SHAPE" ]]; then FAMILY_SHAPE=(--preset "${FAMILY_PRESET#*:}"); else FAMILY_SHAPE=("${SHAPE_ARGS[@]}"); fi
    "${BENCH[@]}" inference --family "$FAMILY" "${FAMILY_SHAPE[@]}" "${COMMON[@]}" --keep-rates 1 0.7 0.5 \
        --attention-keep-rates 1 --json "$OUT/family_$FAMILY.json"
done
echo "== the data level against chance: time to accuracy on the redundant digits, every policy at one budget (issue 14)"
read -r -a TTA_ARGS <<< "${TTA:---epochs 10 --seeds 0 1 2 3 4}"
"${BENCH[@]}" train --time-to-accuracy --dataset digits-redundant --device "$DEVICE" --dtype "$DTYPE" --no-progress \
    --patch-size 8 --hidden-size 64 --num-hidden-layers 4 --num-attention-heads 4 --intermediate-size 128 \
    --keep-rates 1 --attention-keep-rates 1 --example-keep-fractions 1 0.8 0.5 --example-policy random forgetting loss \
    "${TTA_ARGS[@]}" --json "$OUT/data_level.json"
echo "done: $OUT"
