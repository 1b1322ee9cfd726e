#!/bin/bash
# The gpu-small stages on one GPU, a few steps each, in one table: does each run, how fast, how much memory.
#
#   bash benchmarks/gpu_check.sh            # from the repository root, hfstack installed (pip install -e ".[gpu]")
#
# Runs, each under its own timeout (the whole check stays under 8 minutes on one H100/H200):
#   corpus + tokenizer   standard-library prose written on the fly (no network), the gpu-small tokenizer on it
#   pretrain             recipes/gpu-small/pretrain.yaml (~110M Llama, bf16, torch.compile), 30 steps of 128k tokens
#   sft-lora, sft-qlora  recipes/gpu-small/sft.yaml on that base, 20 steps, LoRA r 16 / the same in 4 bits (QLoRA)
#   rl                   recipes/gpu-small/rl.yaml (GRPO, Python tool in the rollouts) on the LoRA SFT model, 5 steps
#   pretrain-fsdp2       the pretraining under recipes/accelerate/fsdp2.yaml on 1 process, 10 steps, not compiled
#   pretrain-zero2/3     the same under DeepSpeed ZeRO-2 and ZeRO-3 (recipes/accelerate/zero2.yaml, zero3.yaml)
# then prints: | stage | what | status | tokens/s | steps/s | MFU | peak memory | wall |
# (tokens/s and MFU from pretrain's log.jsonl, the first logging interval left out; steps/s over the
# Trainer's train() calls only; peak memory: torch.cuda.max_memory_allocated of the stage's process).
#
# Exit status: 0 every stage ran; 1 one or more failed or ran out of time (the table says which, and
# RUN/logs/STAGE.log why); 77 no CUDA GPU here (nothing is run or written). Settings from the environment:
# GPU_CHECK_DIR (the run folder; default a new one under $TMPDIR), GPU_CHECK_TIMEOUT_SCALE (multiplies
# every timeout, default 1).
set -euo pipefail

if ! command -v nvidia-smi > /dev/null 2>&1 || ! nvidia-smi -L > /dev/null 2>&1 \
    || ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" > /dev/null 2>&1; then
    echo "gpu_check: no CUDA GPU on this machine (nvidia-smi or torch.cuda.is_available() says none); nothing to check"
    exit 77
fi

REPO=$(pwd)
if [ ! -f "$REPO/recipes/gpu-small/pretrain.yaml" ] || [ ! -f "$REPO/benchmarks/gpu_check.py" ]; then
    echo "gpu_check: run it from the hfstack repository root (recipes/gpu-small/ and benchmarks/ not found)" >&2
    exit 2
