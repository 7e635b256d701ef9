"""components/quoting.py: each quoting function keeps any value one word for its reader."""

import re
import shlex
import subprocess

import pytest
from hypothesis import given, settings, strategies as st

from components.quoting import (nginx_word, shell_line, shell_word, systemd_environment, systemd_exec_word,
                                systemd_text)

ANY_LINE = st.text(alphabet=st.characters(blacklist_characters="\n\r\x00", blacklist_categories=("Cs",)), max_size=30)


@settings(max_examples=40, deadline=None)
@given(ANY_LINE)
def test_shell_word_is_one_word_to_a_real_shell(value):
    done = subprocess.run(["sh", "-c", f"printf '%s' {shell_word(value)}"], capture_output=True, timeout=10)
    assert done.stdout.decode() == value
    assert shlex.split(shell_line(["cmd", value])) == ["cmd", value]


@settings(max_examples=60, deadline=None)
@given(ANY_LINE)
def test_systemd_words_escape_quotes_specifiers_and_variables(value):
    word = systemd_exec_word(value)
    inner = shlex.split(word)
    assert len(inner) == 1
    assert not re.search(r"[$%]", re.sub(r"\$\$|%%", "", inner[0]))  # nothing systemd would expand
    assert re.sub(r"\$\$|%%", lambda m: m.group()[0], inner[0]) == value


def test_systemd_quoting_examples():
    assert systemd_exec_word("o'brien@example.org") == '"o\'brien@example.org"'
    assert systemd_exec_word('a"b\\c$d%e') == '"a\\"b\\\\c$$d%%e"'
    assert systemd_environment("AWS_DEFAULT_REGION", "eu-central-1") == '"AWS_DEFAULT_REGION=eu-central-1"'
    assert systemd_text("100%") == "100%%"
    for bad in ("a\nb", "a\rb", "a\x00b"):
        with pytest.raises(ValueError):
            systemd_exec_word(bad)
    with pytest.raises(ValueError):
        systemd_environment("BAD NAME", "x")


@pytest.mark.parametrize("value, ok", [("chat.example.org", True), ("a;b", False), ("a b", False), ("$host", False),
                                       ("x'y", False), ("{", False)])
def test_nginx_word_refuses_anything_that_needs_quoting(value, ok):
    if ok:
        assert nginx_word(value) == value
    else:
        with pytest.raises(ValueError):
            nginx_word(value)
