"""``mt6d-keygen FILE``: write a new random 512-bit session key as hex, readable only by its owner."""

from __future__ import annotations

import argparse
import os
import secrets
import sys

from mt6d_mp.core.config import RECOMMENDED_KEY_BYTES


def write_key(path: str, nbytes: int = RECOMMENDED_KEY_BYTES) -> None:
    """Create ``path`` with mode 0600 from the start (never briefly world-readable)."""
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secrets.token_hex(nbytes) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mt6d-keygen", description=__doc__)
    parser.add_argument("file", help="key file to create (must not exist)")
    parser.add_argument("--bits", type=int, default=RECOMMENDED_KEY_BYTES * 8,
                        help="key size in bits (default 512, at least 256)")
    args = parser.parse_args(argv)
    if args.bits < 256 or args.bits % 8:
        parser.error("--bits must be a multiple of 8 and at least 256")
    try:
        write_key(args.file, args.bits // 8)
    except FileExistsError:
        print(f"mt6d-keygen: {args.file} exists; refusing to overwrite a key", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"mt6d-keygen: cannot write {args.file}: {e.strerror}", file=sys.stderr)
        return 1
    print(f"wrote a {args.bits}-bit key to {args.file} (mode 600)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
