from tfkd_cli.cli.main import main

main()
