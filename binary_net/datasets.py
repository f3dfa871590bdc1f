"""Readers for MNIST, CIFAR-10 and SVHN with the pylearn2 interface.

Each reader is a class whose instance carries the design matrix ``.X``
(2-D, one example per row) and the targets ``.y`` (shape ``(N, 1)``,
``uint8``), as pylearn2's ``DenseDesignMatrix`` did::

    train = MNIST('train', start=0, stop=50000)
    valid = MNIST('train', start=50000, stop=60000)
    test = MNIST('test')

Only numpy, scipy and the standard library are used, so importing this
module is fast and never touches Theano.

Layout
------
* MNIST: ``X`` is ``(N, 784)``, pixel / 255 in ``[0, 1]`` (``float32``);
  with ``dtype='uint8'`` the raw bytes 0..255 are kept.
* CIFAR-10 and SVHN: ``X`` is ``(N, 3072)`` with values in ``[0, 255]``,
  channel-major, so ``X.reshape(-1, 3, 32, 32)`` is NCHW.  With
  ``dtype='uint8'`` the raw bytes are kept (SVHN train+extra is 1.8 GB as
  ``uint8`` and 7 GB as ``float32``).
* ``y`` is ``uint8`` of shape ``(N, 1)`` holding the class 0..9.

``start`` / ``stop`` slice the rows after the requested set has been
assembled; they must satisfy ``0 <= start < stop <= N``.

Splits used by the paper
------------------------
* MNIST: train = ``MNIST('train', 0, 50000)``, valid =
  ``MNIST('train', 50000, 60000)``, test = ``MNIST('test')``.
* CIFAR-10: train = ``CIFAR10('train', 0, 45000)``, valid =
  ``CIFAR10('train', 45000, 50000)``, test = ``CIFAR10('test')``.
* SVHN: ``'valid'`` holds, for every class, the first
  ``SVHN_VALID_PER_CLASS_TRAIN`` (400) examples of that class in
  ``train_32x32.mat`` followed by the first ``SVHN_VALID_PER_CLASS_EXTRA``
  (200) examples of that class in ``extra_32x32.mat`` (6,000 in all);
  ``'splitted_train'`` is train followed by extra minus those rows
  (598,388 on the real data).  File order is kept in both.  A class with
  fewer examples than asked contributes all that it has.

Data directory
--------------
:func:`resolve_data_dir` decides where the files of data set ``name``
(``'mnist'``, ``'cifar10'`` or ``'svhn'``) live, first match wins:

1. the explicit ``data_dir`` argument (used as is, without appending
   ``name``);
2. ``$BINARY_NET_DATA/<name>`` if the environment variable
   ``BINARY_NET_DATA`` is set and not empty;
3. ``~/.binary_net/data/<name>``.

Files expected there:

* MNIST: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each either
  plain or gzipped (``.gz``); the plain file wins when both exist.
* CIFAR-10: ``data_batch_1`` .. ``data_batch_5`` and ``test_batch`` (the
  python version), directly in the directory or in its
  ``cifar-10-batches-py/`` sub-directory.
* SVHN: ``train_32x32.mat``, ``test_32x32.mat``, ``extra_32x32.mat``
  (format 2); ``extra`` is read only by sets that need it.

Errors
------
Every problem with the data (missing, truncated or corrupt file, bad
header, wrong shape, label out of range, checksum mismatch, bad argument)
raises :class:`DatasetError`, a ``ValueError`` whose message is a single
line ``"<file or argument>: <what is wrong>[; <how to fix it>]"``, e.g.::

    /data/mnist/t10k-labels-idx1-ubyte.gz: truncated IDX file: header says
      10008 bytes, file has 10000                          (one line really)
    which_set='valid': unknown set for MNIST; expected one of 'train', 'test'

A missing file adds how to get it: ``pass --data-dir or set
BINARY_NET_DATA, or use --download (download=True)``.  The lower-level
exception (gzip, pickle, scipy, urllib) is kept as ``__cause__``.

Downloading
-----------
``download=True`` (or :func:`download`) fetches missing files from
``BASE_URLS`` (tried in order), writes them to ``<file>.part``, checks the
MD5 in ``MD5`` and only then renames them into place.  MNIST checksums are
those of the uncompressed files because the gzip bytes differ between
mirrors.
"""

import gzip
import hashlib
import importlib
import logging
import math
import operator
import os
import pickle
import re
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    'DatasetError', 'resolve_data_dir', 'download', 'verify_mnist', 'read_idx',
    'svhn_valid_mask', 'MNIST', 'CIFAR10', 'SVHN', 'BASE_URLS', 'MD5',
    'DATA_ENV_VAR', 'DATASET_NAMES', 'SVHN_VALID_PER_CLASS_TRAIN',
    'SVHN_VALID_PER_CLASS_EXTRA',
]

log = logging.getLogger(__name__)

DATA_ENV_VAR = 'BINARY_NET_DATA'
DATASET_NAMES = ('mnist', 'cifar10', 'svhn')

# Per-class validation counts of the paper's SVHN split; read at load time
# so that tests can shrink them for tiny files.
SVHN_VALID_PER_CLASS_TRAIN = 400
SVHN_VALID_PER_CLASS_EXTRA = 200

# Base URLs, tried in order; a module-level dict so tests can point them
# at file:// URLs.
BASE_URLS = {
    'mnist': ['http://yann.lecun.com/exdb/mnist/',
              'https://ossci-datasets.s3.amazonaws.com/mnist/'],
    'cifar10': ['https://www.cs.toronto.edu/~kriz/'],
    'svhn': ['http://ufldl.stanford.edu/housenumbers/'],
}

# MNIST: MD5 of the *uncompressed* IDX files (downloaded as <name>.gz).
MD5 = {
    'mnist': {
        'train-images-idx3-ubyte': '6bbc9ace898e44ae57da46a324031adb',
        'train-labels-idx1-ubyte': 'a25bea736e30d166cdddb491f175f624',
        't10k-images-idx3-ubyte': '2646ac647ad5339dbf082846283269ea',
        't10k-labels-idx1-ubyte': '27ae3e4e09519cfbb04c329615203637',
    },
    'cifar10': {
        'cifar-10-python.tar.gz': 'c58f30108f718f92721af3b95e74349a',
    },
    'svhn': {
        'train_32x32.mat': 'e26dedcc434d2e4c54c9b2d4a06d8373',
        'test_32x32.mat': 'eb5a983be6a315427106f1b164d9cef3',
        'extra_32x32.mat': 'a93ce644f1a588dc4d68dda5feec44a7',
    },
}

_FETCH_HINT = ('pass --data-dir or set %s, or use --download '
               '(download=True)' % DATA_ENV_VAR)
_CHUNK = 1 << 20
_CIFAR_ARCHIVE = 'cifar-10-python.tar.gz'
_CIFAR_SUBDIR = 'cifar-10-batches-py'


class DatasetError(ValueError):
    """A data file or a dataset argument is missing or invalid.

    The message is always a single line naming the file (or argument)
    and what is wrong with it.
    """

    def __init__(self, message):
        # Messages may embed text of lower-level exceptions; keep one line.
        super().__init__(re.sub(r'\s*[\r\n]+\s*', ' ', str(message)).strip())


def _err(where, what, hint=None):
    """Build a :class:`DatasetError` ``"<where>: <what>[; <hint>]"``."""
    msg = '%s: %s' % (where, what)
    if hint:
        msg += '; ' + hint
    return DatasetError(msg)


def _exc_text(exc):
    """Short description of a lower-level exception for a message."""
    text = str(exc)
    return '%s: %s' % (type(exc).__name__, text) if text else type(exc).__name__


# ---------------------------------------------------------------------------
# Data directory
# ---------------------------------------------------------------------------

def resolve_data_dir(name, data_dir=None):
    """Return the directory that holds the files of data set `name`.

    Parameters
    ----------
    name : {'mnist', 'cifar10', 'svhn'}
        Data set name.
    data_dir : str or path-like, optional
        Explicit directory; returned as is (``~`` expanded) when given.

    Returns
    -------
    pathlib.Path
        `data_dir` if given (or ``data_dir/<name>`` when `data_dir` is the
        folder that holds ``mnist/``, ``cifar10/``, ``svhn/``: that
        sub-folder exists and `data_dir` itself holds none of the data
        set's files), else ``$BINARY_NET_DATA/<name>`` if that variable is
        set and not empty, else ``~/.binary_net/data/<name>``.

    Raises
    ------
    DatasetError
        If `name` is not a known data set.
    """
    if name not in DATASET_NAMES:
        raise _err('name=%r' % (name,), 'unknown data set; expected one of %s'
                   % ', '.join(repr(n) for n in DATASET_NAMES))
    if data_dir is not None and str(data_dir) != '':
        path = Path(os.path.expanduser(os.fspath(data_dir)))
        if (path / name).is_dir() and not _holds_files_of(name, path):
            return path / name
        return path
    root = os.environ.get(DATA_ENV_VAR)
    if root:
        return Path(os.path.expanduser(root)) / name
    return Path.home() / '.binary_net' / 'data' / name


# ---------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------

def _holds_files_of(name, path):
    """True if folder `path` holds any file (or folder) data set `name` reads."""
    if name == 'mnist':
        bases = [b for pair in _MNIST_FILES.values() for b in pair]
        candidates = bases + [b + '.gz' for b in bases]
    elif name == 'cifar10':
        candidates = [_CIFAR_SUBDIR, _CIFAR_ARCHIVE, 'data_batch_1', 'test_batch']
    else:
        candidates = list(MD5['svhn'])
    return any((path / c).exists() for c in candidates)


