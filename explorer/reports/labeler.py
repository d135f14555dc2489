"""A rule-based CheXpert-style labeler for chest X-ray reports.

:func:`label_report` maps a report to the 14 CheXpert observations of
:data:`explorer.vocab.labels.CHEXPERT_FINDINGS`, then the three NIH findings CheXpert has no name
for (Emphysema, Fibrosis, Hernia: :data:`explorer.vocab.labels.EXTRA_FINDINGS`), with the CheXpert
values ``1`` (positive), ``0`` (negative), ``-1`` (uncertain) and ``None`` (not mentioned); the
extras are read like any finding and, like any abnormality, keep No Finding from being positive.
:func:`label_report_detailed`
also returns every mention with the sentence and the cue that decided it, so a person can see
why; :func:`label_reports` labels many reports in one spaCy pass.

How a report is read (in the spirit of the CheXpert labeler of Irvin et al., 2019, and of
NegEx, Chapman et al., 2001):

1. **Segmenting.** A blank English spaCy pipeline with the ``sentencizer``; a small component
   then cuts sentences into clauses at ``;``, line breaks, "but", "however", "except", and at
   commas that start a new statement (", no ...", ", the ...", ", with ...", ", stable ...").
   Negation and hedge scopes never cross a clause boundary.
2. **Mentions.** An ``entity_ruler`` finds finding mentions ("pleural effusion",
   "airspace disease", "PICC line"), *other* abnormalities that are not CheXpert
   observations (granulomas, degenerative changes, hyperinflation, tortuous aorta), generic
   statements ("acute cardiopulmonary process"), normal-study statements ("normal chest") and
   organs that reports describe as normal or abnormal (heart, cardiomediastinal silhouette,
   mediastinum, lungs, pleural spaces, pulmonary vascularity, bones).
3. **Polarity.** Three ``negspacy`` NegEx instances with the radiology term sets of the shared
   cue vocabulary (:mod:`explorer.vocab.cues`, ``explorer/configs/cues.json``):
   strong hedges ("cannot exclude", "not ruled out"), negation ("no", "without", "free of",
   "not seen", "has resolved") and weak hedges ("possible", "may", "suggestive of",
   "versus"). A mention is *uncertain* if a strong hedge covers it (so "Pneumonia cannot be
   excluded." is uncertain, not negated), else *negative* if a negation covers it, else
   *uncertain* if a weak hedge covers it ("no suspicious nodule" stays negative), else
   *positive*. This is CheXpert's pre-negation / negation / post-negation order. A hedge
   that *follows* its mention ("atelectasis versus scarring") reaches back only over the next
   few words, so "Opacity, atelectasis versus scarring." keeps the opacity positive.
4. **Organ rules** that NegEx lacks, read from the words after (or just before) an organ in
   its clause: "heart size is normal", "normal cardiac silhouette", "heart is not enlarged"
   make Cardiomegaly negative, "enlarged" / "the heart is large" positive, "borderline"
   and "upper limits of normal" / "top normal" uncertain (a hedge on the size, as for the
   negation engine: both read the cue list ``upper_normal`` of
   :mod:`explorer.vocab.cues`); the mediastinum does the same
   for Enlarged Cardiomediastinum, and an enlarged *cardiomediastinal* silhouette is both
   findings; "the lungs are clear" / "clear lungs" make Lung Opacity, Consolidation, Edema,
   Pneumonia, Atelectasis, Pleural Effusion and Pneumothorax negative (not Lung Lesion:
   "lungs clear" often sits next to a described nodule); "pleural spaces are clear" negates
   effusion and pneumothorax; "osseous structures intact" negates Fracture; normal pulmonary
   vascularity negates Edema, and engorged / prominent / increased vascularity is Edema
   (vascular congestion, as in CheXpert); blunting of a costophrenic angle makes Pleural
   Effusion uncertain (Pleural Other when the clause blames scarring or thickening). An
   abnormal organ statement under a negation ("no costophrenic angle blunting") is negative.

Aggregation over the mentions of one finding (CheXpert): **positive beats uncertain beats
negative beats not mentioned**, so "Stable cardiomegaly. Heart size unchanged." is positive and
"Lungs are clear. Possible left basilar atelectasis." gives Atelectasis uncertain.

**No Finding** is ``1`` when the report reads normal: it has at least one negative mention
or a normal-study statement, no CheXpert finding other than Support Devices is positive or
uncertain, and no other abnormality (granuloma, emphysema, scoliosis, ...) is affirmed or
hedged; otherwise it is ``None`` (CheXpert never labels No Finding ``0``).

"XXXX" (words removed from the Indiana University reports) is an ordinary word: it is never a
cue, so "There are no XXXX of a pleural effusion." is still negated, and it fills a slot only
where the context leaves one reading: "costophrenic XXXX" is the angle, "pulmonary XXXX" the
vessels, "right chest XXXX tip in the SVC" and "XXXX-A-XXXX" a catheter or port.

Measured on the 3,832 indexed IU reports (:func:`explorer.reports.mesh.validate`): macro F1
0.92 against MeSH over the 12 findings with >= 30 MeSH positives; labelling all 3,955
reports takes about 4 s on one CPU core after a one-off 3 s pipeline build. The rules were
tuned by reading disagreements on that same corpus (no held-out split), so expect somewhat
lower agreement on other report styles. Known limits: no dependency parse, so long lists after
a negation and unusual syntax can be misread; mentions are English radiology phrasing only;
hedges are words, not probabilities; findings outside the chest (a knee, an ankle) are labelled
like chest findings.
"""

