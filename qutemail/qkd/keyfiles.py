# -*- test-case-name: tests.qkd.test_vault,tests.store.test_deliveryprocess -*-
"""
The file vault's key files: their names, the errors of the vault, and
L{addKeyFiles}, which writes a batch of new ones.  Kept apart from
L{qutemail.qkd.vault} (which wraps the keys and needs the cryptography
and Twisted) so that the delivery process, which writes key files for
the server (L{qutemail.store.deliveryworker}), stays small.
"""

import os

from qutemail.durable import discardFile, makeDirectories, openSyncTarget, syncDirectory, syncFileSystem, writeAll

KEY_FILE_SUFFIX = ".key"


class KeyVaultError(Exception):
    """
    The vault cannot do its work: a damaged wrapped key, or a backend that
    failed.  C{str()} is one line and never holds key material.
    """


class KeyExists(KeyVaultError):
    """
    L{FileKeyVault.addKeys} was given a key id the vault already holds; the
    key it holds is kept.
    """


def addKeyFiles(directory: str, keys: list[tuple[str, bytes]],
                wholeSync: bool | None = None) -> list[BaseException | None]:
    """
    Write new wrapped keys, each under its final name, created with
    C{O_EXCL}, and make them durable: with one C{syncfs} of the file
    system where that is known to be enough (one journal commit and one
    disk flush for all of them), else an fsync of each file and then of
    the directory.  Blocking.

    @param keys: C{(keyId, wrapped)} pairs.
    @param wholeSync: use C{syncfs} (C{None}: where it is available and
        the file system is one it makes files durable on, see
        L{qutemail.durable.openSyncTarget}).
    @return: per key, in order: C{None} when it is durable, L{KeyExists}
        when the directory already holds its id, or the C{OSError} that
        kept it out (its file is removed then).
    """
    makeDirectories(directory, sync=True)
    directoryFd, _, whole = openSyncTarget(directory, wholeSync)
    try:
        results: list[BaseException | None] = []
        written: list[tuple[int, str]] = []
        for keyId, wrapped in keys:
            path = os.path.join(directory, keyId + KEY_FILE_SUFFIX)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                results.append(KeyExists(f"the key vault already holds key {keyId}"))
                continue
            except OSError as e:
                results.append(e)
                continue
            try:
                writeAll(fd, wrapped)
                if not whole:
                    os.fsync(fd)
            except OSError as e:
                results.append(e)
                discardFile(path)
                continue
            finally:
                os.close(fd)
            written.append((len(results), path))
            results.append(None)
        if written:
            try:
                if whole:
                    syncFileSystem(directoryFd)
                else:
                    syncDirectory(directory)
            except OSError as e:
                # The files may not survive a crash, whole or by name:
                # none of these keys may be used.
                for index, path in written:
                    discardFile(path)
                    results[index] = e
        return results
    finally:
        if directoryFd >= 0:
            os.close(directoryFd)
