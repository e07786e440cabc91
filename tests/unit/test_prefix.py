from kaggle_kit.infer.fast.prefix import MIN_PREFIX, SharedPrefix, common_prefix


def test_common_prefix_leaves_every_row_a_token_of_its_own():
    assert common_prefix([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert common_prefix([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shorter row keeps its last token
    assert common_prefix([[7, 8], [9, 8]]) == 0
    assert common_prefix([[1, 2, 3]]) == 0  # one row: nothing to share
    assert common_prefix([]) == 0


def test_short_prefixes_are_not_cached():
    rows = [[1] * (MIN_PREFIX - 1) + [2, 3], [1] * (MIN_PREFIX - 1) + [4]]
    assert SharedPrefix(None, rows).length == 0
    rows = [[1] * MIN_PREFIX + [2, 3], [1] * MIN_PREFIX + [4]]
    shared = SharedPrefix(None, rows)
    assert shared.length == MIN_PREFIX and shared.ids == [1] * MIN_PREFIX
    assert SharedPrefix(None, []).length == 0
