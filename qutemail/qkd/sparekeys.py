# -*- test-case-name: tests.qkd.test_sparekeys -*-
"""
QKD keys taken ahead of need.

An C{enc_keys} request costs a round trip to the KME (HTTPS, and with the
embedded KME its server side too, on the same reactor).  Sealers that take
keys for batches of waiting messages ask for at least L{PREFETCH_KEYS} at a
time and keep the ones no message waits for, in memory only, for the next
seals: inter-site mail (L{qutemail.relay.transitout}) and mail at rest
(L{qutemail.store.encrypted}).  A kept key is used at most
L{SPARE_SECONDS} after it was taken, and at most once; one never used (the
server stopped, or the key aged) is simply never used: it was handed to
this SAE and to nobody else.
"""

from typing import Any

# What a sealer asks for ahead, per request.
PREFETCH_KEYS = 16
# How long a key taken ahead may wait for a message.
SPARE_SECONDS = 60.0


class SpareKeys:
    """
    Keys taken ahead for one peer SAE, oldest first.
    """

    def __init__(self) -> None:
        self._kept: list[tuple[float, Any]] = []

    def __len__(self) -> int:
        """
        @return: how many keys are kept (aged ones included until a
            L{take} drops them).
        """
        return len(self._kept)

    def keep(self, keys: list, now: float) -> None:
        """
        Keep keys taken at C{now}.
        """
        self._kept += [(now, key) for key in keys]

    def take(self, number: int, now: float) -> list:
        """
        Hand out up to C{number} kept keys, each once, dropping those kept
        longer than L{SPARE_SECONDS}.

        @return: the keys, oldest first.
        """
        kept = self._kept
        fresh = 0
        while fresh < len(kept) and now - kept[fresh][0] > SPARE_SECONDS:
            fresh += 1
        taken = [key for _, key in kept[fresh:fresh + number]]
        del kept[:fresh + len(taken)]
        return taken
