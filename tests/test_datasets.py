"""Tests of binary_net.datasets on tiny files written in the official formats.

Every file here is made by the test itself (IDX, CIFAR-10 pickles, SVHN
.mat, a CIFAR tarball); downloads go through file:// URLs only.  The one
test on real data reads the MNIST copy in ``shared/datasets/mnist`` and is
skipped when it is absent.
"""

import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from binary_net import datasets as ds
from binary_net.datasets import CIFAR10, MNIST, SVHN, DatasetError


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def assert_error(excinfo, *needles):
    """The message is one line and names every needle (file name...)."""
    msg = str(excinfo.value)
    assert '\n' not in msg and '\r' not in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def idx_bytes(magic, dims, payload):
    return struct.pack('>I', magic) + struct.pack(
        '>%dI' % len(dims), *dims) + bytes(payload)


def write_file(path, data, gz=False):
    path = Path(path)
    if gz:
        path = path.with_name(path.name + '.gz')
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def make_mnist(root, n_train=6, n_test=4, gz=True, seed=0):
    """Write the four IDX files; return {set: (images (n,28,28), labels)}."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for which, prefix, n in (('train', 'train', n_train),
                             ('test', 't10k', n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[0, 0, 0] = 255  # make sure 1.0 is exercised
        labels = (np.arange(n) * 7 % 10).astype(np.uint8)
        write_file(root / ('%s-images-idx3-ubyte' % prefix),
                   idx_bytes(2051, images.shape, images.tobytes()), gz)
        write_file(root / ('%s-labels-idx1-ubyte' % prefix),
                   idx_bytes(2049, labels.shape, labels.tobytes()), gz)
        out[which] = (images, labels)
    return out


def cifar_images(n, seed):
    """Random NCHW uint8 images with a constant marker per channel."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    img[:, 0, 0, 0], img[:, 1, 0, 0], img[:, 2, 0, 0] = 10, 20, 30
    return img


def py2_cifar_pickle(data, labels):
    """A protocol-2 pickle laid out as Python 2's cPickle wrote CIFAR-10:
    str keys and array payloads as 8-bit str opcodes (SHORT_BINSTRING /
    BINSTRING), which Python 3 must decode with latin1."""
    def s(b):
        if len(b) < 256:
            return b'U' + bytes([len(b)]) + b
        return b'T' + struct.pack('<i', len(b)) + b

    def i(v):
        return b'K' + bytes([v]) if 0 <= v < 256 else b'J' + struct.pack(
            '<i', v)

    dtype = (b'cnumpy\ndtype\n' + s(b'u1') + i(0) + i(1) + b'\x87R'
             + b'(' + i(3) + s(b'|') + b'NNN' + i(-1) + i(-1) + i(0)
             + b'tb')
    array = (b'cnumpy.core.multiarray\n_reconstruct\n' + b'cnumpy\nndarray\n'
             + i(0) + b'\x85' + s(b'b') + b'\x87R'
             + b'(' + i(1) + i(data.shape[0]) + i(data.shape[1]) + b'\x86'
             + dtype + b'\x89' + s(data.tobytes()) + b'tb')
    label_list = b'](' + b''.join(i(v) for v in labels) + b'e'
    return (b'\x80\x02}(' + s(b'batch_label') + s(b'training batch')
            + s(b'data') + array + s(b'labels') + label_list + b'u.')


def write_cifar_batch(path, images, labels, keys='str'):
    data = images.reshape(images.shape[0], 3072)  # CIFAR rows: R, G, B
    labels = [int(v) for v in labels]
    if keys == 'py2':
        Path(path).write_bytes(py2_cifar_pickle(data, labels))
        return
    k = (lambda x: x) if keys == 'str' else (lambda x: x.encode())
    with open(path, 'wb') as fh:
        pickle.dump({k('batch_label'): 'b', k('data'): data,
                     k('labels'): labels}, fh, protocol=2)


def make_cifar(root, per_batch=3, keys='str', subdir=False):
    """Write data_batch_1..5 and test_batch; return {set: (img, labels)}."""
    root = Path(root)
    folder = root / 'cifar-10-batches-py' if subdir else root
    folder.mkdir(parents=True, exist_ok=True)
    train_img, train_lab = [], []
    for b in range(1, 6):
        img = cifar_images(per_batch, seed=b)
        lab = (np.arange(per_batch) + b) % 10
        write_cifar_batch(folder / ('data_batch_%d' % b), img, lab, keys)
        train_img.append(img)
        train_lab.append(lab)
    test_img = cifar_images(per_batch, seed=99)
    test_lab = np.arange(per_batch) % 10
    write_cifar_batch(folder / 'test_batch', test_img, test_lab, keys)
    return {'train': (np.concatenate(train_img), np.concatenate(train_lab)),
            'test': (test_img, test_lab)}


