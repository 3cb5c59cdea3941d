"""actors/scorer.py: the reward model's score is read at the last real token whatever the padding, and a truncated
answer is scored as unfinished (no end-of-turn tokens appended) and pays rl.missing_eos_penalty."""

import torch

from actors.scorer import Scorer
from common.config_data import DataConfig
from helpers import CPU, make_generator, prompt_pool


def test_scorer_reads_score_at_last_real_token(reward_model, tokenizer):
    messages, _ = prompt_pool(tokenizer, 4)
    scorer = Scorer(reward_model, tokenizer, messages, DataConfig(), CPU, batch_size=4)
    texts = ["red", "red, blue, green, yellow, purple, orange, black", "cat", "a b c d e f g h i j k"]
    together = scorer.score_texts([0, 1, 2, 3], texts)
    alone = torch.cat([scorer.score_texts([i], [t]) for i, t in enumerate(texts)])
    assert torch.allclose(together, alone, atol=1e-5), "padding changed a score"


def test_scorer_scores_truncated_answers_as_unfinished_and_penalises_them(policy, tokenizer, reward_model):
    messages, _ = prompt_pool(tokenizer, 8)
    gen = make_generator(policy, tokenizer, n=8, max_new_tokens=3)  # a random tiny policy: mostly cut answers
    batch = gen.generate(list(range(8)), seed=0)
    finished = batch.finished(tokenizer.eos_token_id)
    assert not finished.all()
    scorer = Scorer(reward_model, tokenizer, messages, DataConfig(max_length=96, max_prompt_tokens=64), CPU,
                    missing_eos_penalty=0.5)
    idx = batch.prompt_index.tolist()
    as_cut = scorer.head_logits(idx, batch.response_texts, finished.tolist())[:, 0]
    as_done = scorer.head_logits(idx, batch.response_texts)[:, 0]
    assert not torch.allclose(as_cut[~finished], as_done[~finished]), "end-of-turn tokens change what the RM reads"
    assert torch.allclose(as_cut[finished], as_done[finished])
    scored = scorer.score(batch)
    assert torch.allclose(scored.rewards, as_cut - 0.5 * (~finished).float(), atol=1e-6)
