"""The subcommands of the `hf-earlyexit` command line (see `hf_earlyexit.cli`), one module each, importable and
callable as `main(argv) -> dict`."""
