"""Prints the version of each package pinned in a constraints file, as installed here, and exits
1 when one differs from its pin (the environment is then not the one the file describes).

    python .ci/versions.py .ci/floor-constraints.txt
"""

import importlib.metadata
import platform
import sys


def main(path: str) -> int:
    wrong = []
    print(f"Python {platform.python_version()}, pinned in {path}:")
    for line in open(path):
        spec = line.split("#")[0].strip()
        if not spec:
            continue
        name, _, pinned = spec.partition("==")
        try:
            found = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found = "not installed"
        ok = found.split("+")[0] == pinned
        print(f"  {name}=={found}" + ("" if ok else f"  (pinned {pinned})"))
        wrong += [] if ok else [name]
    if wrong:
        print(f"not at their pins: {', '.join(wrong)}", file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
