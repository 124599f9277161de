from shadow_sweep.cli import main

main()
