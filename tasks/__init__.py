"""tasks/: one file per task behind one Task interface (tasks/base.py): its data and how it is prepared, prompt pools
and ID/OOD splits, its gold judge, the reward functions it offers and the stages it needs.

`data.source` picks the task, in tasks/registry.py and nowhere else: 'sandbox' (tasks/sandbox.py), 'ifeval'
(tasks/ifeval.py), or a file, directory or hub id of preference pairs or prompts (tasks/preference.py,
tasks/formats.py). Adding a task is adding one file and a line in registry.TASKS.
"""
