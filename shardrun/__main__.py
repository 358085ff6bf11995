"""Lets `python -m shardrun` run the command line."""

from shardrun.cli.main import main

main(prog_name="shardrun")
