from pilot.cli.app import main

main()
