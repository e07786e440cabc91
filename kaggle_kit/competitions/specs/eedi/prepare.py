"""Eedi: one prediction row per question x wrong answer (what a spec cannot say)."""

from __future__ import annotations

LETTERS = "ABCD"


def explode_answers(df, labelled: bool):
    """A row per wrong answer: QuestionId_Answer ('1869_B'), the question, the correct and the wrong
    answer's text; labelled, also its MisconceptionId, and wrong answers with none tagged are dropped."""
    import pandas as pd

    rows = []
    for r in df.to_dict("records"):
        correct = r["CorrectAnswer"].strip()
        for letter in LETTERS:
            if letter == correct:
                continue
            row = {
                "QuestionId_Answer": f"{r['QuestionId']}_{letter}",
                "QuestionId": r["QuestionId"],
                "WrongAnswer": letter,
                "ConstructName": r["ConstructName"],
                "SubjectName": r["SubjectName"],
                "QuestionText": r["QuestionText"],
                "CorrectAnswerText": r[f"Answer{correct}Text"],
                "WrongAnswerText": r[f"Answer{letter}Text"],
            }
            if labelled:
                tagged = str(r.get(f"Misconception{letter}Id", "")).strip()
                if not tagged:
                    continue
                row["MisconceptionId"] = str(int(float(tagged)))
            rows.append(row)
    return pd.DataFrame(rows)
