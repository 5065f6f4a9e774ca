from arena_eval.cli.app import main

main()
