"""empty_batch: a normal, writable tensor whatever the huge-page advice does."""

import torch

from detr_hf.batch_memory import empty_batch


def test_large_batch_is_an_ordinary_writable_tensor():
    batch = empty_batch((4, 3, 1024, 1024), torch.float32, torch.device("cpu"))  # 48 MiB: advised
    assert batch.shape == (4, 3, 1024, 1024) and batch.dtype == torch.float32 and batch.is_contiguous()
    batch.fill_(1.5)
    batch[2, 1, 5, 7] = -3.0
    assert float(batch.double().sum()) == 1.5 * batch.numel() - 4.5


def test_small_batch_takes_the_plain_path():
    batch = empty_batch((2, 3, 8, 8), torch.uint8, torch.device("cpu"))
    batch.zero_()
    assert batch.shape == (2, 3, 8, 8) and batch.dtype == torch.uint8 and int(batch.sum()) == 0
