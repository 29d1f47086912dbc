"""ACC §2.1 targets, composed captions and ADC instructions."""

import pytest

from audiopair.tasks.captions import (
    LATE_PATTERNS, PATTERNS, commonality, compose, instruction, longest_shared_span, patterns_for,
)


def test_add_and_delete_rules():
    pre, post = "Rain falls steadily.", "Rain falls steadily, with a bell ringing."
    assert commonality("add", pre, post, "rain falls steadily") == "Rain falls steadily."
    assert commonality("delete", post, pre, "rain falls steadily") == "Rain falls steadily."


def test_replace_takes_longest_shared_run_in_pre_wording():
    pre = "A man speaks loudly while a dog barks."
    post = "a MAN speaks loudly, and a cat meows!"
    # matched case/punctuation-insensitively; returned in pre's wording; trailing connective trimmed
    assert longest_shared_span(pre, post) == "A man speaks loudly."


def test_replace_with_different_connective_patterns():
    base = "Waves wash onto a shore"
    pre = compose(base, "a bell ringing", "{event} is heard as {base_lc}")
    post = compose(base, "a siren wailing", "{base}, accompanied by {event}")
    assert pre == "A bell ringing is heard as waves wash onto a shore."
    assert commonality("replace", pre, post, base) == "Waves wash onto a shore."


def test_replace_trims_dangling_article_and_connectives():
    pre = "Rain falls, with a rising whistle."
    post = "Rain falls, with a falling whistle."
    assert longest_shared_span(pre, post) == "Rain falls."


def test_replace_ties_go_to_earliest_run():
    assert longest_shared_span("dogs bark and cats meow", "cats meow and dogs bark") == "Dogs bark."


def test_replace_never_empty_falls_back_to_base_caption():
    assert longest_shared_span("A siren wails.", "Birds chirp.") == ""
    assert commonality("replace", "A siren wails.", "Birds chirp.", "a quiet room hums") == "A quiet room hums."
    # only stop words / connectives shared -> fallback too
    assert commonality("replace", "The siren and the bell", "the drum and the bird", "wind blows.") == "Wind blows."


def test_unknown_op_is_an_error():
    with pytest.raises(ValueError, match="unknown edit op"):
        commonality("swap", "a", "b", "c")
    with pytest.raises(ValueError, match="unknown edit op"):
        instruction("swap", "a", None, 0)


def test_compose_keeps_names_and_acronyms():
    assert compose("ABC news plays", "I think", "{event} is heard as {base_lc}") == "I think is heard as ABC news plays."
    assert compose("Rain falls.", "A Bell", "{base}, with {event}") == "Rain falls, with a Bell."


def test_late_patterns_only_for_late_events():
    assert not set(LATE_PATTERNS) & set(patterns_for(0.1))
    assert set(LATE_PATTERNS) <= set(patterns_for(0.9))
    assert set(PATTERNS) <= set(patterns_for(0.9))


def test_instructions_vary_and_name_events():
    adds = {instruction("add", "a bell ringing", None, v) for v in range(5)}
    assert len(adds) == 5 and all("a bell ringing" in a for a in adds)
    assert instruction("replace", "A dog barking.", "a cat meowing", 0) == "Replace a dog barking with a cat meowing."
    assert instruction("delete", "thunder", None, 0) == "Remove thunder."
    with pytest.raises(ValueError):
        instruction("replace", "a", None, 0)
