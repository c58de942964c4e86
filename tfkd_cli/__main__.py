from tfkd_cli.cli import main

main()
