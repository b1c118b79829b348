#!/usr/bin/env python3
"""The console script ``blip3o-doctor`` as a file: code and --help in blip3o_storage/cli/doctor.py."""
from blip3o_storage.cli.doctor import main

if __name__ == "__main__":  # worker processes that re-import this file (spawn, forkserver) must not run it
    raise SystemExit(main())
