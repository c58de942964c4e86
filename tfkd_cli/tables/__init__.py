"""Tables layer: a paper table from spec to report. `spec` (table and scale files), `plan` (the
runs of a table), `controls`, `results` (table.json's layout), `verdicts`, `report`, `render`,
`compare`, `records` (committed run records), `curves` and `figures` (every PNG). Imports
storage and below; runs nothing."""