def _check_which_set(which_set, allowed, cls_name):
    if which_set not in allowed:
        raise _err('which_set=%r' % (which_set,), 'unknown set for %s; '
                   'expected one of %s' % (cls_name, ', '.join(
                       repr(s) for s in allowed)))


def _check_dtype(dtype):
    """Return `dtype` as a numpy dtype; only uint8 and floats make sense."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise _err('dtype=%r' % (dtype,), 'not a numpy dtype') from exc
    if dt != np.uint8 and dt.kind != 'f':
        raise _err('dtype=%r' % (dtype,),
                   "unsupported; use 'uint8' or a float type such as "
                   "'float32'")
    return dt


def _row_range(start, stop, n, what):
    """Validate `start`/`stop` against `n` rows; return ints."""
    try:
        start = 0 if start is None else operator.index(start)
        stop = n if stop is None else operator.index(stop)
    except TypeError as exc:
        raise _err('start=%r, stop=%r' % (start, stop),
                   'must be integers or None') from exc
    if not 0 <= start < stop <= n:
        raise _err('start=%d, stop=%d' % (start, stop),
                   'out of range for %s which has %d rows; need '
                   '0 <= start < stop <= %d' % (what, n, n))
    return start, stop


def _md5_file(path, gunzip=False):
    """MD5 hex digest of a file's bytes (of its decompressed bytes if
    `gunzip`)."""
    digest = hashlib.md5()
    opener = gzip.open if gunzip else open
    with opener(path, 'rb') as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b''):
            digest.update(chunk)
    return digest.hexdigest()


class _Dataset:
    """Common attributes of the readers (pylearn2 DenseDesignMatrix-like).

    Attributes
    ----------
    X : numpy.ndarray
        Design matrix, one example per row.
    y : numpy.ndarray
        ``uint8`` labels of shape ``(N, 1)``.
    which_set : str
        Name of the set that was loaded.
    data_dir : pathlib.Path
        Directory the files were read from.
    num_classes : int
        Always 10.
    """

    num_classes = 10
    name = None
    sets = ()

    def _setup(self, which_set, data_dir, dtype):
        _check_which_set(which_set, self.sets, type(self).__name__)
        self.which_set = which_set
        self.dtype = _check_dtype(dtype)
        self.data_dir = resolve_data_dir(self.name, data_dir)

    def __len__(self):
        return self.X.shape[0]

    @property
    def num_examples(self):
        """Number of rows of ``X``."""
        return self.X.shape[0]

    def get_design_matrix(self):
        """Return ``X`` (pylearn2 name)."""
        return self.X

    def get_targets(self):
        """Return ``y`` (pylearn2 name)."""
        return self.y

    def __repr__(self):
        return '%s(which_set=%r, X=%s %s, data_dir=%r)' % (
            type(self).__name__, self.which_set, self.X.shape,
            self.X.dtype, str(self.data_dir))


# ---------------------------------------------------------------------------
# MNIST
# ---------------------------------------------------------------------------

_MNIST_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}


def _mnist_path(data_dir, base):
    """Existing path of IDX file `base` (plain first, then .gz) or None."""
    for candidate in (data_dir / base, data_dir / (base + '.gz')):
        if candidate.is_file():
            return candidate
    return None


def _read_bytes(path):
    """Whole content of `path`, gunzipped if it is a gzip file (by its first
    two bytes, whatever its name)."""
    try:
        with open(path, 'rb') as fh:
            gzipped = fh.read(2) == b'\x1f\x8b'
        if gzipped:
            with gzip.open(path, 'rb') as fh:
                return fh.read()
        return Path(path).read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        if isinstance(exc, (FileNotFoundError, IsADirectoryError, PermissionError)):
            raise _err(path, 'cannot read (%s)' % _exc_text(exc)) from exc
        raise _err(path, 'corrupt gzip file (%s)' % _exc_text(exc),
                   'delete it and download it again') from exc


def read_idx(path, ndim):
    """Parse an IDX file of unsigned bytes (raw or gzip); return a read-only
    uint8 array of `ndim` dimensions.

    The header is a big-endian magic number (``0x0800 + ndim``) followed
    by `ndim` big-endian uint32 dimensions; the payload must hold exactly
    their product in bytes (computed in Python integers: no overflow) and
    the first dimension (images, labels) must not be 0. The one IDX reader
    of the project: the data sets and ``binary_net.predict`` use it.

    Raises
    ------
    DatasetError
        One line naming `path`: unreadable or corrupt gzip, wrong magic,
        size not matching the header, no items.
    """
    magic = 0x0800 + ndim
    raw = _read_bytes(path)
    header_len = 4 * (1 + ndim)
    if len(raw) < header_len:
        raise _err(path, 'truncated IDX file: %d bytes, shorter than the '
                   '%d-byte header' % (len(raw), header_len))
    (found,) = struct.unpack('>I', raw[:4])
    if found != magic:
        raise _err(path, 'bad magic number %d, expected %d (not an IDX %s '
                   'file)' % (found, magic,
                              'image' if ndim == 3 else 'label'))
    dims = struct.unpack('>%dI' % ndim, raw[4:header_len])
    expected = header_len + math.prod(dims)  # Python ints: exact
    if len(raw) < expected:
        raise _err(path, 'truncated IDX file: header says %d bytes, file has '
                   '%d' % (expected, len(raw)))
    if len(raw) > expected:
        raise _err(path, '%d trailing bytes after the IDX payload: header '
                   'says %d bytes, file has %d'
                   % (len(raw) - expected, expected, len(raw)))
    if dims[0] == 0:
        raise _err(path, 'the IDX header announces 0 %s'
                   % ('images' if ndim == 3 else 'items'))
    return np.frombuffer(raw, dtype=np.uint8,
                         offset=header_len).reshape(dims)


def _missing_file(where):
    return _err(where, 'file not found', _FETCH_HINT)


class MNIST(_Dataset):
    """The MNIST handwritten digits (pylearn2 ``MNIST`` interface).

    Parameters
    ----------
    which_set : {'train', 'test'}
        ``'train'`` has 60,000 rows, ``'test'`` 10,000.
    start, stop : int, optional
        Keep rows ``start:stop`` of the set.
    data_dir : str or path-like, optional
        Directory with the IDX files; see :func:`resolve_data_dir`.
    download : bool, optional
        Fetch missing files first (see :func:`download`).
    dtype : str or numpy.dtype, optional
        ``'float32'`` (default) or another float: ``X`` is pixel / 255.
        ``'uint8'``: raw bytes 0..255.
    center : bool, optional
        Subtract the per-feature mean of the selected rows (pylearn2's
        ``center``); needs a float `dtype`.

    Attributes
    ----------
    X : numpy.ndarray
        ``(N, 784)`` images, row-major 28x28.
    y : numpy.ndarray
        ``(N, 1)`` ``uint8`` digits 0..9.
    """

    name = 'mnist'
    sets = ('train', 'test')

    def __init__(self, which_set, start=None, stop=None, data_dir=None,
                 download=False, dtype='float32', center=False):
        self._setup(which_set, data_dir, dtype)
        if center and self.dtype.kind != 'f':
            raise _err('center=True', "needs a float dtype, got dtype=%r"
                       % (str(self.dtype),))
        bases = _MNIST_FILES[which_set]
        if download and any(_mnist_path(self.data_dir, b) is None
                            for b in bases):
            _download('mnist', self.data_dir, files=bases)
        paths = []
        for base in bases:
            path = _mnist_path(self.data_dir, base)
            if path is None:
                raise _missing_file('%s[.gz]' % (self.data_dir / base))
            paths.append(path)
        images = read_idx(paths[0], 3)
        labels = read_idx(paths[1], 1)
        if images.shape[1:] != (28, 28):
            raise _err(paths[0], 'images are %dx%d, expected 28x28'
                       % images.shape[1:])
        if images.shape[0] != labels.shape[0]:
            raise _err(paths[1], '%d labels but %s has %d images'
                       % (labels.shape[0], paths[0].name, images.shape[0]))
        bad = np.flatnonzero(labels > 9)
        if bad.size:
            raise _err(paths[1], 'label %d at row %d is outside 0..9'
                       % (labels[bad[0]], bad[0]))
        start, stop = _row_range(start, stop, images.shape[0],
                                 "MNIST(%r)" % which_set)
        images = images[start:stop].reshape(stop - start, 784)
        if self.dtype == np.uint8:
            X = images.copy()  # frombuffer views are read-only
        else:
            X = images.astype(self.dtype)
            X /= 255  # true division, exact pixel/255 in the float type
            if center:
                X -= X.mean(axis=0, dtype=np.float64).astype(self.dtype)
        self.X = X
        self.y = labels[start:stop].reshape(-1, 1).copy()


def verify_mnist(data_dir=None):
    """Check the MD5 of the four uncompressed MNIST files.

    Parameters
    ----------
    data_dir : str or path-like, optional
        See :func:`resolve_data_dir`.

    Returns
    -------
    dict
        File base name -> MD5 hex digest (all equal to ``MD5['mnist']``).

    Raises
    ------
    DatasetError
        If a file is missing, cannot be decompressed, or its MD5 differs.
    """
    data_dir = resolve_data_dir('mnist', data_dir)
    digests = {}
    for base, expected in MD5['mnist'].items():
        path = _mnist_path(data_dir, base)
        if path is None:
            raise _missing_file('%s[.gz]' % (data_dir / base))
        try:
            got = _md5_file(path, gunzip=path.suffix == '.gz')
        except (OSError, EOFError, zlib.error) as exc:
            raise _err(path, 'cannot read (%s)' % _exc_text(exc)) from exc
        if got != expected:
            raise _err(path, 'MD5 of the uncompressed data is %s, expected %s'
                       % (got, expected), 'delete it and download it again')
        digests[base] = got
    return digests


# ---------------------------------------------------------------------------
# CIFAR-10
# ---------------------------------------------------------------------------

_CIFAR_FILES = {
    'train': tuple('data_batch_%d' % i for i in range(1, 6)),
    'test': ('test_batch',),
}

# The only globals a pickled numpy uint8 array needs; numpy >= 2 writes
# "numpy._core" where older versions wrote "numpy.core".
_PICKLE_ALLOWED = {
    ('numpy.core.multiarray', '_reconstruct'),
    ('numpy._core.multiarray', '_reconstruct'),
    ('numpy.core.multiarray', 'scalar'),
    ('numpy._core.multiarray', 'scalar'),
    ('numpy', 'ndarray'),
    ('numpy', 'dtype'),
    ('_codecs', 'encode'),
}


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals numpy arrays need, so a
    crafted file cannot run code."""

    def __init__(self, fh, path):
        # latin1 turns Python 2 str (array payloads included) into
        # str that numpy accepts; Python 3 pickles are unaffected.
        super().__init__(fh, encoding='latin1')
        self._path = path

    def find_class(self, module, name):
        if (module, name) not in _PICKLE_ALLOWED:
            raise _err(self._path, 'refused to load pickled global %s.%s '
                       '(only numpy arrays are allowed)' % (module, name))
        try:
            mod = importlib.import_module(module)
        except ImportError:
            mod = importlib.import_module(
                module.replace('numpy._core', 'numpy.core'))
        return getattr(mod, name)


