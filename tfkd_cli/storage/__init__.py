"""Storage layer: a run directory's files (`rundir`: names, atomic writes, the lock, provenance),
checkpoints (`checkpoint`, `loading`), the epoch a run's result is read at (`selection`,
`strength`) and the shared frozen-teacher logits (`teacher_cache`). Imports config and below."""
