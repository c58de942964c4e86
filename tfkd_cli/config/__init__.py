"""Config layer: a run's recipe (`recipe`: schema, layers, resolution), its checks (`checks`)
and its identity and hashes (`identity`). Imports only the library and errors."""
