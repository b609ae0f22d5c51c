#!/usr/bin/env bash
# textseg on one machine with several GPUs: torchrun starts one process per GPU, Lightning DDP picks up its
# environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).
#
#   scripts/torchrun.sh --data.root /data/QaTa-COV19
#   NPROC=4 CONFIG=configs/textmoe_composite.yaml scripts/torchrun.sh --data.root '[/data/QaTa-COV19, /data/MosMedData+]'
#   NPROC=2 CONFIG=configs/demo_semimedref.yaml scripts/torchrun.sh --trainer.accelerator cpu   # gloo on CPU
#
# Arguments go to `textseg fit` unchanged. Environment variables:
#   NPROC     processes = GPUs (default: every GPU nvidia-smi lists)
#   CONFIG    textseg config (default configs/semimedref_mmiunet.yaml)
#   STRATEGY  Lightning strategy (default ddp_find_unused_parameters_true, needed by MMI-UNet, TextMoE and the
#             supervised baselines; plain `ddp` only fits Semi-MedRef on GuideDecoder)
# Batch sizes are per process: the global batch is batch_size x NPROC.
set -euo pipefail

NPROC="${NPROC:-$(nvidia-smi --list-gpus 2>/dev/null | wc -l || true)}"
CONFIG="${CONFIG:-configs/semimedref_mmiunet.yaml}"
STRATEGY="${STRATEGY:-ddp_find_unused_parameters_true}"

if [ "${NPROC}" -lt 1 ]; then
    echo "torchrun.sh: no GPU found; set NPROC (and pass --trainer.accelerator cpu for CPU processes)" >&2
    exit 1
fi

exec torchrun --standalone --nnodes 1 --nproc_per_node "${NPROC}" -m textseg fit --config "${CONFIG}" \
    --trainer.num_nodes 1 \
    --trainer.devices "${NPROC}" \
    --trainer.strategy "${STRATEGY}" \
    "$@"
