"""``python -m ctrlaug.ops``: print which backends are built and usable here."""

import json

from ._registry import status

if __name__ == "__main__":
    print(json.dumps(status(), indent=2))