def write_svhn(path, images_nchw, labels_1_to_10):
    """Write SVHN format 2: X (32, 32, 3, N) uint8, y (N, 1)."""
    X = np.ascontiguousarray(images_nchw.transpose(2, 3, 1, 0))
    y = np.asarray(labels_1_to_10, dtype=np.uint8).reshape(-1, 1)
    scipy.io.savemat(str(path), {'X': X, 'y': y})


def make_svhn(root, n_train=40, n_extra=30, n_test=10, extra=True):
    """Write the .mat files; return {part: (img NCHW, labels 0..9)}."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    parts = [('train', n_train, 1), ('test', n_test, 2)]
    if extra:
        parts.append(('extra', n_extra, 3))
    for part, n, seed in parts:
        img = cifar_images(n, seed)
        rng = np.random.default_rng(seed)
        digits = rng.permutation(np.arange(n) % 10)  # every digit present
        write_svhn(root / ('%s_32x32.mat' % part), img,
                   np.where(digits == 0, 10, digits))
        out[part] = (img, digits.astype(np.uint8))
    return out


def md5(data):
    return hashlib.md5(data).hexdigest()


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    # No test may read a real user's data dir by accident.
    monkeypatch.delenv('BINARY_NET_DATA', raising=False)
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))


def test_module_imports_no_theano():
    code = ('import sys; import binary_net; before = set(sys.modules); '
            'import binary_net.datasets; '
            'new = set(sys.modules) - before; '
            'bad = [m for m in new if m.split(".")[0] in '
            '("theano", "lasagne", "scipy", "tqdm") '
            'or m == "urllib.request"]; '
            'assert not bad, bad')
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, '-c', code], cwd=root, check=True)


# ---------------------------------------------------------------------------
# Data directory resolution
# ---------------------------------------------------------------------------

def test_resolve_data_dir_order(monkeypatch, tmp_path):
    home = tmp_path / 'home'
    assert ds.resolve_data_dir('mnist') == home / '.binary_net/data/mnist'
    monkeypatch.setenv('BINARY_NET_DATA', str(tmp_path / 'env'))
    assert ds.resolve_data_dir('svhn') == tmp_path / 'env' / 'svhn'
    assert ds.resolve_data_dir('cifar10', tmp_path / 'arg') == tmp_path / 'arg'
    assert ds.resolve_data_dir('cifar10', str(tmp_path)) == tmp_path
    monkeypatch.setenv('BINARY_NET_DATA', '')  # empty means unset
    assert ds.resolve_data_dir('cifar10') == home / '.binary_net/data/cifar10'


def test_resolve_data_dir_unknown_name():
    with pytest.raises(DatasetError) as ei:
        ds.resolve_data_dir('imagenet')
    assert_error(ei, "'imagenet'")


def test_readers_use_env_then_home(monkeypatch, tmp_path):
    make_mnist(tmp_path / 'env' / 'mnist', n_test=3)
    make_mnist(tmp_path / 'home' / '.binary_net' / 'data' / 'mnist', n_test=5)
    assert MNIST('test').X.shape == (5, 784)
    monkeypatch.setenv('BINARY_NET_DATA', str(tmp_path / 'env'))
    m = MNIST('test')
    assert m.X.shape == (3, 784)
    assert m.data_dir == tmp_path / 'env' / 'mnist'
    make_mnist(tmp_path / 'arg', n_test=2)
    assert MNIST('test', data_dir=tmp_path / 'arg').X.shape == (2, 784)


# ---------------------------------------------------------------------------
# MNIST
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('gz', [True, False])
def test_mnist_reads_idx(tmp_path, gz):
    ref = make_mnist(tmp_path, gz=gz)
    for which in ('train', 'test'):
        images, labels = ref[which]
        m = MNIST(which, data_dir=tmp_path)
        assert m.which_set == which and m.num_classes == 10
        assert m.data_dir == tmp_path
        assert m.X.shape == (len(images), 784) and m.X.dtype == np.float32
        expected = images.reshape(-1, 784).astype(np.float32) / np.float32(255)
        np.testing.assert_array_equal(m.X, expected)
        assert m.X.max() == 1.0 and m.X.min() >= 0.0
        assert m.y.shape == (len(images), 1) and m.y.dtype == np.uint8
        np.testing.assert_array_equal(m.y[:, 0], labels)
        assert len(m) == len(images)


def test_mnist_uint8_start_stop_and_center(tmp_path):
    images, labels = make_mnist(tmp_path, n_train=8)['train']
    m = MNIST('train', 2, 7, data_dir=tmp_path, dtype='uint8')
    assert m.X.dtype == np.uint8 and m.X.flags.writeable
    np.testing.assert_array_equal(m.X, images[2:7].reshape(5, 784))
    np.testing.assert_array_equal(m.y[:, 0], labels[2:7])
    c = MNIST('train', 0, 4, data_dir=tmp_path, center=True)
    np.testing.assert_allclose(c.X.mean(axis=0), 0, atol=1e-6)
    raw = images[:4].reshape(4, 784) / 255.0
    np.testing.assert_allclose(c.X, raw - raw.mean(axis=0), atol=1e-6)
    with pytest.raises(DatasetError) as ei:
        MNIST('train', data_dir=tmp_path, dtype='uint8', center=True)
    assert_error(ei, 'center')


def test_mnist_prefers_plain_file_over_gz(tmp_path):
    make_mnist(tmp_path, gz=True, seed=1)
    plain = make_mnist(tmp_path, gz=False, seed=2)['test'][0]
    m = MNIST('test', data_dir=tmp_path, dtype='uint8')
    np.testing.assert_array_equal(m.X, plain.reshape(-1, 784))


def _corrupt(tmp_path, kind):
    """Make one broken MNIST file; return the name that must be reported."""
    make_mnist(tmp_path, gz=False)
    img = tmp_path / 't10k-images-idx3-ubyte'
    lab = tmp_path / 't10k-labels-idx1-ubyte'
    if kind == 'truncated':
        img.write_bytes(img.read_bytes()[:-5])
        return img.name, 'truncated'
    if kind == 'truncated_header':
        lab.write_bytes(lab.read_bytes()[:6])
        return lab.name, 'truncated'
    if kind == 'trailing':
        lab.write_bytes(lab.read_bytes() + b'\0\0\0')
        return lab.name, 'trailing'
    if kind == 'magic':
        data = bytearray(img.read_bytes())
        data[3] = 0x01  # 2049: a label magic in an image file
        img.write_bytes(bytes(data))
        return img.name, 'magic'
    if kind == 'labels':
        data = bytearray(lab.read_bytes())
        data[9] = 10
        lab.write_bytes(bytes(data))
        return lab.name, '0..9'
    if kind == 'count':
        lab.write_bytes(idx_bytes(2049, (3,), b'\1\2\3'))
        return lab.name, '3 labels'
    if kind == 'shape':
        img.write_bytes(idx_bytes(2051, (4, 32, 32), bytes(4 * 32 * 32)))
        return img.name, '28x28'
    data = gzip.compress(img.read_bytes())
    img.unlink()
    gz = tmp_path / 't10k-images-idx3-ubyte.gz'
    if kind == 'gzip_garbage':
        gz.write_bytes(b'\x1f\x8b\x08' + b'not really gzip' * 10)
    elif kind == 'gzip_cut':
        gz.write_bytes(data[:len(data) // 2])
    elif kind == 'gzip_truncated_payload':
        gz.write_bytes(gzip.compress(gzip.decompress(data)[:-100]))
        return gz.name, 'truncated'
    return gz.name, 'gzip'


@pytest.mark.parametrize('kind', [
    'truncated', 'truncated_header', 'trailing', 'magic', 'labels', 'count',
    'shape', 'gzip_garbage', 'gzip_cut', 'gzip_truncated_payload'])
def test_mnist_bad_files(tmp_path, kind):
    name, what = _corrupt(tmp_path, kind)
    with pytest.raises(DatasetError) as ei:
        MNIST('test', data_dir=tmp_path)
    assert_error(ei, name, what)
    if kind.startswith('gzip_') and what == 'gzip':
        assert ei.value.__cause__ is not None  # chained, not swallowed


def test_mnist_missing_file_says_how_to_get_it(tmp_path):
    make_mnist(tmp_path)
    (tmp_path / 'train-labels-idx1-ubyte.gz').unlink()
    with pytest.raises(DatasetError) as ei:
        MNIST('train', data_dir=tmp_path)
    assert_error(ei, str(tmp_path / 'train-labels-idx1-ubyte'), 'not found',
                 'BINARY_NET_DATA', '--download')
    assert isinstance(ei.value, ValueError)


@pytest.mark.parametrize('kwargs, needle', [
    (dict(which_set='valid'), "which_set='valid'"),
    (dict(which_set='train', stop=7), 'stop=7'),
    (dict(which_set='train', start=-1), 'start=-1'),
    (dict(which_set='train', start=3, stop=3), 'start=3'),
    (dict(which_set='train', start=1.5), 'start=1.5'),
    (dict(which_set='train', dtype='int32'), "dtype='int32'"),
])
def test_mnist_bad_arguments(tmp_path, kwargs, needle):
    make_mnist(tmp_path, n_train=6)
    with pytest.raises(DatasetError) as ei:
        MNIST(data_dir=tmp_path, **kwargs)
    assert_error(ei, needle)


def test_verify_mnist_detects_mismatch(tmp_path, monkeypatch):
    make_mnist(tmp_path, gz=True)
    sums = {base: md5(gzip.decompress((tmp_path / (base + '.gz'))
                                      .read_bytes()))
            for base in ds.MD5['mnist']}
    monkeypatch.setitem(ds.MD5, 'mnist', sums)
    assert ds.verify_mnist(tmp_path) == sums
    monkeypatch.setitem(ds.MD5['mnist'], 't10k-images-idx3-ubyte', '0' * 32)
    with pytest.raises(DatasetError) as ei:
        ds.verify_mnist(tmp_path)
    assert_error(ei, 't10k-images-idx3-ubyte.gz', 'MD5')


# ---------------------------------------------------------------------------
# CIFAR-10
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('keys, subdir', [
    ('str', False), ('bytes', False), ('py2', False), ('str', True)])
def test_cifar_reads_batches(tmp_path, keys, subdir):
    ref = make_cifar(tmp_path, keys=keys, subdir=subdir)
    for which in ('train', 'test'):
        img, lab = ref[which]
        c = CIFAR10(which, data_dir=tmp_path)
        assert c.X.shape == (len(img), 3072) and c.X.dtype == np.float32
        nchw = c.X.reshape(-1, 3, 32, 32)
        np.testing.assert_array_equal(nchw, img)  # batches 1..5 in order
        np.testing.assert_array_equal(nchw[:, :, 0, 0],
                                      np.tile([10, 20, 30], (len(img), 1)))
        assert c.y.shape == (len(img), 1) and c.y.dtype == np.uint8
        np.testing.assert_array_equal(c.y[:, 0], lab)
        assert c.num_classes == 10 and c.which_set == which


def test_cifar_uint8_and_slicing(tmp_path):
    img, lab = make_cifar(tmp_path, per_batch=4)['train']
    c = CIFAR10('train', 5, 18, data_dir=tmp_path, dtype='uint8')
    assert c.X.dtype == np.uint8 and c.X.shape == (13, 3072)
    np.testing.assert_array_equal(c.X, img[5:18].reshape(13, 3072))
    np.testing.assert_array_equal(c.y[:, 0], lab[5:18])
    assert c.X.max() > 1  # no /255 scaling for CIFAR
    assert CIFAR10('train', data_dir=tmp_path).X.max() == img.max()


class _Payload:
    """Pickles as a call of `func(*args)`; runs it if unpickled naively."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize('make_payload, refused', [
    (lambda p: _Payload(os.system, 'touch %s' % p), 'system'),
    (lambda p: _Payload(io.open, str(p), 'w'), 'open'),
])
def test_cifar_malicious_pickle_is_refused(tmp_path, make_payload, refused):
    make_cifar(tmp_path)
    marker = tmp_path / 'pwned'
    def blob(path):
        return pickle.dumps({'data': make_payload(path), 'labels': [0]},
                            protocol=2)

    # The payload is live: a plain unpickler would create its file.
    live = tmp_path / 'live'
    pickle.loads(blob(live))
    assert live.exists()
    (tmp_path / 'test_batch').write_bytes(blob(marker))
    with pytest.raises(DatasetError) as ei:
        CIFAR10('test', data_dir=tmp_path)
    assert_error(ei, 'test_batch', refused, 'refused')
    assert not marker.exists()