from __future__ import annotations

import bisect
import functools
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from explorer.errors import ExplorerError
from explorer.paths import configs_dir
from explorer.vocab.cues import alternation, cue_vocabulary
from explorer.vocab.labels import KNOWN_FINDINGS, NEGATIVE, POSITIVE, UNCERTAIN

log = logging.getLogger(__name__)

#: Pseudo-finding under which abnormalities outside the known findings are kept.
OTHER = "Other abnormality"
#: The finding name of the mention that explains a No Finding label.
NO_FINDING = "No Finding"

_RANK = {POSITIVE: 3, UNCERTAIN: 2, NEGATIVE: 1, None: 0}
#: Findings a clear-lungs statement ("The lungs are clear.") denies.
LUNG_GROUP = (
    "Lung Opacity",
    "Consolidation",
    "Edema",
    "Pneumonia",
    "Atelectasis",
    "Pleural Effusion",
    "Pneumothorax",
)
_NEG_EXT = "cxr_negated"
_WEAK_EXT = "cxr_hedged"
_STRONG_EXT = "cxr_strong_hedged"


# =============================================================================================
# Results
# =============================================================================================


@dataclass(frozen=True)
class Mention:
    """One statement about one finding, with what decided its value.

    Attributes:
        finding: A known finding's name, or :data:`OTHER` for any other abnormality.
        value: ``1`` positive, ``0`` negative, ``-1`` uncertain.
        text: The mention as written in the report ("pleural effusion", "heart size").
        sentence: The sentence it stands in, as written.
        cue: The words that decided the value ("no", "cannot be excluded", "is normal");
            ``None`` for a plain affirmation.
        rule: Which rule decided: ``"affirmed"``, ``"negation"``, ``"hedge"``,
            ``"strong hedge"``, ``"organ"``, ``"blunting"`` or ``"no finding"``.
        start: Offset of the mention in the report text.
        end: Offset one past its end.
    """

    finding: str
    value: int
    text: str
    sentence: str
    cue: str | None
    rule: str
    start: int
    end: int


@dataclass(frozen=True)
class ReportLabels:
    """The labels of one report and the evidence behind them.

    Attributes:
        text: The report text that was labelled.
        values: One value per :data:`~explorer.vocab.labels.KNOWN_FINDINGS` entry (the 14
            CheXpert findings, then Emphysema, Fibrosis, Hernia), in order (``1``, ``0``,
            ``-1`` or ``None``).
        mentions: Every mention found (CheXpert findings, :data:`OTHER` and the No Finding
            explanation), in text order.
    """

    text: str
    values: tuple[int | None, ...]
    mentions: tuple[Mention, ...]

    def as_dict(self) -> dict[str, int | None]:
        """Finding name -> value: the 14 findings in CheXpert order, then the extras."""
        return dict(zip(KNOWN_FINDINGS, self.values, strict=True))

    def __getitem__(self, finding: str) -> int | None:
        return self.values[KNOWN_FINDINGS.index(finding)]

    def mentions_of(self, finding: str) -> tuple[Mention, ...]:
        """All mentions of one finding (or of :data:`OTHER`), in text order."""
        return tuple(m for m in self.mentions if m.finding == finding)

    def evidence(self, finding: str) -> Mention | None:
        """The mention that decided a finding's label (the first one with the winning value)."""
        value = self[finding] if finding in KNOWN_FINDINGS else None
        for m in self.mentions:
            if m.finding == finding and (value is None or m.value == value):
                return m
        return None


