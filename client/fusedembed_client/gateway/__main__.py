"""``python -m fusedembed_client.gateway``: the same as ``fusedembed gateway``."""

import sys

from fusedembed_client.cli import main

if __name__ == "__main__":
    sys.exit(main(["gateway", *sys.argv[1:]]))
