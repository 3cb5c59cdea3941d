"""stages/: one file per `launch.py --stage`, each of one shape (prepare -> build -> loop -> save): pairs, sft, rm,
rl (the ONE RL loop, fed by a rollout source: in-process, or the Ray pipeline from cluster/), eval, temperature,
report (+ reading runs, plots and the variant comparisons), push; export.py and model_card.py write the saved
model directories (weights, tokenizer, training record, card) that sft, rm, rl and eval produce.
Imports cluster/ (lazily, Ray mode only), actors/, learner/, tasks/ and common/."""
