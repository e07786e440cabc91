"""The catalogue of malformed and odd inputs. Each case is one file and what the kit must do with it.

`kind`: "test" (the competition's test.csv, read as predict reads it), "train" (labelled file, read as
train/score read it) or "submission" (checked as `validate` checks it, against the sample test ids).
`expect`: ("error", row, column, words) -> InputError naming the file, that 1-based row (None: no row)
and column (None: no column), with `words` in the message; ("ok", check) -> read fine and check(df)
holds; ("invalid", words) -> validate lists a problem containing words; ("valid",) -> no problems.
docs/reliability.md lists every case by its name (a test keeps them in step).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

SCI_HEAD = "id,prompt,A,B,C,D,E"
SCI_ROW = '0,"Which planet is largest?",Mars,Jupiter,Venus,Earth,Mercury'
SCI_ROW2 = '1,"What is H2O?",Salt,Water,Sand,Air,Gold'
LM_HEAD = "id,prompt,response_a,response_b"


def lm_row(i, prompt='["Hi"]', a='["Hello!"]', b='["Hey."]'):
    q = lambda s: '"' + s.replace('"', '""') + '"'  # noqa: E731 - CSV quoting of a JSON cell
    return f"{i},{q(prompt)},{q(a)},{q(b)}"


LM_TRAIN_HEAD = "id,model_a,model_b,prompt,response_a,response_b,winner_model_a,winner_model_b,winner_tie"
PR_HEAD = "id,original_text,rewritten_text"


@dataclass(frozen=True)
class Case:
    name: str
    competition: str
    kind: str  # test | train | submission
    content: bytes
    expect: tuple
    what: str  # one line for docs/reliability.md


def lines(*rows: str, eol: str = "\n") -> bytes:
    return (eol.join(rows) + eol).encode()


def _has(col, value):
    return lambda df: df[col].tolist()[0] == value


CASES = [
    # --- Science Exam test.csv
    Case(
        "sci-missing-column",
        "science_exam",
        "test",
        lines("id,prompt,A,B,C,D", "0,q,a,b,c,d"),
        ("error", None, "E", "missing column"),
        "a column is missing",
    ),
    Case(
        "sci-renamed-column",
        "science_exam",
        "test",
        lines("id,question,A,B,C,D,E", "0,q,a,b,c,d,e"),
        ("error", None, "prompt", "missing column"),
        "a column is renamed",
    ),
    Case(
        "sci-extra-column",
        "science_exam",
        "test",
        lines(SCI_HEAD + ",source", SCI_ROW + ",wiki"),
        ("ok", lambda df: len(df) == 1),
        "an extra column is ignored",
    ),
    Case(
        "sci-reordered-columns",
        "science_exam",
        "test",
        lines("E,D,C,B,A,prompt,id", "e,d,c,b,a,q,7"),
        ("ok", _has("id", "7")),
        "columns in another order",
    ),
    Case(
        "sci-header-spaces",
        "science_exam",
        "test",
        lines("id, prompt ,A,B,C,D,E", "0,q,a,b,c,d,e"),
        ("ok", _has("prompt", "q")),
        "spaces around header names",
    ),
    Case(
        "sci-empty-prompt",
        "science_exam",
        "test",
        lines(SCI_HEAD, SCI_ROW, "1,,a,b,c,d,e"),
        ("error", 2, "prompt", "empty"),
        "an empty question",
    ),
    Case(
        "sci-blank-prompt",
        "science_exam",
        "test",
        lines(SCI_HEAD, '0,"   ",a,b,c,d,e'),
        ("error", 1, "prompt", "empty"),
        "a whitespace-only question",
    ),
    Case(
        "sci-empty-id",
        "science_exam",
        "test",
        lines(SCI_HEAD, SCI_ROW, ",q,a,b,c,d,e"),
        ("error", 2, "id", "empty"),
        "an empty id",
    ),
    Case(
        "sci-duplicate-ids",
        "science_exam",
        "test",
        lines(SCI_HEAD, SCI_ROW, SCI_ROW2, SCI_ROW.replace("0,", "1,", 1)),
        ("error", None, "id", "duplicate ids"),
        "duplicate ids",
    ),
    Case(
        "sci-empty-option",
        "science_exam",
        "test",
        lines(SCI_HEAD, "0,q,a,,c,d,e"),
        ("ok", _has("B", "")),
        "an empty answer option (real: Radek's 6k set has them)",
    ),
    Case(
        "sci-literal-na",
        "science_exam",
        "test",
        lines(SCI_HEAD, "0,q,NA,None,null,nan,N/A"),
        ("ok", _has("A", "NA")),
        "options that pandas would read as NaN stay text",
    ),
    Case(
        "sci-non-utf8",
        "science_exam",
        "test",
        lines(SCI_HEAD) + "0,caf\xe9,a,b,c,d,e\n".encode("latin-1"),
        ("error", None, None, "not UTF-8"),
        "latin-1 bytes",
    ),
    Case(
        "sci-bom",
        "science_exam",
        "test",
        b"\xef\xbb\xbf" + lines(SCI_HEAD, SCI_ROW),
        ("ok", _has("id", "0")),
        "a UTF-8 byte-order mark",
    ),
    Case(
        "sci-crlf",
        "science_exam",
        "test",
        lines(SCI_HEAD, SCI_ROW, eol="\r\n"),
        ("ok", _has("E", "Mercury")),
        "Windows line ends",
    ),
    Case(
        "sci-quoted-newline",
        "science_exam",
        "test",
        lines(SCI_HEAD, '0,"line one\nline two",a,b,c,d,e'),
        ("ok", _has("prompt", "line one\nline two")),
        "a newline inside a quoted cell",
    ),
    Case(
        "sci-1mb-cell",
        "science_exam",
        "test",
        lines(SCI_HEAD, "0," + "x" * 1_000_000 + ",a,b,c,d,e"),
        ("ok", lambda df: len(df["prompt"][0]) == 1_000_000),
        "a 1 MB cell (left-truncated to max_length later)",
    ),
    Case("sci-empty-file", "science_exam", "test", b"", ("error", None, None, "file is empty"), "an empty file"),
    Case(
        "sci-header-only",
        "science_exam",
        "test",
        lines(SCI_HEAD),
        ("error", None, None, "no data rows"),
        "a header and no rows",
    ),
    Case(
        "sci-ragged-row",
        "science_exam",
        "test",
        lines(SCI_HEAD, SCI_ROW, "1,q,a,b,c,d,e,f"),
        ("error", None, None, "malformed CSV"),
        "a row with more fields than the header",
    ),
    Case(
        "sci-unclosed-quote",
        "science_exam",
        "test",
        lines(SCI_HEAD, '0,"never closed,a,b,c,d,e'),
        ("error", None, None, "malformed CSV"),
        "an unclosed quote",
    ),
    Case(
        "sci-many-rows",
        "science_exam",
        "test",
        lines(SCI_HEAD, *(f"{i},q{i},a,b,c,d,e" for i in range(100_000))),
        ("ok", lambda df: len(df) == 100_000),
        "100,000 rows (read and checked in about a second)",
    ),
    # --- Science Exam train.csv (labelled)
    Case(
        "sci-answer-outside-a-e",
        "science_exam",
        "train",
        lines(SCI_HEAD + ",answer", SCI_ROW + ",F"),
        ("error", 1, "answer", "one of the letters"),
        "an answer letter outside A-E",
    ),
    Case(
        "sci-answer-lowercase",
        "science_exam",
        "train",
        lines(SCI_HEAD + ",answer", SCI_ROW + ",b"),
        ("error", 1, "answer", "one of the letters"),
        "a lowercase answer letter",
    ),
    # --- LMSYS test.csv
    Case(
        "lm-not-json",
        "lmsys",
        "test",
        lines(LM_HEAD, lm_row(0), lm_row(1, prompt="Hi there")),
        ("error", 2, "prompt", "JSON list"),
        "a prompt cell that is not JSON",
    ),
    Case(
        "lm-json-dict",
        "lmsys",
        "test",
        lines(LM_HEAD, lm_row(0, a='{"text": "Hello"}')),
        ("error", 1, "response_a", "JSON list"),
        "a JSON object instead of a list",
    ),
    Case(
        "lm-null-item",
        "lmsys",
        "test",
        lines(LM_HEAD, lm_row(0, b='["Hey.", null]', prompt='["Hi", "More"]')),
        ("ok", lambda df: df["response_b"][0] == ["Hey.", None]),
        "a null turn (the arena logs empty answers)",
    ),
    Case(
        "lm-int-item",
        "lmsys",
        "test",
        lines(LM_HEAD, lm_row(0, a='["Hello", 42]')),
        ("error", 1, "response_a", "strings or null"),
        "a non-string item in a JSON list",
    ),
    Case(
        "lm-empty-list",
        "lmsys",
        "test",
        lines(LM_HEAD, lm_row(0, prompt="[]")),
        ("error", 1, "prompt", "non-empty JSON list"),
        "an empty JSON list",
    ),
    Case(
        "lm-unicode",
        "lmsys",
        "test",
        lines(LM_HEAD, lm_row(0, prompt=json.dumps(["你好 🙂 \u202e"]))),
        ("ok", lambda df: df["prompt"][0] == ["你好 🙂 \u202e"]),
        "CJK, emoji and bidi characters",
    ),
    # --- LMSYS train.csv (labelled)
    Case(
        "lm-winner-not-binary",
        "lmsys",
        "train",
        lines(LM_TRAIN_HEAD, "0,m1,m2," + lm_row(0).split(",", 1)[1] + ",2,0,0"),
        ("error", 1, "winner_model_a", "0 or 1"),
        "a winner column that is not 0/1",
    ),
    Case(
        "lm-two-winners",
        "lmsys",
        "train",
        lines(LM_TRAIN_HEAD, "0,m1,m2," + lm_row(0).split(",", 1)[1] + ",1,1,0"),
        ("error", 1, "winner_model_a", "exactly one winner"),
        "two winner columns set",
    ),
    Case(
        "lm-no-winner",
        "lmsys",
        "train",
        lines(LM_TRAIN_HEAD, "0,m1,m2," + lm_row(0).split(",", 1)[1] + ",0,0,0"),
        ("error", 1, "winner_model_a", "exactly one winner"),
        "no winner column set",
    ),
    # --- Prompt Recovery test.csv
    Case(
        "pr-missing-rewritten",
        "prompt_recovery",
        "test",
        lines("id,original_text", "0,hello"),
        ("error", None, "rewritten_text", "missing column"),
        "the rewritten text column is missing",
    ),
    Case(
        "pr-empty-original",
        "prompt_recovery",
        "test",
        lines(PR_HEAD, "0,a,b", '1,"",b'),
        ("error", 2, "original_text", "empty"),
        "an empty original text",
    ),
    Case(
        "pr-crlf-quoted",
        "prompt_recovery",
        "test",
        lines(PR_HEAD, '0,"Dear Sir,\r\nthanks","Yo,\r\nthx"', eol="\r\n"),
        ("ok", lambda df: df["original_text"][0].startswith("Dear Sir,")),
        "CRLF inside and between quoted cells",
    ),
    # --- submissions checked by validate
    Case(
        "sub-sci-letter-f",
        "science_exam",
        "submission",
        lines("id,prediction", "0,A B F", "1,B"),
        ("invalid", "not in A-E"),
        "a predicted letter outside A-E",
    ),
    Case(
        "sub-sci-empty-prediction",
        "science_exam",
        "submission",
        lines("id,prediction", "0,", "1,B"),
        ("invalid", "empty prediction"),
        "an empty prediction",
    ),
    Case(
        "sub-sci-missing-id",
        "science_exam",
        "submission",
        lines("id,prediction", "0,A B C"),
        ("invalid", "test ids missing"),
        "an id of the test file is missing",
    ),
    Case(
        "sub-sci-extra-id",
        "science_exam",
        "submission",
        lines("id,prediction", "0,A", "1,B", "99,C"),
        ("invalid", "not in the test file"),
        "an id that is not in the test file",
    ),
    Case(
        "sub-sci-duplicate-id",
        "science_exam",
        "submission",
        lines("id,prediction", "0,A", "1,B", "1,C"),
        ("invalid", "duplicate ids"),
        "an id twice",
    ),
    Case(
        "sub-sci-wrong-columns",
        "science_exam",
        "submission",
        lines("id,answer", "0,A", "1,B"),
        ("invalid", "expected ['id', 'prediction']"),
        "wrong column names",
    ),
    Case(
        "sub-lm-sum-not-one",
        "lmsys",
        "submission",
        lines("id,winner_model_a,winner_model_b,winner_tie", "0,0.5,0.5,0.5"),
        ("invalid", "sum to 1.5000"),
        "probabilities that do not sum to 1",
    ),
    Case(
        "sub-lm-negative",
        "lmsys",
        "submission",
        lines("id,winner_model_a,winner_model_b,winner_tie", "0,-0.1,0.6,0.5"),
        ("invalid", "not in [0, 1]"),
        "a negative probability",
    ),
    Case(
        "sub-lm-nan",
        "lmsys",
        "submission",
        lines("id,winner_model_a,winner_model_b,winner_tie", "0,nan,0.5,0.5"),
        ("invalid", "not in [0, 1]"),
        "a NaN probability",
    ),
    Case(
        "sub-lm-text",
        "lmsys",
        "submission",
        lines("id,winner_model_a,winner_model_b,winner_tie", "0,high,0.5,0.5"),
        ("invalid", "not a number"),
        "a probability that is not a number",
    ),
    Case(
        "sub-lm-rounded",
        "lmsys",
        "submission",
        lines("id,winner_model_a,winner_model_b,winner_tie", "0,0.3333,0.3333,0.3333"),
        ("valid",),
        "probabilities rounded to 4 places (sum 0.9999) are accepted",
    ),
    Case(
        "sub-pr-blank",
        "prompt_recovery",
        "submission",
        lines("id,rewrite_prompt", '0,"  "', "1,ok"),
        ("invalid", "empty rewrite_prompt"),
        "a blank rewrite prompt",
    ),
    Case(
        "sub-not-csv",
        "lmsys",
        "submission",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        ("invalid", ""),
        "a binary file given as the submission",
    ),
]

# ids of the small test files submissions are validated against
SUBMISSION_TEST_IDS = {"science_exam": ["0", "1"], "lmsys": ["0"], "prompt_recovery": ["0", "1"]}