# =============================================================================================
# Vocabulary (token patterns for spaCy's entity_ruler)
# =============================================================================================
#
# The mention terms are data: ``explorer/configs/labeler_terms.json`` (its ``mentions``),
# label -> token specs. A spec is a space-separated list of tokens. Each token is a regular
# expression matched in full against the lower-cased token text; "~tok" makes it optional,
# "tok+" repeatable, "(a|b)*" any number of times. Longer matches win, so "pericardial
# effusion" (OTHER) beats "effusion". A label "A+B" is a mention of both findings.


def terms_path() -> Path:
    """Where the labeler's term tables are kept (``explorer/configs/labeler_terms.json``)."""
    return configs_dir() / "labeler_terms.json"


@dataclass(frozen=True)
class LabelerTerms:
    """The labeler's term tables (``labeler_terms.json``).

    Attributes:
        mentions: Entity label -> token specs (finding names, ``OTHER``, ``BONE_GENERIC``,
            ``NORMAL_STUDY`` and the organs ``ANAT_*``).
        generic_qualifiers: Words before a generic statement ("acute", "focal").
        generic_organs: Optional organ words of a generic statement ("cardiopulmonary").
        generic_nouns: Heads of a generic statement ("abnormality", "process").
        generic_standalone: Organ words that make a generic statement without a qualifier.
        comma_clause_starts: Words that start a new clause after a comma.
        participles: Participles after which a comma starts a new clause ("seen, left ...").
        clause_words: Words that start a new clause ("but", "however").
    """

    mentions: dict[str, tuple[str, ...]]
    generic_qualifiers: tuple[str, ...]
    generic_organs: tuple[str, ...]
    generic_nouns: tuple[str, ...]
    generic_standalone: tuple[str, ...]
    comma_clause_starts: frozenset[str]
    participles: frozenset[str]
    clause_words: frozenset[str]


@functools.lru_cache(maxsize=1)
def labeler_terms() -> LabelerTerms:
    """The labeler's term tables, read once from ``explorer/configs/labeler_terms.json``."""
    data = json.loads(terms_path().read_text(encoding="utf-8"))
    generic, clauses = data["generic"], data["clauses"]
    return LabelerTerms(
        mentions={label: tuple(specs) for label, specs in data["mentions"].items()},
        generic_qualifiers=tuple(generic["qualifiers"]),
        generic_organs=tuple(generic["organs"]),
        generic_nouns=tuple(generic["nouns"]),
        generic_standalone=tuple(generic["standalone"]),
        comma_clause_starts=frozenset(clauses["comma_starts"]),
        participles=frozenset(clauses["participles"]),
        clause_words=frozenset(clauses["clause_words"]),
    )


def _expand(regex: str) -> list[str] | None:
    """All strings a token regex of this module matches, or None if they are unbounded.

    Only literals, ``(a|b)`` groups and ``?`` are expanded; ``\\w*``, ``+``, classes and other
    operators make the token unbounded (it is then matched as a regular expression).
    """

    def seq(i: int, stop: str) -> tuple[list[set[str]] | None, int]:
        items: list[set[str]] = []
        while i < len(regex) and regex[i] not in stop:
            ch = regex[i]
            if ch == "(":
                alts: set[str] = set()
                i += 1
                while True:
                    part, i = seq(i, "|)")
                    if part is None:
                        return None, i
                    alts.update(_product(part))
                    if regex[i] == ")":
                        break
                    i += 1
                items.append(alts)
            elif ch == "?":
                if not items:
                    return None, i
                items[-1] = items[-1] | {""}
            elif ch in "\\*+[]{}.^$":
                return None, i
            else:
                items.append({ch})
            i += 1
        return items, i

    items, _ = seq(0, "")
    return None if items is None else sorted(_product(items))


def _product(items: list[set[str]]) -> set[str]:
    out = {""}
    for alternatives in items:
        out = {a + b for a in out for b in alternatives}
    return out


def _token(spec: str) -> tuple[dict[str, Any], list[str] | None]:
    """A token spec -> (Matcher token pattern, its words when bounded)."""
    if spec.count("(") != spec.count(")"):
        raise ValueError(f"unbalanced token spec {spec!r} (tokens are split at spaces)")
    op = None
    if spec.startswith("~"):
        spec, op = spec[1:], "?"
    elif spec.endswith("+") and len(spec) > 1 and spec[-2] != "\\":
        spec, op = spec[:-1], "+"
    elif spec.endswith("*") and spec[-2:-1] == ")":
        spec, op = spec[:-1], "*"
    words = _expand(spec)
    tok: dict[str, Any] = (
        {"LOWER": {"IN": words}} if words is not None else {"LOWER": {"REGEX": f"^(?:{spec})$"}}
    )
    if op:
        tok["OP"] = op
    return tok, (words + [""] if op == "?" and words is not None else None if op else words)


def _patterns() -> list[dict[str, Any]]:
    """Entity-ruler patterns: phrase strings where a spec is bounded (fast), else token
    patterns."""
    terms = labeler_terms()
    patterns: list[dict[str, Any]] = []
    single: dict[str, list[str]] = {}
    for label, specs in terms.mentions.items():
        for spec in specs:
            tokens = [_token(t) for t in spec.split()]
            if all(words is not None for _, words in tokens):
                phrases = {""}
                for _, words in tokens:
                    phrases = {f"{a} {b}".strip() for a in phrases for b in words or ()}
                patterns.extend({"label": label, "pattern": p} for p in sorted(phrases) if p)
            elif len(tokens) == 1 and "OP" not in tokens[0][0]:
                single.setdefault(label, []).append(tokens[0][0]["LOWER"]["REGEX"])
            else:
                patterns.append({"label": label, "pattern": [tok for tok, _ in tokens]})
    for label, regexes in single.items():  # one predicate per label is much faster than many
        patterns.append({"label": label, "pattern": [{"LOWER": {"REGEX": "|".join(regexes)}}]})
    patterns.append(
        {
            "label": "GENERIC",
            "pattern": [
                {"LOWER": {"IN": list(terms.generic_qualifiers)}, "OP": "+"},
                {"LOWER": {"IN": list(terms.generic_organs)}, "OP": "?"},
                {"LOWER": {"IN": list(terms.generic_nouns)}},
            ],
        }
    )
    patterns.append(
        {
            "label": "GENERIC",
            "pattern": [
                {"LOWER": {"IN": list(terms.generic_standalone)}},
                {"LOWER": {"IN": list(terms.generic_nouns)}},
            ],
        }
    )
    return patterns


# --- NegEx term sets: the shared cue vocabulary (explorer/vocab/cues.py) ----------------------


def _termsets() -> tuple[tuple[str, dict[str, list[str]], str], ...]:
    """(component name, negspacy term set, extension) for the three NegEx components."""
    cues = cue_vocabulary()
    return (
        ("cxr_negation", cues.negex_negation.termset(), _NEG_EXT),
        ("cxr_weak_hedge", cues.negex_weak_hedge.termset(), _WEAK_EXT),
        ("cxr_strong_hedge", cues.negex_strong_hedge.termset(), _STRONG_EXT),
    )


# =============================================================================================
# Organ rules
# =============================================================================================


#: "Upper limits of normal" and its kin: a hedge on a size, uncertain (the shared cue list).
_UPPER_NORMAL = alternation(cue_vocabulary().upper_normal)


def _size_re(abnormal: str) -> re.Pattern[str]:
    """Size descriptors after an organ; the first one (leftmost) decides."""
    return re.compile(
        r"(?P<neg>\b(?:not|no|without)\b(?:\s+[\w-]+){0,3}?\s+(?:enlarged|enlargement|widened|"
        r"widening|dilated|increased|large|prominent)\b)"
        rf"|(?P<unc>\bborderline\b|\bmildly\s+prominent\b|\b{_UPPER_NORMAL}\b)"
        r"|(?P<normal>\bwithin\s+normal\s+limits\b|\bnormal\b|\bunremarkable\b|"
        r"\bnon\s?enlarged\b|\bnegative\b|\bnot\s+(?:significantly\s+)?enlarged\b)"
        rf"|(?P<abnormal>\b(?:{abnormal})\b)",
        re.I,
    )


