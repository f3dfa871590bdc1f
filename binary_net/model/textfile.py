"""Writing text files atomically (numpy-free, Theano-free).

The JSON and text outputs (``config.json``, ``result.json``, reports) go
through :func:`atomic_write_text`, so a file on disk is always either the old
one or the complete new one.
"""
import os
import tempfile

from .npzfile import TMP_PREFIX

__all__ = ["atomic_write_text"]


def atomic_write_text(path, text):
    """Write ``text`` (str, UTF-8) to ``path`` atomically.

    The text goes to a temporary file beside ``path`` (name starts with
    :data:`~binary_net.model.npzfile.TMP_PREFIX`), is flushed to disk and
    renamed over ``path``; on any error the temporary file is removed and
    ``path`` is untouched. Raises ``OSError`` as ``open`` would (missing
    folder, no permission).
    """
    directory = os.path.dirname(os.path.abspath(path))
    handle, tmp_path = tempfile.mkstemp(prefix=TMP_PREFIX, dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as tmp:
            tmp.write(text)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise
