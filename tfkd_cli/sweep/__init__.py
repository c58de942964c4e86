"""Sweep layer: `tfkd sweep`, a grid of recipe values chosen on validation top-1. `run` (grid,
plan, runs), `report` (sweep.{md,csv,json,png}). Imports execution and below."""
