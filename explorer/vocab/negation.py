"""Rule-based negation engine: polarity of a finding phrase or report sentence, and its flip.

:func:`polarity` tells whether a finding phrase or report sentence affirms, negates or hedges
a finding; :func:`negate` flips it in either direction and :func:`negate_report` flips the
sentences of a report that mention given findings (hard negatives in the spirit of Ko & Park,
CVPR 2025).

Conventions of the engine (all deterministic, regular expressions only; the negation, hedge and
normality cues are the data of :mod:`explorer.vocab.cues`, which the report labeler reads too):

* "Negated" includes statements of normality: "Heart size is normal.", "The lungs are clear."
  and "The trachea is midline." deny an abnormality, so they are negated; their flip names the
  abnormality ("Heart size is enlarged.", "The lungs are not clear.").
* Affirmed to negated drops size, severity, temporal and hedge modifiers, since "no small
  pneumothorax" would still allow a large one: "a small right apical pneumothorax" becomes
  "no right apical pneumothorax" and "Unchanged mild cardiomegaly." becomes "No cardiomegaly.".
* A sentence-initial "No X." becomes "X is present." ("X and Y are present." for a list, with
  "or" read as "and"; "X is seen." when the sentence said "No X is seen."); "No evidence of X."
  becomes "There is evidence of X.". A *phrase* (text without final punctuation, as typed into
  the app) flips plainly: "no pleural effusion" <-> "pleural effusion".
* Uncertain sentences ("Possible early consolidation at the right base.", "Cannot exclude a
  small left effusion.", "Opacity may represent atelectasis.") are turned into the definite
  negation ("No consolidation at the right base.", "No left effusion.", "No opacity or
  atelectasis."); :func:`polarity` calls them "uncertain" even when the hedge contains a
  negation word ("cannot exclude", "not ruled out").
* A sentence is flipped clause by clause: the main clause (the first with a cue or a finding)
  sets the polarity, and every clause of that polarity is flipped; clauses of the other
  polarity are left as they are.
* When no rule applies, or the result would not have the opposite polarity, :func:`negate`
  raises :class:`NegationError` instead of returning text that is unchanged or wrong, so the app
  can ask the user to write the negated version.

Known limits: mixed sentences ("Cardiomegaly without edema.") flip only their main clause,
which can read oddly ("No cardiomegaly without edema."); verbs of change ("Pneumothorax has
resolved.") flip to their plain negation ("has not resolved"); a sentence with no recognised
finding or normality word ("The mediastinum is stable.", "Chest.") is refused; the word lists
are English radiology phrasing, not a parser, so unusual syntax can give stilted output
("Acute osseous abnormality is present.", "There is left effusion."). On the 22,838 sentences
of the Indiana University reports, 93% are flipped and 99.9% of flipped definite sentences
flip back to their own polarity.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Literal

from explorer.errors import ExplorerError
from explorer.vocab.cues import alternation, cue_vocabulary
from explorer.vocab.labels import finding_vocab, known_finding

log = logging.getLogger(__name__)


#: What :func:`polarity` returns.
Polarity = Literal["affirmed", "negated", "uncertain"]
POLARITIES: tuple[Polarity, ...] = ("affirmed", "negated", "uncertain")


class NegationError(ExplorerError):
    """The engine found no rule that flips this text; the user should write the flip by hand.

    Attributes:
        text: The text that could not be flipped (kept out of the message, which may be shown).
        reason: A short technical reason, for logs and tests.
    """

    def __init__(self, text: str, reason: str) -> None:
        self.text = text
        self.reason = reason
        super().__init__(
            "This text could not be turned into its opposite automatically "
            f"({reason}); please write the negated version yourself."
        )


# =============================================================================================

_I = re.IGNORECASE


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


#: Words that name an abnormality (or a device); a sentence needs one to be negatable when it
#: carries no negation or normality cue. Regular expressions, matched at word boundaries.
_ABNORMALITY_TERMS: tuple[str, ...] = _words(
    r"""
    abnormalit(?:y|ies) abnormal\w* disease process findings? lesions? opacit(?:y|ies) opacifi\w*
    densit(?:y|ies) infiltrat\w* consolidat\w* atelecta\w* o?edema\w* congest\w* pneumonias?
    pneumothora(?:x|ces) hydropneumothorax effusions? fluid cardiomegaly enlarge\w* widen\w*
    thicken\w* nodul\w* mass(?:es)? granulom\w* calcifi\w* scar\w* fibros\w* fibrotic fractur\w*
    deformit(?:y|ies) collaps\w* emphysema\w* hyperinflat\w* hyperexpan\w* hyperaerat\w*
    hyperlucen\w* lucen\w* bulla\w* bullous blebs? cysts? cystic cavit\w* herni\w* spondylo\w*
    osteophyt\w* degenerative scoliosis kyphos\w* kyphotic osteopeni\w* osteoporo\w* tortu\w*
    ectatic ectasia aneurysm\w* atheroscl\w* adenopathy lymphadenopathy metasta\w* tumou?rs?
    neoplas\w* carcinoma malignan\w* cancer elevat\w* blunt\w* deviat\w* dilat\w* distend\w*
    distension prominen\w* engorge\w* cephalization bronchiectasis interstitial reticul\w*
    airspace air\sspace free\sair pneumoperitoneum pneumomediastinum emboli\w* hemothorax empyema
    abscess\w* infect\w* inflammat\w* devices? tubes? catheters? lines? pacemakers? pacers? leads
    wires? sternotomy clips? stents? ports? picc hardware prosthe\w* defibrillator cabg surgical
    post-?operative post-?surgical thoracotomy \w+ectomy low\s(?:lung\s)?volumes? volume\sloss
    hypoinflat\w* hypoventilat\w* flatten\w* copd chf eventration narrow\w* displace\w* shift
    air-fluid failure kerley compression sclero\w* lytic blastic arthritis arthropathy
    hyperinflation plaques? hilar mediastinal\swidening pleural collapse pectus bronchitis
    bronchial peribronchial granulomatous sarcoid\w* tuberculosis spurs? low large unfold\w*
    \w*scolio\w* demineraliz\w* arthritic hypertrophic hyperdens\w* crowding aspiration overload
    diminished air injur\w* complications? recurren\w* changes? swelling hemorrhage contusions?
    """
)
_ABNORMALITY_RE = re.compile(r"\b(?:" + "|".join(_ABNORMALITY_TERMS) + r")\b", _I)

#: Leading modifiers dropped when a finding is denied ("no small effusion" would allow a large).
_DROP_WORDS = frozenset(
    _words(
        """
        a an the any some small smaller large larger tiny trace trivial minimal minimally mild
        mildly moderate moderately severe severely marked markedly massive extensive slight slightly
    subtle little minor significant definite definitive obvious new newly unchanged stable
    stably persistent persisting persistently residual redemonstrated re-demonstrated
    increased increasing decreased decreasing improved improving worsened worsening developing
    evolving early possible possibly probable probably questionable suspected likely presumed
    apparent borderline intact again also still now grossly essentially very overall
    relatively otherwise additional chronic-appearing moderate-sized small-sized large-sized
    medium-sized tiny-sized small-to-moderate moderate-to-large mild-to-moderate
    moderate-to-severe with sized"""
    )
)
_DROP_PHRASE_RE = re.compile(
    r"^(?:re-?demonstrat(?:ion|ed) of|again (?:seen|noted|demonstrated|identified)(?: (?:is|are))?"
    r"|status post|s/p|interval (?:increase|decrease|worsening|improvement) (?:in|of)(?: the)?"
    r"|(?:increased|decreased|increasing|decreasing|larger|smaller) (?:size|volume) of(?: the)?"
    r"|(?:small|mild|moderate|minimal|large) to (?:moderate|large|severe))\s+",
    _I,
)
_DEGREE_RE = re.compile(
    r"^(?:(?:mildly|slightly|moderately|markedly|severely|minimally|borderline|again|also|now|"
    r"still|somewhat|significantly|grossly|very|more|less|only|at least)\s+)+",
    _I,
)

_PARTICIPLES = (
    r"seen|identified|noted|demonstrated|visualized|visualised|visible|evident|appreciated|"
    r"detected|present|apparent|shown|observed|found"
)
_LOC_PREP = (
    r"in|at|within|along|involving|on|over|overlying|throughout|under|beneath|above|below|near|"
    r"adjacent to|to suggest|to indicate|bilaterally|since|from|compared|when|as|identified|"
    r"projecting|which|that"
)
_NP_END_RE = re.compile(
    rf"\s+(?:(?P<be>is|are|was|were|has been|have been)\s+)?(?P<part>{_PARTICIPLES})\b"
    rf"(?=\s*$|[,;:]|\s+(?:{_LOC_PREP}|to|by|with|for|or|and|again|now|currently|today|"
    r"radiographically|here|anymore|definitely|clearly)\b)"
    rf"|\s+(?P<prep>{_LOC_PREP})\b|,?\s+(?P<but>but|and there|however)\b",
    _I,
)
_EVIDENCE_HEAD_RE = re.compile(
    r"^(?:(?:radiographic|definite|convincing|typical|significant|other|specific|acute|"
    r"additional|plain film|x-ray|clear|direct|further|residual)\s+)*"
    r"(?:evidence|signs?|findings?|features?|xxxx|indication|suggestion)\s+(?:of|to suggest|for)\b",
    _I,
)

# --- polarity cues -----------------------------------------------------------------------------

_CUES = cue_vocabulary()
_HEDGE_STRONG_RE = re.compile(rf"\b{alternation(_CUES.strong_hedge)}\b", _I)
_HEDGE_WEAK_RE = re.compile(rf"(?<![\w-]){alternation(_CUES.weak_hedge)}(?![\w-])", _I)
_PLAIN_NEG_RE = re.compile(rf"\b{alternation(_CUES.plain_negation)}\b", _I)
_NEG_CUES = "|".join(_CUES.negation)
_DEVICE_AHEAD = rf"(?!\s+(?:median\s+|midline\s+)?{alternation(_CUES.devices)})"
_NORMAL_CUES = "|".join(
    f"{cue}{_DEVICE_AHEAD}" if cue in _CUES.normal_not_before_device else cue
    for cue in _CUES.normal
)
_NORMAL_CUE_RE = re.compile(rf"\b(?:{_NORMAL_CUES})\b", _I)
#: What the engine writes when it affirms; a sentence that carries one can be flipped back.
_AFFIRMED_MARKER_RE = re.compile(
    r"\b(?:poorly[- ]\w+|opacified|remarkable|(?:is|are|was|were) present|positive for|"
    r"presence of|evidence (?:of|for)|persisten\w*|not clear|not intact|not midline)\b",
    _I,
)
_CUE_RE = re.compile(rf"\b(?:(?P<neg>{_NEG_CUES})|(?P<norm>{_NORMAL_CUES}))\b", _I)
_DOUBLE_NEG_RE = re.compile(
    r"^\s+(?:(?:\w+ly|quite|yet|longer|been|as|appear|seem|look|overall|otherwise)\s+)*"
    rf"(?:{_NORMAL_CUES}|free of|clear of|resolved|absent|removed)\b",
    _I,
)
_COPULA = r"is|are|was|were|appears?|remains?|seems?"
_MAIN_SCOPE_CUT_RE = re.compile(r",?\s+(?:with|without|which|who|that)\b|,\s*not\b", _I)

# --- sentence and clause splitting ---------------------------------------------------------

_EDGES_RE = re.compile(
    r"^(?P<lead>\s*(?:\(?\d{1,2}[.)](?:\s+|(?=[A-Z]))|[-*\u2022]\s+)?)"
    r"(?P<core>.*?)(?P<trail>[\s.!?]*)$",
    re.S,
)
_CLAUSE_SPLIT_RE = re.compile(
    r"(\s*;\s*"
    r"|(?<!\bvs)(?<!\be\.g)(?<!\bi\.e)(?<!\bdr)\.\s+"
    r"|,?\s+but\s+|,?\s+however,?\s+|,?\s+(?:although|though)\s+|,?\s+while\s+"
    r"|,\s+(?=(?:and\s+)?(?:no|there|without|the|lungs?|heart|otherwise|negative)\b)"
    r"|,?\s+and\s+(?=(?:no|there|the)\b))",
    _I,
)
_SENTENCE_RE = re.compile(r"\S.*?(?:[.!?]+(?=\s|$)|$)", re.S)
_ABBREVIATIONS = ("vs.", "e.g.", "i.e.", "dr.", "approx.", "mr.", "mrs.", "fig.")


def _split_edges(text: str) -> tuple[str, str, str]:
    m = _EDGES_RE.match(text)
    assert m is not None  # the pattern matches any string
    return m["lead"], m["core"], m["trail"]


def _split_clauses(core: str) -> list[str]:
    """Clauses and separators alternating: ``[clause, sep, clause, ...]``."""
    return _CLAUSE_SPLIT_RE.split(core)


def split_sentences(text: str) -> list[str]:
    """Split report text into sentences (list markers such as "1." stay with their sentence).

    Args:
        text: Free report text.

    Returns:
        The sentences, stripped, in order.
    """
    return [text[a:b].strip() for a, b in _sentence_spans(text)]


def _sentence_spans(text: str) -> list[tuple[int, int]]:
    spans: list[list[int]] = []
    for m in _SENTENCE_RE.finditer(text):
        piece = m.group(0)
        prev = text[spans[-1][0] : spans[-1][1]] if spans else ""
        merge = bool(spans) and (
            re.fullmatch(r"\(?\d{1,2}[.)]", prev.strip()) is not None
            or prev.strip().lower().endswith(_ABBREVIATIONS)
            or re.fullmatch(r"[.\s]+", piece) is not None
        )
        if merge:
            spans[-1][1] = m.end()
        else:
            spans.append([m.start(), m.end()])
    return [(a, b) for a, b in spans]


# --- small text helpers -------------------------------------------------------------------------


def _first_alpha(text: str) -> int:
    for i, ch in enumerate(text):
        if ch.isalpha():
            return i
    return -1


def _cap_first(text: str) -> str:
    i = _first_alpha(text)
    return text if i < 0 else text[:i] + text[i].upper() + text[i + 1 :]


def _lower_first(text: str) -> str:
    i = _first_alpha(text)
    if i < 0:
        return text
    word = re.match(r"[\w'/-]+", text[i:])
    if word and len(word.group(0)) > 1 and word.group(0).isupper():
        return text  # an acronym or Open-i's "XXXX"
    return text[:i] + text[i].lower() + text[i + 1 :]


def _match_case(original: str, new: str) -> str:
    letters = [c for c in original if c.isalpha()]
    if len(letters) > 3 and all(c.isupper() for c in letters) and "XXXX" not in original:
        return new.upper()
    i = _first_alpha(original)
    if i >= 0 and original[i].isupper():
        return _cap_first(new)
    return _lower_first(new)


def _normalise(text: str) -> str:
    text = re.sub(r"\bcan't\b", "cannot", text, flags=_I)
    text = re.sub(r"\bwon't\b", "will not", text, flags=_I)
    text = re.sub(r"\b(there|it)'s\b", r"\1 is", text, flags=_I)
    return re.sub(r"n't\b", " not", text, flags=_I)


def _mentions_abnormality(text: str) -> bool:
    return _ABNORMALITY_RE.search(text) is not None


def _negatable(text: str) -> bool:
    """A finding, a normality word or one of the engine's own affirmed forms is present."""
    return (
        _mentions_abnormality(text)
        or _NORMAL_CUE_RE.search(text) is not None
        or _AFFIRMED_MARKER_RE.search(text) is not None
    )


