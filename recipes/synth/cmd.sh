# How parallel jobs run. Local processes here; on a Slurm cluster, switch the one line below:
#   export asrkd_cmd="srun --ntasks=1 --cpus-per-task=4 --mem=8G"
export asrkd_cmd=""
# How independent models (the ensemble's members) run: "local" processes here; on a Slurm
# cluster one array task per member through submitit (finished members are skipped on a rerun):
#   export ensemble_launcher="slurm:partition=gpu,gpus_per_node=1,cpus_per_task=8,mem_gb=32,timeout_min=1440"
export ensemble_launcher=${ensemble_launcher:-local}   # the environment may choose too
