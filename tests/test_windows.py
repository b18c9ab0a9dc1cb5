import numpy as np
from hypothesis import given, strategies as st

from ner.windows import assign_positions, plan_windows


@given(st.integers(1, 3000), st.integers(2, 300), st.data())
def test_windows_cover_every_position_once_owned(length, size, data):
    stride = data.draw(st.integers(1, size))
    windows = plan_windows(length, size, stride)
    assert windows[0].start == 0 and windows[-1].end == length
    assert all(w.end - w.start <= size for w in windows)
    owner, offset = assign_positions(length, windows)
    starts = np.array([windows[i].start for i in owner])
    np.testing.assert_array_equal(starts + offset, np.arange(length))
    ends = np.array([windows[i].end for i in owner])
    assert (np.arange(length) < ends).all()


def test_owner_is_the_window_with_most_context():
    windows = plan_windows(10, 4, 2)
    owner, _ = assign_positions(10, windows)
    # position 3 sits in windows [0,4) (margin 0) and [2,6) (margin 1): the second wins
    assert owner[3] == 1


def test_one_window_when_it_fits():
    assert len(plan_windows(5, 8, 4)) == 1