def strip_noun_phrase(np: str) -> str | None:
    """Drop leading articles and size/severity/temporal/hedge modifiers of a noun phrase."""
    np = np.strip(" ,")
    while True:
        m = _DROP_PHRASE_RE.match(np)
        if not m:
            break
        np = np[m.end() :]
    words = np.split()
    while words and words[0].lower().strip(",") in _DROP_WORDS:
        words.pop(0)
    if words and _mentions_abnormality(np) and not _mentions_abnormality(" ".join(words)):
        # the modifier was the finding ("large amount of fluid" keeps "large")
        words = np.split()
        while words and words[0].lower() in ("a", "an", "the", "any", "some"):
            words.pop(0)
    if not words:
        return None
    return _lower_first(" ".join(words))


_SINGULAR_ENDINGS = ("ss", "us", "is", "ous", "sis", "xis")
_PLURAL_HEADS = frozenset({"pneumothoraces", "bullae", "vertebrae", "sequelae", "data", "media"})


def is_plural(np: str) -> bool:
    np = np.strip().lower()
    head_part = re.split(
        r"\s+(?:of|in|at|on|within|along|involving|to|with|from|over|overlying|under|"
        r"throughout|is|are|was|were)\b",
        np,
    )[0]
    if re.search(r"\band\b|,", head_part):
        return True
    words = re.findall(r"[a-z][\w-]*", head_part)
    if not words:
        return False
    head = words[-1]
    if head in _PLURAL_HEADS:
        return True
    if head == "xxxx" or head.endswith(_SINGULAR_ENDINGS):
        return False
    return head.endswith("s")


