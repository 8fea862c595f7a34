from service.intake.batcher import Batcher


def test_quiet_window_closes_a_batch() -> None:
    b = Batcher(window=0.5, max_wait=10, max_files=100)
    assert not b.ready(0.0)
    b.add([1], 0.0)
    b.add([2], 0.4)
    assert not b.ready(0.8)  # 0.4 s since the last file
    assert b.ready(0.9)
    assert b.take() == [1, 2]
    assert len(b) == 0 and not b.ready(100.0)


def test_steady_trickle_is_cut_by_max_wait() -> None:
    b = Batcher(window=0.5, max_wait=2.0, max_files=100)
    for i, t in enumerate([0.0, 0.3, 0.6, 0.9, 1.2, 1.5, 1.8]):
        b.add([i], t)
        assert not b.ready(t + 0.1)  # never quiet for 0.5 s, not yet 2 s old
    b.add([99], 2.0)
    assert b.ready(2.0)


def test_max_files_splits_in_arrival_order_and_keeps_the_rest() -> None:
    b = Batcher(window=5, max_wait=50, max_files=3)
    b.add([5, 3, 9, 1], 0.0)
    assert b.ready(0.0)
    assert b.take() == [5, 3, 9]
    assert len(b) == 1
    assert b.ready(6.0)
    assert b.take() == [1]
    assert b.take() == []


def test_an_id_is_held_once() -> None:
    b = Batcher(window=0.1, max_wait=1, max_files=10)
    b.add([1, 2], 0.0)
    b.add([2, 1, 3], 0.05)
    assert b.take() == [1, 2, 3]