#: The heart may be "large"; a mediastinum next to "a large hiatal hernia" is not.
_SIZE_RE = _size_re("enlarged|enlargement|large|larger|increased|prominent|prominence|globular")
_WIDTH_RE = _size_re("enlarged|enlargement|widened|widening|increased|prominent|prominence")
_SIZE_PRE_RE = re.compile(
    rf"(?:(?P<unc>\bborderline(?:\s+enlarged)?|\b{_UPPER_NORMAL})"
    r"|(?P<normal>\bnormal|\bunremarkable|\bnon\s?enlarged)"
    r"|(?P<abnormal>\benlarged|\blarge|\bincreased|\bprominent|\bwidened|\bglobular|"
    r"\b(?:enlargement|prominence|widening|increase)\s+(?:in\s+(?:the\s+)?size\s+)?of(?:\s+the)?))"
    r"(?:\s+(?:in\s+size|sized?|appearing|caliber|\w+ly))?\s*$",
    re.I,
)
_LUNG_RE = re.compile(
    r"(?P<neg>\bnot\s+(?:entirely\s+|completely\s+)?clear\b)"
    r"|(?P<normal>\bclear\b|\bnormal\b(?!\s*(?:ly\b|volumes?|in\s+volume|inflat|expan|aerat))|"
    r"\bunremarkable\b)",
    re.I,
)
_LUNG_PRE_RE = re.compile(r"\b(?P<normal>clear|normal)\s+(?:appearing\s+)?$", re.I)
_LUNGVOL_RE = re.compile(
    r"(?P<normal>\b(?:low|high)\s+normal\b|\bnormal\b)"
    r"|(?P<abnormal>\b(?:low|lower|decreased|diminished|reduced|small|hyperinflated|increased|"
    r"large|high)\b)",
    re.I,
)
_VASC_RE = re.compile(
    r"(?P<neg>\bnot\s+(?:\w+\s+)?(?:increased|engorged|congested|prominent)\b)"
    r"|(?P<normal>\bwithin\s+normal\s+limits\b|\bnormal\b|\bunremarkable\b)"
    r"|(?P<abnormal>\b(?:increased|engorged|engorgement|congested|congestion|prominent|"
    r"prominence|cephaliz\w*|indistinct\w*|redistribut\w*|enlarged)\b)",
    re.I,
)
_VASC_PRE_RE = re.compile(
    r"(?:(?P<normal>\bnormal)|(?P<abnormal>\b(?:increased|prominent|engorged|indistinct)))"
    r"(?:\s+\w+)?\s*$",
    re.I,
)
_PLEURA_RE = re.compile(
    r"(?P<abnormal>\bblunt\w*|\bobliterat\w*)"
    r"|(?P<normal>\bclear\b|\bnormal\b|\bsharp\w*|\bunremarkable\b|\bwithin\s+normal\s+limits\b)",
    re.I,
)
_PLEURA_PRE_RE = re.compile(
    r"(?:(?P<abnormal>\bblunt\w*(?:\s+of)?(?:\s+the)?)|(?P<normal>\b(?:sharp|clear|normal)))"
    r"(?:\s+\w+)?\s*$",
    re.I,
)
_BONE_RE = re.compile(
    r"(?P<normal>\bintact\b|\bnormal\b|\bunremarkable\b|\bwithin\s+normal\s+limits\b|"
    r"\bno\s+acute\b)",
    re.I,
)
_BONE_PRE_RE = re.compile(r"\b(?P<normal>intact|normal|unremarkable)\s*$", re.I)
_SCAR_RE = re.compile(r"\b(?:scar\w*|thicken\w*|fibro\w*|chronic)\b", re.I)

_WINDOW = 90


def _first(regex: re.Pattern[str], text: str) -> tuple[str, str] | None:
    m = regex.search(text[:_WINDOW])
    if m is None:
        return None
    kind = next(k for k, v in m.groupdict().items() if v is not None)
    return kind, m.group(0).strip()


def _descriptor(
    post_re: re.Pattern[str], pre_re: re.Pattern[str] | None, pre: str, post: str
) -> tuple[str, str] | None:
    if pre_re is not None:
        m = pre_re.search(pre[-60:])
        if m is not None:
            kind = next(k for k, v in m.groupdict().items() if v is not None)
            return kind, m.group(0).strip()
    return _first(post_re, post)


