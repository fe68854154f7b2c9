from rlheal.cli import main

main()