def _third_person(verb: str) -> str:
    v = verb.lower()
    if v == "have":
        return "has"
    if v.endswith(("s", "sh", "ch", "x", "z", "o")):
        return v + "es"
    if v.endswith("y") and len(v) > 1 and v[-2] not in "aeiou":
        return v[:-1] + "ies"
    return v + "s"


def _show_for(be: str) -> str:
    return {"is": "shows", "are": "show", "was": "showed", "were": "showed"}[be.lower()]


def _list_and(text: str) -> str:
    """In a denied list "or"/"nor" mean "and" once the denial is gone."""
    return re.sub(r"\b(?:or|nor)\b", "and", text, flags=_I)


def _subject_be(subject: str, original_be: str | None) -> str:
    plural = is_plural(subject) or re.search(r"\band\b|,", subject) is not None
    if original_be is None or original_be.lower() in ("is", "are"):
        return "are" if plural else "is"
    if original_be.lower() in ("was", "were"):
        return "were" if plural else "was"
    return original_be.lower()


def _heart_context(clause: str) -> bool:
    lc = clause.lower()
    return bool(re.search(r"\b(?:heart|cardiac|cardio\w*|cardiomegaly)\b", lc)) and not re.search(
        r"\b(?:lungs?|pulmonary|vascula\w*|hil\w*|pleura\w*|osseous|bon\w*|contours?|aort\w*|"
        r"trachea|airway)\b",
        lc,
    )


