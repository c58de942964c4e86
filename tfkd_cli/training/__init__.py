"""Training layer: one run, start to finish. `engine` (train a recipe), `build` (model, data,
loss, optimiser), `loop` (the epoch loop), `state`, `runtime` (device, DDP, threads),
`channels_last`, `evaluation`, `tracking` (TensorBoard, W&B) and `faults` (test-only fault
injection). Imports storage and below."""
