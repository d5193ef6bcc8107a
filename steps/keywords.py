"""Keywords for SynPO's self-prompt generator: extraction, noise injection, sampling.

SynPO (section 2.1, Appendix C.1) teaches the model to write a user prompt from three
keywords. Training pairs come from seed prompts (two keywords from the prompt plus one
*noise* keyword from another prompt, so the generator learns to ignore a keyword that
does not fit); at generation time the keywords come from paragraphs of a pretraining
corpus (RefinedWeb in the paper), three from one paragraph, each list from a different
paragraph, and lists containing personal names or stopwords are excluded.

How keywords are found (no model download, nothing fetched at run time):

1. **Candidates** come from YAKE (``yake`` on PyPI; Campos et al., 2020), an
   unsupervised statistical extractor that scores words and short phrases by casing,
   position, frequency and context spread. It ships its own stopword lists and never
   lets a candidate start or end with a stopword.
2. **Stopwords**: a keyword any of whose words is in YAKE's stopword list for the
   language is dropped (this also catches a lone stopword YAKE kept).
3. **Personal names**: there is no offline named-entity model on PyPI (spaCy models
   are not on it), so names are found with a first-name list plus capitalization.
   The list is ``gender-guesser``'s name dictionary (about 45,000 first names from
   many countries, shipped in the wheel). In the text, a run of consecutive
   capitalized words (``Mary Ann Smith``) is a name when one of its words is a known
   first name, and every word of the run is then a name word (so the surname goes
   too). A first name alone at the start of a sentence counts only when the next word
   is capitalized as well, because sentence-initial capitals say nothing (``Art
   history...``). A keyword containing a name word is dropped. The method errs towards
   dropping: a place or brand that is also a first name (``Paris``) is dropped too,
   which costs one keyword and never lets a name through.

Everything random takes an explicit seed, so the same inputs give the same lists.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from synthalign.errors import SeedDataError
from synthalign.steps.seeds import LOCAL_SUFFIXES, read_seed_rows

__all__ = [
    "KeywordExtractor",
    "KeywordSampleStats",
    "build_generator_examples",
    "first_names",
    "keyword_list_reject_reason",
    "name_words",
    "pick_disjoint",
    "read_paragraphs",
    "sample_keyword_lists",
    "split_paragraphs",
    "stopwords",
]

_WORD = re.compile(r"[^\W\d_][\w'\u2019-]*", re.UNICODE)
_SENTENCE_END = re.compile(r"[.!?:;]['\")\]]*$|\n")


@cache
def stopwords(language: str = "en") -> frozenset[str]:
    """YAKE's stopword list for ``language`` (lower-case)."""
    import yake  # heavy: yake (loads its stopword lists)

    return frozenset(w.lower() for w in yake.KeywordExtractor(lan=language).stopword_set)


@cache
def first_names() -> frozenset[str]:
    """Lower-cased first names from ``gender-guesser``'s bundled name dictionary."""
    from gender_guesser.detector import (
        Detector,
    )  # heavy: gender_guesser (reads its name dictionary)

    names = Detector(case_sensitive=False).names
    return frozenset(n.lower() for n in names if len(n) > 1)


def _tokens(text: str) -> list[tuple[str, bool]]:
    """Words of ``text`` with a flag: does the word start a sentence?"""
    out: list[tuple[str, bool]] = []
    last_end = 0
    start_of_sentence = True
    for match in _WORD.finditer(text):
        gap = text[last_end : match.start()]
        if out and _SENTENCE_END.search(gap.rstrip(" \t")):
            start_of_sentence = True
        out.append((match.group(), start_of_sentence))
        start_of_sentence = False
        last_end = match.end()
    return out


def _capitalized(word: str) -> bool:
    return word[:1].isupper() and not word.isupper()


