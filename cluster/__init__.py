"""cluster/: the only package that imports Ray: the Ray rollout source (connecting, placing and starting the actors,
ray_rollouts.py), the actor wrappers around actors/ classes, the rollout pipeline (dispatch, queue, staleness,
faults), placement, and the `ray up` YAML. Imports actors/, learner/, tasks/ and common/; never stages/."""
