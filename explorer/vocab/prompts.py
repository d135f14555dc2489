"""Prompt templates: an affirmed prompt and its negation for a finding or free text.

The affirmed/negated template pairs are read once from ``explorer/configs/prompts.json`` (its
``templates`` section). A CheXpert finding uses its phrase (:mod:`explorer.vocab.labels`) and
the template's own negated form; free text is negated by the engine
(:mod:`explorer.vocab.negation`).
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

from explorer.vocab.cues import alternation, cue_vocabulary
from explorer.vocab.labels import PROMPTS_PATH, finding_vocab, known_finding
from explorer.vocab.negation import is_plural, negate, polarity, strip_noun_phrase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptTemplate:
    """One affirmed/negated phrasing, with ``{finding}`` and ``{be}`` fields."""

    id: str
    affirmed: str
    negated: str


@dataclass(frozen=True)
class PromptPair:
    """An affirmed prompt and its negation for one finding and one template.

    Attributes:
        finding: The CheXpert name, or the free text as the user typed it (stripped).
        affirmed: The prompt stating that the finding (its label) is present.
        negated: The prompt stating that it is absent.
        template_id: The id of the template in ``prompts.json``.
    """

    finding: str
    affirmed: str
    negated: str
    template_id: str


@functools.lru_cache(maxsize=1)
def _templates() -> tuple[PromptTemplate, ...]:
    data = json.loads(PROMPTS_PATH.read_text(encoding="utf-8"))
    templates = tuple(PromptTemplate(**t) for t in data["templates"])
    log.debug("loaded %d templates from %s", len(templates), PROMPTS_PATH)
    return templates


def prompt_templates() -> tuple[PromptTemplate, ...]:
    """The template pairs of ``prompts.json``, in file order."""
    return _templates()


def _template(template: str | PromptTemplate | None) -> PromptTemplate:
    templates = _templates()
    if template is None:
        return templates[0]
    if isinstance(template, PromptTemplate):
        return template
    for t in templates:
        if t.id == template:
            return t
    raise ValueError(f"unknown prompt template {template!r}; known: {[t.id for t in templates]}")


def prompt_pair(
    finding_or_free_text: str, template: str | PromptTemplate | None = None
) -> PromptPair:
    """Build the affirmed and negated prompt for a finding.

    A CheXpert name uses its phrase and the template's own negated form. Typed text is read
    as one of two kinds (:func:`typed_kind`):

    * a **noun phrase** ("left lower lobe collapse", "a small right apical pneumothorax") goes
      into both halves of the template, every modifier kept ("there is no small left pleural
      effusion"; a leading article is dropped after "no"). A hedged phrase ("possible
      pneumonia") is prompted as its finding. A denied phrase ("no pneumothorax") is built
      from its finding and the two prompts swapped, so that the pair's affirmed prompt is what
      was typed (as for No Finding: ``affirmed`` = "there is no pneumothorax");
    * a **statement** (a sentence with its own verb, "heart size is normal", "the lungs are
      clear", or a normal phrase such as "clear lungs") is prompted as typed and negated by
      :func:`negate` ("heart size is enlarged"); templates do not apply to it, so every
      template gives the same pair.

    Args:
        finding_or_free_text: A CheXpert name or a finding phrase.
        template: A template id from ``prompts.json`` (default: the first, "there_is") or a
            :class:`PromptTemplate`.

    Returns:
        The prompt pair.

    Raises:
        NegationError: If free text cannot be negated (the user should edit it).
        ValueError: If the text is empty or the template id is unknown.
    """
    tmpl = _template(template)
    text = finding_or_free_text.strip()
    if not text:
        raise ValueError("a finding name or phrase is needed")
    canonical = known_finding(text)
    if canonical is not None:
        vocab = finding_vocab(canonical)
        be = "are" if vocab.plural else "is"
        affirmed = tmpl.affirmed.format(finding=vocab.phrase, be=be)
        negated = tmpl.negated.format(finding=vocab.phrase, be=be)
        if vocab.inverted:
            affirmed, negated = negated, affirmed
        return PromptPair(canonical, affirmed, negated, tmpl.id)
    phrase = re.sub(r"[\s.!?;:]+$", "", text)
    kind = typed_kind(phrase)
    if kind == "statement":
        return PromptPair(text, phrase, negate(phrase), tmpl.id)
    if phrase.istitle():  # "Small Left Pleural Effusion": a heading's capitals, not a name's
        phrase = phrase.lower()
    pol = polarity(phrase)
    if pol == "negated":
        phrase = negate(phrase)
    elif pol == "uncertain":
        phrase = negate(negate(phrase))
    be = "are" if is_plural(strip_noun_phrase(phrase) or phrase) else "is"
    bare = _ARTICLE_RE.sub("", phrase)
    affirmed = tmpl.affirmed.format(finding=phrase, be=be)
    negated = tmpl.negated.format(finding=bare if "no {finding}" in tmpl.negated else phrase, be=be)
    if pol == "negated":
        affirmed, negated = negated, affirmed
    return PromptPair(text, affirmed, negated, tmpl.id)


#: A verb of its own makes typed text a statement ("heart size is normal"), not a noun phrase.
_VERB_RE = re.compile(
    r"\b(?:is|are|was|were|be|been|appears?|seems?|remains?|shows?|demonstrates?|has|have"
    r"|measures?|looks?|persists?|noted|identified|visualized|visualised)\b",
    re.IGNORECASE,
)
#: A leading article, dropped after "no" ("there is no small effusion").
_ARTICLE_RE = re.compile(r"^(?:an?|the)\s+", re.IGNORECASE)
#: Denials that make typed text a denied noun phrase ("no pneumothorax", "without effusion"):
#: the engine's plain negation words (``configs/cues.json``).
_DENIAL_RE = re.compile(rf"^{alternation(cue_vocabulary().plain_negation)}\b", re.IGNORECASE)


def typed_kind(text: str) -> str:
    """``"statement"`` or ``"phrase"``: how :func:`prompt_pair` reads typed text.

    A statement has a verb of its own ("heart size is normal", "no pneumothorax is seen") or
    says that something is normal without naming a finding to deny ("clear lungs", "normal heart
    size": the engine's normal cues); anything else is a noun phrase, possibly denied ("no
    pneumothorax") or hedged ("possible pneumonia").
    """
    core = re.sub(r"[\s.!?;:]+$", "", text.strip())
    if _VERB_RE.search(core):
        return "statement"
    if polarity(core) == "negated" and not _DENIAL_RE.match(core):
        return "statement"
    return "phrase"


def prompt_pairs(
    finding: str, templates: Iterable[str | PromptTemplate] | None = None
) -> tuple[PromptPair, ...]:
    """Prompt pairs for one finding over several templates (to average embeddings over).

    Args:
        finding: A CheXpert name or free text (see :func:`prompt_pair`).
        templates: Template ids or templates; default: all of ``prompts.json``.

    Returns:
        One :class:`PromptPair` per template, in order.
    """
    chosen = _templates() if templates is None else tuple(templates)
    return tuple(prompt_pair(finding, t) for t in chosen)
