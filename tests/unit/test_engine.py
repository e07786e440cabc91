from kaggle_kit.budget import Deadline
from kaggle_kit.infer.engine import plan_batches, run_batches


def test_plan_batches_covers_every_row_once_within_budget():
    lengths = [5, 100, 37, 37, 1, 64, 250, 8, 8, 90]
    batches = plan_batches(lengths, batch_tokens=128)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 128
    # longest first, so an out-of-memory shows on the first batch
    assert batches[0] == [6]


def test_run_batches_restores_input_order():
    ids = [[1] * n for n in (3, 9, 1, 5)]
    results, stats = run_batches(ids, lambda batch: [len(ids[i]) * 10 for i in batch], batch_tokens=10, progress=False)
    assert results == [30, 90, 10, 50]
    assert stats.rows_done == 4 and not stats.stopped_by_deadline


def test_run_batches_stops_at_deadline_and_leaves_none():
    now = [0.0]
    deadline = Deadline(10.0, clock=lambda: now[0])

    def step(batch):
        now[0] += 4.0  # each batch costs 4 s of the 10 s budget (9.8 s after the margin)
        return ["done"] * len(batch)

    ids = [[1] * 4 for _ in range(6)]
    results, stats = run_batches(ids, step, batch_tokens=4, deadline=deadline, progress=False)
    assert stats.stopped_by_deadline
    assert results.count("done") == stats.rows_done == 2  # a third batch would end at 12 s > 9.8 s
    assert results.count(None) == 4


def test_shards_partition_the_plan_balanced_by_tokens():
    from kaggle_kit.infer.engine import padded_tokens, shard_batches

    lengths = [300, 20, 20, 20, 20, 20, 20, 20, 20, 20, 20, 20, 20, 20, 20, 20]
    batches = plan_batches(lengths, batch_tokens=100)
    parts = [shard_batches(batches, lengths, i, 2) for i in range(2)]
    assert sorted(map(tuple, parts[0] + parts[1])) == sorted(map(tuple, batches))
    load = [sum(padded_tokens(b, lengths) for b in p) for p in parts]
    assert load == [300, 300]  # one long row balances fifteen short ones: rows 1 vs 15
    assert [len(b) for b in parts[0]] == [1]


def test_oom_splits_batch_and_isolates_the_failing_row():
    """An out-of-memory batch is halved and retried; a row failing alone gets None (its fallback)."""
    ids = [[1] * 4 for _ in range(8)]
    padded_as = []

    def step(batch, pad_as=None):
        padded_as.append(pad_as)
        if len(batch) > 2 or 5 in batch:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [i * 10 for i in batch]

    results, stats = run_batches(ids, step, batch_tokens=32, progress=False)
    assert results == [0, 10, 20, 30, 40, None, 60, 70]
    assert stats.oom_rows == [5] and stats.oom_splits > 0 and stats.rows_done == 7
    # the planned batch runs as itself; its halves are padded as the whole batch was
    assert padded_as[0] is None and padded_as[1:] and all(p == list(range(8)) for p in padded_as[1:])


def test_the_cpu_allocators_refusal_is_out_of_memory():
    """torch's CPU allocator refuses with a RuntimeError that never says "out of memory" (an exabyte
    here, past any address space); the back-off must take it as one, and leave other errors alone."""
    import pytest
    import torch

    from kaggle_kit.infer.engine import is_oom

    with pytest.raises(RuntimeError) as refused:
        torch.empty(2**60, dtype=torch.uint8)
    assert is_oom(refused.value) and is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert not is_oom(RuntimeError("shape mismatch"))


def test_other_errors_are_not_swallowed():
    import pytest

    def step(batch):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_batches([[1, 2]], step, batch_tokens=8, progress=False)