# =============================================================================================
# Polarity
# =============================================================================================


def _has_hedge(clause: str) -> bool:
    if "?" in clause or _HEDGE_STRONG_RE.search(clause):
        return True
    for m in _HEDGE_WEAK_RE.finditer(clause):
        if _PLAIN_NEG_RE.search(clause[: m.start()]):
            continue  # "no suspicious nodules", "no opacity that could be pneumonia"
        return True
    return False


def _main_scope(clause: str) -> str:
    """The clause without trailing "with ..."/"without ..." modifiers of its main statement."""
    for m in _MAIN_SCOPE_CUT_RE.finditer(clause):
        before = clause[: m.start()].strip()
        if not before or re.search(rf"\b(?:{_COPULA}|otherwise)$", before, _I):
            continue  # "are without acute abnormality": the modifier is the predicate
        return before
    return clause


def _clause_polarity(clause: str) -> Polarity:
    text = _normalise(clause)
    if _has_hedge(text):
        return "uncertain"
    scope = _main_scope(text)
    m = _CUE_RE.search(scope)
    if m is None:
        return "affirmed"
    if m.group("neg") and _DOUBLE_NEG_RE.match(scope[m.end() :]):
        return "affirmed"  # "not clear", "no longer normal", "has not resolved"
    return "negated"


def _clauses_with_polarity(core: str) -> list[tuple[str, Polarity | None]]:
    parts = _split_clauses(core)
    out: list[tuple[str, Polarity | None]] = []
    for i, part in enumerate(parts):
        out.append((part, None if i % 2 else _clause_polarity(part)))
    return out


def _sentence_polarity(core: str) -> Polarity:
    clauses = [(c, p) for c, p in _clauses_with_polarity(core) if p is not None and c.strip()]
    if any(p == "uncertain" for _, p in clauses):
        return "uncertain"
    for clause, pol in clauses:
        if pol == "negated" or _mentions_abnormality(clause):
            return pol  # the main clause: the first that carries a cue or a finding
    return "affirmed"


def polarity(text: str) -> Polarity:
    """Whether a finding phrase or report sentence affirms, negates or hedges its finding.

    Statements of normality count as negated ("Heart size is normal.", "Lungs are clear.").
    A hedge wins over a negation word inside it ("Cannot exclude pneumonia." is uncertain),
    but a hedge word under a negation does not ("No suspicious nodules." is negated).
    Text without any cue is affirmed.

    Args:
        text: A phrase or a sentence (several sentences are read as clauses of one).

    Returns:
        "affirmed", "negated" or "uncertain".
    """
    _, core, trail = _split_edges(text)
    return "uncertain" if "?" in trail else _sentence_polarity(core)


def is_negated(text: str) -> bool:
    """True if :func:`polarity` says "negated"."""
    return polarity(text) == "negated"


# =============================================================================================
# Negated -> affirmed
# =============================================================================================

_LEAD_NO_RE = re.compile(
    r"^(?P<adv>(?:(?:specifically|again|also|otherwise|still|currently|additionally|and|"
    r"finally|today|now)\b,?\s+)?)"
    r"(?P<cue>no(?!\s+longer\b)|without|free of|clear of)\s+(?P<rest>\S.*)$",
    _I | re.S,
)


def _affirm_leading_no(clause: str, phrase_mode: bool, initial: bool) -> str | None:
    m = _LEAD_NO_RE.match(clause)
    if m is None or (not initial and m["cue"].lower() != "no"):
        return None  # a later ", without X" stays a modifier: "with X"
    adv, rest = m["adv"], m["rest"]
    if phrase_mode:
        return adv + _list_and(rest)
    if _EVIDENCE_HEAD_RE.match(rest):
        head = rest.split(" of ")[0]
        be = "are" if is_plural(head) else "is"
        return f"{adv}there {be} {_list_and(rest)}"
    end = _NP_END_RE.search(rest)
    np, tail = (rest[: end.start()], rest[end.start() :]) if end else (rest, "")
    np = _list_and(np)
    if not np.strip():
        return None
    if end is not None and end.group("part"):
        be = _subject_be(np, end.group("be"))
        after = rest[end.end() :]
        return f"{adv}{_cap_first(np) if not adv else np} {be} {end.group('part')}{after}"
    be = _subject_be(np, None)
    body = f"{np} {be} present{tail}"
    return adv + (body if adv else _cap_first(body))


def _sub(pattern: str, repl, text: str) -> str:
    return re.sub(pattern, repl, text, flags=_I)


def _keep_case(src: str, new: str) -> str:
    return _cap_first(new) if src[:1].isupper() else new


