"""CLI layer: the `tfkd` command. `main` (group, training commands, evaluate), `tables`
(reproduce, sweep, compare, plot), `options` (shared click options). Imports every layer."""
