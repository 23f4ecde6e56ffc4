"""Model preparation: one module per DVC stage (demo data, prepare, train, export, evaluate, publish)."""