def _affirm_clause(clause: str, phrase_mode: bool, initial: bool = True) -> str | None:
    c = _sub(r"^no longer\s+(?:any|an?)\s+", lambda m: _keep_case(m[0], "no "), _normalise(clause))
    lead = _affirm_leading_no(c, phrase_mode, initial)
    if lead is not None:
        c = lead
    c = _sub(r"\bno longer\b", lambda m: _keep_case(m[0], "still"), c)
    c = _sub(
        r"\b(there\s+(?:is|are|was|were|has been|have been)"
        r"(?:\s+(?:again|also|still|now))?)\s+no\s+",
        lambda m: m[1] + " ",
        c,
    )
    c = _sub(
        r"\b(shows?|showed|demonstrates?|demonstrated|reveals?|revealed|has|have|had|"
        r"contains?|with|of)\s+no\s+",
        lambda m: m[1] + " ",
        c,
    )
    c = _sub(
        r"\b(is|are|was|were|appears?|remains?|seems?|has|have|had|has been|have been|can|"
        r"could|will|should)\s+not\s+",
        lambda m: m[1] + " ",
        c,
    )
    c = _sub(
        r"\b(does|do|did)\s+not\s+(\w+)",
        lambda m: (
            _keep_case(m[1], _third_person(m[2]))
            if m[1].lower() == "does"
            else _keep_case(m[1], m[2])
            if m[1].lower() == "do"
            else f"{m[1]} {m[2]}"
        ),
        c,
    )
    c = _sub(
        r"\b(is|are|was|were)\s+(?:otherwise\s+)?(?:without|free of|clear of)\b",
        lambda m: _show_for(m[1]),
        c,
    )
    c = _sub(r"\b(?:without|free of|clear of)\b", lambda m: _keep_case(m[0], "with"), c)
    c = _sub(r"\bnegative for\b", lambda m: _keep_case(m[0], "positive for"), c)
    c = _sub(r"\bnegative\b", lambda m: _keep_case(m[0], "abnormal"), c)
    c = _sub(r"\babsence of\b", lambda m: _keep_case(m[0], "presence of"), c)
    c = _sub(r"\babsent\b", lambda m: _keep_case(m[0], "present"), c)
    c = _sub(
        r"\b(has|have|had|is|are|was|were)\s+(been\s+)?(resolved|removed)\b",
        lambda m: f"{m[1]} not {m[2] or ''}{m[3]}",
        c,
    )
    c = _sub(r"\bresolution of\b", lambda m: _keep_case(m[0], "persistence of"), c)
    c = _sub(r"(?<!not )\bresolved\b", lambda m: _keep_case(m[0], "persistent"), c)
    c = _sub(r"\bnone\b", lambda m: _keep_case(m[0], "some"), c)
    c = _sub(r"(?<=\s)no\s+(?!longer\b)", "", c)
    c = _affirm_normality(c)
    if lead is None:
        c = _list_and(c)
    if not _has_hedge(clause):
        # a hedge word that sat under the negation ("no suspicious nodules") goes with it
        c = _sub(
            r"\b(?:suspicious|possible|probable|questionable|suspected|likely)(?:[- ]appearing)?"
            r"\s+(?=\w)",
            "",
            c,
        )
    return c


def _flip_clear(m: re.Match[str]) -> str:
    if m["lv"]:
        aux = "does" if m["lv"].lower().endswith("s") else "do"
        verb = re.sub(r"s$", "", m["lv"])
        return _keep_case(m[0], f"{aux} not {verb} {m['adv'] or ''}clear")
    if m["lungs"] is not None:
        return _keep_case(m[0], "opacified")
    return _keep_case(m[0], "not clear")


def _affirm_normality(c: str) -> str:
    heart = _heart_context(c)
    abn = "enlarged" if heart else "abnormal"
    c = _sub(
        r"\bwithin normal limits(?:\s+(?:for|in)\s+(?:size|contour|appearance|configuration|"
        r"caliber)(?:\s+and\s+(?:size|contour|appearance|configuration|caliber))?)?",
        lambda m: _keep_case(m[0], abn),
        c,
    )
    if heart:
        c = _sub(
            r"\b(?:of\s+)?normal (?:in )?size(?:\s+and\s+(?:contour|configuration|shape|"
            r"appearance))?(?!\s+and)",
            lambda m: _keep_case(m[0], "enlarged"),
            c,
        )
        c = _sub(
            r"\bnormal(?=\s+(?:heart\s+|cardiac\s+)?size\b)",
            lambda m: _keep_case(m[0], "enlarged"),
            c,
        )
    c = _sub(r"\bnormal\b", lambda m: _keep_case(m[0], abn), c)
    c = _sub(r"\bnormally\b", lambda m: _keep_case(m[0], "abnormally"), c)
    c = _sub(r"\bunremarkable\b", lambda m: _keep_case(m[0], abn), c)
    c = _sub(
        r"\bwell[- ]?(expanded|aerated|inflated|penetrated)\b",
        lambda m: _keep_case(m[0], f"poorly {m[1]}"),
        c,
    )
    c = _sub(
        r"(?:\b(?P<lv>appears?|seems?|looks?)\s+"
        r"(?P<adv>(?:\w+ly|overall|otherwise|also|now|still)\s+)?)?"
        r"\bclear\b(?!\s+of)(?P<lungs>(?=\s+lungs?\b))?",
        _flip_clear,
        c,
    )
    c = _sub(
        rf"\b(trachea\w*\s+(?:{_COPULA})\s+)(?:in the\s+)?midline\b",
        lambda m: m[1] + "deviated",
        c,
    )
    c = _sub(
        rf"\b({_COPULA})\s+((?:otherwise|also|grossly|essentially)\s+)?(intact|midline)\b",
        lambda m: f"{m[1]} {m[2] or ''}not {m[3]}",
        c,
    )
    c = _sub(r"\bmidline(?=\s+trachea\b)", lambda m: _keep_case(m[0], "deviated"), c)
    c = _sub(
        rf"(?<!not )\b(intact|midline)\b{_DEVICE_AHEAD}",
        lambda m: _keep_case(m[0], f"not {m[1].lower()}"),
        c,
    )
    c = _sub(r"\bnon-?enlarged\b", lambda m: _keep_case(m[0], "enlarged"), c)
    return c


# =============================================================================================
# Affirmed -> negated
# =============================================================================================

_VERB_RE = re.compile(
    r"\b(?:(?P<cop>is|are|was|were|has been|have been|had been|appears?|appeared|remains?|"
    r"remained|seems?|looks?)"
    r"|(?P<verb>shows?|showed|demonstrates?|demonstrated|reveals?|revealed|contains?|has|have|"
    r"had|persists?|persisted))\b",
    _I,
)
_STABILITY_RE = re.compile(
    r"^(?:(?:again|essentially|grossly|overall|relatively|largely|not significantly|mildly|"
    r"slightly|minimally)\s+)*(?:stable|unchanged|similar|improved|improving|increased|"
    r"increasing|decreased|decreasing|worse|worsened|worsening|larger|smaller|redemonstrated|"
    r"re-demonstrated|persistent|again (?:seen|noted|demonstrated|identified)|new|changed)\b",
    _I,
)
_CHANGE_VERB_RE = re.compile(
    r"\b(has|have|had)\s+(increased|decreased|developed|enlarged|improved|worsened|progressed|"
    r"cleared|grown|appeared|changed|evolved)\b",
    _I,
)
_THERE_RE = re.compile(
    r"^(?P<adv>(?:[a-z]+ly|again|also|now|still|additionally|today),?\s+)?"
    r"(?P<there>there\s+(?:is|are|was|were|has been|have been|had been|remains?|exists?))"
    r"(?P<adv2>(?:\s+(?:again|also|still|now|redemonstrated|re-demonstrated|persistent|"
    r"interval|seen|noted))*)\s+(?P<np>\S.*)$",
    _I | re.S,
)


