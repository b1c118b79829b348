#!/usr/bin/env python3
"""The console script ``blip3o-demo`` as a file: code and --help in blip3o_storage/cli/demo.py."""
from blip3o_storage.cli.demo import main

if __name__ == "__main__":  # worker processes that re-import this file (spawn, forkserver) must not run it
    raise SystemExit(main())
