"""empty_batch: the huge-page advice really runs on the right range, and the tensor is ordinary either way."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from detr_hf import batch_memory
from detr_hf.batch_memory import empty_batch

HUGE = 2 << 20


class RecordingLibc:
    """Stands in for libc: records every madvise call (and can fail like a kernel without THP)."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self.fail = fail

    def madvise(self, start, length, advice) -> int:
        self.calls.append((start.value, length.value, advice))
        if self.fail:
            raise OSError("madvise: EINVAL")
        return 0


@pytest.fixture
def libc(monkeypatch):
    fake = RecordingLibc()
    monkeypatch.setattr(batch_memory, "_libc", lambda: fake)
    monkeypatch.setattr(sys, "platform", "linux")
    return fake


def test_a_large_batch_is_advised_on_its_whole_aligned_interior(libc):
    batch = empty_batch((4, 3, 1024, 1024), torch.float32, torch.device("cpu"))  # 48 MiB
    assert len(libc.calls) == 1
    start, length, advice = libc.calls[0]
    begin, end = batch.data_ptr(), batch.data_ptr() + batch.numel() * batch.element_size()
    assert advice == 14  # MADV_HUGEPAGE
    assert start % HUGE == 0 and length % HUGE == 0 and length > 0
    assert begin <= start and start + length <= end  # never outside the tensor's own memory
    assert start - begin < HUGE and end - (start + length) < HUGE  # and all of it that is 2 MiB aligned


def test_small_and_non_linux_batches_are_not_advised(libc, monkeypatch):
    empty_batch((2, 3, 8, 8), torch.uint8, torch.device("cpu"))
    empty_batch((1, 3, 1000, 1000), torch.bool, torch.device("cpu"))  # 3 MB < 4 huge pages
    assert libc.calls == []
    monkeypatch.setattr(sys, "platform", "darwin")
    empty_batch((4, 3, 1024, 1024), torch.float32, torch.device("cpu"))
    assert libc.calls == []


def test_a_failing_advice_leaves_an_ordinary_writable_tensor(monkeypatch):
    failing = RecordingLibc(fail=True)
    monkeypatch.setattr(batch_memory, "_libc", lambda: failing)
    monkeypatch.setattr(sys, "platform", "linux")
    batch = empty_batch((4, 3, 1024, 1024), torch.float32, torch.device("cpu"))
    assert len(failing.calls) == 1
    batch.fill_(1.5)
    batch[2, 1, 5, 7] = -3.0
    assert batch.is_contiguous() and float(batch.double().sum()) == 1.5 * batch.numel() - 4.5


def _vm_flags_at(address: int) -> list[str]:
    """The VmFlags of the mapping of this process that holds `address` (from /proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            low, high = (int(v, 16) for v in head.split("-"))
            inside = low <= address < high
        elif inside and line.startswith("VmFlags:"):
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(
    not Path("/sys/kernel/mm/transparent_hugepage/enabled").exists(),
    reason="the kernel has no transparent huge pages (Linux only)",
)
def test_the_kernel_records_the_advice():
    """With the real libc the tensor's mapping carries the kernel's "hg" (MADV_HUGEPAGE) flag."""
    batch = empty_batch((4, 3, 1024, 1024), torch.float32, torch.device("cpu"))
    aligned = -(-batch.data_ptr() // HUGE) * HUGE
    assert "hg" in _vm_flags_at(aligned)
    plain = torch.empty((4, 3, 1024, 1024), dtype=torch.float32)
    # Control: an ordinary allocation of the same size is not advised, so the flag above came from empty_batch.
    assert "hg" not in _vm_flags_at(-(-plain.data_ptr() // HUGE) * HUGE)