def _cifar_path(data_dir, base):
    for candidate in (data_dir / base, data_dir / _CIFAR_SUBDIR / base):
        if candidate.is_file():
            return candidate
    return None


def _read_cifar_batch(path):
    """Return ``(data uint8 (n, 3072), labels uint8 (n,))`` of a batch."""
    try:
        with open(path, 'rb') as fh:
            batch = _SafeUnpickler(fh, path).load()
    except DatasetError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # pickle raises many types on bad input
        raise _err(path, 'not a readable CIFAR-10 pickle (%s)'
                   % _exc_text(exc)) from exc
    if not isinstance(batch, dict):
        raise _err(path, 'pickle holds a %s, expected a dict'
                   % type(batch).__name__)

    def field(key):
        for k in (key, key.encode('ascii')):
            if k in batch:
                return batch[k]
        raise _err(path, 'no %r entry in the pickled dict' % key)

    data = field('data')
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 \
            or data.ndim != 2 or data.shape[1] != 3072:
        desc = ('%s %s' % (data.shape, data.dtype)
                if isinstance(data, np.ndarray) else type(data).__name__)
        raise _err(path, "'data' is %s, expected a uint8 array of shape "
                   "(n, 3072)" % desc)
    try:
        labels = np.asarray(field('labels'))
    except (ValueError, TypeError) as exc:
        raise _err(path, "'labels' is not a list of integers") from exc
    if labels.ndim != 1 or labels.dtype.kind not in 'iu':
        raise _err(path, "'labels' has shape %s and dtype %s, expected a "
                   "list of integers" % (labels.shape, labels.dtype))
    if labels.shape[0] != data.shape[0]:
        raise _err(path, '%d labels for %d images'
                   % (labels.shape[0], data.shape[0]))
    bad = np.flatnonzero((labels < 0) | (labels > 9))
    if bad.size:
        raise _err(path, 'label %d at row %d is outside 0..9'
                   % (labels[bad[0]], bad[0]))
    return data, labels.astype(np.uint8)


