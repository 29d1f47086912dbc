"""Pre-/post-edit captions, edit instructions (ADC targets) and commonality captions (ACC targets).

Captions of mixed clips are composed from the base clip's caption (a sentence, "rain falls steadily") and the
event's noun phrase ("a bell ringing") with one of several connective patterns, as AuditEval's description
pipeline does. The ACC target of a replace pair is the longest run of words the pre- and post-edit captions share.
"""

from __future__ import annotations

import difflib
import re

# Connective patterns: {base} is the base caption without its final full stop, {event} an event noun phrase.
# "late" patterns speak of order and are used when the event starts in the second half of the clip.
PATTERNS: tuple[str, ...] = (
    "{base}, with {event}",
    "{base}, and {event} can be heard",
    "{base} while {event} sounds",
    "{base}, accompanied by {event}",
    "{event} is heard as {base_lc}",
    "{base}, along with {event}",
)
LATE_PATTERNS: tuple[str, ...] = (
    "{base}, followed by {event}",
    "{base}, then {event} joins in",
)

# Words that join clauses; trimmed from both ends of a shared span so the commonality reads as a caption.
CONNECTIVES = frozenset(
    "and with while as then along accompanied by followed can be heard is sounds joins in over amid "
    "before after".split()
)
# Words too slight to carry a commonality on their own.
STOPWORDS = CONNECTIVES | frozenset("a an the of in on at to it its is are there some".split())

ADD_INSTRUCTIONS = ("Add {b}.", "Add the sound of {b}.", "Insert {b}.", "Mix in {b}.", "Introduce {b}.")
DELETE_INSTRUCTIONS = ("Remove {b}.", "Delete {b}.", "Take out {b}.", "Get rid of {b}.", "Cut {b}.")
REPLACE_INSTRUCTIONS = (
    "Replace {b} with {c}.",
    "Swap {b} for {c}.",
    "Change {b} to {c}.",
    "Substitute {c} for {b}.",
    "Turn {b} into {c}.",
)


def strip_caption(text: str) -> str:
    """Trim white space and a final full stop: captions are joined, so they must not end a sentence early."""
    return re.sub(r"\s+", " ", text).strip().rstrip(".").strip()


def sentence(text: str) -> str:
    """Capitalise the first letter and end with a full stop."""
    text = strip_caption(text)
    return (text[:1].upper() + text[1:] + ".") if text else text


def lower_first(text: str) -> str:
    """Lower-case the first letter unless the first word looks like a name or acronym ("ABC", "I")."""
    first = text.split(" ", 1)[0]
    if len(first) > 1 and first.isupper() or first == "I":
        return text
    return text[:1].lower() + text[1:]


def compose(base_caption: str, event_phrase: str, pattern: str) -> str:
    """Caption of ``base + event`` with one connective pattern, as a sentence."""
    base = strip_caption(base_caption)
    event = lower_first(strip_caption(event_phrase))
    text = pattern.format(base=base, base_lc=lower_first(base), event=event)
    return sentence(text)


def patterns_for(onset_position: float) -> tuple[str, ...]:
    """Patterns that fit where the event starts (0 = as early, 1 = as late as it fits): order words only when late."""
    return PATTERNS + LATE_PATTERNS if onset_position >= 0.6 else PATTERNS


def instruction(op: str, b_phrase: str, c_phrase: str | None, variant: int) -> str:
    """ADC target: the edit instruction, in one of several phrasings."""
    b = lower_first(strip_caption(b_phrase))
    if op == "add":
        bank = ADD_INSTRUCTIONS
    elif op == "delete":
        bank = DELETE_INSTRUCTIONS
    elif op == "replace":
        if c_phrase is None:
            raise ValueError("a replace instruction needs the replacing event")
        bank = REPLACE_INSTRUCTIONS
    else:
        raise ValueError(f"unknown edit op {op!r}; allowed: add, delete, replace")
    c = lower_first(strip_caption(c_phrase)) if c_phrase else ""
    return bank[variant % len(bank)].format(b=b, c=c)


_WORD = re.compile(r"[A-Za-z0-9']+(?:-[A-Za-z0-9']+)*")


def _words(text: str) -> list[tuple[str, int, int]]:
    """(normalised word, start, end) for each word: case and punctuation are ignored for matching."""
    return [(m.group(0).lower().strip("'"), m.start(), m.end()) for m in _WORD.finditer(text)]


def longest_shared_span(pre: str, post: str) -> str:
    """The longest run of words shared by ``pre`` and ``post``, in ``pre``'s wording, connectives trimmed.

    Words are matched case- and punctuation-insensitively; ties go to the earliest run in ``pre``. Returns "" when
    nothing but connectives or stop words is shared.
    """
    a, b = _words(pre), _words(post)
    if not a or not b:
        return ""
    sm = difflib.SequenceMatcher(None, [w for w, _, _ in a], [w for w, _, _ in b], autojunk=False)
    m = sm.find_longest_match(0, len(a), 0, len(b))
    i, j = m.a, m.a + m.size
    while i < j and a[i][0] in CONNECTIVES:
        i += 1
    while j > i and a[j - 1][0] in STOPWORDS:  # a dangling "with a" / "and the" at the end
        j -= 1
    if i >= j or all(w in STOPWORDS for w, _, _ in a[i:j]):
        return ""
    span = pre[a[i][1] : a[j - 1][2]]
    return sentence(span)


def commonality(op: str, pre: str, post: str, base_caption: str) -> str:
    """ACC target (ACC §2.1): add -> pre-edit caption; delete -> post-edit caption; replace -> the longest
    shared word span. Never empty: falls back to the base clip's caption."""
    if op == "add":
        text = pre
    elif op == "delete":
        text = post
    elif op == "replace":
        text = longest_shared_span(pre, post)
    else:
        raise ValueError(f"unknown edit op {op!r}; allowed: add, delete, replace")
    return sentence(text) if strip_caption(text) else sentence(base_caption)
