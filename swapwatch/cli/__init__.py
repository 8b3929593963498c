"""The `swapwatch` command line: argument parsing and dispatch (main.py, entry point `main.main`) and one
`*_command` module per command, each imported only when its command runs (so `watch`, `serve` and `scan`
never load the training package)."""