def _deny_swaps(c: str) -> str:
    c = _sub(
        rf"\b(does|do|did)\s+not\s+(appear|seem|look)(?=(?:\s+(?:\w+ly|overall|otherwise))*"
        rf"\s+(?:{_NORMAL_CUES})\b)",
        lambda m: (
            _third_person(m[2])
            if m[1].lower() == "does"
            else m[2] + "ed"
            if m[1].lower() == "did"
            else m[2]
        ),
        c,
    )
    c = _sub(
        r"\b(?:not|no longer)\s+(?:(?:entirely|completely|fully|totally|quite|yet)\s+)?"
        r"(?=(?:(?:\w+ly|overall|otherwise)\s+)*"
        rf"(?:{_NORMAL_CUES}|free of|clear of|resolved|removed|absent|been removed|"
        r"been resolved)\b)",
        "",
        c,
    )
    c = _sub(r"\bpositive for\b", lambda m: _keep_case(m[0], "negative for"), c)
    c = _sub(r"\bpresence of\b", lambda m: _keep_case(m[0], "absence of"), c)
    c = _sub(r"\bwith evidence of\b", lambda m: _keep_case(m[0], "without evidence of"), c)
    c = _sub(r"\bpersistence of\b", lambda m: _keep_case(m[0], "resolution of"), c)
    c = _sub(r"\babnormally\b", lambda m: _keep_case(m[0], "normally"), c)
    c = _sub(r"\babnormal\b", lambda m: _keep_case(m[0], "normal"), c)
    c = _sub(
        r"\bpoorly[- ](expanded|aerated|inflated|penetrated)\b",
        lambda m: _keep_case(m[0], f"well {m[1]}"),
        c,
    )
    c = _sub(r"\bopacified(?=\s+lungs?\b)", lambda m: _keep_case(m[0], "clear"), c)
    c = _sub(rf"\b(trachea\w*\s+(?:{_COPULA})\s+)deviated\b", lambda m: m[1] + "midline", c)
    c = _sub(
        r"\benlarged(?=\s+(?:heart|cardiac)\s+size\b)", lambda m: _keep_case(m[0], "normal"), c
    )
    c = _sub(
        r"\b((?:heart|cardiac)\s+size\s+(?:is\s+|appears\s+|was\s+)?)(?:mildly\s+|moderately\s+|"
        r"markedly\s+|severely\s+|slightly\s+)?enlarged\b",
        lambda m: m[1] + "normal",
        c,
    )
    return c


def _no_np(np: str) -> str | None:
    stripped = strip_noun_phrase(np)
    return None if stripped is None else f"no {stripped}"


def _deny_clause(clause: str, phrase_mode: bool) -> str | None:
    c = _normalise(clause)
    swapped = _deny_swaps(c)
    if swapped != c:
        return swapped
    m = _THERE_RE.match(c)
    if m:
        np = strip_noun_phrase(m["np"])
        if np is None:
            return None
        return f"{m['adv'] or ''}{m['there']} no {np}"
    m = _CHANGE_VERB_RE.search(c)
    if m and m.start() > 0:
        return f"{c[: m.start()]}{m[1]} not {m[2]}{c[m.end() :]}"
    verb = _VERB_RE.search(c)
    if (
        verb
        and verb.start() > 0
        and not re.search(r"\b(?:which|that|who)\b", c[: verb.start()], _I)
    ):
        subj, rest = c[: verb.start()].rstrip(), c[verb.end() :].lstrip()
        if verb["cop"]:
            return _deny_copula(subj, verb["cop"], rest, phrase_mode)
        word = verb["verb"].lower()
        if word.startswith("persist"):
            return _no_np(subj)
        np = strip_noun_phrase(rest)
        if np is None:
            return None
        return f"{subj} {verb['verb']} no {np}"
    if re.match(r"^(?:it|this|these|those|there|which|that|when|if|please|recommend)\b", c, _I):
        return None
    return _no_np(c)


def _deny_copula(subj: str, cop: str, pred: str, phrase_mode: bool) -> str | None:
    low = cop.lower()
    m = re.match(r"^(?:again\s+|also\s+|now\s+|still\s+)*present\b", pred, _I)
    if m:
        stripped = strip_noun_phrase(subj)
        if stripped is None:
            return None
        be = {"appears": "is", "appear": "are", "remains": "is", "remain": "are"}.get(low, cop)
        return f"{stripped} {be} absent{pred[m.end() :]}"
    if _STABILITY_RE.match(pred) and _mentions_abnormality(subj):
        return _no_np(subj)
    pred = _DEGREE_RE.sub("", pred)
    if not pred:
        return None
    if re.match(rf"^(?:{_PARTICIPLES})\b", pred, _I) and _mentions_abnormality(subj):
        subj = (
            strip_noun_phrase(subj) or subj
        )  # "a small effusion is seen" -> "effusion is not seen"
    if low in ("is", "are", "was", "were"):
        return f"{subj} {cop} not {pred}"
    if low in ("has been", "have been", "had been"):
        aux = cop.split()[0]
        return f"{subj} {aux} not been {pred}"
    if low in ("remains", "remain", "remained"):
        be = {"remains": "is", "remain": "are", "remained": "was"}[low]
        return f"{subj} {be} not {pred}"
    base = re.sub(r"(?:s|ed)$", "", low)
    if low in ("appears", "seems", "looks"):
        aux = "does"
    elif low.endswith("ed"):
        aux = "did"
    else:
        aux = "do"
    return f"{subj} {aux} not {base} {pred}"


# =============================================================================================
# Uncertain -> definite negation
# =============================================================================================

_UPPER_NORMAL_RE = re.compile(
    r"\b(?:(?:near|at|within)\s+)?(?:the\s+)?(?:upper limits?(?: of)? normal|upper normal|"
    r"high normal|top normal|top-normal|top of normal|borderline(?:\s+(?:normal|enlarged|"
    r"prominent|large|in size))?)(?:\s+limits?)?(?:\s+(?:in size|size))?",
    _I,
)
_LEAD_HEDGE_RE = re.compile(
    r"^(?P<adv>(?:(?:[a-z]+ly|again|also),?\s+)?)(?:there\s+(?:is|are)\s+)?(?:an?\s+)?"
    r"(?:(?:cannot|can ?not|could not|unable to|difficult to|hard to)\s+(?:be\s+)?"
    r"(?:entirely\s+|completely\s+|definitely\s+|totally\s+)?(?:exclude[sd]?|rule out)"
    r"|(?:may|might|could)\s+(?:also\s+)?(?:represent|reflect|indicate|be)"
    r"|(?:most\s+)?(?:likely|probably|possibly)\s+(?:represents?|reflects?|indicates?)"
    r"|(?:findings?|appearance|this|these|which)\s+(?:is\s+|are\s+|may be\s+|could be\s+)?"
    r"(?:suspicious|concerning|worrisome|suggestive|compatible|consistent)\s+(?:for|of|with)"
    r"|suspicious for|concerning for|worrisome for|suggestive of|suggestion of|question of|"
    r"questionable|possible|possibly|probable|probably|(?:most\s+)?likely|presumed|suspected|"
    r"equivocal|borderline|consider|differential diagnosis includes?)"
    r"\s+(?:the possibility of\s+|an?\s+)?(?P<rest>\S.*)$",
    _I | re.S,
)
_TRAIL_HEDGE_RE = re.compile(
    r"\s+(?:(?:(?:cannot|can ?not|could not)\s+be|(?:is|are)\s+not|not|(?:is|are)\s+"
    r"(?:difficult|hard)\s+to)\s+(?:\w+ly\s+)?"
    r"(?:excluded|ruled out|exclude|rule out)"
    r"|(?:is|are)\s+(?:possible|likely|unlikely|probable|suspected|questionable|favou?red|"
    r"a consideration|"
    r"considered|not excluded|also possible|not entirely excluded))\s*$",
    _I,
)
_MODAL_ADJ_RE = re.compile(
    r"^(?P<subj>.+?)\s+(?:(?:may|might|could)\s+be|(?:is|are)\s+(?:most\s+)?(?:likely|probably|"
    r"possibly))\s+(?:(?:mildly|slightly|minimally|somewhat)\s+)?"
    r"(?P<adj>\w+ed|prominent|present|normal|abnormal)$",
    _I | re.S,
)
_APPOSITIVE_HEDGE_RE = re.compile(
    r"(?:,\s*|\s+)(?:(?:which|that)\s+)?(?:(?:is|are)\s+)?(?:most\s+)?"
    r"(?:(?:likely|probably|possibly|may|might|could|perhaps)(?:\s+also)?"
    r"(?:\s+be)?(?:\s+(?:represents?|representing|reflects?|reflecting|indicates?|indicating|"
    r"due to|related to|secondary to|consistent with|compatible with|in keeping with|"
    r"suggestive of|from))?"
    r"|suspicious for|concerning for|worrisome for|suggestive of|compatible with|"
    r"consistent with|representing|reflecting|(?:which\s+|that\s+)?suggests?(?:\s+that)?|"
    r"suggesting|favou?red(?:\s+to\s+(?:represent|be)|\s+as)?)\s+(?:an?\s+)?",
    _I,
)
_GENERIC_SUBJECT_RE = re.compile(
    r"^(?:the\s+)?(?:\w+\s+)?(?:findings?|this|these|it|which|appearance|changes?|abnormality)$", _I
)


_HEDGE_TAIL_RES: tuple[re.Pattern[str], ...] = (
    re.compile(
        r",?\s*(?:the\s+)?differential(?:\s+diagnosis)?\s+(?:includes?|considerations?|is)\b.*$",
        _I | re.S,
    ),
    re.compile(
        r",?\s+(?:which|that)\s+(?:is|are)\s+(?:worrisome|suspicious|concerning|"
        r"indeterminate|nonspecific|of (?:uncertain|unclear|indeterminate) \w+)\s*$",
        _I,
    ),
    re.compile(r"\s+of\s+(?:uncertain|indeterminate|unclear|undetermined)\s+\w+\s*$", _I),
)
_HEDGE_WORDS_RE = re.compile(
    r"\b(?:the\s+)?(?:suggestion|question|possibility|suspicion) of\s+"
    r"|\b(?:most\s+)?(?:possible|possibly|probable|probably|likely|questionable|questionably|"
    r"suspected|presumed|presumably|equivocal|perhaps|suspicious|borderline)\b\s*",
    _I,
)
_DANGLING_RE = re.compile(r"(?:,|\s)+(?:and|or|which|that|this|these|it|with)?\s*$", _I)


def _resolve_uncertain(clause: str, phrase_mode: bool) -> str | None:
    c = _normalise(clause)
    c = re.sub(r"\s*\?\s*", " ", c).strip()
    c = _sub(r"\b(?:versus|vs\.?)\s+", "or ", c)
    c = _UPPER_NORMAL_RE.sub("normal", c)
    for pattern in _HEDGE_TAIL_RES:
        c = pattern.sub("", c)
    if not _has_hedge(c):
        return c if _clause_polarity(c) == "negated" else _deny_clause(c, phrase_mode)
    if not phrase_mode and not _mentions_abnormality(c):
        return None  # "CT may be helpful": nothing to negate
    m = re.match(
        r"^(?P<head>.*?\bthere)\s+(?:may|might|could)\s+(?:also\s+)?be\s+(?P<rest>.+)$",
        c,
        _I | re.S,
    )
    if m:
        return _deny_clause(f"{m['head']} is {m['rest']}", phrase_mode)
    m = _MODAL_ADJ_RE.match(c)
    if m:
        be = "are" if is_plural(m["subj"]) else "is"
        adj = m["adj"]
        if adj.lower() == "present":
            return f"{strip_noun_phrase(m['subj']) or m['subj']} {be} absent"
        if adj.lower() == "normal":
            return f"{m['subj']} {be} normal"
        return f"{m['subj']} {be} not {adj}"
    adv = ""
    stripped = False
    m = _LEAD_HEDGE_RE.match(c)
    if m:
        adv, c, stripped = m["adv"], m["rest"], True
    c, n = _TRAIL_HEDGE_RE.subn("", c)
    stripped = stripped or n > 0
    parts = [_DANGLING_RE.sub("", p) for p in _APPOSITIVE_HEDGE_RE.split(c)]
    parts = [p.strip(" ,") for p in parts if p.strip(" ,")]
    if len(parts) > 1:
        stripped = True
        if _GENERIC_SUBJECT_RE.match(parts[0]):
            parts = parts[1:]
    if not parts:
        return None
    c = " or ".join(parts)
    c = re.sub(r"\s{2,}", " ", _HEDGE_WORDS_RE.sub("", c)).strip(" ,")
    if _has_hedge(c) or not c:
        return None
    verb = _VERB_RE.search(parts[0])
    if re.match(r"^there\b", c, _I) or (verb and verb.start() > 0):
        return _deny_clause(c, phrase_mode)
    if stripped:
        np = _no_np(c)
        return None if np is None else adv + np
    return _deny_clause(c, phrase_mode)


