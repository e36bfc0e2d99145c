"""The answer match kinds of --prompts (exact, contains, number, regex) on crafted outputs, and their errors."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from typer.testing import CliRunner

from dlm_cli.evals.prompt import BenchPrompt, load_prompts, score
from dlm_cli.cli import app
from dlm_cli.errors import UsageError
from dlm_cli.evals.scoring import extract_number, matches


def test_exact_is_stripped_equality():
    assert matches("1 2 3", "exact", "  1 2 3\n")
    assert not matches("1 2 3", "exact", "1 2 3 4")
    assert not matches("1 2 3", "exact", "The answer: 1 2 3")


def test_contains_finds_the_answer_anywhere_but_is_case_sensitive():
    assert matches("Paris", "contains", "The capital of France is Paris.")
    assert matches("  Paris ", "contains", "Paris")  # the answer is stripped, not the text's words
    assert not matches("Paris", "contains", "the capital is paris")
    assert not matches("Paris", "contains", "")


@pytest.mark.parametrize("text, value", [
    ("The answer is 18.", "18"),            # a sentence period is not a decimal point
    ("She pays $1,234.50 in total", "1234.50"),
    ("costs $5", "5"),
    ("it is 1,234", "1234"),
    ("first 3, then 4, finally 7", "7"),     # the last number
    ("12 + 30 = 42\n#### 42", "42"),
    ("#### 72 apples, not 5", "72"),        # the number after ####, not the last one
    ("#### 1\nthen #### 9 and 3", "9"),     # after the last ####
    ("5 then #### nothing", "5"),           # a #### with no number after it: the last number before it
    ("it fell to -3 degrees", "-3"),
    ("10 - 3", "3"),                        # a spaced minus is subtraction, not a sign
    ("0.5", "0.5"),
    ("1,2345", "2345"),                     # not a thousands group
    ("−7 (a Unicode minus)", "-7"),
])
def test_number_extraction(text, value):
    assert extract_number(text) == Decimal(value)


@pytest.mark.parametrize("text", ["no digits here", "version v1.5 of x2", "the 3rd one", ""])
def test_number_extraction_finds_none_in_words(text):
    assert extract_number(text) is None


def test_number_compares_values_not_strings():
    assert matches("1234", "number", "Total: $1,234.00")
    assert matches("#### 1,234", "number", "so 1234")
    assert matches("72", "number", "Natalia sold 48 + 24 = 72 clips.\n#### 72")
    assert not matches("72", "number", "She sold 72 in April and 48 in May.")  # the last number is 48
    assert not matches("5", "number", "no number at all")
    assert not matches("5", "number", "-5")


def test_regex_searches_the_text():
    assert matches(r"\b(yes|true)\b", "regex", "I think: yes, it is")
    assert matches(r"^0 1 2$", "regex", "0 1 2")
    assert not matches(r"^0 1 2$", "regex", "0 1 2 3")
    assert not matches(r"(?i)\byes\b", "regex", "yesterday")


def test_a_prompt_scores_by_its_match(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text("\n".join(json.dumps(o) for o in [
        {"prompt": "a", "answer": "x"},
        {"prompt": "b", "answer": "42", "match": "number", "task": "math"},
        {"prompt": "c", "answer": r"\d+ apples", "match": "regex"},
        {"prompt": "d", "answer": 7, "match": "number"},
        {"prompt": "e", "answer": "ok", "match": "contains"},
    ]) + "\n")
    a, b, c, d, e = load_prompts(p)
    assert (a.match, b.match, c.match, d.match, d.answer) == ("exact", "number", "regex", "number", "7")
    assert score(a, " x ") and not score(a, "x y")
    assert score(b, "so 40 + 2 = 42") and not score(b, "42 or 43")
    assert score(c, "I have 3 apples") and not score(c, "apples")
    assert score(d, "#### 7")
    assert score(e, "it is ok now") and not score(e, "OK")
    assert score(BenchPrompt("no answer"), "anything") is None


@pytest.mark.parametrize("line, words", [
    ({"prompt": "p", "answer": "x", "match": "fuzzy"}, ['unknown "match" \'fuzzy\'', "exact, contains, number, regex"]),
    ({"prompt": "p", "answer": "(unclosed", "match": "regex"}, ["not a valid regular expression", "missing )"]),
    ({"prompt": "p", "answer": "seven", "match": "number"}, ['needs a number in "answer"']),
    ({"prompt": "p", "match": "contains"}, ['needs an "answer"']),
    ({"prompt": "p", "answer": "  ", "match": "contains"}, ['non-empty "answer"']),
    ({"prompt": "p", "answer": ["1"]}, ['"answer" must be a string']),
])
def test_bad_answer_lines_name_the_file_and_line(tmp_path, line, words):
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"prompt": "fine", "answer": "1"}) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(UsageError) as err:
        load_prompts(p)
    assert str(err.value).startswith(f"{p}:2: ")
    for w in words:
        assert w in str(err.value)


def test_bad_match_is_one_line_and_exit_2_from_the_cli(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"prompt": "Copy: 1 2", "answer": "[", "match": "regex"}) + "\n")
    r = CliRunner().invoke(app, ["bench", "-m", "dlm-demo", "--prompts", str(p), "--reps", "1"])
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and f"{p}:1" in r.stderr and "regular expression" in r.stderr


def test_bench_reports_scores_per_task_by_match_kind(tmp_path):
    """Per-task scores over mixed match kinds, with answers whose verdict does not depend on the toy model:
    any non-empty answer matches the regex "\\S"; nothing the model writes holds the string below."""
    p = tmp_path / "p.jsonl"
    lines = [{"prompt": "Copy: 3 4", "answer": r"\S", "match": "regex", "task": "always"},
             {"prompt": "Copy: 5 6", "answer": r"\S", "match": "regex", "task": "always"},
             {"prompt": "Copy: 5 6", "answer": "<never written>", "match": "contains", "task": "never"},
             {"prompt": "Copy: 5 6", "answer": "#### 123456789", "match": "number", "task": "never"}]
    p.write_text("\n".join(json.dumps(o) for o in lines) + "\n")
    r = CliRunner().invoke(app, ["bench", "-m", "dlm-demo-ar", "--prompts", str(p), "-p", "lookup", "--reps", "1",
                                 "-n", "8", "--json"])
    assert r.exit_code == 0, r.stderr
    for row in json.loads(r.stdout)["rows"]:
        assert row["task_scores"] == {"always": 1.0, "never": 0.0}
        assert row["score"] == 0.5


def test_aup_single_point_is_its_accuracy():
    from dlm_cli.evals.scoring import aup

    assert aup([(1.0, 72.0)], y_max=80.0) == pytest.approx(72.0)


def test_aup_adds_the_weighted_trapezoid_of_a_point_at_the_same_accuracy():
    import math

    from dlm_cli.evals.scoring import aup

    y, y_max = 70.0, 80.0
    w = math.exp(-3 * (1 - y / y_max))
    assert aup([(1.0, y), (3.0, y)], y_max) == pytest.approx(y + 2.0 * y * w)
    assert aup([(1.0, 80.0), (2.0, 80.0)], 80.0) == pytest.approx(160.0)  # no penalty at the best accuracy


def test_aup_drops_points_more_than_five_below_the_first():
    from dlm_cli.evals.scoring import aup

    assert aup([(1.0, 70.0), (4.0, 64.0)], 80.0) == pytest.approx(70.0)
    assert aup([(1.0, 70.0), (4.0, 66.0)], 80.0) > 70.0
