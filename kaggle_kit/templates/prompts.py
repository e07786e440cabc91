"""Task prompt bodies, one per competition task. Placeholders are str.format fields."""

SCIENCE_EXAM = (
    "Answer the following multiple choice question. Reply with the letter of the correct option only "
    "(A, B, C, D or E).\n\n"
    "Question: {prompt}\n"
    "A) {A}\nB) {B}\nC) {C}\nD) {D}\nE) {E}"
)

# A 38th-place LMSYS solution's format (38th place, LMSYS): turns concatenated, then three lettered options.
LMSYS = (
    "Here are two question-answering dialogues. Compare two models' performance on answering questions, "
    "determine which is better.\n"
    "{turns}\n"
    "###options\nA. Model A\nB. Model B\nC. Tie\n"
    "Reply with one letter."
)
LMSYS_TURN = "#Prompt{n}\n{prompt}\n#Response\n##Model A\n{a}\n##Model B\n{b}\n"

PROMPT_RECOVERY = (
    "An original text was rewritten by a language model following one instruction.\n\n"
    "Original text:\n{original_text}\n\n"
    "Rewritten text:\n{rewritten_text}\n\n"
    "Write the one-sentence instruction that was given to the model."
)

PROMPTS = {
    "science_exam": SCIENCE_EXAM,
    "lmsys": LMSYS,
    "prompt_recovery": PROMPT_RECOVERY,
}
