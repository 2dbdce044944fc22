import sys


def main() -> int:
    print(f"hello-noarch in {sys.prefix}")
    return 0