def _bad_cifar(tmp_path, kind):
    make_cifar(tmp_path)
    path = tmp_path / 'data_batch_3'
    img = cifar_images(2, 0)
    if kind == 'truncated':
        path.write_bytes(path.read_bytes()[:200])
        return 'pickle'
    if kind == 'labels':
        write_cifar_batch(path, img, [3, 10])
        return '0..9'
    if kind == 'count':
        write_cifar_batch(path, img, [3])
        return '1 labels'
    if kind == 'not_dict':
        path.write_bytes(pickle.dumps([1, 2], protocol=2))
        return 'dict'
    if kind == 'shape':
        with open(path, 'wb') as fh:
            pickle.dump({'data': np.zeros((2, 100), np.uint8),
                         'labels': [1, 2]}, fh, protocol=2)
        return '3072'
    if kind == 'no_labels':
        with open(path, 'wb') as fh:
            pickle.dump({'data': img.reshape(2, -1)}, fh, protocol=2)
        return "'labels'"
    path.unlink()
    return 'not found'


@pytest.mark.parametrize('kind', ['truncated', 'labels', 'count', 'not_dict',
                                  'shape', 'no_labels', 'missing'])
def test_cifar_bad_files(tmp_path, kind):
    what = _bad_cifar(tmp_path, kind)
    with pytest.raises(DatasetError) as ei:
        CIFAR10('train', data_dir=tmp_path)
    assert_error(ei, 'data_batch_3', what)
    if kind == 'truncated':
        assert isinstance(ei.value.__cause__, (EOFError,
                                               pickle.UnpicklingError))


