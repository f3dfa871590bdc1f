"""Reading and writing ``.npz`` archives safely (numpy only, no pickle).

Every reader of a parameter file or checkpoint goes through :func:`read_npz`,
so a damaged, truncated or wrong-kind file is refused with one line naming the
file, never a traceback; every writer goes through :func:`atomic_savez`, so a
file on disk is always either the old one or the complete new one.
"""
import contextlib
import os
import tempfile
import zipfile
import zlib

import numpy as np

__all__ = ["NpzError", "read_npz", "read_arrays", "atomic_savez", "atomic_write_bytes", "atomic_write_text",
           "remove_stale_tmp", "file_mode", "OutputError", "check_output_dir",
           "check_output_file", "TMP_PREFIX"]

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


def read_npz(path, what="an .npz archive", names=None):
    """Every array of an ``.npz`` archive, fully read and checked.

    Parameters
    ----------
    path : str
        The archive.
    what : str
        What the file should be, for messages ("a parameter file", "a checkpoint").
    names : sequence of str, optional
        Read only these members (e.g. a checkpoint's small ``meta``); a
        missing one is an :class:`NpzError`.

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
            wanted = data.files if names is None else [n for n in names if n in data.files]
            arrays = {name: data[name] for name in wanted}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile,
            zlib.error) as error:
        raise NpzError(path, f"damaged, not readable as {what} ({_one_line(error)})") from None
    missing = [name for name in names or () if name not in arrays]
    if missing:
        raise NpzError(path, f"has no {missing[0]!r} array, not {what}")
    return arrays


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


def file_mode():
    """The mode a new ordinary file gets here: ``0o666`` less the process umask
    (``tempfile.mkstemp`` alone would give ``0o600``)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def _atomic_file(path, suffix=""):
    """A binary file object that becomes ``path`` when the block ends without
    error (written beside it, flushed, mode per the umask, renamed over it);
    on any error or interruption the temporary file is removed."""
    directory = os.path.dirname(os.path.abspath(path))
    handle, tmp_path = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix, dir=directory)
    try:
        with os.fdopen(handle, "wb") as tmp:
            os.fchmod(tmp.fileno(), file_mode())
            yield tmp
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise


def atomic_savez(path, *args, **kwargs):
    """``np.savez(path, *args, **kwargs)`` atomically, without pickles.

    Positional arrays are stored as ``arr_0, arr_1, ...``, keyword arrays
    under their names (``np.savez``'s layout; ``np.load`` reads the file).
    The archive is written to a temporary file beside ``path`` (name starts
    with :data:`TMP_PREFIX`), flushed to disk, given the umask's mode, then
    renamed over ``path``; on any error or interruption (Ctrl-C included)
    the temporary file is removed and ``path`` is untouched.

    Raises
    ------
    ValueError
        An object array (it would need pickle), or a name given twice.
    OSError
        The folder is not writable.
    """
    arrays = {f"arr_{index}": value for index, value in enumerate(args)}
    for name, value in kwargs.items():
        if name in arrays:
            raise ValueError(f"atomic_savez: array name {name!r} given twice")
        arrays[name] = value
    with _atomic_file(path, ".npz") as tmp:
        # The ZipFile is closed by its own ``with`` even when interrupted, so
        # nothing is left for its finaliser to write to a closed file.
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED,
                             allowZip64=True) as archive:
            for name, value in arrays.items():
                with archive.open(name + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(value),
                                              allow_pickle=False)


def atomic_write_bytes(path, data):
    """Write ``data`` (bytes) to ``path`` atomically, as :func:`atomic_savez`."""
    with _atomic_file(path) as tmp:
        tmp.write(data)


def atomic_write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically, as :func:`atomic_savez`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_tmp(directory):
    """Remove the temporary files (``TMP_PREFIX*``) an interrupted atomic write
    (``kill -9``, power loss) left in ``directory``.

    Returns
    -------
    (count, bytes) : the files removed and their total size.
    """
    count = size = 0
    try:
        names = os.listdir(directory)
    except OSError:
        return 0, 0
    for name in names:
        full = os.path.join(directory, name)
        if name.startswith(TMP_PREFIX) and os.path.isfile(full) and not os.path.islink(full):
            try:
                bytes_ = os.path.getsize(full)
                os.unlink(full)
            except OSError:
                continue
            count, size = count + 1, size + bytes_
    return count, size


class OutputError(ValueError):
    """An output location that cannot be written; ``str()`` is one line."""


def _probe(directory, flag, shown):
    try:
        handle, probe = tempfile.mkstemp(prefix=TMP_PREFIX, dir=directory)
    except OSError as error:
        raise OutputError(f"{flag} {shown}: cannot write in {directory} "
                          f"({error.strerror or _one_line(error)})") from None
    os.close(handle)
    os.unlink(probe)


def _existing_ancestor(path):
    current = os.path.abspath(path)
    while not os.path.lexists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def check_output_dir(path, flag="--output-dir"):
    """Check, before any long work, that ``path`` can be (created and) written
    as a folder. Nothing is created.

    Raises
    ------
    OutputError
        ``path`` is a file, lies under a file, or its folder (or the nearest
        existing parent) is not writable (permissions, read-only file system).
    """
    if os.path.lexists(path) and not os.path.isdir(path):
        raise OutputError(f"{flag} {path}: exists and is not a folder")
    ancestor = _existing_ancestor(path)
    if not os.path.isdir(ancestor):
        raise OutputError(f"{flag} {path}: {ancestor} is a file, not a folder")
    _probe(ancestor, flag, path)


def check_output_file(path, flag="output"):
    """Check that the file ``path`` can be written: its folder exists and is
    writable, and ``path`` is not a folder. Nothing is created.

    Raises
    ------
    OutputError
        With one line naming ``path``.
    """
    if os.path.isdir(path):
        raise OutputError(f"{flag} {path}: is a folder, expected a file name")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        what = "is a file" if os.path.lexists(directory) else "does not exist"
        raise OutputError(f"{flag} {path}: the folder {directory} {what}")
    _probe(directory, flag, path)
