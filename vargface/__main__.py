from vargface.cli import main

main()