def test_cifar_unknown_set_and_range(tmp_path):
    make_cifar(tmp_path)
    with pytest.raises(DatasetError) as ei:
        CIFAR10('valid', data_dir=tmp_path)
    assert_error(ei, "which_set='valid'")
    with pytest.raises(DatasetError) as ei:
        CIFAR10('train', 0, 16, data_dir=tmp_path)
    assert_error(ei, 'stop=16', '15 rows')


# ---------------------------------------------------------------------------
# SVHN
# ---------------------------------------------------------------------------

def test_svhn_reads_mat_layout_and_labels(tmp_path):
    ref = make_svhn(tmp_path, extra=False)
    for which in ('train', 'test'):  # extra is absent: must not be needed
        img, digits = ref[which]
        s = SVHN(which, data_dir=tmp_path, verify_md5=False)
        assert s.X.shape == (len(img), 3072) and s.X.dtype == np.float32
        np.testing.assert_array_equal(s.X.reshape(-1, 3, 32, 32), img)
        np.testing.assert_array_equal(s.X[:, :1024], img[:, 0].reshape(
            len(img), 1024))
        assert s.y.shape == (len(img), 1) and s.y.dtype == np.uint8
        np.testing.assert_array_equal(s.y[:, 0], digits)
        assert 0 in s.y and 10 not in s.y
    u = SVHN('test', 2, 5, data_dir=tmp_path, verify_md5=False, dtype='uint8')
    assert u.X.dtype == np.uint8
    np.testing.assert_array_equal(u.X, ref['test'][0][2:5].reshape(3, 3072))


