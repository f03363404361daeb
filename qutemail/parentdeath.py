# -*- test-case-name: tests.integration.test_workers,tests.integration.test_deliveryprocess -*-
"""
Child processes that must not outlive the process that started them (the
extra SMTP workers, the delivery process): Linux's C{PR_SET_PDEATHSIG}.
"""

import ctypes
import os
import sys

_PR_SET_PDEATHSIG = 1


def dieWithParent(signum: int) -> bool:
    """
    Have the kernel send this process C{signum} when its parent dies
    (Linux only; elsewhere nothing happens).

    @return: C{False} when the parent is already gone (this process was
        re-parented to init before the call), else C{True}.
    """
    if not sys.platform.startswith("linux"):
        return True
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum)
    return os.getppid() != 1