fi
RUN=${GPU_CHECK_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/hfstack-gpu-check.XXXXXX")}
mkdir -p "$RUN/results" "$RUN/logs"
SCALE=${GPU_CHECK_TIMEOUT_SCALE:-1}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
HELPER="$REPO/benchmarks/gpu_check.py"
STEP=0

echo "gpu_check: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -n 1); run folder $RUN"

# run_stage SECONDS LABEL WHAT OUTPUT_DIR LAUNCHER... -- HFSTACK_COMMAND...: the stage under a timeout;
# a run that dies before writing its result (timeout, crash) gets a result saying so.
run_stage() {
    local seconds=$(( $1 * SCALE )) label=$2 what=$3 output=$4
    shift 4
    STEP=$((STEP + 1))
    local result="$RUN/results/$STEP-$label.json" rc=0 launcher=()
    while [ "$1" != "--" ]; do launcher+=("$1"); shift; done
    shift
    echo "gpu_check: [$STEP] $label: $what (timeout ${seconds}s)"
    timeout --kill-after=15 "$seconds" "${launcher[@]}" "$HELPER" stage "$result" "$label" "$what" "$output" -- "$@" \
        > "$RUN/logs/$label.log" 2>&1 || rc=$?
    if [ ! -f "$result" ]; then
        local status="FAILED (rc $rc)"
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status="TIMEOUT (${seconds}s)"; fi
        printf '{"label": "%s", "what": "%s", "rc": %d, "status": "%s", "wall_seconds": %d}\n' \
            "$label" "$what" "$rc" "$status" "$seconds" > "$result"
    fi
    if [ "$rc" -ne 0 ]; then
        echo "gpu_check: [$STEP] $label failed (rc $rc); the end of $RUN/logs/$label.log:"
        tail -n 15 "$RUN/logs/$label.log" | sed 's/^/    /'
    fi
    return 0
}

skip_stage() {  # LABEL WHAT WHY
    STEP=$((STEP + 1))
    echo "gpu_check: [$STEP] $1: skipped, $3"
    printf '{"label": "%s", "what": "%s", "rc": -1, "status": "skipped: %s"}\n' "$1" "$2" "$3" \
        > "$RUN/results/$STEP-$1.json"
}

# --- corpus and tokenizer (not in the table when they work: they are the check's set-up)
echo "gpu_check: corpus and tokenizer"
python "$HELPER" corpus "$RUN/corpus.jsonl" --copies 8
timeout $((120 * SCALE)) hfstack tokenizer --config recipes/gpu-small/tokenizer.yaml --input "$RUN/corpus.jsonl" \
    --output_dir "$RUN/tokenizer" --max_chars 50000000 --eval_max_chars 200000 --compare_cl100k false \
    --progress false > "$RUN/logs/tokenizer.log" 2>&1 \
    || { echo "gpu_check: the tokenizer failed; see $RUN/logs/tokenizer.log" >&2; tail -n 15 "$RUN/logs/tokenizer.log" >&2; exit 1; }

# --- pretraining, bf16 and compiled as the recipe says; 4 × 32 × 1024 = 128k tokens a step
PRETRAIN=(pretrain --config recipes/gpu-small/pretrain.yaml --data "$RUN/corpus.jsonl" --tokenizer "$RUN/tokenizer"
          --batch_tokens 131072 --warmup_steps 5 --logging_steps 5 --eval_steps 1000 --eval_batches 10
          --save_steps 1000 --num_proc 8 --report_to none)
run_stage 120 pretrain "gpu-small 110M, bf16, compiled, 30 steps × 128k tokens" "$RUN/base" python -- \
    "${PRETRAIN[@]}" --max_steps 30 --output_dir "$RUN/base"

# --- SFT, LoRA and QLoRA, on that base
write_sft() {  # FILE PEFT_OPTIONS
    cat > "$1" <<YAML
extends: $REPO/recipes/gpu-small/sft.yaml
counts: {identity: 200, arithmetic: 1000, counting: 500, knowledge: 0, search: 0}
interrogation_samples: 1
max_steps: 20
warmup_steps: 2
logging_steps: 5
save_steps: 1000
report_to: none
peft: $2
YAML
}
write_sft "$RUN/sft-lora.yaml" "{r: 16, lora_alpha: 32, lora_dropout: 0.0, target_modules: all-linear}"
write_sft "$RUN/sft-qlora.yaml" "{r: 16, lora_alpha: 32, lora_dropout: 0.0, target_modules: all-linear, quantize_4bit: true}"
cat > "$RUN/rl.yaml" <<YAML
extends: $REPO/recipes/gpu-small/rl.yaml
tasks: {arithmetic: 200, counting: 200}
max_steps: 5
eval_limit: 20
logging_steps: 1
save_steps: 1000
report_to: none
YAML
if [ -f "$RUN/base/summary.json" ]; then
    run_stage 60 sft-lora "LoRA r 16, 20 steps × 32 conversations" "$RUN/sft-lora" python -- \
        sft --config "$RUN/sft-lora.yaml" --model_name_or_path "$RUN/base" --output_dir "$RUN/sft-lora"
    run_stage 60 sft-qlora "QLoRA (4-bit base) r 16, 20 steps × 32 conversations" "$RUN/sft-qlora" python -- \
        sft --config "$RUN/sft-qlora.yaml" --model_name_or_path "$RUN/base" --output_dir "$RUN/sft-qlora"
else
    skip_stage sft-lora "LoRA r 16" "no pretrained base"
    skip_stage sft-qlora "QLoRA r 16" "no pretrained base"
fi

# --- GRPO on the LoRA SFT model
if [ -f "$RUN/sft-lora/summary.json" ]; then
    run_stage 75 rl "GRPO, 5 steps × 8 prompts × 16 answers, tool rollouts" "$RUN/rl" python -- \
        rl --config "$RUN/rl.yaml" --model_name_or_path "$RUN/sft-lora" --output_dir "$RUN/rl"
else
    skip_stage rl "GRPO" "no SFT model"
fi

# --- FSDP2 on one process: the sharded code path (wrapping, sharded state, saving) on this GPU
run_stage 45 pretrain-fsdp2 "FSDP2 (recipes/accelerate/fsdp2.yaml), 1 process, 10 steps, not compiled" \
    "$RUN/base-fsdp2" python -m accelerate.commands.launch --config_file recipes/accelerate/fsdp2.yaml \
    --num_processes 1 -- "${PRETRAIN[@]}" --max_steps 10 --torch_compile false --output_dir "$RUN/base-fsdp2"

# --- DeepSpeed ZeRO-2 and ZeRO-3 on one process (pip install -e ".[gpu]"): sharded optimizer state, and for
# --- ZeRO-3 partitioned weights gathered into a plain model at the end
for stage in 2 3; do
    run_stage 60 "pretrain-zero$stage" "DeepSpeed ZeRO-$stage (recipes/accelerate/zero$stage.yaml), 1 process, 10 steps" \
        "$RUN/base-zero$stage" python -m accelerate.commands.launch --config_file "recipes/accelerate/zero$stage.yaml" \
        --num_processes 1 -- "${PRETRAIN[@]}" --max_steps 10 --torch_compile false --output_dir "$RUN/base-zero$stage"
done

echo
status=0
python "$HELPER" table "$RUN/results" || status=1
echo
echo "gpu_check: run folder $RUN (logs/ has each stage's output)"
exit $status