def test_svhn_train_all_and_slicing_across_files(tmp_path):
    ref = make_svhn(tmp_path)
    img = np.concatenate([ref['train'][0], ref['extra'][0]])
    lab = np.concatenate([ref['train'][1], ref['extra'][1]])
    s = SVHN('train_all', data_dir=tmp_path, verify_md5=False, dtype='uint8')
    np.testing.assert_array_equal(s.X.reshape(-1, 3, 32, 32), img)
    np.testing.assert_array_equal(s.y[:, 0], lab)
    e = SVHN('extra', data_dir=tmp_path, verify_md5=False)
    np.testing.assert_array_equal(e.y[:, 0], ref['extra'][1])
    part = SVHN('train_all', 35, 47, data_dir=tmp_path, verify_md5=False)
    np.testing.assert_array_equal(part.X.reshape(-1, 3, 32, 32), img[35:47])
    np.testing.assert_array_equal(part.y[:, 0], lab[35:47])


def _paper_split(labels, per_class):
    """Reference: first `per_class` of each class, by a plain loop."""
    seen, valid = {}, []
    for i, c in enumerate(labels):
        if seen.get(c, 0) < per_class:
            valid.append(i)
            seen[c] = seen.get(c, 0) + 1
    return valid


def test_svhn_paper_split(tmp_path, monkeypatch):
    assert ds.SVHN_VALID_PER_CLASS_TRAIN == 400
    assert ds.SVHN_VALID_PER_CLASS_EXTRA == 200
    monkeypatch.setattr(ds, 'SVHN_VALID_PER_CLASS_TRAIN', 2)
    monkeypatch.setattr(ds, 'SVHN_VALID_PER_CLASS_EXTRA', 1)
    ref = make_svhn(tmp_path, n_train=40, n_extra=30)
    n_train = len(ref['train'][1])
    v_idx = (_paper_split(ref['train'][1], 2)
             + [n_train + i for i in _paper_split(ref['extra'][1], 1)])
    all_img = np.concatenate([ref['train'][0], ref['extra'][0]])
    all_lab = np.concatenate([ref['train'][1], ref['extra'][1]])
    t_idx = [i for i in range(len(all_lab)) if i not in set(v_idx)]
    valid = SVHN('valid', data_dir=tmp_path, verify_md5=False)
    train = SVHN('splitted_train', data_dir=tmp_path, verify_md5=False)
    assert valid.X.shape == (10 * 2 + 10 * 1, 3072)
    assert train.X.shape == (40 + 30 - 30, 3072)
    np.testing.assert_array_equal(valid.X.reshape(-1, 3, 32, 32),
                                  all_img[v_idx])
    np.testing.assert_array_equal(valid.y[:, 0], all_lab[v_idx])
    np.testing.assert_array_equal(train.X.reshape(-1, 3, 32, 32),
                                  all_img[t_idx])
    np.testing.assert_array_equal(train.y[:, 0], all_lab[t_idx])
    assert np.bincount(valid.y[:, 0], minlength=10).tolist() == [3] * 10
    sliced = SVHN('valid', 18, 25, data_dir=tmp_path, verify_md5=False)
    np.testing.assert_array_equal(sliced.y[:, 0], all_lab[v_idx][18:25])


