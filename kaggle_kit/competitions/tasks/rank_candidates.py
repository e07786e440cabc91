"""rank_candidates: retrieve, then rerank, over a catalogue file (Eedi's misconceptions, documents).

Each row's query (a template) and every catalogue text are embedded with a sentence-transformers model;
the nearest `candidates` are the row's candidates in retrieval order. The LLM then reranks the first
`rerank` of them: for each (row, candidate) pair the prompt template asks a Yes/No question and the pair
scores p(Yes) (label-token scoring through the choice engine: budget, checkpoints, prefix cache). The
output is the top_k ids: the reranked ones by p(Yes), then the rest in retrieval order. A row whose pairs
the budget did not reach keeps the retrieval order, which is already a ranking.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import InputError
from ..base import Competition
from ..spec import SpecError
from .common import Run, check_template, need_columns

log = logging.getLogger("kaggle_kit")
FIELDS = ("candidate", "candidate_id", "shots", "context")


@dataclass
class Settings:
    """The `rank_candidates:` block of a spec."""

    catalogue_id: str  # the catalogue file's id column
    catalogue_text: str  # the catalogue file's text column (what is embedded and shown as `candidate`)
    query: str  # Jinja over a row's fields: the text embedded to retrieve its candidates
    output: str  # the submission column (top_k ids, space-separated, best first)
    answer: str | None = None  # the labelled file's column holding the right catalogue id
    candidates: int = 25  # retrieved per row
    rerank: int = 10  # of those, how many the LLM reranks (0: retrieval order only)
    top_k: int = 25  # ids written per row
    labels: list = field(default_factory=lambda: ["Yes", "No"])  # the answer tokens; the first scores a match
    negatives: int = 3  # training: wrong candidates (the nearest ones) per right one
    embedder: str | None = None  # 'minilm' or a sentence-transformers folder (None: minilm)


def check_settings(spec, s: Settings) -> None:
    where = "rank_candidates"
    if spec.files.catalogue is None:
        raise SpecError(spec.path, "files.catalogue", "rank_candidates needs a catalogue file")
    if not 1 <= s.top_k <= s.candidates:
        raise SpecError(spec.path, f"{where}.top_k", f"between 1 and candidates ({s.candidates}), got {s.top_k}")
    if not 0 <= s.rerank <= s.candidates:
        raise SpecError(spec.path, f"{where}.rerank", f"between 0 and candidates ({s.candidates}), got {s.rerank}")
    if len(s.labels) != 2:
        raise SpecError(spec.path, f"{where}.labels", "two answer tokens: the match first (e.g. [Yes, No])")
    if s.output not in spec.submission:
        raise SpecError(spec.path, f"{where}.output", f"{s.output!r} is not a submission column")
    need_columns(spec, where, {"answer": s.answer}, labelled=True)
    check_template(spec, s.query, f"{where}.query")
    if not str(spec.fallback.get(s.output, "")).strip():
        raise SpecError(spec.path, "fallback", f"the fallback ids for {s.output!r} (e.g. the most frequent ones)")


class Task(Competition):
    """A retrieve-and-rerank competition (Eedi)."""

    kind = "rank_candidates"
    task = "choices"

    def __init__(self, spec, settings: Settings):
        super().__init__(spec, settings)
        self.labels = tuple(str(x) for x in settings.labels)
        self._catalogues: dict[str, tuple[list[str], list[str]]] = {}
        self._hits: dict[str, list[list[int]]] = {}

    # --- the catalogue and retrieval ---------------------------------------------------------------
    def catalogue(self, data_dir) -> tuple[list[str], list[str]]:
        """(ids, texts) of the catalogue file in `data_dir`, read once."""
        from ...io import Column, read_csv

        path = Path(data_dir) / self.spec.files.catalogue
        key = str(path.resolve())
        if key not in self._catalogues:
            s = self.settings
            df = read_csv(
                path, [Column(s.catalogue_id, "id"), Column(s.catalogue_text, "text")], id_column=s.catalogue_id
            )
            self._catalogues[key] = (df[s.catalogue_id].tolist(), df[s.catalogue_text].tolist())
        return self._catalogues[key]

    def candidates(self, df, data_dir) -> list[list[int]]:
        """Per row, the catalogue positions of its `candidates` nearest items, best first (cached)."""
        from ...embed import load_embedder, retrieve
        from ..template import render_rows

        ids, texts = self.catalogue(data_dir)
        queries = render_rows(self.settings.query, df.to_dict("records"))
        key = hashlib.sha256(
            repr((self.settings.embedder, ids, queries, self.settings.candidates)).encode()
        ).hexdigest()
        if key not in self._hits:
            log.info(
                "%s: retrieving %d candidates for %d rows from %d items",
                self.name,
                self.settings.candidates,
                len(df),
                len(ids),
            )
            self._hits[key] = retrieve(queries, texts, load_embedder(self.settings.embedder), self.settings.candidates)
        return self._hits[key]

    def check_labelled(self, path, df) -> None:
        if self.settings.answer is None:
            raise InputError(path, f"{self.name} has no answer column in its spec")
        known = set(self.catalogue(Path(path).parent)[0])
        for i, v in enumerate(df[self.settings.answer].astype(str)):
            if v.strip() not in known:
                raise InputError(path, "not a catalogue id", row=i + 1, column=self.settings.answer,
                                 expected=f"an id of {self.spec.files.catalogue}", got=v)  # fmt: skip

    # --- pairs -------------------------------------------------------------------------------------
    def pair_prompts(self, df, tokenizer, max_length, pairs: list[tuple[int, int]], data_dir, run: Run | None = None):
        """The prompt of each (row, catalogue position) pair."""
        ids, texts = self.catalogue(data_dir)
        rows = self.fields(df, tokenizer, max_length, **(run.extra if run else {}))
        out = []
        for i, j in pairs:
            out.append({**rows[i], "candidate": texts[j], "candidate_id": ids[j], "shots": "", "context": ""})
        return self.render(tokenizer, out)

    def work(self, model, tokenizer, df, run: Run):
        """The choice Task over the (row, candidate) pairs to rerank; its results are assembled by row."""
        choice_task = run.tasks().choice_task
        hits = self.candidates(df, run.data_dir)
        pairs = [(i, j) for i, row in enumerate(hits) for j in row[: self.settings.rerank]]
        prompts = self.pair_prompts(df, tokenizer, run.max_length, pairs, run.data_dir, run)
        task = choice_task(
            model, tokenizer, prompts, list(self.labels), temperature=run.temperature, max_length=run.max_length
        )
        task.finish = lambda results: self.assemble(df, results, run.data_dir)
        return task

    def items(self, df, data_dir: str = ".") -> int:
        """The (row, candidate) pairs the LLM reranks."""
        return sum(min(self.settings.rerank, len(row)) for row in self.candidates(df, data_dir))

    def assemble(self, df, results: list, data_dir: str = "."):
        """Per row the ranked catalogue ids: reranked pairs by p(match), then the rest in retrieval order."""
        ids, _ = self.catalogue(data_dir)
        hits, n, out = self.candidates(df, data_dir), self.settings.rerank, []
        k = 0
        for row in hits:
            scored = results[k : k + min(n, len(row))]
            k += min(n, len(row))
            if scored and all(r is not None for r in scored):
                p = np.array([float(np.asarray(r)[0]) for r in scored])
                head = [row[t] for t in np.argsort(-p, kind="stable")]
            else:
                head = row[:n]
            out.append([ids[j] for j in head + row[n:]])
        return out

    def train_pairs(self, df, tokenizer, max_length: int, views: int = 1, data_dir=None):
        """Training rows: each labelled row with its right item (the match label) and its `negatives`
        nearest wrong ones (the other label)."""
        s = self.settings
        ids, _ = self.catalogue(data_dir)
        hits = self.candidates(df, data_dir)
        pairs, completions = [], []
        for i, (row, answer) in enumerate(zip(hits, df[s.answer].astype(str))):
            right = ids.index(answer.strip())
            wrong = [j for j in row if j != right][: s.negatives]
            pairs += [(i, right)] + [(i, j) for j in wrong]
            completions += [self.labels[0]] + [self.labels[1]] * len(wrong)
        prompts = self.pair_prompts(df, tokenizer, max_length, pairs, data_dir)
        return prompts, completions, [[0, 1]] * len(prompts)

    # --- submission --------------------------------------------------------------------------------
    def to_submission(self, df, ranked):
        fallback = self.fallback_row()[self.settings.output]
        cells = [" ".join(r[: self.settings.top_k]) if r else fallback for r in ranked]
        return self.frame(df[self.id_column], {self.settings.output: cells}, df)

    def check_row(self, row):
        ids = str(row[self.settings.output]).split()
        if not ids:
            return "no ids"
        if len(ids) > self.settings.top_k:
            return f"{len(ids)} ids, at most {self.settings.top_k}"
        return "an id repeats" if len(set(ids)) != len(ids) else None

    def score(self, sub, truth, **_):
        from ...metrics import map_at_k

        sub = self.aligned(sub, truth)
        k = int(self.spec.metric[4:]) if self.spec.metric.startswith("map@") else self.settings.top_k
        return map_at_k(
            sub[self.settings.output].tolist(), truth[self.settings.answer].astype(str).str.strip().tolist(), k=k
        )
