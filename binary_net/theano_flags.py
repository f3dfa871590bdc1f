"""Theano's flag defaults for this project, set without importing Theano.

``import binary_net`` calls :func:`add_defaults`, so that ``import binary_net``
followed by ``import theano`` (or ``import lasagne``) works on numpy 1.23:
``floatX=float32`` and ``blas__ldflags=`` (empty) are appended to the
environment variable ``THEANO_FLAGS`` unless the user set them there or in a
``.theanorc``. The empty ``blas__ldflags`` matters: with numpy 1.23 Theano's
BLAS detection fails on the first compiled function (``numpy.distutils``
has no ``blas_opt_info``); empty means "call numpy's own BLAS through its C
API" (OpenBLAS, fast). See ``../shared/notes/ENVIRONMENT.md``.
Standard library only; the module is cheap to import.
"""
import os
import sys

__all__ = ["DEFAULTS", "user_set", "add_defaults"]

# (flag, value, spellings a user may have set it under)
DEFAULTS = (
    ("floatX", "float32", ("floatX",)),
    ("blas__ldflags", "", ("blas__ldflags", "blas.ldflags")),
)


def user_set(names):
    """True if any spelling in ``names`` appears in THEANO_FLAGS or a theanorc."""
    flags = os.environ.get("THEANO_FLAGS", "")
    keys = {item.split("=", 1)[0].strip() for item in flags.split(",") if "=" in item}
    if keys & set(names):
        return True
    rc_paths = os.environ.get("THEANORC", "~/.theanorc:~/.theanorc.txt").split(os.pathsep)
    for path in rc_paths:
        path = os.path.expanduser(path)
        if not os.path.isfile(path):
            continue
        try:
            with open(path) as handle:
                lines = handle.readlines()
        except (OSError, UnicodeDecodeError):
            continue
        for line in lines:
            key = line.split("=", 1)[0].strip()
            if "=" in line and (key in names or key.replace(".", "__") in names):
                return True
    return False


def add_defaults():
    """Append the :data:`DEFAULTS` the user did not set to ``THEANO_FLAGS``.

    Returns False (and changes nothing) when Theano is already imported: its
    flags were read at import.
    """
    if "theano" in sys.modules:
        return False
    additions = [f"{key}={value}" for key, value, names in DEFAULTS if not user_set(names)]
    if additions:
        current = os.environ.get("THEANO_FLAGS", "")
        os.environ["THEANO_FLAGS"] = ",".join(filter(None, [current] + additions))
    return True