class CIFAR10(_Dataset):
    """CIFAR-10, python version (pylearn2 ``CIFAR10`` interface).

    Parameters
    ----------
    which_set : {'train', 'test'}
        ``'train'`` is ``data_batch_1`` .. ``data_batch_5`` in order
        (50,000 rows); ``'test'`` is ``test_batch`` (10,000 rows).
    start, stop : int, optional
        Keep rows ``start:stop`` of the set (the paper: train 0:45000,
        valid 45000:50000).
    data_dir : str or path-like, optional
        Directory with the batches (or with ``cifar-10-batches-py/``);
        see :func:`resolve_data_dir`.
    download : bool, optional
        Fetch and extract the archive first if batches are missing.
    dtype : str or numpy.dtype, optional
        ``'float32'`` (default) or another float, values 0..255;
        ``'uint8'`` keeps the raw bytes.

    Attributes
    ----------
    X : numpy.ndarray
        ``(N, 3072)``, channel-major: ``X.reshape(-1, 3, 32, 32)`` is NCHW.
    y : numpy.ndarray
        ``(N, 1)`` ``uint8`` classes 0..9.
    """

    name = 'cifar10'
    sets = ('train', 'test')

    def __init__(self, which_set, start=None, stop=None, data_dir=None,
                 download=False, dtype='float32'):
        self._setup(which_set, data_dir, dtype)
        bases = _CIFAR_FILES[which_set]
        if download and any(_cifar_path(self.data_dir, b) is None
                            for b in bases):
            _download('cifar10', self.data_dir)
        datas, labels = [], []
        for base in bases:
            path = _cifar_path(self.data_dir, base)
            if path is None:
                raise _err(self.data_dir / base, 'file not found (also looked '
                           'in %s)' % (self.data_dir / _CIFAR_SUBDIR),
                           _FETCH_HINT)
            data, lab = _read_cifar_batch(path)
            datas.append(data)
            labels.append(lab)
        data = datas[0] if len(datas) == 1 else np.concatenate(datas)
        del datas
        y = np.concatenate(labels)
        start, stop = _row_range(start, stop, data.shape[0],
                                 'CIFAR10(%r)' % which_set)
        # Slice before converting so only the kept rows are copied.
        self.X = np.array(data[start:stop], dtype=self.dtype)
        self.y = y[start:stop].reshape(-1, 1)


