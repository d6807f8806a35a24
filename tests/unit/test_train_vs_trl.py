"""The train-vs-TRL benchmark counts tokens and time the same way for every arm (no trl needed)."""

import torch

from benchmarks.train_vs_trl import _window, real_tokens
from pipeline.train.data import Example, collate


def test_real_tokens_counts_the_mask_not_the_padding():
    batch = collate([Example([1, 2, 3], [-100, 2, 3]), Example([4] * 7, [-100] * 6 + [4])], pad_id=0)
    assert batch["input_ids"].numel() == 14
    assert real_tokens(batch) == 10


def test_real_tokens_of_a_padding_free_batch_is_its_flattened_length():
    batch = {"input_ids": torch.arange(10)[None], "position_ids": torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4, 5, 6]])}
    assert real_tokens(batch) == 10


def test_window_times_only_the_steps_after_warmup():
    ends = [10.0, 12.0, 15.0, 19.0]  # step i finished at ends[i]
    w = _window(ends, tokens=[100, 100, 300, 500], positions=[100, 100, 400, 500], warmup=2)
    assert w["timed_steps"] == 2
    assert w["real_tokens"] == 800
    assert w["seconds"] == 7.0  # from the end of warm-up step 2 to the end of step 4
    assert w["tokens_per_s"] == round(800 / 7, 2)
    assert w["padding_share"] == round(1 - 800 / 900, 4)
    assert w["step_s"] == [3.0, 4.0]
