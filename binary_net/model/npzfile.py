"""Reading and writing ``.npz`` archives safely (numpy only, no pickle).

Every reader of a parameter file or checkpoint goes through :func:`read_npz`,
so a damaged, truncated or wrong-kind file is refused with one line naming the
file, never a traceback; every writer goes through :func:`atomic_savez`, so a
file on disk is always either the old one or the complete new one.
"""
import os
import tempfile
import zipfile
import zlib

import numpy as np

__all__ = ["NpzError", "read_npz", "read_arrays", "atomic_savez", "TMP_PREFIX"]

# Temporary files written beside their target while an archive is saved.
TMP_PREFIX = ".tmp-"


class NpzError(ValueError):
    """An ``.npz`` file that cannot be read as asked; ``str()`` is one line
    naming the file."""

    def __init__(self, path, problem):
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def _one_line(error):
    return " ".join(str(error).split()) or type(error).__name__


def read_npz(path, what="an .npz archive"):
    """Every array of an ``.npz`` archive, fully read and checked.

    Parameters
    ----------
    path : str
        The archive.
    what : str
        What the file should be, for messages ("a parameter file", "a checkpoint").

    Returns
    -------
    dict of str -> numpy.ndarray
        Arrays by name, in the archive's order. Object arrays are refused
        (``allow_pickle=False``): an untrusted file never runs code.

    Raises
    ------
    NpzError
        Missing, empty, truncated or corrupt (bad zip structure, CRC, deflate
        stream) files, a ``.npy`` file given where an archive is expected, and
        arrays that would need pickle. The message is one line.
    """
    if not os.path.exists(path):
        raise NpzError(path, "no such file")
    if os.path.isdir(path):
        raise NpzError(path, f"is a folder, expected {what}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise NpzError(path, f"not readable as {what} ({_one_line(error)})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise NpzError(path, f"is a single .npy array, expected {what} (.npz)")
    try:
        with loaded as data:
            # Reading each member here surfaces CRC and deflate damage now.
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile,
            zlib.error) as error:
        raise NpzError(path, f"damaged, not readable as {what} ({_one_line(error)})") from None


def read_arrays(path, what="a parameter file"):
    """The ``arr_0, arr_1, ...`` arrays of a file written by ``np.savez(path, *arrays)``
    (the project's ``best_params.npz`` and the 2016 code's layout), in order.

    Raises
    ------
    NpzError
        As :func:`read_npz`, and when the names are not exactly
        ``arr_0 .. arr_{n-1}``.
    """
    arrays = read_npz(path, what)
    names = [name for name in arrays if name.startswith("arr_") and name[4:].isdigit()]
    indices = sorted(int(name[4:]) for name in names)
    if not names or indices != list(range(len(names))):
        raise NpzError(path, "holds no arr_0, arr_1, ... parameter arrays")
    return [arrays[f"arr_{index}"] for index in indices]


def atomic_savez(path, *args, **kwargs):
    """``np.savez(path, *args, **kwargs)`` atomically.

    The archive is written to a temporary file beside ``path`` (name starts
    with :data:`TMP_PREFIX`), flushed to disk, then renamed over ``path``; on
    any error or interruption the temporary file is removed and ``path`` is
    untouched.
    """
    directory = os.path.dirname(os.path.abspath(path))
    handle, tmp_path = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".npz", dir=directory)
    try:
        with os.fdopen(handle, "wb") as tmp:
            np.savez(tmp, *args, **kwargs)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise
