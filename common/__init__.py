"""common/: small helpers every room may use: config (+ its schema machinery), preference data types and their
encoding, the RolloutBatch wire type, run paths, model loading, reward-head metadata, sampling (the
reproducibility contract), per-stage setup, metrics logging, checkpoints, statistics, numerics and errors. No task
logic (tasks/) and no training loop. Imports no other room."""
