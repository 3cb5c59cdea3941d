"""learner/: the math and the Learner only: REINFORCE losses and baselines (pure tensor functions), the Learner
(one update per batch), reward-model losses and metrics (scalar and distributional), the precision policy every
training loop uses (precision.py) and the supervised training loop. Imports neither Ray nor vLLM; depends only on
common/."""
