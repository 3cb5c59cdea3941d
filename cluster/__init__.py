"""cluster/: the only package that imports Ray: the Ray RL runner (the learner in the driver), the actor
wrappers around actors/ classes, the rollout pipeline (dispatch, queue, staleness, faults), placement, and the
`ray up` YAML. Builds on stages/rl.py's kit, so both runners build, step and record alike."""
