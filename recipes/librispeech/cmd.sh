# How parallel jobs run. Local processes here; on a Slurm cluster, switch the one line below:
#   export asrkd_cmd="srun --ntasks=1 --cpus-per-task=4 --mem=8G"
export asrkd_cmd=""
