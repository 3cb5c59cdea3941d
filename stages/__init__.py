"""stages/: one file per `launch.py --stage`, each of one shape (prepare -> build -> loop -> save): sft, rm, rl
(the local loop and the kit both RL runners share: build, step, record, finish), eval, report (+ plots and the
variant comparisons). Imports actors/, learner/ and common/; never Ray."""
