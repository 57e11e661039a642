"""A key's declaration: its default, parser, renderer and documentation
together, called at test time rather than only at import."""

from __future__ import annotations

import dataclasses

from spfmilter.config.schema import key, rendered
from spfmilter.config.values import (
    int_in,
    render_value,
)


def test_a_key_declares_default_parser_renderer_and_documentation_together() -> None:
    parse = int_in(0, 9)

    @dataclasses.dataclass(frozen=True)
    class Section:
        knob: int = key(3, parse, "a knob", "A knob from 0 to 9.")
        word: str = key("", str.strip, "a word", "A word.", example="w", render=str.upper)

    knob, word = dataclasses.fields(Section)
    assert Section() == Section(3, "")
    assert knob.default == 3 and word.default == ""
    assert dict(knob.metadata) == {
        "parse": parse,
        "render": render_value,
        "summary": "a knob",
        "doc": "A knob from 0 to 9.",
        "example": "",
    }
    assert word.metadata["example"] == "w"
    assert rendered(Section(word="abc"), word) == "ABC"
    assert rendered(Section(), knob) == "3"
