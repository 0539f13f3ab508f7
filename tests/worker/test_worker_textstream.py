"""Streaming text with stop sequences: nothing of a stop sequence is ever sent."""

from __future__ import annotations

from worker.backends.textstream import StopStream


def stream(stops: list[str], chunks: list[bytes]) -> tuple[list[str], bool]:
    """What would be sent for these token bytes, and whether a stop sequence ended it."""
    s = StopStream(stops)
    sent = []
    for chunk in chunks:
        step = s.feed(chunk)
        sent.append(step.text)
        if step.stopped:
            return sent, True
    sent.append(s.flush())
    return sent, False


def test_text_without_stop_sequences_passes_through_unchanged():
    sent, stopped = stream([], [b"Hel", b"lo", b" world"])
    assert sent == ["Hel", "lo", " world", ""] and not stopped


def test_stop_sequence_split_over_tokens_is_never_sent():
    sent, stopped = stream(["\nUser:"], [b"Hi", b"!", b"\n", b"User", b":", b" more"])
    assert stopped
    assert "".join(sent) == "Hi!"
    assert not any("\n" in piece for piece in sent)


def test_possible_stop_start_is_held_back_then_released_when_it_is_not_a_stop():
    sent, stopped = stream(["\nUser:"], [b"a", b"\n", b"Us", b"ually"])
    assert not stopped
    assert sent == ["a", "", "", "\nUsually", ""]


def test_held_back_text_is_released_when_generation_ends():
    sent, stopped = stream(["\nUser:"], [b"end", b"\nUs"])
    assert sent == ["end", "", "\nUs"] and not stopped


def test_earliest_stop_sequence_wins():
    sent, stopped = stream(["world", "lo"], [b"Hello world"])
    assert sent == ["Hel"] and stopped


def test_stop_sequence_inside_one_token_cuts_the_token():
    sent, stopped = stream(["END"], [b"abcENDdef"])
    assert sent == ["abc"] and stopped


def test_multibyte_character_split_over_tokens_is_sent_whole():
    snowman = "☃".encode()
    sent, stopped = stream([], [snowman[:1], snowman[1:], b"!"])
    assert sent == ["", "☃", "!", ""] and not stopped


def test_invalid_utf8_becomes_a_replacement_character_instead_of_failing():
    sent, _ = stream([], [b"ok", b"\xff", b"!"])
    assert "".join(sent) == "ok\ufffd!"


def test_empty_and_duplicate_stop_sequences_are_ignored():
    sent, stopped = stream(["", "x", "x"], [b"abc"])
    assert sent == ["abc", ""] and not stopped
