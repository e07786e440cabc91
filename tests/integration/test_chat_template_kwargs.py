"""chat_template_kwargs on the real SmolLM2 with a thinking switch in its chat template (Qwen3's
`enable_thinking` convention: the template thinks unless it is false): bound as transformers would pass
them, carried from training to prediction, and a name the template does not read stopped early."""

import logging
import os
import subprocess
import sys

import pandas as pd
import pytest

from kaggle_kit.config import PredictConfig, TrainConfig, load_yaml_config
from kaggle_kit.errors import ConfigError
from kaggle_kit.hardware import detect
from kaggle_kit.jobs import predict, train
from kaggle_kit.models import load_model, load_tokenizer, resolve_model
from kaggle_kit.templates import apply_chat_format, render

from ..conftest import DATA, write_subset

# ChatML turns, and after the generation prompt the empty thinking block a no-thinking turn starts with.
# Qwen3's block ends in two newlines, one token in its vocabulary before a letter too; SmolLM2's tokenizer
# writes them before a label as two tokens (the kit refuses such an ending: infer/labels.py), so one here.
THINKING_TEMPLATE = (
    "{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n' }}{%- endif %}"
    "{%- endif %}"
)
NO_THINKING = "<think>\n\n</think>\n"


def thinking_tokenizer():
    tok = load_tokenizer(resolve_model("demo"))
    tok.chat_template = THINKING_TEMPLATE
    return tok


@pytest.fixture
def thinking_model(tmp_path):
    """The demo model's weights (linked) with the thinking template as its tokenizer's own."""
    src, folder = resolve_model("demo"), tmp_path / "thinking-smollm2"
    folder.mkdir()
    for name in ("model.safetensors", "config.json", "generation_config.json"):
        os.symlink(src / name, folder / name)
    thinking_tokenizer().save_pretrained(folder)
    return folder


@pytest.mark.parametrize("thinking", [False, True])
def test_bound_kwargs_render_what_transformers_renders_when_passed_them(thinking):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Which gas do plants take in?"}]
    passed = thinking_tokenizer().apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=thinking
    )
    tok = apply_chat_format(thinking_tokenizer(), "auto", {"enable_thinking": thinking})
    assert render(tok, messages[1]["content"], messages[0]["content"]) == passed
    assert passed.endswith(NO_THINKING) is not thinking
    # bound again (a second load of the same tokenizer): the new value, not both
    apply_chat_format(tok, "auto", {"enable_thinking": not thinking})
    assert render(tok, "Q?").endswith(NO_THINKING) is thinking


def test_a_name_the_template_does_not_read_is_an_error_naming_it_and_the_ones_it_reads(caplog):
    with pytest.raises(ConfigError, match=r"\['enable_thinking'\]") as err:
        apply_chat_format(thinking_tokenizer(), "auto", {"enable_thinkng": False})
    assert err.value.field == "chat_template_kwargs.enable_thinkng"
    smollm2 = load_tokenizer(resolve_model("demo"))  # its own template reads nothing but the messages
    with pytest.raises(ConfigError, match="reads none"):
        apply_chat_format(smollm2, "auto", {"enable_thinking": False})
    with pytest.raises(ConfigError, match="reads none"):  # nor do the kit's formats
        apply_chat_format(thinking_tokenizer(), "plain", {"enable_thinking": False})
    with caplog.at_level(logging.INFO, logger="kaggle_kit"):
        apply_chat_format(thinking_tokenizer(), "auto")  # unset: the template's default, and a hint
    assert "chat_template_kwargs: {enable_thinking: false}" in caplog.text


@pytest.mark.parametrize(
    "value,field",
    [
        ("[enable_thinking]", "chat_template_kwargs"),
        ("{enable_thinking: [false]}", "chat_template_kwargs.enable_thinking"),
        ("{'not a name': 1}", "chat_template_kwargs"),
    ],
)
def test_config_values_that_are_not_template_variables_name_the_field(value, field):
    with pytest.raises(ConfigError) as err:
        load_yaml_config(PredictConfig, None, [f"chat_template_kwargs={value}"], competition="science_exam", data="x")
    assert err.value.field == field
    cfg = load_yaml_config(
        PredictConfig, None, ["chat_template_kwargs={enable_thinking: false}"], competition="x", data="x"
    )
    assert cfg.chat_template_kwargs == {"enable_thinking": False}


def test_training_binds_them_and_its_adapter_predicts_with_them(thinking_model, tmp_path):
    """train with enable_thinking false: its prompts end in the empty thinking block, the adapter's
    kit_config.json keeps the setting, and load_model / predict on that adapter render the same prompts
    unless told otherwise; the submission equals one made with the setting passed explicitly."""
    from kaggle_kit.competitions import get

    cfg = TrainConfig(
        "science_exam",
        str(DATA / "science_exam" / "train.csv"),
        model=str(thinking_model),
        out=str(tmp_path / "run"),
        quant="none",
        loss="answer",
        max_length=400,
        batch_size=2,
        grad_accum=1,
        max_steps=1,
        eval_every=1,
        eval_metric=False,
        valid_fraction=0.1,
        chat_template_kwargs={"enable_thinking": False},
        progress=False,
    )
    res = train(cfg)
    science = get("science_exam")
    question = science.read(DATA / "science_exam" / "test.csv").head(1)
    _, tok = load_model(None, detect("float32"), adapter=res.best)
    assert science.examples(question, tok)[0].endswith(NO_THINKING)
    _, tok = load_model(None, detect("float32"), adapter=res.best, chat_template_kwargs={"enable_thinking": True})
    assert not science.examples(question, tok)[0].endswith(NO_THINKING)

    rows = write_subset("science_exam", tmp_path, 3)
    subs = []
    for name, kwargs in (("inherited", None), ("explicit", {"enable_thinking": False}), ("thinking", {})):
        out = tmp_path / f"{name}.csv"
        base = dict(model=None, adapter=str(res.best), out=str(out), max_length=400, progress=False)
        predict(PredictConfig("science_exam", str(rows), chat_template_kwargs=kwargs, **base))
        subs.append(pd.read_csv(out))
    pd.testing.assert_frame_equal(subs[0], subs[1])
    assert len(subs[2]) == 3  # {} = the template's own default (thinking): other prompts, a valid file


def test_a_misspelt_name_stops_predict_before_the_model_loads(thinking_model, tmp_path):
    """From the command line: exit 2 naming the field. The folder's weights are removed, so loading them
    would fail: the error comes first, and the fallback submission keeps every id."""
    os.unlink(thinking_model / "model.safetensors")
    data, out = write_subset("science_exam", tmp_path, 4), tmp_path / "submission.csv"
    r = subprocess.run(
        [
            *(sys.executable, "-m", "kaggle_kit", "predict", "science_exam", "--data", str(data)),
            *("--model", str(thinking_model), "--out", str(out), "--no-progress"),
            *("--chat-template-kwargs", "{enable_thinkng: false}"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2, r.stderr
    assert "chat_template_kwargs.enable_thinkng" in r.stderr and "enable_thinking" in r.stderr
    assert len(pd.read_csv(out)) == 4