def name_words(text: str, names: frozenset[str] | None = None) -> set[str]:
    """Lower-cased words of ``text`` that belong to a personal name (see module doc)."""
    names = first_names() if names is None else names
    tokens = _tokens(text)
    found: set[str] = set()
    i = 0
    while i < len(tokens):
        if not _capitalized(tokens[i][0]):
            i += 1
            continue
        j = i
        while j < len(tokens) and _capitalized(tokens[j][0]) and (j == i or not tokens[j][1]):
            j += 1
        run = tokens[i:j]
        if len(run) > 1 and run[0][1] and run[0][0].lower() not in names:
            run = run[
                1:
            ]  # "Yesterday Will Turner": the sentence's first word is not part of the name
        is_name = False
        for k, (word, sentence_start) in enumerate(run):
            if word.lower() in names and (not sentence_start or len(run) > 1 or k > 0):
                is_name = True
                break
        if is_name:
            found.update(w.lower() for w, _ in run)
        i = j
    return found


@dataclass
class KeywordExtractor:
    """YAKE candidates minus stopwords and personal names.

    Args:
        language: YAKE language code (stopword list).
        max_ngram: longest keyword, in words (SynPO's keywords are words or short phrases).
        top: candidates YAKE returns before filtering.
        min_chars: shorter keywords are dropped (initials, stray letters).
    """

    language: str = "en"
    max_ngram: int = 2
    top: int = 12
    min_chars: int = 3
    _yake: Any = field(default=None, init=False, repr=False)

    def _extractor(self) -> Any:
        if self._yake is None:
            import yake  # heavy: yake

            self._yake = yake.KeywordExtractor(
                lan=self.language, n=self.max_ngram, top=self.top, dedup_lim=0.7
            )
        return self._yake

    def reject_reason(self, keyword: str, names_in_text: set[str]) -> str | None:
        """Why ``keyword`` is not usable (None when it is)."""
        words = [w.lower() for w in _WORD.findall(keyword)]
        if not words or len(keyword.strip()) < self.min_chars:
            return "too short"
        if any(w in stopwords(self.language) for w in words):
            return "stopword"
        if any(w in names_in_text for w in words):
            return "personal name"
        return None

    def extract(self, text: str) -> list[str]:
        """Usable keywords of ``text``, best first (YAKE's order), de-duplicated."""
        return self.extract_with_reasons(text)[0]

    def extract_with_reasons(self, text: str) -> tuple[list[str], dict[str, int]]:
        """Keywords, and how many candidates each filter dropped."""
        if not text or not text.strip():
            return [], {}
        names_in_text = name_words(text)
        mid_sentence_caps = {w for w, start in _tokens(text) if not start and _capitalized(w)}
        kept: list[str] = []
        dropped: dict[str, int] = {}
        seen: set[str] = set()
        for candidate, _score in self._extractor().extract_keywords(text):
            reason = self.reject_reason(candidate, names_in_text)
            if reason:
                dropped[reason] = dropped.get(reason, 0) + 1
                continue
            keyword = _normalize_case(candidate, mid_sentence_caps)
            if keyword.lower() in seen:
                continue
            seen.add(keyword.lower())
            kept.append(keyword)
        return kept, dropped


def _normalize_case(keyword: str, mid_sentence_caps: set[str]) -> str:
    """Lower-case words that are capitalized only because they start a sentence."""
    return " ".join(
        w if (w.isupper() and len(w) > 1) or w in mid_sentence_caps else w.lower()
        for w in keyword.split()
    )


# ---------------------------------------------------------------- generator set


def pick_disjoint(rng: random.Random, keywords: Sequence[str], k: int) -> list[str] | None:
    """``k`` keywords at random that share no word ("short poem" and "poem" never both).

    Overlapping keywords would make a three-keyword list carry two ideas, not three.
    Returns None when ``keywords`` has fewer than ``k`` mutually disjoint ones.
    """
    order = list(keywords)
    rng.shuffle(order)
    picked: list[str] = []
    used: set[str] = set()
    for keyword in order:
        words = {w.lower() for w in keyword.split()}
        if words & used:
            continue
        picked.append(keyword)
        used |= words
        if len(picked) == k:
            return picked
    return None


