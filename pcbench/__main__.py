from pcbench.cli import main

main()
