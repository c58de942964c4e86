"""Execution layer: running a table's many runs. `runner` (local worker processes),
`executors`, `slurm` and `slurm_job` (one Slurm job per run), `cost` (time estimates) and
`reproduce` (plan, run, report: `tfkd reproduce`). Imports tables, training and below."""
