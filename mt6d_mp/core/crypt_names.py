"""The names of the tunnel's encryption, as the configuration and the bus records spell them.

Stdlib only and nothing else, so that mt6dctl and the bus records can name an algorithm without
loading ``cryptography`` (mt6d_mp.core.crypto maps each name to its wire identifier).
"""

from __future__ import annotations

from typing import Final

AES_256_GCM: Final = "aes-256-gcm"
CHACHA20_POLY1305: Final = "chacha20-poly1305"
NONE: Final = "none"  # no encryption, no authentication: for measurements only
CRYPT_NAMES: Final = (AES_256_GCM, CHACHA20_POLY1305, NONE)
