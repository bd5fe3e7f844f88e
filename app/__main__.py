from app.cli.main import cli

cli(prog_name="hychat")
