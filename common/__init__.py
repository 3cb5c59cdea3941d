"""common/: pure helpers every room may use: config, data and splits, the offline sandbox, model loading,
reward-head metadata, the wire type (RolloutBatch and its builder), sampling (the reproducibility contract),
runtime (device, seeds, autocast), metrics logging, checkpoints, statistics. Imports no other room."""
