# Sourced by launch/*.sbatch (not run on its own): what every rank of a Slurm job needs before srun starts it.
#   in:  PYTHON, SCRIPT (a name for messages), PER_NODE (ranks per node), GPUS (GPUs per node, 0 for CPU ranks)
#   out: MASTER_ADDR and MASTER_PORT exported, stale rank variables unset, CPUS_PER_RANK and SRUN_GPU_FLAGS set
# Rank facts come from srun's SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID (cnclip_scale.launch_env.detect turns them into
# RANK, WORLD_SIZE and LOCAL_RANK); values left in the submitting shell would override them.
unset RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE TORCHELASTIC_RUN_ID

# Rendezvous on the first node by its NodeAddr: node names need not resolve (cloud and emulated nodes). The batch
# step runs on that node, so a port free here is free where rank 0 listens; a requeued run picks a fresh one.
first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
addr=""
for attempt in 1 2 3 4 5; do  # a busy slurmctld can fail a query: retry before giving up
  addr=$(scontrol show node "$first" -o 2>/dev/null | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2) && [ -n "$addr" ] && break
  sleep 2
done
if [ -z "$addr" ]; then
  getent hosts "$first" >/dev/null || { echo "$SCRIPT: cannot find node $first's address (scontrol show node" \
    "failed and the name does not resolve)" >&2; exit 2; }
  addr=$first
fi
export MASTER_ADDR=$addr
export MASTER_PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')

# Each node's CPUs split among its ranks and given to srun explicitly: srun in Slurm 22.05+ does not inherit
# --cpus-per-task from sbatch, and a GPU rank's loader workers need cores to decode on.
CPUS_PER_RANK=$(( ${SLURM_CPUS_ON_NODE:-$PER_NODE} / PER_NODE ))
(( CPUS_PER_RANK > 0 )) || CPUS_PER_RANK=1
# GPU ranks leave threads to the loader workers (as torchrun does); CPU ranks compute with their cores.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$( (( GPUS > 0 )) && echo 1 || echo "$CPUS_PER_RANK")}
# Every rank sees all of its node's GPUs and takes the one its local rank names, whatever binding the site defaults
# to (a task bound to one GPU would see it as cuda:0 while SLURM_LOCALID says otherwise). With --gpus-per-task=1 the
# binding is the allocation's; cnclip_scale.launch_env.device_index handles that case too.
SRUN_GPU_FLAGS=()
(( GPUS > 0 )) && [[ -z ${SLURM_GPUS_PER_TASK:-} ]] && SRUN_GPU_FLAGS=(--gpu-bind=none)
true
