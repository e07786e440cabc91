"""A label is read as its own token only where a prompt ends before it (infer/labels.py), on a real
`tokenizers` BPE built from an explicit vocabulary in the SentencePiece style (Llama, Mistral): a word
gets '▁' in front, the first text only ('first'), so 'A' alone is '▁A' but 'A' after a special token is 'A'."""

import logging

import pytest

from kaggle_kit.errors import ConfigError
from kaggle_kit.infer.labels import check_endings, label_token_ids


@pytest.fixture(scope="module")
def tok():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "▁": 1, "A": 2, "B": 3, "x": 4, "?": 5, "▁A": 6, "▁B": 7, "▁x": 8}
    bpe = Tokenizer(models.BPE(vocab, [("▁", "A"), ("▁", "B"), ("▁", "x")], unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    bpe.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    return PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", additional_special_tokens=["<|assistant|>"])


def test_an_ending_merged_with_the_label_is_refused_naming_it(tok):
    """'x? ' ends in a lone '▁', and 'x? A' is '▁A': the label's own token after that '▁' is no text's split."""
    with pytest.raises(ConfigError) as err:
        label_token_ids(tok, ["A", "B"], ["x?<|assistant|>", "x? "])
    assert err.value.field == "template" and "'x? '" in str(err.value) and "'A'" in str(err.value)


def test_a_label_another_token_in_context_is_logged_and_kept(tok, caplog):
    """After a special token this tokenizer writes 'A', not its own '▁A' (a Mistral-style reply tokenised
    alone starts '▁A', so the kit keeps scoring the label's own token) and says so once."""
    assert check_endings(tok, ["x?<|assistant|>"], ["A", "B"]) == [
        ("x?<|assistant|>", "A", ["A"], ["▁A"]),
        ("x?<|assistant|>", "B", ["B"], ["▁B"]),
    ]
    with caplog.at_level(logging.WARNING, logger="kaggle_kit"):
        assert label_token_ids(tok, ["A", "B"], ["x?<|assistant|>"] * 3) == [6, 7]
    assert len(caplog.records) == 1 and "'▁A'" in caplog.text
    assert check_endings(tok, [], ["A"]) == []