def test_svhn_valid_mask_function():
    labels = np.array([1, 1, 2, 1, 2, 2, 3])
    np.testing.assert_array_equal(ds.svhn_valid_mask(labels, 2),
                                  [1, 1, 1, 0, 1, 0, 1])
    assert ds.svhn_valid_mask(labels, 0).sum() == 0


@pytest.mark.parametrize('kind, what', [
    ('truncated', 'corrupt'), ('garbage', 'corrupt'),
    ('label0', 'outside 1..10'), ('label11', 'outside 1..10'),
    ('shape', "'X'"), ('no_y', "'y'"), ('y_len', "'y'")])
def test_svhn_bad_files(tmp_path, kind, what):
    make_svhn(tmp_path, extra=False)
    path = tmp_path / 'train_32x32.mat'
    img = cifar_images(3, 0)
    if kind == 'truncated':
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    elif kind == 'garbage':
        path.write_bytes(b'MATLAB 5.0 MAT-file' + bytes(50))
    elif kind in ('label0', 'label11'):
        write_svhn(path, img, [1, 0 if kind == 'label0' else 11, 10])
    elif kind == 'shape':
        scipy.io.savemat(str(path), {'X': np.zeros((28, 28, 3, 2), np.uint8),
                                     'y': np.ones((2, 1), np.uint8)})
    elif kind == 'no_y':
        scipy.io.savemat(str(path), {'X': img.transpose(2, 3, 1, 0)})
    elif kind == 'y_len':
        scipy.io.savemat(str(path), {'X': img.transpose(2, 3, 1, 0),
                                     'y': np.ones((2, 1), np.uint8)})
    with pytest.raises(DatasetError) as ei:
        SVHN('train', data_dir=tmp_path, verify_md5=False)
    assert_error(ei, 'train_32x32.mat', what)
    if kind in ('truncated', 'garbage'):
        assert ei.value.__cause__ is not None


def test_svhn_missing_extra_and_unknown_set(tmp_path):
    make_svhn(tmp_path, extra=False)
    with pytest.raises(DatasetError) as ei:
        SVHN('train_all', data_dir=tmp_path, verify_md5=False)
    assert_error(ei, 'extra_32x32.mat', 'not found', '--download')
    with pytest.raises(DatasetError) as ei:
        SVHN('validation', data_dir=tmp_path, verify_md5=False)
    assert_error(ei, "which_set='validation'", "'splitted_train'")


