"""actors/: the roles as plain classes, no Ray: Generator (hf) and build_generator, VLLMGenerator (the only module
that imports vLLM), Scorer and build_scorer (the one reward path), the rollout sources' interface with local
mode's in-process source (rollouts.py), and held-out pools answered and judged (heldout.py: eval, the RL probe,
the temperature stage). Imports learner/, tasks/ and common/."""
