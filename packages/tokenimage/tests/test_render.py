"""The generated-text picture: every line fits its box, nothing is cut at the right edge."""

from __future__ import annotations

from PIL import ImageFont

from trainhub_tokenimage.render import text_panel, wrap_to_width


def test_wide_characters_and_long_words_wrap_inside_the_width():
    font = ImageFont.load_default()
    text = "W" * 150 + " $$$$ mmmm the quick brown fox " + "M@" * 40
    lines = wrap_to_width(text, font, 300)
    assert len(lines) > 3 and max(font.getlength(line) for line in lines) <= 300
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")  # only spaces at the breaks are dropped


def test_words_break_at_spaces_when_they_fit():
    font = ImageFont.load_default()
    lines = wrap_to_width("alpha beta gamma delta epsilon zeta eta theta", font, font.getlength("alpha beta gamma"))
    assert lines[0] == "alpha beta gamma" and all(not line.startswith(" ") for line in lines)


def test_panel_grows_with_the_text():
    one, two = text_panel(["W" * 300]), text_panel(["W" * 300, "short"])
    assert one.shape[1] == two.shape[1] == 640 and two.shape[0] > one.shape[0] > 16
