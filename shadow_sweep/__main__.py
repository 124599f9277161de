from shadow_sweep.sweep.app import main

main()
