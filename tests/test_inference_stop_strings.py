"""Stop sequences: matched on decoded text across token boundaries, never inside a character, the
stop string left out, and only a possible beginning of one held back while streaming."""

from __future__ import annotations

from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings
from inference_helpers import generate_args, save_checkpoint, train_tiny_model

from nima.cli import main as nima
from nima.data.tokenizer import ByteTokenizer
from nima.errors import ConfigError
from nima.inference import SamplingSettings, stream_text
from nima.inference.stop_strings import StopMatcher, check_stop_strings


def run(stops: list[str], pieces: list[str]) -> tuple[list[str], bool]:
    matcher, out = StopMatcher(stops), []
    for piece in pieces:
        text, stopped = matcher.push(piece)
        out.append(text)
        if stopped:
            return out, True
    out.append(matcher.flush())
    return out, False


def test_a_stop_string_split_across_pieces_ends_the_text_before_it():
    out, stopped = run(["\nUser:"], ["Hi there", "\n", "Us", "er: more"])
    assert stopped and "".join(out) == "Hi there"
    assert out == ["Hi there", "", "", ""]  # the newline was held back: it could begin the stop


def test_only_a_possible_beginning_of_a_stop_string_is_held_back():
    matcher = StopMatcher(["END"])
    assert matcher.push("abcE") == ("abc", False)
    assert matcher.push("x") == ("Ex", False)  # "Ex" cannot grow into "END": handed out
    assert matcher.push("EN") == ("", False)
    assert matcher.push("D!") == ("", True)
    assert matcher.push("later") == ("", True)


def test_the_earliest_of_several_stop_strings_wins():
    out, stopped = run(["world", "lo w"], ["hello world"])
    assert stopped and "".join(out) == "hel"


def test_text_without_a_stop_string_comes_out_whole():
    out, stopped = run(["zz"], ["a", "bz", "c", "z"])
    assert not stopped and "".join(out) == "abzcz"


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet="abc\n", max_size=30),
    cuts=st.lists(st.integers(0, 30), max_size=8),
    stops=st.lists(st.text(alphabet="abc\n", min_size=1, max_size=4), min_size=1, max_size=3),
)
def test_streamed_matching_equals_cutting_the_whole_text(text, cuts, stops):
    bounds = sorted({0, len(text), *(min(c, len(text)) for c in cuts)})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    out, stopped = run(stops, pieces)
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    assert "".join(out) == (text[: min(hits)] if hits else text)
    assert stopped == bool(hits)


@pytest.mark.parametrize("bad", ["", ["ok", ""], [3]])
def test_bad_stop_strings_are_refused(bad):
    with pytest.raises(ConfigError, match="stop sequence"):
        check_stop_strings(bad)


def test_at_most_the_limit_of_stop_strings():
    assert check_stop_strings("x") == ("x",) and check_stop_strings(None) == ()
    with pytest.raises(ConfigError, match="at most 4"):
        check_stop_strings(["a", "b", "c", "d", "e"], limit=4)


class ScriptedModel:
    """Stands in for a GPT: generate_stream yields fixed token ids."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids
        self.produced = 0

    def generate_stream(self, ids, **kwargs):
        for token in self.ids[: kwargs["max_new_tokens"]]:
            self.produced += 1
            yield token


@pytest.mark.parametrize(
    "stop, expected",
    [("ö", "héllo w"), ("wör", "héllo "), ("lo wö", "hél"), ("xyz", "héllo wörld"), ("\u00f6rld", "héllo w")],
)
def test_byte_tokens_stop_on_whole_characters(stop, expected):
    tok = ByteTokenizer()
    model = ScriptedModel(tok.encode("héllo wörld"))  # é and ö are two byte tokens each
    pieces = list(stream_text(model, tok, "x", SamplingSettings(max_new_tokens=50, stop=(stop,))))
    assert "".join(pieces) == expected
    assert all("\ufffd" not in p for p in pieces)  # never half a character


def test_generation_ends_at_the_token_that_completes_the_stop_string():
    tok = ByteTokenizer()
    model = ScriptedModel(tok.encode("one two three four"))
    text = "".join(stream_text(model, tok, "x", SamplingSettings(max_new_tokens=50, stop=("two",))))
    assert text == "one " and model.produced == len("one two")


def test_nima_generate_stop_option(tmp_path: Path, capsys):
    model, tok = train_tiny_model(steps=40)
    ckpt = save_checkpoint(model, tok, tmp_path / "run")
    assert nima(generate_args(ckpt, 40, "--temperature", "0")) == 0
    full = capsys.readouterr().out
    continuation = full[len("ROMEO:") :]
    stop = continuation[5:8]
    assert nima(generate_args(ckpt, 40, "--temperature", "0", "--stop", stop)) == 0
    cut = capsys.readouterr().out
    assert cut == "ROMEO:" + continuation[: continuation.index(stop)] + "\n"
