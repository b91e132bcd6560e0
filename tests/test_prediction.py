"""lmlab.course.widgets.Prediction: the "predict, then run" control every lesson uses before an experiment."""

import pytest

from lmlab.course.widgets import Prediction


def test_reveal_compares_the_choice_with_the_measurement():
    guess = Prediction("Which schedule idles less?", ["GPipe", "1F1B", "the same"])
    assert "did not choose" in guess.reveal("1F1B")  # headless: nobody chose, the line still prints
    guess.dropdown.value = "1F1B"
    assert guess.value == "1F1B"
    assert "✅" in guess.reveal("1F1B") and "❌" not in guess.reveal("1F1B")
    assert "❌" in guess.reveal("GPipe")


@pytest.mark.parametrize("question, options", [("", ["a", "b"]), ("Q?", ["a"]), ("Q?", ["a", "a"]), ("Q?", ["(choose)", "a"])])
def test_bad_questions_and_options_are_refused(question, options):
    with pytest.raises(ValueError):
        Prediction(question, options)


def test_reveal_refuses_an_answer_that_is_not_an_option():
    with pytest.raises(ValueError, match="one of the options"):
        Prediction("Q?", ["a", "b"]).reveal("c")