def test_checkpoint_resume_skips_done_batches(tmp_path):
    from kaggle_kit.infer.checkpoint import Checkpoint

    ids = [[1] * n for n in (5, 4, 3, 2, 1)]
    calls = []

    def step(batch):
        calls.append(list(batch))
        return [f"out{i}" for i in batch]

    path = tmp_path / "c.jsonl"
    first, _ = run_batches(ids, step, batch_tokens=5, progress=False, checkpoint=Checkpoint(path, "run1", every=1))
    # simulate a kill that cut the last line short
    text = path.read_text()
    path.write_text(text[:-10])
    calls.clear()
    again, stats = run_batches(ids, step, batch_tokens=5, progress=False, checkpoint=Checkpoint(path, "run1"))
    plan = plan_batches([len(r) for r in ids], 5)
    assert len(plan) >= 3
    # the cut line held the last batch: only it runs again
    assert again == first and stats.rows_resumed == 5 - len(plan[-1]) and calls == [plan[-1]]
    # another run's file is not used
    calls.clear()
    run_batches(ids, step, batch_tokens=5, progress=False, checkpoint=Checkpoint(path, "run2"))
    assert calls == plan  # every batch again


def test_planner_predicts_and_fits_max_length():
    from kaggle_kit.infer.planner import Throughput, fit_max_length, predict_seconds

    tp = Throughput([100, 1000], [0.001, 0.002])
    lengths = [1000] * 10
    # one row a batch at 1000 tokens (batch_tokens 1000): 10 x 1000 x 0.002
    assert predict_seconds(lengths, 1000, tp) == 20.0
    length, need = fit_max_length(lengths, 1000, tp, seconds=10.0, max_length=1000)
    assert need <= 10.0 and length < 1000 and length >= 256
    assert fit_max_length(lengths, 1000, tp, seconds=1e-6, max_length=1000)[0] == 256


def test_plan_cuts_the_sorted_rows_where_padding_plus_batches_costs_least():
    """Greedy filling took the longest rows that fit: 100 real Science Exam rows were padded by 10% at 2k
    tokens. The plan now chooses its cuts, so it pads no more than greedy filling and usually far less."""
    import random

    from kaggle_kit.infer.engine import padded_tokens

    def greedy(lengths, budget):
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
        batches = [[order[0]]]
        for i in order[1:]:
            if lengths[batches[-1][0]] * (len(batches[-1]) + 1) > budget:
                batches.append([])
            batches[-1].append(i)
        return batches

    def cost(batches, lengths, budget, steps):
        return sum(padded_tokens(b, lengths) for b in batches) + len(batches) * (budget // 32) * steps

    rng = random.Random(0)
    for k in range(40):
        steps = 1 if k % 2 else 33  # scoring; generating 32 tokens (each batch then costs 33 forwards)
        lengths = [rng.randint(100, 700) for _ in range(rng.randint(1, 120))]
        plan, simple = plan_batches(lengths, 2048, steps=steps), greedy(lengths, 2048)
        assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
        assert all(len(b) == 1 or padded_tokens(b, lengths) <= 2048 for b in plan)
        assert cost(plan, lengths, 2048, steps) <= cost(simple, lengths, 2048, steps)
    # 610, 600 | 330, 320, 310, 300 pads to 1220 + 1320 tokens; greedy's 610, 600, 330 | 320, 310, 300 to 1830 + 960
    lengths = [610, 600, 330, 320, 310, 300]
    assert plan_batches(lengths, 2048) == [[0, 1], [2, 3, 4, 5]]
    assert greedy(lengths, 2048) == [[0, 1, 2], [3, 4, 5]]


def test_a_run_of_a_few_batches_is_not_planned():
    """Timing three batches (and a warm-up) of a run of six or fewer would cost half of it or more."""
    from kaggle_kit.infer.planner import worth_planning

    assert not worth_planning([500] * 6, 500)  # six batches of one row
    assert worth_planning([500] * 7, 500)
    assert not worth_planning([100] * 40, 4000)  # one batch