#: organ label -> (post regex, pre regex, {descriptor kind: ((finding, value), ...)})
_ORGANS: dict[str, tuple[re.Pattern[str], re.Pattern[str] | None, dict[str, tuple]]] = {
    "ANAT_HEART": (
        _SIZE_RE,
        _SIZE_PRE_RE,
        {
            "normal": (("Cardiomegaly", NEGATIVE),),
            "neg": (("Cardiomegaly", NEGATIVE),),
            "unc": (("Cardiomegaly", UNCERTAIN),),
            "abnormal": (("Cardiomegaly", POSITIVE),),
        },
    ),
    "ANAT_CARDIOMED": (
        _WIDTH_RE,
        _SIZE_PRE_RE,
        {
            "normal": (("Enlarged Cardiomediastinum", NEGATIVE), ("Cardiomegaly", NEGATIVE)),
            "neg": (("Enlarged Cardiomediastinum", NEGATIVE), ("Cardiomegaly", NEGATIVE)),
            "unc": (("Enlarged Cardiomediastinum", UNCERTAIN), ("Cardiomegaly", UNCERTAIN)),
            "abnormal": (("Enlarged Cardiomediastinum", POSITIVE), ("Cardiomegaly", POSITIVE)),
        },
    ),
    "ANAT_MEDIAST": (
        _WIDTH_RE,
        _SIZE_PRE_RE,
        {
            "normal": (("Enlarged Cardiomediastinum", NEGATIVE),),
            "neg": (("Enlarged Cardiomediastinum", NEGATIVE),),
            "unc": (("Enlarged Cardiomediastinum", UNCERTAIN),),
            "abnormal": (("Enlarged Cardiomediastinum", POSITIVE),),
        },
    ),
    "ANAT_LUNG": (
        _LUNG_RE,
        _LUNG_PRE_RE,
        {"normal": tuple((f, NEGATIVE) for f in LUNG_GROUP)},
    ),
    "ANAT_LUNGVOL": (_LUNGVOL_RE, None, {"abnormal": ((OTHER, POSITIVE),)}),
    "ANAT_VASC": (
        _VASC_RE,
        _VASC_PRE_RE,
        {
            "normal": (("Edema", NEGATIVE),),
            "neg": (("Edema", NEGATIVE),),
            "abnormal": (("Edema", POSITIVE),),
        },
    ),
    "ANAT_PLEURA": (
        _PLEURA_RE,
        _PLEURA_PRE_RE,
        {
            "normal": (("Pleural Effusion", NEGATIVE), ("Pneumothorax", NEGATIVE)),
            "abnormal": (("Pleural Effusion", UNCERTAIN),),
        },
    ),
    "ANAT_BONE": (_BONE_RE, _BONE_PRE_RE, {"normal": (("Fracture", NEGATIVE),)}),
}


# =============================================================================================
# The spaCy pipeline
# =============================================================================================


def _mark_clauses(doc):
    """Keep the sentences in ``doc.spans``, then start a new "sentence" at each clause."""
    doc.spans["cxr_sentences"] = list(doc.sents)
    terms = labeler_terms()
    n = len(doc)
    for i in range(1, n):
        tok, prev = doc[i], doc[i - 1]
        low = tok.lower_
        start = False
        if "\n" in prev.text or prev.text == ";":
            start = True
        elif low in terms.clause_words:
            nxt = doc[i + 1].lower_ if i + 1 < n else ""
            start = nxt not in ("clear", "otherwise", "not")
        elif prev.text == "," and low == "and" and i + 1 < n:
            start = doc[i + 1].lower_ in ("no", "there", "the", "without")
        elif prev.text == ",":  # ", stable cardiomegaly"; "no effusion seen, left ..."
            start = low in terms.comma_clause_starts or (
                i >= 2 and doc[i - 2].lower_ in terms.participles
            )
        elif low == "and" and i + 1 < n and doc[i + 1].lower_ in ("there", "no"):
            start = True
        if start and not tok.is_space:
            tok.is_sent_start = True
    return doc