# ---------------------------------------------------------------------------
# SVHN
# ---------------------------------------------------------------------------

_SVHN_FILES = {'train': 'train_32x32.mat', 'test': 'test_32x32.mat',
               'extra': 'extra_32x32.mat'}
_SVHN_PARTS = {
    'train': ('train',),
    'test': ('test',),
    'extra': ('extra',),
    'train_all': ('train', 'extra'),
    'valid': ('train', 'extra'),
    'splitted_train': ('train', 'extra'),
}


def svhn_valid_mask(labels, per_class):
    """Mark the first `per_class` examples of every class.

    Parameters
    ----------
    labels : array_like of int
        Labels in file order (any shape; flattened).
    per_class : int
        How many examples of each class to mark; a class with fewer
        examples has all of them marked.

    Returns
    -------
    numpy.ndarray of bool
        Mask with the same length as the flattened `labels`.
    """
    labels = np.asarray(labels).reshape(-1)
    mask = np.zeros(labels.shape[0], dtype=bool)
    for c in np.unique(labels):
        mask[np.flatnonzero(labels == c)[:per_class]] = True
    return mask


def _read_svhn_mat(path):
    """Return ``(X view (N, 3, 32, 32) uint8, y uint8 (N,) in 0..9)``."""
    import scipy.io  # deferred: scipy.io is slow to import

    try:
        mat = scipy.io.loadmat(path, variable_names=['X', 'y'])
    except MemoryError:
        raise
    except NotImplementedError as exc:
        raise _err(path, 'unsupported .mat version (%s); expected the MATLAB '
                   '5 format of SVHN format 2' % _exc_text(exc)) from exc
    except Exception as exc:  # scipy raises many types on bad input
        raise _err(path, 'truncated or corrupt .mat file (%s)'
                   % _exc_text(exc), 'delete it and download it again') \
            from exc
    for key in ('X', 'y'):
        if key not in mat:
            raise _err(path, 'no %r variable in the .mat file' % key)
    X, y = mat['X'], mat['y']
    if X.dtype != np.uint8 or X.ndim != 4 or X.shape[:3] != (32, 32, 3):
        raise _err(path, "'X' is %s %s, expected uint8 (32, 32, 3, N)"
                   % (X.shape, X.dtype))
    n = X.shape[3]
    if y.dtype.kind not in 'iuf' or y.size != n or y.ndim > 2 \
            or (y.ndim == 2 and 1 not in y.shape):
        raise _err(path, "'y' is %s %s, expected (%d, 1) integers"
                   % (y.shape, y.dtype, n))
    y = y.reshape(-1)
    bad = np.flatnonzero((y < 1) | (y > 10) | (y != np.round(y)))
    if bad.size:
        raise _err(path, 'label %s at row %d is outside 1..10 (SVHN stores '
                   'digit 0 as 10)' % (y[bad[0]], bad[0]))
    y = (y.astype(np.uint8) % 10).astype(np.uint8)  # 10 -> 0
    # MATLAB order is (row, col, channel, example); view it as NCHW.
    return X.transpose(3, 2, 0, 1), y


# (path, size, mtime) of files whose MD5 this process has checked.
_VERIFIED = set()


