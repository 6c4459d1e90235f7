"""The tiny profile's generated world: every family's prompts parse back to their task, the
solver's answers are right (checked against plain arithmetic, not against itself), easy and
hard cells are what they say, and the evaluation split never meets a training draw."""

import json

import pytest

from glue.core import tiny_world
from glue.core.answers import final_number
from glue.eval.judge import judge_code


def test_every_family_round_trips_and_checks_its_own_answer():
    tasks = tiny_world.generate(700, seed=3)
    assert {t.family for t in tasks} == set(tiny_world.FAMILIES)
    for task in tasks:
        assert tiny_world.parse(task.prompt) == task
        assert tiny_world.check(task.prompt, task.answer) is True
        assert tiny_world.check(task.prompt, "I do not know.") is False
    assert tiny_world.parse("Write a poem about the sea.") is None
    assert tiny_world.check("Write a poem about the sea.", "waves") is None


def test_arithmetic_is_right_for_every_pair_and_the_carry_or_borrow_is_the_hard_cell():
    for a in range(10, 100):
        for b in range(10, 100):
            if a + b < 100:
                task = tiny_world.parse(f"What is {a} + {b}?")
                assert final_number(task.answer) == a + b and task.hard == (a % 10 + b % 10 >= 10)
                assert ("carry 1" in task.answer) == task.hard
            if a > b:
                task = tiny_world.parse(f"What is {a} - {b}?")
                assert final_number(task.answer) == a - b and task.hard == (a % 10 < b % 10)
                assert ("borrow 1" in task.answer) == task.hard


def test_reasoning_and_automation_answers():
    assert tiny_world.solve("Which number is the largest: 33, 80, 61, 74?") == "80"
    assert tiny_world.solve("Sort in ascending order: 7 3 2 5 9") == "2 3 5 7 9"
    assert tiny_world.solve("How many times does b appear in: b a b c b d e f?") == "3"
    assert tiny_world.label("How many times does b appear in: b a b c b d e f?") == "count/hard"
    reminder = tiny_world.parse("Remind me to pay rent at 12:30 am.")
    assert reminder.hard and json.loads(reminder.answer) == {"action": "reminder", "task": "pay rent", "time": "00:30"}
    assert json.loads(tiny_world.solve("Remind me to pay rent at 3:15 pm."))["time"] == "15:15"
    # key order and spacing are not part of a JSON command
    assert tiny_world.check("Set a timer for 5 minutes.", '{"minutes":5,  "action":"timer"}')


def test_code_tasks_tests_pass_the_answer_and_fail_a_wrong_one():
    for task in tiny_world.generate(20, seed=1, families=["code"]):
        tests = task.human_eval_tests()
        assert judge_code(task.answer, tests, allow_exec=True).verdict == "tie"
        wrong = task.answer.replace("return x", "return 1 + x")
        assert judge_code(wrong, tests, allow_exec=True).verdict == "loss"


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_hard_share_picks_the_cell(share):
    tasks = tiny_world.generate(200, seed=2, families=["add", "sub", "compare"], hard_share=share)
    assert all(t.hard == bool(share) for t in tasks)


def test_splits_are_disjoint_seeded_and_distinct():
    train = tiny_world.generate(3000, seed=1)
    held_out = tiny_world.generate(800, seed=1, split="eval")
    assert not {t.prompt for t in train} & {t.prompt for t in held_out}
    assert len({t.prompt for t in train}) == len(train)
    assert tiny_world.generate(50, seed=9) == tiny_world.generate(50, seed=9)
    assert tiny_world.generate(50, seed=9) != tiny_world.generate(50, seed=10)
    share = sum(tiny_world.split_of(t.prompt) == "eval" for t in tiny_world.generate(2000, seed=4, split="train"))
    assert share == 0


def test_a_small_cell_runs_out_and_the_others_fill_its_turns():
    tasks = tiny_world.generate(400, seed=1, families=["automation"], hard_share=0.0)
    assert 0 < len(tasks) < 400  # 98 amounts x 2 units, a fifth of them held out
    with pytest.raises(ValueError, match="unknown task families"):
        tiny_world.generate(5, seed=1, families=["poetry"])
