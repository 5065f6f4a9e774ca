"""How `pools` and `policy describe` print a spec: short for a 50-task expert, and naming
an instruction requirement (the one thing a sim must send that arrays do not show)."""

from __future__ import annotations

from arena_eval.cli.policy_cmd import _spec_text

BASE = {"name": "p", "version": "1", "action_shape": [1, 4], "action_dtype": "float32"}


def test_many_tasks_are_summarised_and_few_are_listed() -> None:
    many = _spec_text({**BASE, "tasks": [f"t{i}-v3" for i in range(50)]})
    assert "tasks=50 tasks (t0-v3, t1-v3, t2-v3, ...)" in many
    assert "t49-v3" not in many
    assert "tasks=a-v3,b-v3" in _spec_text({**BASE, "tasks": ["a-v3", "b-v3"]})
    assert "tasks=any" in _spec_text(BASE)


def test_an_instruction_requirement_is_shown() -> None:
    assert "instruction=required" in _spec_text({**BASE, "needs_instruction": True})
    assert "instruction" not in _spec_text({**BASE, "needs_instruction": False})