# ---------------------------------------------------------------------------
# Downloads (file:// URLs only)
# ---------------------------------------------------------------------------

@pytest.fixture
def mnist_mirror(tmp_path, monkeypatch):
    """A file:// mirror of tiny gzipped MNIST with matching MD5 sums."""
    mirror = tmp_path / 'mirror'
    make_mnist(mirror, gz=True, n_train=5, n_test=3)
    sums = {b: md5(gzip.decompress((mirror / (b + '.gz')).read_bytes()))
            for b in ds.MD5['mnist']}
    monkeypatch.setitem(ds.MD5, 'mnist', sums)
    monkeypatch.setitem(ds.BASE_URLS, 'mnist', [mirror.as_uri() + '/'])
    return mirror


def test_download_mnist_from_file_url(tmp_path, mnist_mirror):
    target = tmp_path / 'data'
    m = MNIST('test', data_dir=target, download=True)
    assert m.X.shape == (3, 784)
    assert sorted(p.name for p in target.iterdir()) == [
        't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz']
    assert ds.download('mnist', target) == target
    assert not list(target.glob('*.part'))
    assert len(list(target.glob('*.gz'))) == 4
    ds.verify_mnist(target)


def test_download_falls_back_to_next_mirror(tmp_path, mnist_mirror,
                                            monkeypatch):
    empty = tmp_path / 'empty'
    empty.mkdir()
    monkeypatch.setitem(ds.BASE_URLS, 'mnist', [
        empty.as_uri() + '/', mnist_mirror.as_uri() + '/'])
    ds.download('mnist', tmp_path / 'data', files=['t10k-labels-idx1-ubyte'])
    assert (tmp_path / 'data' / 't10k-labels-idx1-ubyte.gz').is_file()


def test_download_bad_checksum_leaves_nothing(tmp_path, mnist_mirror,
                                              monkeypatch):
    monkeypatch.setitem(ds.MD5['mnist'], 'train-images-idx3-ubyte', 'f' * 32)
    target = tmp_path / 'data'
    with pytest.raises(DatasetError) as ei:
        MNIST('train', data_dir=target, download=True)
    assert_error(ei, 'train-images-idx3-ubyte.gz', 'MD5', 'f' * 32)
    assert not (target / 'train-images-idx3-ubyte.gz').exists()
    assert not list(target.glob('*.part'))


def test_download_unknown_file_and_unreachable(tmp_path, monkeypatch):
    with pytest.raises(DatasetError) as ei:
        ds.download('svhn', tmp_path, files=['foo.mat'])
    assert_error(ei, 'foo.mat')
    monkeypatch.setitem(ds.BASE_URLS, 'svhn', [(tmp_path / 'no').as_uri()
                                               + '/'])
    with pytest.raises(DatasetError) as ei:
        ds.download('svhn', tmp_path, files=['test_32x32.mat'])
    assert_error(ei, 'test_32x32.mat', 'download failed')
    assert list(tmp_path.iterdir()) == []


def test_download_truncated_transfer(tmp_path, monkeypatch):
    import urllib.request

    class ShortResponse(io.BytesIO):
        headers = {'Content-Length': '100'}

    monkeypatch.setattr(urllib.request, 'urlopen',
                        lambda url, timeout: ShortResponse(b'x' * 60))
    with pytest.raises(DatasetError) as ei:
        ds.download('svhn', tmp_path, files=['train_32x32.mat'])
    assert_error(ei, 'train_32x32.mat', '60 of 100 bytes')
    assert list(tmp_path.iterdir()) == []


def test_download_svhn_only_needed_files(tmp_path, monkeypatch):
    mirror = tmp_path / 'mirror'
    ref = make_svhn(mirror)
    monkeypatch.setitem(ds.BASE_URLS, 'svhn', [mirror.as_uri() + '/'])
    monkeypatch.setitem(ds.MD5, 'svhn', {
        p.name: md5(p.read_bytes()) for p in mirror.glob('*.mat')})
    target = tmp_path / 'data'
    s = SVHN('test', data_dir=target, download=True)
    np.testing.assert_array_equal(s.y[:, 0], ref['test'][1])
    assert [p.name for p in target.iterdir()] == ['test_32x32.mat']


