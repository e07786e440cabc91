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
    results, stats = run_batches(ids, lambda batch: [len(ids[i]) * 10 for i in batch], batch_tokens=10,
                                 progress=False)
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