class LabelerUnavailableError(ExplorerError):
    """spaCy or negspacy, which the labeler runs on, is not installed."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(
            "The report labeler is not available here: it needs the spaCy and negspacy "
            "packages from the project's requirements."
        )


@functools.lru_cache(maxsize=1)
def _pipeline():
    try:
        import negspacy.negation  # noqa: F401  (registers the "negex" factory)
        import spacy
        from spacy.language import Language
    except ImportError as err:
        raise LabelerUnavailableError(str(err)) from err

    if not Language.has_factory("cxr_clauses"):
        Language.component("cxr_clauses", func=_mark_clauses)
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    nlp.add_pipe("cxr_clauses")
    ruler = nlp.add_pipe("entity_ruler", config={"validate": False, "phrase_matcher_attr": "LOWER"})
    ruler.add_patterns(_patterns())
    for name, terms, ext in _termsets():
        nlp.add_pipe("negex", name=name, config={"neg_termset": terms, "extension_name": ext})
    log.debug("built the labeler pipeline: %s", nlp.pipe_names)
    return nlp


def _prepare(text: str) -> str:
    """Same-length normalisation, so offsets stay valid in the original text."""
    text = re.sub(r"(?<=[A-Za-z])-(?=[A-Za-z])", " ", text)
    text = re.sub(r"\.\.(?=\s|$)", ". ", text)  # "abnormality.. Heart" is two sentences
    return text.replace("\u2019", "'")


# =============================================================================================
# Reading one parsed report
# =============================================================================================


@dataclass(frozen=True)
class _Cue:
    start_char: int
    end_char: int
    following: bool  # the cue follows the mention ("effusion has resolved")
    near: bool  # a following cue within _NEAR tokens, no other mention in between


_NEAR = 4


def _cue_index(doc, component, ents, ext: str) -> dict[int, _Cue]:
    """Token index of each entity a NegEx component flagged -> the cue that covers it.

    Re-runs the component's own matcher (``process_negations``) and scope boundaries
    (``termination_boundaries``) to name the cue; the decision itself is the component's.
    """
    flagged = [e for e in ents if e._.get(ext)]
    if not flagged:
        return {}
    preceding, following, terminating = component.process_negations(doc)
    bounds = component.termination_boundaries(doc, terminating)
    lows = [lo for lo, _ in bounds]
    pre = sorted((s, e) for _, s, e in preceding)
    fol = sorted((s, e) for _, s, e in following)
    starts = [e.start for e in ents]
    cues: dict[int, _Cue] = {}
    for ent in flagged:
        k = bisect.bisect_right(lows, ent.start) - 1
        lo, hi = bounds[k] if k >= 0 else (0, len(doc))
        before = [(s, e) for s, e in pre if lo <= s < ent.start]
        after = [(s, e) for s, e in fol if ent.end < e and s < hi]
        if before:  # the nearest cue; of two ending together, the longer ("cannot exclude")
            s, e = max(before, key=lambda se: (se[1], -se[0]))
            span = doc[s:e]
            cues[ent.start] = _Cue(span.start_char, span.end_char, following=False, near=True)
        elif after:
            s, e = min(after, key=lambda se: (se[0], -se[1]))
            span = doc[s:e]
            between = bisect.bisect_left(starts, s) - bisect.bisect_left(starts, ent.end)
            near = max(s, ent.end) - ent.end <= _NEAR and between == 0
            cues[ent.start] = _Cue(span.start_char, span.end_char, following=True, near=near)
    return cues


def _read(doc, original: str) -> ReportLabels:
    nlp = _pipeline()
    sentences = list(doc.spans["cxr_sentences"])
    sent_starts = [s.start for s in sentences]
    ents = list(doc.ents)
    clauses = list(doc.sents)
    clause_starts = [c.start for c in clauses]
    cue_maps = {
        ext: _cue_index(doc, nlp.get_pipe(name), ents, ext)
        for name, ext in (
            ("cxr_negation", _NEG_EXT),
            ("cxr_weak_hedge", _WEAK_EXT),
            ("cxr_strong_hedge", _STRONG_EXT),
        )
    }
    mentions: list[Mention] = []
    normal_statements: list[Mention] = []

    def _text(cues: dict[int, _Cue], ent) -> str | None:
        cue = cues.get(ent.start)
        return original[cue.start_char : cue.end_char] if cue else None

    def sentence_of(tok_i: int) -> str:
        k = bisect.bisect_right(sent_starts, tok_i) - 1
        s = sentences[max(k, 0)]
        return original[s.start_char : s.end_char].strip()

    def add(finding, value, ent, cue, rule):
        mentions.append(
            Mention(
                finding=finding,
                value=value,
                text=original[ent.start_char : ent.end_char],
                sentence=sentence_of(ent.start),
                cue=cue,
                rule=rule,
                start=ent.start_char,
                end=ent.end_char,
            )
        )

    for ent in ents:
        label = ent.label_
        clause = clauses[bisect.bisect_right(clause_starts, ent.start) - 1]
        if label in _ORGANS:
            post_re, pre_re, effects = _ORGANS[label]
            pre = doc.text[clause.start_char : ent.start_char]
            post = doc.text[ent.end_char : clause.end_char]
            found = _descriptor(post_re, pre_re, pre, post)
            if found is None:
                continue
            kind, cue = found
            effect = effects.get(kind, ())
            if label == "ANAT_PLEURA" and kind == "abnormal" and _SCAR_RE.search(clause.text):
                effect = (("Pleural Other", UNCERTAIN),)
            rule = "blunting" if label == "ANAT_PLEURA" and kind == "abnormal" else "organ"
            if kind in ("abnormal", "unc") and ent._.get(_NEG_EXT) and not ent._.get(_STRONG_EXT):
                # "no costophrenic angle blunting", "no enlarged cardiomediastinal silhouette"
                neg_cue = _text(cue_maps[_NEG_EXT], ent)
                effect = tuple((f, NEGATIVE) for f, _ in effect)
                cue, rule = f"{neg_cue} ... {cue}" if neg_cue else cue, "negation"
            for finding, value in effect:
                add(finding, value, ent, cue, rule)
            continue
        strong = ent._.get(_STRONG_EXT)
        negated = ent._.get(_NEG_EXT)
        weak = ent._.get(_WEAK_EXT)
        weak_cue = cue_maps[_WEAK_EXT].get(ent.start)
        if weak and weak_cue is not None and not weak_cue.near:
            weak = False  # "opacity, atelectasis versus scarring": the hedge is atelectasis's
        if strong:
            value, rule, cue = UNCERTAIN, "strong hedge", _text(cue_maps[_STRONG_EXT], ent)
        elif negated:
            value, rule, cue = NEGATIVE, "negation", _text(cue_maps[_NEG_EXT], ent)
        elif weak:
            value, rule, cue = UNCERTAIN, "hedge", _text(cue_maps[_WEAK_EXT], ent)
        else:
            value, rule, cue = POSITIVE, "affirmed", None
        if label == "NORMAL_STUDY":
            if value == POSITIVE:
                add(NO_FINDING, POSITIVE, ent, ent.text, "normal statement")
                normal_statements.append(mentions.pop())
            continue
        if label == "GENERIC":
            if value == NEGATIVE:
                add(NO_FINDING, POSITIVE, ent, cue, "normal statement")
                normal_statements.append(mentions.pop())
            else:
                add(OTHER, value, ent, cue, rule)
            continue
        if label == "BONE_GENERIC":
            add("Fracture" if value == NEGATIVE else OTHER, value, ent, cue, rule)
            continue
        for finding in label.split("+"):
            add(OTHER if finding == "OTHER" else finding, value, ent, cue, rule)

    values: dict[str, int | None] = dict.fromkeys(KNOWN_FINDINGS)
    for m in mentions:
        if m.finding in values and _RANK[m.value] > _RANK[values[m.finding]]:
            values[m.finding] = m.value

    blockers = [
        m
        for m in mentions
        if m.value in (POSITIVE, UNCERTAIN) and m.finding not in ("Support Devices", NO_FINDING)
    ]
    reads_normal = bool(normal_statements) or any(m.value == NEGATIVE for m in mentions)
    if reads_normal and not blockers:
        values[NO_FINDING] = POSITIVE
        negatives = [m for m in mentions if m.value == NEGATIVE]
        basis = normal_statements[0] if normal_statements else negatives[0]
        mentions.append(
            Mention(
                finding=NO_FINDING,
                value=POSITIVE,
                text=basis.text,
                sentence=basis.sentence,
                cue="no positive or uncertain finding"
                + (f"; normal statement: {basis.text!r}" if normal_statements else ""),
                rule="no finding",
                start=basis.start,
                end=basis.end,
            )
        )
    mentions.sort(key=lambda m: (m.start, m.finding))
    return ReportLabels(
        text=original,
        values=tuple(values[f] for f in KNOWN_FINDINGS),
        mentions=tuple(mentions),
    )


# =============================================================================================
# Public API
# =============================================================================================


def label_report_detailed(text: str) -> ReportLabels:
    """Label one report and keep the evidence for every label.

    Args:
        text: Report text (FINDINGS and/or IMPRESSION); "XXXX" de-identification marks are fine.

    Returns:
        The labels over the known findings and every mention with its sentence and cue.
    """
    return label_reports_detailed([text])[0]


def label_report(text: str) -> dict[str, int | None]:
    """Label one report with the 14 CheXpert findings and the three extras.

    Args:
        text: Report text.

    Returns:
        Finding name -> ``1`` (positive), ``0`` (negative), ``-1`` (uncertain) or ``None``
        (not mentioned), in CheXpert order. See the module docstring for the rules.
    """
    return label_report_detailed(text).as_dict()


def label_reports_detailed(texts: Iterable[str], batch_size: int = 128) -> list[ReportLabels]:
    """Label many reports in one spaCy pass (single process).

    Args:
        texts: Report texts; ``None`` is read as an empty report.
        batch_size: spaCy's batch size.

    Returns:
        One :class:`ReportLabels` per text, in order.
    """
    originals = ["" if t is None else str(t) for t in texts]
    nlp = _pipeline()
    prepared = (_prepare(t) for t in originals)
    return [
        _read(doc, original)
        for doc, original in zip(nlp.pipe(prepared, batch_size=batch_size), originals, strict=True)
    ]


def label_reports(texts: Sequence[str] | Iterable[str]) -> list[dict[str, int | None]]:
    """Label many reports; the batch form of :func:`label_report`.

    On one CPU core the 3,955 Indiana University reports take a few seconds.

    Args:
        texts: Report texts.

    Returns:
        One finding -> value dict per text, in order.
    """
    return [r.as_dict() for r in label_reports_detailed(texts)]