def build_generator_examples(
    prompts: Sequence[str],
    *,
    seed: int,
    extractor: KeywordExtractor | None = None,
    keywords_from_prompt: int = 2,
    noise_keywords: int = 1,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Rows for the self-prompt generator: keywords in, the original prompt out.

    For each prompt, ``keywords_from_prompt`` of its keywords are drawn at random and
    ``noise_keywords`` are drawn from *other* prompts (never one that also occurs in
    this prompt); the list is shuffled so position does not give the noise away.
    Prompts with too few keywords are skipped and counted. Returns the rows
    (``keywords``, ``prompt_keywords``, ``noise_keywords``, ``source_index``,
    ``completion``) and counts.
    """
    extractor = extractor or KeywordExtractor()
    rng = random.Random(seed)
    per_prompt = [extractor.extract(p) for p in prompts]
    donors = [i for i, kws in enumerate(per_prompt) if kws]
    rows: list[dict[str, Any]] = []
    stats = {"prompts": len(prompts), "too_few_keywords": 0, "no_noise_source": 0}
    for i, prompt in enumerate(prompts):
        own = per_prompt[i]
        if len(own) < keywords_from_prompt:
            stats["too_few_keywords"] += 1
            continue
        chosen = pick_disjoint(rng, own, keywords_from_prompt)
        if chosen is None:
            stats["too_few_keywords"] += 1
            continue
        in_prompt = {k.lower() for k in own} | {w.lower() for w in _WORD.findall(prompt)}
        noise: list[str] = []
        candidates = [j for j in donors if j != i]
        rng.shuffle(candidates)
        for j in candidates:
            options = [k for k in per_prompt[j] if k.lower() not in in_prompt and k not in noise]
            if not options:
                continue
            noise.append(rng.choice(options))
            if len(noise) == noise_keywords:
                break
        if len(noise) < noise_keywords:
            stats["no_noise_source"] += 1
            continue
        keywords = chosen + noise
        rng.shuffle(keywords)
        rows.append(
            {
                "keywords": keywords,
                "prompt_keywords": chosen,
                "noise_keywords": noise,
                "source_index": i,
                "completion": prompt,
            }
        )
    stats["examples"] = len(rows)
    return rows, stats


# ------------------------------------------------------------- corpus sampling


def split_paragraphs(text: str, min_words: int = 20) -> list[str]:
    """Paragraphs of a document (blank-line or line separated) with at least ``min_words`` words.

    RefinedWeb rows are whole web pages; the paper draws keywords from paragraphs.
    """
    parts = re.split(r"\n\s*\n|\n", text)
    return [p.strip() for p in parts if len(p.split()) >= min_words]


def read_paragraphs(
    source: str,
    *,
    text_column: str = "text",
    split: str = "train",
    config: str | None = None,
    max_documents: int | None = None,
    min_words: int = 20,
    seed: int = 0,
) -> list[str]:
    """Paragraphs from a local text/JSONL file or a Hub dataset (streamed, never fully downloaded).

    A ``.txt`` file holds one paragraph per line; JSONL/JSON/CSV/Parquet rows hold it in
    ``text_column``. A Hub corpus (RefinedWeb is ~600M pages) is streamed, shuffled with
    a buffer under ``seed``, and cut at ``max_documents`` pages.
    """
    path = Path(source).expanduser()
    if path.suffix.lower() in LOCAL_SUFFIXES or path.exists() or source.startswith((".", "/", "~")):
        rows = read_seed_rows(source, [text_column], limit=max_documents)
        documents: Iterable[Any] = (r[text_column] for r in rows)
    else:
        documents = _stream_documents(source, text_column, split, config, max_documents, seed)
    paragraphs: list[str] = []
    for document in documents:
        if isinstance(document, str):
            paragraphs.extend(split_paragraphs(document, min_words))
    if not paragraphs:
        raise SeedDataError(
            f"corpus {source}: no paragraph has {min_words}+ words in column '{text_column}'; "
            "lower corpus.min_words or check text_column"
        )
    return paragraphs


def _stream_documents(
    source: str, column: str, split: str, config: str | None, limit: int | None, seed: int
) -> Iterator[Any]:
    from datasets import load_dataset  # heavy: datasets (Hub corpora only)

    try:
        stream = load_dataset(source, config, split=split, streaming=True).shuffle(
            seed=seed, buffer_size=10_000
        )
    except Exception as exc:
        raise SeedDataError(
            f"cannot stream corpus {source!r}: {str(exc).splitlines()[0]}"
        ) from None
    for n, row in enumerate(stream):
        if limit is not None and n >= limit:
            return
        if column not in row:
            raise SeedDataError(f"corpus {source!r} has no column '{column}'; it has {sorted(row)}")
        yield row[column]


@dataclass
class KeywordSampleStats:
    """What :func:`sample_keyword_lists` looked at and why paragraphs gave no list."""

    paragraphs_seen: int = 0
    too_few_keywords: int = 0
    excluded_stopword: int = 0
    excluded_name: int = 0
    lists: int = 0
    exhausted: bool = False


def sample_keyword_lists(
    paragraphs: Sequence[str],
    n: int,
    *,
    seed: int,
    skip: int = 0,
    per_list: int = 3,
    extractor: KeywordExtractor | None = None,
) -> tuple[list[dict[str, Any]], KeywordSampleStats]:
    """``n`` keyword lists, each of ``per_list`` keywords from one paragraph.

    Paragraphs are visited in one seeded order, each at most once, so different lists
    come from different paragraphs; ``skip`` paragraphs of that order are passed over
    first (a loop passes what earlier iterations consumed, so iterations do not reuse
    paragraphs). A list with a stopword or a personal name is excluded (Appendix C.1);
    extraction already drops such keywords, so this is a second check on the list.
    Returns rows (``keywords``, ``paragraph_index``, ``paragraph_position``: the
    paragraph's place in the seeded order, ``paragraph``) and statistics; the next call
    passes ``skip`` = the last list's ``paragraph_position`` + 1 (or ``skip`` +
    ``stats.paragraphs_seen``, the same when ``n`` lists were found).
    """
    extractor = extractor or KeywordExtractor()
    order = list(range(len(paragraphs)))
    random.Random(seed).shuffle(order)
    rng = random.Random(f"{seed}:{skip}")
    stats = KeywordSampleStats()
    rows: list[dict[str, Any]] = []
    for position in range(skip, len(order)):
        if len(rows) >= n:
            break
        stats.paragraphs_seen += 1
        index = order[position]
        text = paragraphs[index]
        keywords = extractor.extract(text)
        if len(keywords) < per_list:
            stats.too_few_keywords += 1
            continue
        picked = pick_disjoint(rng, keywords, per_list)
        if picked is None:
            stats.too_few_keywords += 1
            continue
        reason = keyword_list_reject_reason(picked, text, extractor.language)
        if reason == "stopword":
            stats.excluded_stopword += 1
            continue
        if reason == "personal name":
            stats.excluded_name += 1
            continue
        rows.append(
            {
                "keywords": picked,
                "paragraph_index": index,
                "paragraph_position": position,
                "paragraph": text,
            }
        )
    stats.lists = len(rows)
    stats.exhausted = len(rows) < n
    return rows, stats


def keyword_list_reject_reason(
    keywords: Sequence[str], text: str = "", language: str = "en"
) -> str | None:
    """``"stopword"`` / ``"personal name"`` when the list must be excluded, else None.

    Without ``text`` only capitalized first names count as names (no context to see a
    surname by).
    """
    context_names = name_words(text) if text else set()
    for keyword in keywords:
        words = _WORD.findall(keyword)
        if any(w.lower() in stopwords(language) for w in words):
            return "stopword"
        for w in words:
            if w.lower() in context_names or (_capitalized(w) and w.lower() in first_names()):
                return "personal name"
    return None
