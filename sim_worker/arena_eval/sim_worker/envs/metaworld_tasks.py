"""Meta-World v3 task names, the MT10/MT50 suites, and one short instruction per task.

Why a table of our own: Meta-World ships no language. A language-conditioned policy served
on a suite needs an instruction per task, and the evaluation is only comparable across
checkpoints (and runs) if the instruction is fixed data, never generated. The instructions
are short imperative English, written from each task's goal as Meta-World's paper describes
it ("open the door"). This module is plain data (no metaworld import), so the CLI can expand
``--suite metaworld/mt10`` on a machine without the simulator.

The suite orders are metaworld 3.x's own (``metaworld.env_dict.MT10_V3`` / ``MT50_V3``;
``tests/test_suites.py`` checks them against the installed metaworld).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

#: Task name (without the ``metaworld/`` prefix) -> instruction, in MT50 order.
INSTRUCTIONS: Mapping[str, str] = MappingProxyType(
    {
        "assembly-v3": "put the ring on the peg",
        "basketball-v3": "dunk the basketball into the hoop",
        "bin-picking-v3": "move the puck from one bin to the other",
        "box-close-v3": "put the lid on the box",
        "button-press-topdown-v3": "press the button from the top",
        "button-press-topdown-wall-v3": "press the button from the top behind the wall",
        "button-press-v3": "press the button",
        "button-press-wall-v3": "press the button behind the wall",
        "coffee-button-v3": "press the button on the coffee machine",
        "coffee-pull-v3": "pull the mug out of the coffee machine",
        "coffee-push-v3": "push the mug under the coffee machine",
        "dial-turn-v3": "turn the dial",
        "disassemble-v3": "take the ring off the peg",
        "door-close-v3": "close the door",
        "door-lock-v3": "lock the door by turning the lock",
        "door-open-v3": "open the door",
        "door-unlock-v3": "unlock the door by turning the lock",
        "hand-insert-v3": "insert the gripper into the hole",
        "drawer-close-v3": "close the drawer",
        "drawer-open-v3": "open the drawer",
        "faucet-open-v3": "turn the faucet on",
        "faucet-close-v3": "turn the faucet off",
        "hammer-v3": "hammer the nail into the wall",
        "handle-press-side-v3": "press the handle down from the side",
        "handle-press-v3": "press the handle down",
        "handle-pull-side-v3": "pull the handle up from the side",
        "handle-pull-v3": "pull the handle up",
        "lever-pull-v3": "pull the lever up",
        "pick-place-wall-v3": "pick up the puck and place it at the goal behind the wall",
        "pick-out-of-hole-v3": "pick the peg out of the hole",
        "pick-place-v3": "pick up the puck and place it at the goal",
        "plate-slide-v3": "slide the plate into the cabinet",
        "plate-slide-side-v3": "slide the plate into the cabinet from the side",
        "plate-slide-back-v3": "slide the plate out of the cabinet",
        "plate-slide-back-side-v3": "slide the plate out of the cabinet to the side",
        "peg-insert-side-v3": "insert the peg into the hole from the side",
        "peg-unplug-side-v3": "unplug the peg from the side",
        "soccer-v3": "kick the ball into the goal",
        "stick-push-v3": "grasp the stick and push the box with it",
        "stick-pull-v3": "grasp the stick and pull the box with it",
        "push-v3": "push the puck to the goal",
        "push-wall-v3": "push the puck to the goal behind the wall",
        "push-back-v3": "push the puck back to the goal",
        "reach-v3": "reach the goal position",
        "reach-wall-v3": "reach the goal position behind the wall",
        "shelf-place-v3": "place the puck on the shelf",
        "sweep-into-v3": "sweep the puck into the hole",
        "sweep-v3": "sweep the puck off the table",
        "window-open-v3": "slide the window open",
        "window-close-v3": "slide the window closed",
    }
)

#: MT50: every v3 task, in metaworld's order.
MT50: tuple[str, ...] = tuple(INSTRUCTIONS)
#: MT10, in metaworld's order.
MT10: tuple[str, ...] = (
    "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3",
    "drawer-close-v3", "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3",
    "window-close-v3",
)  # fmt: skip


def instruction(name: str) -> str:
    """The instruction of Meta-World task ``name`` (no prefix), or '' for a task not listed."""
    return INSTRUCTIONS.get(name, "")