def _cifar_tarball(tmp_path, extra_member=None):
    src = tmp_path / 'src'
    ref = make_cifar(src, subdir=True)
    mirror = tmp_path / 'mirror'
    mirror.mkdir()
    archive = mirror / 'cifar-10-python.tar.gz'
    with tarfile.open(archive, 'w:gz') as tf:
        tf.add(src / 'cifar-10-batches-py', arcname='cifar-10-batches-py')
        if extra_member is not None:
            info = tarfile.TarInfo(extra_member)
            info.size = 4
            tf.addfile(info, io.BytesIO(b'evil'))
    return ref, mirror, md5(archive.read_bytes())


def test_download_cifar_archive(tmp_path, monkeypatch):
    ref, mirror, digest = _cifar_tarball(tmp_path)
    monkeypatch.setitem(ds.BASE_URLS, 'cifar10', [mirror.as_uri() + '/'])
    monkeypatch.setitem(ds.MD5['cifar10'], 'cifar-10-python.tar.gz', digest)
    target = tmp_path / 'data'
    c = CIFAR10('train', data_dir=target, download=True)
    np.testing.assert_array_equal(c.X.reshape(-1, 3, 32, 32), ref['train'][0])
    assert (target / 'cifar-10-batches-py' / 'test_batch').is_file()
    assert not list(target.rglob('*.part'))
    assert not list(target.glob('.cifar-extract-*'))


def test_download_cifar_refuses_path_traversal(tmp_path, monkeypatch):
    _, mirror, digest = _cifar_tarball(tmp_path, '../../escaped')
    monkeypatch.setitem(ds.BASE_URLS, 'cifar10', [mirror.as_uri() + '/'])
    monkeypatch.setitem(ds.MD5['cifar10'], 'cifar-10-python.tar.gz', digest)
    target = tmp_path / 'deep' / 'data'
    with pytest.raises(DatasetError) as ei:
        ds.download('cifar10', target)
    assert_error(ei, 'cifar-10-python.tar.gz', 'extract')
    assert not list(tmp_path.rglob('escaped'))


def test_download_cifar_bad_checksum(tmp_path, monkeypatch):
    _, mirror, _ = _cifar_tarball(tmp_path)
    monkeypatch.setitem(ds.BASE_URLS, 'cifar10', [mirror.as_uri() + '/'])
    target = tmp_path / 'data'
    with pytest.raises(DatasetError) as ei:
        ds.download('cifar10', target)
    assert_error(ei, 'cifar-10-python.tar.gz', 'c58f30108f718f92721af3b95e74349a')
    assert list(target.iterdir()) == []


# ---------------------------------------------------------------------------
# Real MNIST (shared/datasets/mnist)
# ---------------------------------------------------------------------------

def _real_mnist_dir():
    candidates = [Path(__file__).resolve().parents[2] / 'shared' / 'datasets'
                  / 'mnist']
    if os.environ.get('BINARY_NET_MNIST_DIR'):
        candidates.append(Path(os.environ['BINARY_NET_MNIST_DIR']))
    for c in candidates:
        if all(ds._mnist_path(c, b) is not None for b in ds.MD5['mnist']):
            return c
    return None


REAL_MNIST = _real_mnist_dir()


@pytest.mark.skipif(REAL_MNIST is None, reason='real MNIST not available')
def test_real_mnist():
    assert ds.verify_mnist(REAL_MNIST) == ds.MD5['mnist']
    train = MNIST('train', data_dir=REAL_MNIST)
    test = MNIST('test', data_dir=REAL_MNIST)
    assert train.X.shape == (60000, 784) and test.X.shape == (10000, 784)
    assert train.X.dtype == np.float32
    assert train.X.min() == 0.0 and train.X.max() == 1.0
    hist = np.bincount(train.y[:, 0], minlength=10)
    assert hist.sum() == 60000 and hist.min() > 5000 and hist.max() < 7000
    assert hist[1] == 6742 and hist[5] == 5421  # well-known counts
    thist = np.bincount(test.y[:, 0], minlength=10)
    assert thist.min() > 850 and thist.max() < 1200
    valid = MNIST('train', 50000, 60000, data_dir=REAL_MNIST)
    assert valid.X.shape == (10000, 784)
    np.testing.assert_array_equal(valid.X, train.X[50000:])
    np.testing.assert_array_equal(valid.y, train.y[50000:])
