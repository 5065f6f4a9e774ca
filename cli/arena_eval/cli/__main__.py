# The local stack starts its workers as ``python -m arena_eval.cli``: they must
# die with it, so this runs before anything else (see arena_eval.cli.parent_death).
from arena_eval.cli.parent_death import die_with_parent_if_asked

die_with_parent_if_asked()

from arena_eval.cli.app import main  # noqa: E402

main()