def _verify_official(path, expected):
    """Refuse `path` unless its MD5 is `expected` (the official file's)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _VERIFIED:
        return
    try:
        got = _md5_file(path)
    except OSError as exc:
        raise _err(path, 'cannot read (%s)' % _exc_text(exc)) from exc
    if got != expected:
        raise _err(path, 'MD5 %s differs from the official file\'s %s (damaged or '
                   'partial download?)' % (got, expected),
                   'delete it and use --download, or pass --skip-md5 '
                   '(verify_md5=False) for a file of your own')
    _VERIFIED.add(key)


class SVHN(_Dataset):
    """Street View House Numbers, format 2 (cropped 32x32 digits).

    Parameters
    ----------
    which_set : {'train', 'test', 'extra', 'train_all', 'valid', \
'splitted_train'}
        ``'train_all'`` is train followed by extra.  ``'valid'`` is the
        paper's validation set: per class, the first
        ``SVHN_VALID_PER_CLASS_TRAIN`` (400) examples of train followed by
        the first ``SVHN_VALID_PER_CLASS_EXTRA`` (200) of extra (6,000
        rows).  ``'splitted_train'`` is train_all minus those rows
        (598,388).  File order is kept.
    start, stop : int, optional
        Keep rows ``start:stop`` of the assembled set.
    data_dir : str or path-like, optional
        Directory with the ``.mat`` files; see :func:`resolve_data_dir`.
    download : bool, optional
        Fetch the missing files this set needs first.
    dtype : str or numpy.dtype, optional
        ``'float32'`` (default) or another float, values 0..255;
        ``'uint8'`` keeps the raw bytes (train_all: 1.8 GB instead of
        7 GB).
    verify_md5 : bool, optional
        Check each ``.mat`` file against the official MD5 (``MD5['svhn']``;
        once per file, size and modification time in a process) and refuse
        a file that differs (default). ``False`` for files of your own
        under the official names (``svhn.py --skip-md5``).

    Attributes
    ----------
    X : numpy.ndarray
        ``(N, 3072)``, channel-major: ``X.reshape(-1, 3, 32, 32)`` is NCHW.
    y : numpy.ndarray
        ``(N, 1)`` ``uint8`` digits 0..9 (the files' 10 is mapped to 0).
    """

    name = 'svhn'
    sets = tuple(_SVHN_PARTS)

    def __init__(self, which_set, start=None, stop=None, data_dir=None,
                 download=False, dtype='float32', verify_md5=True):
        self._setup(which_set, data_dir, dtype)
        parts = _SVHN_PARTS[which_set]
        files = [_SVHN_FILES[p] for p in parts]
        if download:
            missing = [f for f in files if not (self.data_dir / f).is_file()]
            if missing:
                _download('svhn', self.data_dir, files=missing)
        for f in files:
            if not (self.data_dir / f).is_file():
                raise _missing_file(self.data_dir / f)
            if verify_md5:
                _verify_official(self.data_dir / f, MD5['svhn'][f])

        per_class = {'train': SVHN_VALID_PER_CLASS_TRAIN,
                     'extra': SVHN_VALID_PER_CLASS_EXTRA}
        # (NCHW uint8 view, labels, row indices kept) per part, in order.
        loaded = []
        for part, f in zip(parts, files):
            X, y = _read_svhn_mat(self.data_dir / f)
            if which_set in ('valid', 'splitted_train'):
                mask = svhn_valid_mask(y, per_class[part])
                keep = np.flatnonzero(mask if which_set == 'valid' else ~mask)
            else:
                keep = np.arange(y.shape[0])
            loaded.append((X, y, keep))
        total = sum(k.shape[0] for _, _, k in loaded)
        start, stop = _row_range(start, stop, total, 'SVHN(%r)' % which_set)

        out_X = np.empty((stop - start, 3072), dtype=self.dtype)
        out_y = np.empty((stop - start, 1), dtype=np.uint8)
        offset = 0  # position of this part's first row in the full set
        filled = 0
        for X, y, keep in loaded:
            lo = min(max(start - offset, 0), keep.shape[0])
            hi = min(max(stop - offset, 0), keep.shape[0])
            offset += keep.shape[0]
            keep = keep[lo:hi]
            # Gather uint8 rows in chunks: bounded temporaries, cast on
            # assignment into the preallocated output.
            for i in range(0, keep.shape[0], 8192):
                rows = keep[i:i + 8192]
                out_X[filled:filled + rows.shape[0]] = \
                    X[rows].reshape(rows.shape[0], 3072)
                out_y[filled:filled + rows.shape[0], 0] = y[rows]
                filled += rows.shape[0]
        loaded.clear()
        self.X, self.y = out_X, out_y


# ---------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------

def _fetch(url, part_path):
    """Stream `url` into `part_path`; return the MD5 of the bytes."""
    import urllib.request  # deferred: only downloads need the network stack

    digest = hashlib.md5()
    with urllib.request.urlopen(url, timeout=60) as resp:
        length = resp.headers.get('Content-Length')
        length = int(length) if length and length.isdigit() else None
        bar = None
        if length:
            try:
                from tqdm import tqdm
                bar = tqdm(total=length, unit='B', unit_scale=True,
                           unit_divisor=1024, desc=part_path.name[:-5],
                           leave=False)
            except ImportError:  # progress bar is optional
                bar = None
        got = 0
        try:
            with open(part_path, 'wb') as out:
                for chunk in iter(lambda: resp.read(_CHUNK), b''):
                    out.write(chunk)
                    digest.update(chunk)
                    got += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        if length is not None and got != length:
            raise OSError('connection closed after %d of %d bytes'
                          % (got, length))
    return digest.hexdigest()


def _download_file(name, remote, dest, expected_md5, gunzip_md5=False):
    """Download `remote` from the mirrors of `name` to `dest` atomically.

    The data goes to ``dest + '.part'``; its MD5 (of the decompressed
    bytes if `gunzip_md5`) must equal `expected_md5` before it is renamed
    to `dest`.  Each mirror is tried in turn.
    """
    dest = Path(dest)
    import http.client

    part = dest.with_name(dest.name + '.part')
    problems = []
    for base in BASE_URLS[name]:
        url = base + remote
        log.info('downloading %s to %s', url, dest)
        try:
            got = _fetch(url, part)
            if gunzip_md5:
                got = _md5_file(part, gunzip=True)
        except (OSError, EOFError, zlib.error, http.client.HTTPException,
                ValueError) as exc:
            part.unlink(missing_ok=True)
            problems.append('%s: %s' % (url, _exc_text(exc)))
            continue
        if got != expected_md5:
            part.unlink(missing_ok=True)
            problems.append('%s: MD5 %s, expected %s' % (url, got,
                                                         expected_md5))
            continue
        os.replace(part, dest)
        return dest
    raise _err(dest, 'download failed (%s)' % '; '.join(problems),
               'fetch the file by hand into %s' % dest.parent)


def _extract_cifar(archive, data_dir):
    """Extract the CIFAR-10 batches of `archive` into
    ``data_dir/cifar-10-batches-py`` without overwriting existing files."""
    import shutil
    import tarfile
    import tempfile

    if not hasattr(tarfile, 'data_filter'):
        raise _err(archive, "this Python's tarfile lacks extraction filters "
                   '(need 3.8.17+/3.9.17+/3.10.12+/3.11.4+); extract it by hand')
    target = data_dir / _CIFAR_SUBDIR
    tmp = Path(tempfile.mkdtemp(prefix='.cifar-extract-', dir=data_dir))
    try:
        try:
            with tarfile.open(archive, 'r:gz') as tf:
                # 'data' filter refuses absolute paths, '..', links out of
                # the tree and device files.
                tf.extractall(tmp, filter='data')
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise _err(archive, 'cannot extract (%s)' % _exc_text(exc)) \
                from exc
        src = tmp / _CIFAR_SUBDIR
        if not src.is_dir():
            raise _err(archive, 'archive has no %s/ directory'
                       % _CIFAR_SUBDIR)
        target.mkdir(parents=True, exist_ok=True)
        for item in src.iterdir():
            if item.is_file() and not (target / item.name).exists():
                os.replace(item, target / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for base in _CIFAR_FILES['train'] + _CIFAR_FILES['test']:
        if _cifar_path(data_dir, base) is None:
            raise _err(archive, 'archive did not contain %s/%s'
                       % (_CIFAR_SUBDIR, base))


def download(name, data_dir=None, files=None):
    """Fetch the missing files of data set `name` into its directory.

    Parameters
    ----------
    name : {'mnist', 'cifar10', 'svhn'}
        Data set name.
    data_dir : str or path-like, optional
        Target directory; see :func:`resolve_data_dir`.  Created if needed.
    files : iterable of str, optional
        Only these files: MNIST base names such as
        ``'train-images-idx3-ubyte'``, SVHN names such as
        ``'train_32x32.mat'``; ignored for CIFAR-10, whose single archive
        holds every batch.  Default: all files of the data set.

    Returns
    -------
    pathlib.Path
        The data directory.

    Raises
    ------
    DatasetError
        If every mirror failed or gave a file whose MD5 is wrong (no
        partial file is left behind), or if extraction failed.
    """
    return _download(name, data_dir, files)


def _download(name, data_dir=None, files=None):
    # Separate name: the readers' ``download`` argument shadows download().
    data_dir = resolve_data_dir(name, data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _err(data_dir, 'cannot create directory (%s)'
                   % _exc_text(exc)) from exc
    if name == 'cifar10':
        bases = _CIFAR_FILES['train'] + _CIFAR_FILES['test']
        if all(_cifar_path(data_dir, b) is not None for b in bases):
            return data_dir
        archive = data_dir / _CIFAR_ARCHIVE
        expected = MD5['cifar10'][_CIFAR_ARCHIVE]
        try:
            have = archive.is_file() and _md5_file(archive) == expected
        except OSError:
            have = False
        if not have:
            _download_file(name, _CIFAR_ARCHIVE, archive, expected)
        _extract_cifar(archive, data_dir)
        return data_dir

    known = MD5[name]
    wanted = list(known) if files is None else list(files)
    for f in wanted:
        if f not in known:
            raise _err('files=%r' % (f,), 'unknown %s file; expected one of %s'
                       % (name, ', '.join(sorted(known))))
    for f in wanted:
        if name == 'mnist':
            if _mnist_path(data_dir, f) is None:
                _download_file(name, f + '.gz', data_dir / (f + '.gz'),
                               known[f], gunzip_md5=True)
        elif not (data_dir / f).is_file():
            _download_file(name, f, data_dir / f, known[f])
    return data_dir