# =============================================================================================
# Public negation API
# =============================================================================================


def negate(text: str) -> str:
    """Flip the polarity of a finding phrase or a report sentence.

    Affirmed text is denied ("There is a small left effusion." -> "There is no left
    effusion."), negated text is affirmed ("No pneumothorax." -> "Pneumothorax is present.",
    "Heart size is normal." -> "Heart size is enlarged.") and hedged text becomes the definite
    negation ("Possible early consolidation at the right base." -> "No consolidation at the
    right base."). Leading list markers, capitalisation and final punctuation are kept. See the
    module docstring for the conventions.

    Args:
        text: One phrase or sentence (several sentences are flipped as clauses of one; use
            :func:`negate_report` for reports).

    Returns:
        The flipped text, whose :func:`polarity` is the opposite of the input's ("negated" for
        uncertain input).

    Raises:
        NegationError: If no rule applies (e.g. no finding is recognised) or the result would
            not have the opposite polarity. The text is never returned unchanged.
    """
    if not text or not text.strip():
        raise NegationError(text, "empty text")
    lead, core, trail = _split_edges(text)
    if not re.search(r"[^\W\d_]", core):
        raise NegationError(text, "no words")
    phrase_mode = not re.search(r"[.!?]", trail)
    if not phrase_mode and not _negatable(core):
        raise NegationError(text, "no finding recognised")
    before = polarity(text)
    if "?" in trail:
        trail = trail.replace("?", ".")  # "Effusion?" -> "No effusion."
    out: list[str] = []
    initial = True
    for part, pol in _clauses_with_polarity(core):
        new: str | None = None
        if pol is None or not part.strip():
            pass
        elif before == "negated" and pol == "negated":
            new = _affirm_clause(part, phrase_mode, initial)
        elif before != "negated" and pol == "affirmed":
            if phrase_mode or _negatable(part):
                new = _deny_clause(part, phrase_mode)
        elif before == "uncertain" and pol == "uncertain":
            new = _resolve_uncertain(part, phrase_mode)
        if new is not None and new.strip():
            new = re.sub(r"\s{2,}", " ", new).strip(" ,")
            part = _match_case(part, new)
        if pol is not None and part.strip():
            initial = False
        out.append(part)
    new_core = "".join(out)
    if new_core.strip() == core.strip():
        raise NegationError(text, "no negation rule applies")
    after = _sentence_polarity(new_core)
    wanted = "affirmed" if before == "negated" else "negated"
    if after != wanted:
        log.debug("negation of %r gave %r with polarity %s", text, new_core, after)
        raise NegationError(text, f"the rewrite is {after}, not {wanted}")
    return lead + new_core + trail


def _term_regex(finding_terms: Iterable[str] | None) -> re.Pattern[str] | None:
    if finding_terms is None:
        return None
    patterns: list[str] = []
    for term in finding_terms:
        canonical = known_finding(term)
        if canonical is not None:
            vocab = finding_vocab(canonical)
            patterns.extend(vocab.terms or (re.escape(vocab.phrase),))
            patterns.append(re.escape(vocab.phrase))
        elif term.strip():
            patterns.append(re.escape(term.strip()))
    if not patterns:
        return None
    return re.compile(r"\b(?:" + "|".join(patterns) + r")\b", _I)


def mentions(text: str, finding_terms: Iterable[str] | None = None) -> bool:
    """Whether text mentions one of the findings (names or phrases), or any abnormality.

    Args:
        text: A sentence.
        finding_terms: CheXpert names (expanded to their synonyms in ``prompts.json``) or
            literal phrases; ``None`` means any recognised abnormality or polarity cue.
    """
    regex = _term_regex(finding_terms)
    if regex is None:
        return _mentions_abnormality(text) or _CUE_RE.search(text) is not None
    return regex.search(text) is not None


def negate_report(
    text: str, finding_terms: Iterable[str] | None = None, *, strict: bool = False
) -> str:
    """Negate the sentences of a report that mention given findings (for hard negatives).

    Sentences that do not mention a finding are kept verbatim, as is the whitespace between
    sentences. A mentioning sentence that cannot be negated is kept and logged at debug level.

    Args:
        text: Report text (FINDINGS and/or IMPRESSION).
        finding_terms: CheXpert names or literal phrases; ``None`` negates every sentence that
            mentions an abnormality or carries a polarity cue.
        strict: Raise instead of keeping sentences that cannot be negated, and when nothing at
            all was negated.

    Returns:
        The report with the matching sentences negated.

    Raises:
        NegationError: Only with ``strict=True``.
    """
    terms = tuple(finding_terms) if finding_terms is not None else None
    pieces: list[str] = []
    pos = 0
    changed = 0
    for a, b in _sentence_spans(text):
        pieces.append(text[pos:a])
        sentence = text[a:b]
        pos = b
        if mentions(sentence, terms):
            try:
                sentence = negate(sentence)
                changed += 1
            except NegationError as err:
                if strict:
                    raise
                log.debug("kept a sentence unnegated: %s", err.reason)
        pieces.append(sentence)
    pieces.append(text[pos:])
    if strict and changed == 0:
        raise NegationError(text, "no sentence mentions the finding")
    return "".join(pieces)
